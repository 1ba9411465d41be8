"""Qunban: the application layer (workflow, services, scheduler, outbox, CLI)."""

import os

# python-telegram-bot 22 is moving its durations (RetryAfter.retry_after …) to timedelta and
# warns on every int access until an application opts in; Qunban handles both forms.
os.environ.setdefault("PTB_TIMEDELTA", "true")

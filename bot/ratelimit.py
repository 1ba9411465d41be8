"""Telegram's sending limits, kept per process: one a second per chat, 20 a minute per group,
30 a second in all. Time comes from a monotonic source passed in."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    per_chat_per_s: float = 1.0
    per_group_per_min: int = 20
    global_per_s: int = 30

    def scaled(self, factor: float) -> Limits:
        """The same limits made `factor` times looser (benchmarks against a scaled double)."""
        return Limits(
            self.per_chat_per_s * factor,
            int(self.per_group_per_min * factor),
            int(self.global_per_s * factor),
        )


class RateLimiter:
    """Answers "how long until chat X may get another message", and records each send."""

    def __init__(
        self, limits: Limits | None = Limits(), monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self._now = monotonic
        self._last: dict[int, float] = {}
        self._groups: dict[int, deque[float]] = {}
        self._global: deque[float] = deque()
        self._blocked_until: dict[int, float] = {}

    def wait(self, chat_id: int) -> float:
        """Seconds to wait before sending to chat_id; 0 when it may go now."""
        if self.limits is None:
            return 0.0
        now = self._now()
        waits = [self._blocked_until.get(chat_id, 0.0) - now]
        last = self._last.get(chat_id)
        if last is not None:
            waits.append(last + 1.0 / self.limits.per_chat_per_s - now)
        if chat_id < 0:
            window = self._trim(self._groups.get(chat_id), now, 60.0)
            if window is not None and len(window) >= self.limits.per_group_per_min:
                waits.append(window[0] + 60.0 - now)
        self._trim(self._global, now, 1.0)
        if len(self._global) >= self.limits.global_per_s:
            waits.append(self._global[0] + 1.0 - now)
        return max(0.0, *waits)

    def record(self, chat_id: int) -> None:
        if self.limits is None:
            return
        now = self._now()
        self._last[chat_id] = now
        self._global.append(now)
        if chat_id < 0:
            self._groups.setdefault(chat_id, deque()).append(now)

    def block(self, chat_id: int, seconds: float) -> None:
        """Telegram said RetryAfter: nothing more to that chat until then."""
        self._blocked_until[chat_id] = self._now() + seconds

    @staticmethod
    def _trim(window: deque[float] | None, now: float, span: float) -> deque[float] | None:
        while window and window[0] <= now - span:
            window.popleft()
        return window

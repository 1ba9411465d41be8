"""Telegram's sending limits, kept per process: one a second per chat, 20 a minute per group,
30 a second in all. Time comes from a monotonic source passed in.

Telegram counts a message when its request arrives, which we never see: only that it arrives
after we start it and before its answer comes back. So a send holds a place in the limits from
the moment it starts (`start`) and is timed from the moment its answer came (`done`), the latest
Telegram can have counted it. However late or unevenly the requests travel, Telegram then never
counts more in any window than the limits allow, and no more room is left than the journey takes.
"""

from __future__ import annotations

import math
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
    """Answers "how long until chat X may get another message", and keeps the sends."""

    def __init__(
        self, limits: Limits | None = Limits(), monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self._now = monotonic
        self._last: dict[int, float] = {}  # each chat's last send, when it was answered
        self._groups: dict[int, deque[float]] = {}  # each group's sends of the last minute
        self._global: deque[float] = deque()  # all sends of the last second, in answer order
        self._open: dict[int, int] = {}  # each chat's sends started and not yet answered
        self._open_total = 0
        self._blocked_until: dict[int, float] = {}

    def now(self) -> float:
        return self._now()

    def wait(self, chat_id: int) -> float:
        """Seconds to wait before sending to chat_id; 0 when it may go now. While a send to
        the chat has no answer yet, or sends in flight fill the overall limit, the wait is
        infinite: it ends when an answer comes, not at a time known now."""
        if self.limits is None:
            return 0.0
        if self._open.get(chat_id):
            return math.inf
        now = self._now()
        wait = self._global_wait(now)
        blocked = self._blocked_until.get(chat_id)
        if blocked is not None:
            wait = max(wait, blocked - now)
        last = self._last.get(chat_id)
        if last is not None:
            wait = max(wait, last + 1.0 / self.limits.per_chat_per_s - now)
        if chat_id < 0 and (window := self._groups.get(chat_id)):
            wait = max(wait, _slot(window, 0, now, 60.0, self.limits.per_group_per_min))
        return max(wait, 0.0)

    def wait_global(self) -> float:
        """Seconds until the overall limit lets any message go; 0 when it does now."""
        if self.limits is None:
            return 0.0
        return max(self._global_wait(self._now()), 0.0)

    def start(self, chat_id: int) -> None:
        """A send to chat_id is going out: it counts from now until `done` times it."""
        if self.limits is None:
            return
        self._open[chat_id] = self._open.get(chat_id, 0) + 1
        self._open_total += 1

    def done(self, chat_id: int) -> None:
        """The answer to a send started with `start` came (or the request failed)."""
        if self.limits is None:
            return
        count = self._open.get(chat_id, 0)
        if count <= 0:
            return
        if count == 1:
            del self._open[chat_id]
        else:
            self._open[chat_id] = count - 1
        self._open_total -= 1
        self._count(chat_id, self._now())

    def end_open(self) -> None:
        """Sends whose answers nobody will wait for (the drain that made them was cut off):
        each may have reached Telegram, so each counts as answered now."""
        for chat_id, count in list(self._open.items()):
            for _ in range(count):
                self.done(chat_id)

    def record(self, chat_id: int) -> None:
        """A send made and answered now."""
        if self.limits is None:
            return
        self._count(chat_id, self._now())

    def block(self, chat_id: int, seconds: float) -> None:
        """Telegram said RetryAfter: nothing more to that chat until then."""
        self._blocked_until[chat_id] = self._now() + seconds

    def _count(self, chat_id: int, now: float) -> None:
        self._last[chat_id] = now
        self._global.append(now)
        if chat_id < 0:
            self._groups.setdefault(chat_id, deque()).append(now)

    def _global_wait(self, now: float) -> float:
        assert self.limits is not None
        return _slot(self._global, self._open_total, now, 1.0, self.limits.global_per_s)


def _slot(window: deque[float], open_: int, now: float, span: float, cap: int) -> float:
    """Seconds until one more send fits: `window` holds the answered sends (oldest first) of
    the last `span` seconds, `open_` those not yet answered, which count until they are."""
    while window and window[0] <= now - span:
        window.popleft()
    over = len(window) + open_ - cap  # this many must leave the window first, and one more
    if over < 0:
        return 0.0
    if over >= len(window):
        return math.inf  # only answers to the sends in flight can make room
    return window[over] + span - now

"""The garbage collector, arranged so that a reply is not held up by it.

CPython frees most objects by reference counting; its cycle collector only finds rings of
objects that point at each other, and a full pass of it walks every object the process keeps.
Left to itself it makes that full pass every few seconds under load, and the reply in hand waits
for it: 7 ms at first, 30 ms once the process has run a while (the intake benchmark saw its p99
climb from 16 ms to 58 ms that way, every peak on a full pass).

So: what start-up built is frozen (it lives as long as the process and need not be walked
again); the young generations are collected as usual, which is where a unit of work's short-lived
cycles die; and the full pass is taken when the inbox worker has just emptied the inbox, at most
once every `every` seconds. The collector's own full pass stays as a backstop, rarely: should the
worker never reach an empty inbox, it still runs after about a thousand young passes.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

EVERY_SECONDS = 60.0
BACKSTOP = 1000  # young (generation 1) passes between the collector's own full passes


class Heap:
    def __init__(
        self, every: float = EVERY_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every = every
        self._clock = clock
        self._last = clock()
        self.full_passes = 0

    def settle(self) -> None:
        """Once start-up is done: collect, freeze what is left, and hold back full passes."""
        gc.collect()
        gc.freeze()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, BACKSTOP)
        self._last = self._clock()

    def idle(self) -> bool:
        """The caller has nothing in hand: take the full pass if one is due. True if taken."""
        now = self._clock()
        if now - self._last < self.every:
            return False
        gc.collect()
        self._last = self._clock()
        self.full_passes += 1
        return True

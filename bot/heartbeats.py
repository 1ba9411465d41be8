"""When each part of the bot last ran: kept in memory, and in the database for the others."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta

from bot.clock import Clock
from bot.config import Settings
from storage import stats
from storage.tables import KeyValue
from storage.uow import UnitOfWork, UnitOfWorkFactory

log = logging.getLogger(__name__)

RECEIVER, WORKER, SENDER, SCAN, DIGEST = "receiver", "worker", "sender", "scan", "digest"
COMPONENTS = (RECEIVER, WORKER, SENDER, SCAN, DIGEST)
KEY = "heartbeat:{}"
# Intervals shorter than this are judged as this: a busy drain or a slow poll is not a death.
FLOOR = timedelta(seconds=30)
HEALTH_FACTOR = 2  # /healthz: late after two intervals
ALARM_FACTOR = 3  # the dead man's switch: after three
STORE_EVERY = timedelta(seconds=5)


def default_intervals(settings: Settings) -> dict[str, timedelta]:
    """How often each part is expected to run; a runner changes these with `expect`."""
    return {
        RECEIVER: timedelta(seconds=60),  # a long poll comes back within its timeout
        WORKER: timedelta(seconds=30),
        SENDER: settings.send_every,
        SCAN: settings.scan_every,
        DIGEST: settings.scan_every,
    }


class Heartbeats:
    """`await beat("scan")` after each run. Several processes share one database: the
    health check and the dead man's switch see the latest beat of any of them."""

    def __init__(
        self,
        uows: UnitOfWorkFactory,
        clock: Clock,
        intervals: Mapping[str, timedelta],
        *,
        instance: str | None = None,
        store_every: timedelta = STORE_EVERY,
    ) -> None:
        self._uows = uows
        self._clock = clock
        self.intervals = dict(intervals)
        self.instance = instance or uuid.uuid4().hex[:12]
        self._store_every = store_every
        self._memory: dict[str, datetime] = {}
        self._stored: dict[str, datetime] = {}
        self._failed_at: datetime | None = None  # the database refused: rest a while

    def expect(self, component: str, every: timedelta | None) -> None:
        """Expect a part to run this often; None: this deployment does not run it."""
        if every is None:
            self.intervals.pop(component, None)
        else:
            self.intervals[component] = every

    def health_limit(self, component: str) -> timedelta:
        return HEALTH_FACTOR * max(self.intervals[component], FLOOR)

    def alarm_limit(self, component: str) -> timedelta:
        return ALARM_FACTOR * max(self.intervals[component], FLOOR)

    def seen(self, component: str, at: datetime | None = None) -> None:
        """Note a run in memory only (the next `beat` or `store` writes it down)."""
        at = at or self._clock.now()
        if component not in self._memory or self._memory[component] < at:
            self._memory[component] = at

    async def beat(self, component: str) -> None:
        """Note a run; written to the database at most every few seconds. Never raises."""
        now = self._clock.now()
        self.seen(component, now)
        stored = self._stored.get(component)
        due = stored is None or now - stored >= self._store_every
        resting = self._failed_at is not None and now - self._failed_at < self._store_every
        if due and not resting:
            await self.store()

    async def store(self) -> None:
        """Write every beat newer than the database's; a failure is logged, not raised."""
        due = {
            c: at
            for c, at in self._memory.items()
            if c not in self._stored or self._stored[c] < at
        }
        if not due:
            return
        try:
            async with self._uows(marks_update=False) as uow:
                await self._write(uow, due)
                await uow.commit()
        except Exception as error:  # a heartbeat must never stop the work it reports on
            self._failed_at = self._clock.now()
            log.warning("heartbeats not stored: %s", error)
            return
        self._failed_at = None
        self._stored.update(due)

    async def _write(self, uow: UnitOfWork, due: Mapping[str, datetime]) -> None:
        now = self._clock.now()
        rows = await stats.values(uow, [KEY.format(c) for c in due])
        for component, at in due.items():
            value = {"at": at.isoformat(), "instance": self.instance}
            row = rows.get(KEY.format(component))
            if row is None:
                fresh = KeyValue(key=KEY.format(component), value=value, updated_at=now)
                await uow.schedule.insert_ignoring_duplicate(fresh)
            elif (_when(row) or at) <= at:
                row.value = value
                row.updated_at = now

    async def read(self, uow: UnitOfWork) -> dict[str, datetime]:
        """The latest beat of each part, from this process or any other."""
        parts = sorted({*COMPONENTS, *self.intervals})
        rows = await stats.values(uow, [KEY.format(c) for c in parts])
        found = {c: when for c in parts if (when := _when(rows.get(KEY.format(c))))}
        return self.merged(found)

    def merged(self, stored: Mapping[str, datetime] | None = None) -> dict[str, datetime]:
        last = dict(stored or {})
        for component, at in self._memory.items():
            if component not in last or last[component] < at:
                last[component] = at
        return last


def _when(row: KeyValue | None) -> datetime | None:
    if row is None or not isinstance(row.value.get("at"), str):
        return None
    try:
        return datetime.fromisoformat(row.value["at"])
    except ValueError:
        return None

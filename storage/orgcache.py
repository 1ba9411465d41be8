"""The org chart, kept between units of work of one process.

Every update asks who wrote it, which group it came from, which departments serve that county and
who their officials are: rows that change a few times a month. Each answer is kept for a few
seconds as a detached snapshot and copied into the asking session, so a row changed there is
saved as usual.

A change made by this process is seen at once: any INSERT, UPDATE or DELETE on an org table (or
one the hooks cannot name) forgets everything, and so does the end of the transaction that made
it, so an answer read meanwhile from the old state is not kept. A change made by another process
(`qunban seed` while the bot runs) is seen within `KEEP_SECONDS`.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

KEEP_SECONDS = 5.0
ORG_TABLES = frozenset({"region", "department", "enterprise", "person", "chatgroup"})
_CHANGED = "qunban_org_changed"
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "ALTER", "DROP", "CREATE", "TRUNCATE")

MISSING: Any = object()


class OrgCache:
    def __init__(
        self, keep_seconds: float = KEEP_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.generation = 0
        self._keep = keep_seconds
        self.clock = clock  # the seconds `keep_seconds` counts in
        self._entries: dict[tuple[Any, ...], tuple[int, float, Any]] = {}
        self._store = Session()  # owns the snapshots; never bound, never flushed
        self._pruned = -math.inf  # when answers past their time were last dropped

    def forget(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._store.expunge_all()

    def get(self, key: tuple[Any, ...]) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return MISSING
        generation, until, value = entry
        if generation != self.generation or self.clock() >= until:
            del self._entries[key]
            return MISSING
        return value

    def put(self, key: tuple[Any, ...], value: Any, read_in: int) -> None:
        """Keep an answer read while `generation` was `read_in` (unless it has moved since)."""
        if read_in != self.generation or self._keep <= 0:
            return
        if isinstance(value, list | tuple):
            snapshot: Any = [self._snapshot(row) for row in value]
        else:
            snapshot = None if value is None else self._snapshot(value)
        now = self.clock()
        if now - self._pruned >= self._keep:
            self._prune(now)
        self._entries[key] = (read_in, now + self._keep, snapshot)

    def __len__(self) -> int:
        return len(self._entries)

    def _prune(self, now: float) -> None:
        """Drop the answers past their time. Each is also dropped when asked for again, but a
        city's people and enterprises are mostly asked for once in a while: kept, their
        snapshots would pile up for the whole life of the process, and every full pass of the
        garbage collector would walk them all."""
        self._pruned = now
        self._entries = {k: e for k, e in self._entries.items() if e[1] > now}

    def _snapshot(self, row: Any) -> Any:
        if row in self._store:  # a snapshot already (one row kept under two questions)
            return row
        return self._store.merge(row, load=False)

    def attach(self, value: Any, session: Session) -> Any:
        """The answer as rows of `session`: the session's own copy where it has one."""
        if value is None:
            return None
        if isinstance(value, list):
            return [self._attach(row, session) for row in value]
        return self._attach(value, session)

    @staticmethod
    def _attach(row: Any, session: Session) -> Any:
        own = session.identity_map.get(sa.inspect(row).key)
        return own if own is not None else session.merge(row, load=False)


_caches: weakref.WeakKeyDictionary[sa.Engine, OrgCache] = weakref.WeakKeyDictionary()


def org_cache_for(engine: AsyncEngine | sa.Engine) -> OrgCache:
    """The one cache of this engine, watching every statement the engine runs."""
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    cache = _caches.get(sync)
    if cache is None:
        cache = _caches[sync] = OrgCache()
        _watch(sync, cache)
    return cache


def _watch(engine: sa.Engine, cache: OrgCache) -> None:
    @sa.event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, _cursor: Any, statement: str, _p: Any, context: Any, _m: Any) -> None:
        if _changes_org(statement, context):
            conn.info[_CHANGED] = True
            cache.forget()

    @sa.event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        # the transaction that changed the chart has ended (committed or not)
        if record is not None and record.info.pop(_CHANGED, False):
            cache.forget()


def _changes_org(statement: str, context: Any) -> bool:
    compiled = getattr(context, "compiled", None)
    if compiled is not None and not context.isddl:
        if not (context.isinsert or context.isupdate or context.isdelete):
            return False
        table = getattr(getattr(compiled, "statement", None), "table", None)
        name = getattr(table, "name", None)
        return name is None or name in ORG_TABLES
    head = statement.lstrip()[:8].upper()
    return head.startswith(_WRITES)

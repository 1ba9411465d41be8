"""SQLite under the async engine, run on the event loop's own thread.

aiosqlite gives each connection a thread and hands every call to it through a queue, waking the
event loop when the answer comes back: five or so such round trips for a statement and its rows,
which cost far more than the statement itself (an indexed SELECT or an INSERT takes microseconds
on a local file). This driver runs the statement where it is called instead.

What could block the loop is waiting for a lock: SQLite answers SQLITE_BUSY at once here (its busy
timeout is 0), and the call is then made again on a worker thread with the patience the engine was
given (`connect_args={"timeout": …}`), while the loop goes on with other work. Work known to be
long (a digest over years of tickets, an export) runs on a worker thread inside `offloaded()`.
In WAL mode, with synchronous=NORMAL, a commit writes the log without waiting for the disk, so
ordinary transactions stay short.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import pool, util
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import URL
from sqlalchemy.engine.interfaces import AdaptedConnection
from sqlalchemy.util.concurrency import await_

DRIVER = "qunban_inline"
DEFAULT_PATIENCE_S = 5.0
SQLITE_BUSY = 5

_offload: contextvars.ContextVar[bool] = contextvars.ContextVar("sqlite_offload", default=False)


@contextlib.contextmanager
def offloaded() -> Iterator[None]:
    """Run this block's SQLite calls on a worker thread: for long reads the loop should not
    wait on."""
    token = _offload.set(True)
    try:
        yield
    finally:
        _offload.reset(token)


def _busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == SQLITE_BUSY
    return "locked" in str(error)


class InlineCursor:
    """A sqlite3 cursor whose statements go through the connection's `run`. Rows are read in
    full when the statement runs, as SQLAlchemy's async results expect (a server-side cursor
    reads them as asked)."""

    __slots__ = ("_conn", "_cursor", "_description", "_rows", "_server_side")

    def __init__(self, conn: InlineConnection, server_side: bool = False) -> None:
        self._conn = conn
        self._cursor = conn.driver_connection.cursor()
        self._rows: deque[Any] = deque()
        self._server_side = server_side
        self._description: Any = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    def execute(self, operation: str, parameters: Sequence[Any] | None = None) -> Any:
        return self._conn.run(self._execute, operation, parameters or ())

    def executemany(self, operation: str, seq: Sequence[Sequence[Any]]) -> Any:
        return self._conn.run(self._executemany, operation, seq)

    def _execute(self, operation: str, parameters: Sequence[Any]) -> InlineCursor:
        self._rows.clear()
        self._cursor.execute(operation, parameters)
        self._description = self._cursor.description
        if self._description and not self._server_side:
            self._rows.extend(self._cursor.fetchall())
        return self

    def _executemany(self, operation: str, seq: Sequence[Sequence[Any]]) -> InlineCursor:
        self._rows.clear()
        self._cursor.executemany(operation, seq)
        self._description = self._cursor.description
        return self

    def fetchone(self) -> Any:
        if self._server_side:
            return self._conn.call(self._cursor.fetchone)
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        size = self._cursor.arraysize if size is None else size
        if self._server_side:
            return self._conn.call(self._cursor.fetchmany, size)
        return [self._rows.popleft() for _ in range(min(size, len(self._rows)))]

    def fetchall(self) -> list[Any]:
        if self._server_side:
            return self._conn.call(self._cursor.fetchall)
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def close(self) -> None:
        self._rows.clear()
        self._cursor.close()

    async def _async_soft_close(self) -> None:
        # the rows are already read: the statement can be let go, keeping them
        if not self._server_side:
            self._cursor.close()

    def setinputsizes(self, *_: Any) -> None:
        pass

    def setoutputsize(self, *_: Any) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        while (row := self.fetchone()) is not None:
            yield row


class InlineConnection(AdaptedConnection):
    """One sqlite3 connection, called in place; a busy or offloaded call waits on a thread."""

    __slots__ = ("_patience_ms", "_turn", "dbapi")

    def __init__(self, dbapi: Any, connection: sqlite3.Connection, patience_s: float) -> None:
        self.dbapi = dbapi
        self._connection = connection
        self._patience_ms = max(0, int(patience_s * 1000))
        self._turn: asyncio.Lock | None = None  # held while a call runs on a worker thread

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._turn is not None and self._turn.locked():
            # a statement of this connection is running on a worker thread (a shared
            # in-memory database): wait for it rather than step on it
            return await_(self._on_thread(fn, args))
        if not _offload.get():
            try:
                return fn(*args)
            except sqlite3.OperationalError as error:
                if not _busy(error):
                    raise
        return await_(self._on_thread(fn, args))

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`call` for a statement: the same, passing once through the event loop's side of the
        greenlet (SQLAlchemy's async connection checks that every statement did)."""
        return await_(self._here(fn, args))

    async def _here(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if (self._turn is None or not self._turn.locked()) and not _offload.get():
            try:
                return fn(*args)
            except sqlite3.OperationalError as error:
                if not _busy(error):
                    raise
        return await self._on_thread(fn, args)

    async def _on_thread(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            return await asyncio.to_thread(self._patiently, fn, args)

    def _patiently(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        conn = self._connection
        conn.execute(f"PRAGMA busy_timeout={self._patience_ms}")
        try:
            return fn(*args)
        finally:
            conn.execute("PRAGMA busy_timeout=0")

    def cursor(self, server_side: bool = False) -> InlineCursor:
        return InlineCursor(self, server_side)

    def execute(self, operation: str, parameters: Sequence[Any] | None = None) -> InlineCursor:
        cursor = self.cursor()
        cursor.execute(operation, parameters)
        return cursor

    def commit(self) -> None:
        self.call(self._connection.commit)

    def rollback(self) -> None:
        self.call(self._connection.rollback)

    def close(self) -> None:
        self._connection.close()

    def terminate(self) -> None:
        self._connection.close()

    @property
    def isolation_level(self) -> str | None:
        return self._connection.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._connection.isolation_level = value

    def create_function(self, *args: Any, **kw: Any) -> None:
        self._connection.create_function(*args, **kw)


class InlineDBAPI:
    """The module-like object SQLAlchemy asks for: sqlite3's names, and `connect`."""

    paramstyle = "qmark"
    has_stop = True  # connections can be closed from anywhere: `terminate` is safe

    def __init__(self) -> None:
        self.sqlite = sqlite3
        for name in (
            "DatabaseError",
            "DataError",
            "Error",
            "IntegrityError",
            "InterfaceError",
            "InternalError",
            "NotSupportedError",
            "OperationalError",
            "ProgrammingError",
            "Warning",
            "sqlite_version",
            "sqlite_version_info",
            "PARSE_COLNAMES",
            "PARSE_DECLTYPES",
            "Binary",
        ):
            setattr(self, name, getattr(sqlite3, name))

    def connect(self, *args: Any, **kw: Any) -> InlineConnection:
        patience = kw.pop("timeout", DEFAULT_PATIENCE_S)
        kw["check_same_thread"] = False  # a busy call finishes on a worker thread
        connection = sqlite3.connect(*args, timeout=0, **kw)
        return InlineConnection(self, connection, patience)


class SQLiteDialect_inline(SQLiteDialect_aiosqlite):
    driver = DRIVER
    supports_statement_cache = True
    has_terminate = True

    @classmethod
    def import_dbapi(cls) -> Any:
        return InlineDBAPI()

    def retrieve_dbapi_version(self, dbapi: Any) -> Any:
        return util.parse_version_string(sqlite3.sqlite_version)

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        if cls._is_url_file_db(url):
            return pool.AsyncAdaptedQueuePool
        return pool.StaticPool

    def do_terminate(self, dbapi_connection: Any) -> None:
        dbapi_connection.terminate()

    def get_driver_connection(self, connection: Any) -> Any:
        return connection.driver_connection


dialect = SQLiteDialect_inline

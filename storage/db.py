"""The async engine and session factory, with SQLite set up for one writer at a time."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import registry
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.orm.session import Session as SyncSession

READONLY = "qunban_readonly"
# A pooled PostgreSQL connection rested longer than this is asked whether it still lives before
# it is handed out (a restarted server, a firewall's idle timeout); one in steady use is not:
# the round trip cost a unit of work a quarter to a third of its CPU under load; should its
# server go away all the same, the failed statement retires every connection of the pool and
# the update is retried from the inbox
PING_AFTER_IDLE = 2.0
_RESTED = "qunban_rested_since"

registry.register("sqlite.qunban_inline", "storage.sqlite_inline", "SQLiteDialect_inline")

# Ticket events are an append-only record: the database itself refuses to change them.
_SQLITE_GUARDS = [
    """CREATE TRIGGER IF NOT EXISTS ticketevent_no_update BEFORE UPDATE ON ticketevent
       BEGIN SELECT RAISE(ABORT, 'ticket events are immutable'); END""",
    """CREATE TRIGGER IF NOT EXISTS ticketevent_no_delete BEFORE DELETE ON ticketevent
       BEGIN SELECT RAISE(ABORT, 'ticket events are immutable'); END""",
]
_PG_GUARDS = [
    """CREATE OR REPLACE FUNCTION ticketevent_immutable() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'ticket events are immutable'; END; $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS ticketevent_no_change ON ticketevent",
    """CREATE TRIGGER ticketevent_no_change BEFORE UPDATE OR DELETE ON ticketevent
       FOR EACH ROW EXECUTE FUNCTION ticketevent_immutable()""",
]


def guard_statements(dialect: str) -> list[str]:
    """The DDL that makes ticket events immutable on this engine."""
    return _PG_GUARDS if dialect == "postgresql" else _SQLITE_GUARDS


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, *, inline: bool = True, **kwargs: Any) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE for writers.

    SQLite runs on the event loop's thread (`storage.sqlite_inline`) unless `inline` is false,
    when it goes through aiosqlite's thread as the URL says.
    """
    if not is_sqlite(url):
        ping_after = kwargs.pop("ping_after_idle", PING_AFTER_IDLE)
        kwargs.setdefault("pool_size", 5)
        kwargs.setdefault("max_overflow", 5)
        engine = create_async_engine(url, **kwargs)
        if not kwargs.get("pool_pre_ping"):
            ping_when_rested(engine, ping_after)
        return engine
    memory = make_url(url).database in (None, "", ":memory:")
    if memory:
        kwargs.setdefault("poolclass", sa.pool.StaticPool)
    kwargs.setdefault("connect_args", {"timeout": 30})
    # every unit of work ends in its own COMMIT or ROLLBACK: the pool's extra rollback on
    # each return would be one more round trip to the driver's thread per transaction
    kwargs.setdefault("pool_reset_on_return", None)
    target = make_url(url)
    if inline:
        target = target.set(drivername="sqlite+qunban_inline")
    engine = create_async_engine(target, **kwargs)
    _configure_sqlite(engine, wal=not memory)
    return engine


def ping_when_rested(engine: AsyncEngine, idle: float) -> None:
    """Ping a connection on checkout when it has rested in the pool `idle` seconds or more;
    a dead one is replaced there and then (SQLAlchemy's pre-ping, for rested ones only)."""
    sync_engine = engine.sync_engine
    dialect = sync_engine.dialect

    @sa.event.listens_for(sync_engine.pool, "connect")
    def _new(_dbapi_conn: Any, record: Any) -> None:
        record.info[_RESTED] = time.monotonic()

    @sa.event.listens_for(sync_engine.pool, "checkin")
    def _rests(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[_RESTED] = time.monotonic()

    @sa.event.listens_for(sync_engine.pool, "checkout")
    def _alive(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_RESTED)
        if since is not None and time.monotonic() - since < idle:
            return
        try:
            alive = dialect.do_ping(dbapi_conn)
        except Exception as error:  # whatever stops a ping makes the connection no use
            raise sa.exc.DisconnectionError(str(error)) from error
        if alive is False:
            raise sa.exc.DisconnectionError("the connection did not answer a ping")


def _configure_sqlite(engine: AsyncEngine, *, wal: bool) -> None:
    sync_engine = engine.sync_engine
    inline = engine.dialect.driver == "qunban_inline"

    @sa.event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # let SQLAlchemy's "begin" event below issue BEGIN itself
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if wal:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        if not inline:  # the inline driver waits for locks on a thread of its own
            cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # a deferred transaction that reads then writes fails at once under a concurrent
        # writer; taking the write lock up front makes it wait its turn instead
        begin = "BEGIN" if conn.get_execution_options().get(READONLY) else "BEGIN IMMEDIATE"
        # straight to the driver: every transaction starts here, and SQLAlchemy's execution
        # of a statement (its context, events and result) cost several times SQLite's BEGIN
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(begin)
        finally:
            cursor.close()


def make_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    sqlite = engine.dialect.name == "sqlite"
    return async_sessionmaker(
        engine,
        class_=AsyncSession,
        expire_on_commit=False,
        autoflush=False,
        **({"sync_session_class": NumberingSession} if sqlite else {}),
    )


class NumberingSession(SyncSession):
    """The session of a SQLite database: new rows get their ids before the flush."""


@sa.event.listens_for(NumberingSession, "before_flush")
def _number_new_rows(session: Session, _context: Any, _instances: Any) -> None:
    """Give new rows of a table their ids before the flush, as SQLite would (the next after
    the highest), so the flush inserts them with one executemany.

    Without the ids, SQLAlchemy must read each generated id back in order, and SQLite cannot
    promise the order of a multi-row RETURNING: it inserts one row per statement, each a
    round trip to the driver's thread (a sweep's 180 messages took 180). Every write
    transaction holds SQLite's write lock from its BEGIN IMMEDIATE, so nobody else can take
    these ids meanwhile.
    """
    new: dict[Any, list[Any]] = {}
    for row in session.new:
        table = getattr(type(row), "__table__", None)
        if table is not None and _numbered(table) and getattr(row, "id", 0) is None:
            new.setdefault(table, []).append(row)
    for table, rows in new.items():
        if len(rows) < 2:
            continue
        highest = session.execute(sa.select(sa.func.max(table.c.id))).scalar() or 0
        pending = [r.id for r in session.new if getattr(r, "__table__", None) is table]
        highest = max([highest, *(i for i in pending if i is not None)])
        for offset, row in enumerate(rows, start=1):
            row.id = highest + offset


def _numbered(table: sa.Table) -> bool:
    """A table whose key is one integer column SQLite numbers itself."""
    key = list(table.primary_key.columns)
    return (
        len(key) == 1
        and key[0].name == "id"
        and isinstance(key[0].type, sa.Integer)
        and key[0].autoincrement in (True, "auto")
    )


async def create_schema(engine: AsyncEngine) -> None:
    """Create every table (tests and throwaway databases; production runs the migrations)."""
    from sqlmodel import SQLModel

    from storage import tables  # noqa: F401  (registers the tables)

    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
        for statement in guard_statements(engine.dialect.name):
            await conn.exec_driver_sql(statement)

"""Shared fixtures."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import SQLModel

from storage import tables  # noqa: F401  (registers the tables on the metadata)
from storage.db import create_schema, make_engine, make_session_factory
from storage.uow import UnitOfWorkFactory
from tests.logcheck import _logs_hold_no_secret, pytest_terminal_summary  # noqa: F401  (logs searched)

# --- databases: SQLite in memory, and PostgreSQL when QUNBAN_TEST_PG_URL names a server ---------

PG_ENV = "QUNBAN_TEST_PG_URL"


def _in_own_loop(coroutine: object) -> object:
    # a sync fixture runs while pytest-asyncio owns the thread's loop: use a thread of its own
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()  # type: ignore[arg-type]


async def _admin(url: sa.URL, *statements: str) -> None:
    engine = create_async_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def _pg_server() -> sa.URL | None:
    """The server named by QUNBAN_TEST_PG_URL, checked once; None when the variable is unset."""
    raw = os.environ.get(PG_ENV)
    if not raw:
        return None
    url = make_url(raw)
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=3).close()
    except OSError as error:
        pytest.fail(f"{PG_ENV}={raw} is set but the server is unreachable: {error}")
    return url


@pytest.fixture(scope="session")
def _pg_database(_pg_server: sa.URL | None) -> Iterator[str | None]:
    """A database of this test run's own, next to the one named: runs at the same time on the
    same server (several engineers, several checkouts) would otherwise drop each other's tables.
    """
    if _pg_server is None:
        yield None
        return
    own = _pg_server.set(database=f"{_pg_server.database or 'test'}_{os.getpid()}")
    create = [
        f'DROP DATABASE IF EXISTS "{own.database}"',
        f'CREATE DATABASE "{own.database}"',
        # a test database need not survive a crash: commits skip waiting for the disk
        f'ALTER DATABASE "{own.database}" SET synchronous_commit = off',
    ]
    try:
        _in_own_loop(_admin(_pg_server, *create))
    except Exception as error:
        pytest.fail(f"{PG_ENV}: cannot create the test database {own.database}: {error}")
    yield own.render_as_string(hide_password=False)
    _in_own_loop(_admin(_pg_server, f'DROP DATABASE IF EXISTS "{own.database}" WITH (FORCE)'))


@pytest.fixture
def pg_url(_pg_database: str | None) -> str:
    """The URL of an empty-at-start PostgreSQL database for this test run.

    Skips when QUNBAN_TEST_PG_URL is unset, unless CI is set: then it fails, so CI never passes
    without PostgreSQL. Fails when the server is unreachable.
    """
    if _pg_database is None:
        if os.environ.get("CI"):
            pytest.fail(f"{PG_ENV} is not set, and CI must run the PostgreSQL tests")
        pytest.skip(f"{PG_ENV} is not set")
    return _pg_database


# per database URL, the SQL that empties the schema built there, or nothing once it is gone
_PG_EMPTYING: dict[str, str] = {}


async def reset_postgres(url: str) -> None:
    """Drop everything in the database: tables, the alembic_version table, trigger functions."""
    _PG_EMPTYING.pop(url, None)
    await _admin(make_url(url), "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")


async def _fresh_postgres(url: str) -> AsyncEngine:
    # building the schema costs ~0.4 s, TRUNCATE ~0.1 s and more under load, DELETE ~5 ms: build
    # once per run, then delete the rows, with triggers off so the ticket-event guard lets go
    engine = make_engine(url)
    if url in _PG_EMPTYING:
        try:
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                await raw.driver_connection.execute(_PG_EMPTYING[url])  # type: ignore[union-attr]
        except Exception:  # a schema changed by a test, or no superuser: build it again
            await engine.dispose()
            engine = make_engine(url)
        else:
            return engine
    await reset_postgres(url)
    await create_schema(engine)
    _PG_EMPTYING[url] = await _emptying_script(engine)
    return engine


async def _emptying_script(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        sequences = await conn.exec_driver_sql(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
        )
        names = [row[0] for row in sequences]
    deletes = [f'DELETE FROM "{t.name}";' for t in reversed(SQLModel.metadata.sorted_tables)]
    restarts = [f'ALTER SEQUENCE "{name}" RESTART;' for name in names]
    return " ".join(
        ["SET session_replication_role = replica;", *deletes, *restarts,
         "RESET session_replication_role;"]
    )  # fmt: skip


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    """A fresh database with every table and no rows: SQLite in memory, or PostgreSQL.

    PostgreSQL tests are marked `postgres`; `-m "not postgres"` leaves them out.
    """
    if request.param == "sqlite":
        engine = make_engine("sqlite+aiosqlite://")
        await create_schema(engine)
    else:
        engine = await _fresh_postgres(request.getfixturevalue("pg_url"))
    yield engine
    await engine.dispose()


@pytest.fixture
def uows(engine: AsyncEngine) -> UnitOfWorkFactory:
    return UnitOfWorkFactory(make_session_factory(engine))

"""SQLite on the event loop's thread: statements run in place, a lock held elsewhere is waited
for on a worker thread while the loop goes on, long work can be sent to a thread, and errors are
SQLAlchemy's as with any driver."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_schema, make_engine, make_session_factory
from storage.sqlite_inline import offloaded
from storage.tables import KeyValue
from storage.uow import UnitOfWorkFactory

NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


@pytest.fixture
async def file_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}")

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _thread_id(dbapi_conn, _record) -> None:
        dbapi_conn.create_function("thread_id", 0, threading.get_ident)

    await create_schema(engine)
    yield engine
    await engine.dispose()


async def test_a_connection_never_waits_for_a_lock_on_the_loop_s_thread(file_engine):
    async with file_engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one() == 0


async def _thread_of_a_query(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.exec_driver_sql("SELECT thread_id()")).scalar_one()


def test_an_aiosqlite_url_runs_on_the_inline_driver_unless_asked_not_to():
    assert make_engine("sqlite+aiosqlite://").dialect.driver == "qunban_inline"
    assert make_engine("sqlite+aiosqlite://", inline=False).dialect.driver == "aiosqlite"


async def test_a_statement_runs_on_the_loop_s_thread_and_offloaded_work_on_another(file_engine):
    here = threading.get_ident()
    assert await _thread_of_a_query(file_engine) == here
    with offloaded():
        assert await _thread_of_a_query(file_engine) != here
    assert await _thread_of_a_query(file_engine) == here


async def test_a_write_waits_for_a_lock_held_elsewhere_without_stopping_the_loop(
    file_engine, tmp_path
):
    uows = UnitOfWorkFactory(make_session_factory(file_engine))
    blocker = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    blocker.execute(
        "INSERT INTO keyvalue (key, value, updated_at) VALUES ('first', '1', '2026-11-25')"
    )

    async def write() -> None:
        async with uows() as uow:
            uow.session.add(KeyValue(key="second", value={"n": 2}, updated_at=NOW))
            await uow.commit()

    order: list[str] = []

    async def release() -> None:
        # runs only if the loop turns while the writer waits for the lock
        for _ in range(50):
            await asyncio.sleep(0)
        order.append("released")
        blocker.execute("COMMIT")

    async def then_write() -> None:
        await write()
        order.append("written")

    await asyncio.wait_for(asyncio.gather(then_write(), release()), timeout=60)
    blocker.close()
    assert order == ["released", "written"]
    async with uows(readonly=True) as uow:
        keys = (await uow.session.exec(sa.text("SELECT key FROM keyvalue ORDER BY key"))).all()
    keys = [k for (k,) in keys]
    assert keys == ["first", "second"]


async def test_a_broken_rule_is_sqlalchemy_s_integrity_error_and_the_rest_goes_on(file_engine):
    uows = UnitOfWorkFactory(make_session_factory(file_engine))
    async with uows() as uow:
        uow.session.add(KeyValue(key="k", value={"v": 1}, updated_at=NOW))
        await uow.commit()

    async def again() -> None:
        async with uows() as uow:
            uow.session.add(KeyValue(key="k", value={"v": 2}, updated_at=NOW))
            await uow.commit()

    async def nonsense() -> None:
        async with file_engine.connect() as conn:
            await conn.exec_driver_sql("SELECT * FROM no_such_table")

    with pytest.raises(sa.exc.IntegrityError):
        await again()
    with pytest.raises(sa.exc.OperationalError):
        await nonsense()
    async with uows(readonly=True) as uow:
        row = await uow.session.get(KeyValue, "k")
        assert row is not None
        assert row.value == {"v": 1}


async def test_rows_come_back_whole_and_in_order_from_a_connection_and_from_a_stream(
    file_engine,
):
    async with file_engine.begin() as conn:
        await conn.execute(
            sa.text("INSERT INTO keyvalue (key, value, updated_at) VALUES (:k, '{}', :at)"),
            [{"k": f"key{i:03}", "at": "2026-11-25"} for i in range(250)],
        )
    async with file_engine.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT key FROM keyvalue ORDER BY key")).all()
        streamed = [
            r[0] async for r in await conn.stream(sa.text("SELECT key FROM keyvalue ORDER BY key"))
        ]
    assert [r[0] for r in rows] == streamed == [f"key{i:03}" for i in range(250)]

"""Backups taken while the bot writes restore into databases whose record checks clean."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.audit import check
from bot.cli import main
from storage.backup import BackupError, backup, restore
from storage.db import create_schema, make_engine, make_session_factory
from storage.tables import Ticket
from storage.uow import UnitOfWorkFactory
from tests.conftest import reset_postgres
from tests.opskit import OpsEnv, open_env


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def count_tickets(url: str) -> int:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return int(
                (await conn.execute(sa.select(sa.func.count()).select_from(Ticket))).one()[0]
            )
    finally:
        await engine.dispose()


async def check_of(url: str) -> tuple[bool, int]:
    engine = make_engine(url)
    try:
        report = await check(UnitOfWorkFactory(make_session_factory(engine)))
    finally:
        await engine.dispose()
    assert report.ok, report.mismatches
    return report.ok, report.tickets


async def keep_working(env: OpsEnv, stop: asyncio.Event, done: list[int]) -> None:
    """Reports, assignments and claims, one transaction after another, until told to stop."""
    t, o = env.services.tickets, env.org
    while not stop.is_set() or len(done) < 40:
        n = await env.report(f"问题 {len(done)} lamp out")
        await t.assign(o["city_coord"], n, "tax")
        if n % 2:
            await t.claim(o["tax_clerk"], n)
        done.append(n)
        await asyncio.sleep(0)  # let the backup's thread and the other task in


async def test_a_backup_taken_under_load_restores_to_a_clean_record(tmp_path: Path) -> None:
    live, copy = tmp_path / "live.db", tmp_path / "backup.db"
    engine = make_engine(sqlite_url(live))
    await create_schema(engine)
    try:
        async with open_env(engine, report_limit_per_hour=10_000) as env:
            stop, done = asyncio.Event(), []
            writers = asyncio.create_task(keep_working(env, stop, done))
            while len(done) < 10:
                await asyncio.sleep(0)
            before = len(done)
            report = await asyncio.to_thread(backup, sqlite_url(live), copy)
            during = len(done)
            stop.set()
            await writers
    finally:
        await engine.dispose()
    assert report.size > 0
    assert len(done) > during >= 10, "the writers kept going while the backup ran"

    restored = tmp_path / "restored.db"
    restore(copy, sqlite_url(restored))
    ok, tickets = await check_of(sqlite_url(restored))
    assert ok
    assert before <= tickets <= during + 1  # a snapshot taken between those two moments
    assert await check_of(sqlite_url(live)) == (True, len(done))


async def test_restore_replaces_what_the_database_held(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "q.db")
    engine = make_engine(url)
    await create_schema(engine)
    try:
        async with open_env(engine) as env:
            await env.report("one")
            await env.report("two")
            await asyncio.to_thread(backup, url, tmp_path / "two.db")
            await env.report("three")
    finally:
        await engine.dispose()
    assert await count_tickets(url) == 3
    await asyncio.to_thread(restore, tmp_path / "two.db", url)
    assert await count_tickets(url) == 2
    assert await check_of(url) == (True, 2)


def test_restore_refuses_what_is_not_a_backup(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "q.db")
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    with pytest.raises(BackupError, match="is not an SQLite backup"):
        restore(junk, url)
    with pytest.raises(BackupError, match="no such file"):
        restore(tmp_path / "missing.db", url)
    with pytest.raises(BackupError, match="in-memory"):
        backup("sqlite+aiosqlite://", tmp_path / "x.db")
    with pytest.raises(BackupError, match="no such database file"):
        backup(url, tmp_path / "x.db")
    empty = tmp_path / "empty.db"
    asyncio.run(_empty_sqlite(empty))
    with pytest.raises(BackupError, match="holds no Qunban database"):
        restore(empty, url)


async def _empty_sqlite(path: Path) -> None:
    engine = make_engine(sqlite_url(path))
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE other (id INTEGER)")
    finally:
        await engine.dispose()


def test_postgres_without_pg_dump_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackupError, match="pg_dump is not on PATH"):
        backup("postgresql+asyncpg://u:p@127.0.0.1/db", tmp_path / "x.dump")


@pytest.mark.postgres
@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump is not installed")
async def test_postgres_backup_and_restore_round_trip(pg_url: str, tmp_path: Path) -> None:
    await reset_postgres(pg_url)
    engine = make_engine(pg_url)
    await create_schema(engine)
    dump = tmp_path / "qunban.dump"
    try:
        async with open_env(engine, report_limit_per_hour=10_000) as env:
            stop, done = asyncio.Event(), []
            writers = asyncio.create_task(keep_working(env, stop, done))
            while len(done) < 10:
                await asyncio.sleep(0)
            await asyncio.to_thread(backup, pg_url, dump)
            stop.set()
            await writers
    finally:
        await engine.dispose()
    assert dump.read_bytes().startswith(b"PGDMP")
    await asyncio.to_thread(restore, dump, pg_url)
    ok, tickets = await check_of(pg_url)
    assert ok
    assert 10 <= tickets <= len(done)
    engine = make_engine(pg_url)
    try:
        with pytest.raises(sa.exc.DBAPIError, match="immutable"):  # the guard came back too
            await _delete_events(engine)
    finally:
        await engine.dispose()


async def _delete_events(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DELETE FROM ticketevent")


def test_backup_and_restore_commands_check_the_record(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "q.db")
    asyncio.run(_small_database(url))
    env = {"QUNBAN_DATABASE_URL": url}
    runner = CliRunner()
    made = runner.invoke(main, ["backup", str(tmp_path / "b.db")], env=env)
    assert made.exit_code == 0, made.output
    assert made.output.startswith(f"backed up sqlite+aiosqlite:///{tmp_path}/q.db to ")

    back = runner.invoke(main, ["restore", str(tmp_path / "b.db"), "--yes"], env=env)
    assert back.exit_code == 0, back.output
    assert back.output.endswith("checked 2 tickets and 2 events: no mismatch\n")

    refused = runner.invoke(main, ["restore", str(tmp_path / "b.db")], env=env, input="n\n")
    assert refused.exit_code == 1
    missing = runner.invoke(main, ["restore", str(tmp_path / "nope.db"), "--yes"], env=env)
    assert missing.exit_code == 1
    assert missing.output == f"Error: {tmp_path}/nope.db: no such file\n"
    nowhere = runner.invoke(main, ["backup", "/nonexistent/b.db"], env=env)
    assert nowhere.exit_code == 1
    assert nowhere.output == "Error: /nonexistent: no such folder\n"


async def _small_database(url: str) -> None:
    engine = make_engine(url)
    await create_schema(engine)
    try:
        async with open_env(engine) as env:
            await env.report("one")
            await env.report("two")
    finally:
        await engine.dispose()

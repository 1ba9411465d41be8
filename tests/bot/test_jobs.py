"""The scheduler's sweeps, run through PTB's JobQueue with the clock moved by hand."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select
from telegram.ext import Application

from bot.app import Services, build_application, build_services
from bot.clock import ManualClock
from bot.config import Settings
from bot.jobs import DIGEST_JOB, SCAN_JOB
from bot.teledouble import DoubleRequest, TeleDouble
from storage.tables import DigestRun, Nudge
from tests.factories import GROUP, Org, build_org

START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 2 March 2026, 10:00 in Beijing


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, calendar="cn", scan_every="2m")  # type: ignore[call-arg]


@pytest.fixture
def services(engine: AsyncEngine, settings: Settings, clock: ManualClock) -> Services:
    return build_services(settings, clock=clock, engine=engine, limits=None)


@pytest.fixture
def double(clock: ManualClock) -> TeleDouble:
    return TeleDouble(clock=clock)


@pytest.fixture
def errors() -> list[BaseException]:
    return []


@pytest.fixture
async def app(
    settings: Settings,
    clock: ManualClock,
    services: Services,
    double: TeleDouble,
    errors: list[BaseException],
) -> AsyncIterator[Application[Any, Any, Any, Any, Any, Any]]:
    application = build_application(
        settings, clock=clock, request=DoubleRequest(double), services=services, token=double.token
    )

    async def collect(_update: object, context: Any) -> None:
        errors.append(context.error)

    application.add_error_handler(collect)
    async with application:
        yield application


@pytest.fixture
async def org(services: Services) -> Org:
    return await build_org(services.uows)


async def count(services: Services, table: type) -> int:
    async with services.uows(readonly=True) as uow:
        return (await uow.session.exec(select(sa.func.count()).select_from(table))).one()


def test_the_sweeps_repeat_and_a_late_start_delays_them_rather_than_skipping(
    app: Application[Any, Any, Any, Any, Any, Any],
) -> None:
    [scan] = app.job_queue.get_jobs_by_name(SCAN_JOB)  # type: ignore[union-attr]
    [digest] = app.job_queue.get_jobs_by_name(DIGEST_JOB)  # type: ignore[union-attr]
    assert scan.job.trigger.interval == timedelta(minutes=2)
    assert digest.job.trigger.interval == timedelta(minutes=1)
    for job in (scan, digest):
        assert job.job.misfire_grace_time >= 600
        assert job.job.coalesce is True
        assert job.job.max_instances == 1


async def test_the_scan_job_nudges_and_the_sender_delivers(
    app: Application[Any, Any, Any, Any, Any, Any],
    services: Services,
    clock: ManualClock,
    double: TeleDouble,
    org: Org,
    errors: list[BaseException],
) -> None:
    await services.tickets.report(
        org["acme_boss"], "The access road is blocked", chat_id=GROUP, message_id=1
    )
    [scan] = app.job_queue.get_jobs_by_name(SCAN_JOB)  # type: ignore[union-attr]
    clock.advance(timedelta(minutes=59))
    await scan.run(app)
    assert await count(services, Nudge) == 0
    clock.advance(timedelta(minutes=1))
    await scan.run(app)
    await scan.run(app)
    assert await count(services, Nudge) == 1
    await services.sender.drain(app.bot)
    [reminder] = double.sent_to(org["city_coord"])
    assert "#1" in (reminder.text or "")
    assert errors == []


async def test_the_digest_job_sends_each_leader_one_digest(
    app: Application[Any, Any, Any, Any, Any, Any],
    services: Services,
    clock: ManualClock,
    double: TeleDouble,
    org: Org,
    errors: list[BaseException],
) -> None:
    [digest] = app.job_queue.get_jobs_by_name(DIGEST_JOB)  # type: ignore[union-attr]
    clock.set(datetime(2026, 3, 3, 0, 29, tzinfo=UTC))  # Tuesday 08:29 in Beijing
    await digest.run(app)
    assert await count(services, DigestRun) == 0
    for _ in range(3):
        clock.advance(timedelta(minutes=1))
        await digest.run(app)
    assert await count(services, DigestRun) == 3
    await services.sender.drain(app.bot)
    for leader in ("mayor", "east_leader", "west_leader"):
        assert len(double.sent_to(org[leader])) == 1
    assert errors == []


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)  # asyncpg never blocks the loop
async def test_the_digest_job_reads_sqlite_off_the_loop_s_thread(
    app: Application[Any, Any, Any, Any, Any, Any],
    engine: AsyncEngine,
    services: Services,
    clock: ManualClock,
    org: Org,
    errors: list[BaseException],
) -> None:
    threads: set[int] = set()  # where the digest's reads of the tickets ran
    async with engine.connect() as conn:  # an in-memory database has this one connection
        raw = (await conn.get_raw_connection()).driver_connection
    raw.set_trace_callback(
        lambda sql: threads.add(threading.get_ident()) if "FROM ticket" in sql else None
    )

    [digest] = app.job_queue.get_jobs_by_name(DIGEST_JOB)  # type: ignore[union-attr]
    clock.set(datetime(2026, 3, 3, 0, 29, tzinfo=UTC))
    for _ in range(4):
        await digest.run(app)
        clock.advance(timedelta(minutes=1))
    raw.set_trace_callback(None)
    assert await count(services, DigestRun) == 3
    assert errors == []
    assert threads
    assert threading.get_ident() not in threads


async def test_a_failing_sweep_is_logged_and_the_queue_keeps_running(
    app: Application[Any, Any, Any, Any, Any, Any],
    services: Services,
    errors: list[BaseException],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*_: object) -> None:
        raise RuntimeError("database unreachable")

    monkeypatch.setattr(services.nudges, "scan", broken)
    monkeypatch.setattr(services.digests, "send_due", broken)
    with caplog.at_level(logging.ERROR, logger="bot.jobs"):
        for name in (SCAN_JOB, DIGEST_JOB):
            [job] = app.job_queue.get_jobs_by_name(name)  # type: ignore[union-attr]
            await job.run(app)
    assert [r.getMessage() for r in caplog.records] == [
        "idle scan failed; the next run retries",
        "digest check failed; the next run retries",
    ]
    assert errors == []

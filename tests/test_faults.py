"""Faults from outside (issue 5, points 2 and 3; RELIABILITY B1, B3, A9, D1): Telegram answering
429, 5xx and timeouts in bursts, PostgreSQL's connections killed under the inbox worker, and
a second process writing the SQLite file. Each test reports its figures."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import col, func, select
from telegram import Update
from telegram.ext import Application, ApplicationBuilder, ContextTypes, MessageHandler, filters

from bot.app import build_services
from bot.clock import ManualClock
from bot.inbox import InboxWorker, record_failure, store
from bot.teledouble import DoubleRequest, SentRecord, TeleDouble
from storage.db import create_schema, make_engine
from storage.tables import InboxUpdate, OutboxState, Ticket
from storage.uow import UnitOfWorkFactory
from tests.bot.test_outbox import (
    ON_POSTGRES,
    T0,
    Env,
    figures,
    first_seen_order_kept,
    lost,
    make_settings,
    open_env,
    queue_for_chats,
)
from tests.factories import COUNTY_GROUP, GROUP, build_org

GROUPS = [GROUP - 100 - n for n in range(20)]
PEOPLE = [6_000_000_000 + n for n in range(10)]


@pytest.fixture
async def env(uows: UnitOfWorkFactory) -> AsyncIterator[Env]:
    async with open_env(uows) as env:
        yield env


def most_in(records: list[SentRecord], span: float) -> int:
    """The most messages inside any window of `span` seconds (half-open, as Telegram counts)."""
    times = sorted(r.at.timestamp() for r in records)
    best, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - span:
            start += 1
        best = max(best, end - start + 1)
    return best


def measured_rates(double: TeleDouble) -> dict[str, int]:
    """The highest rates Telegram saw, worked out from its ledger, not from the limiter."""
    chats = {r.chat_id for r in double.sent}
    return {
        "max_per_person_per_s": max(
            (most_in(double.sent_to(c), 1.0) for c in chats if c > 0), default=0
        ),
        "max_per_group_per_min": max(
            (most_in(double.sent_to(c), 60.0) for c in chats if c < 0), default=0
        ),
        "max_global_per_s": most_in(double.sent, 1.0),
    }


# --------------------------------------------------------------------------- Telegram faults


async def test_a_429_storm_loses_nothing_doubles_nothing_and_keeps_every_limit(
    env, record_property
):
    """RELIABILITY B1 with the retry_after of Telegram's usual storms, on both engines."""
    await storm(env, (1, 3), record_property)


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
async def test_a_429_storm_with_waits_up_to_40_s_loses_nothing_either(env, record_property):
    """RELIABILITY B1's range of retry_after; the sender's logic is the same on both engines,
    so one is enough to keep the run short."""
    await storm(env, (1, 40), record_property, chats=GROUPS[:10] + PEOPLE[:5])


async def storm(
    env: Env,
    retry_after: tuple[int, int],
    record_property: Any,
    chats: list[int] = GROUPS + PEOPLE,
) -> None:
    """30% of sends answered 429, and bursts where every send is, 10 messages to each chat
    (20 groups and 10 people unless told); the double enforces Telegram's limits on the
    same clock as the sender's limiter."""
    env.double.enforce_limits(per_chat_per_s=1, per_group_per_min=20, global_per_s=30)
    env.double.chaos(p429=0.3, retry_after=retry_after, seed=7)
    queued = await queue_for_chats(env, chats, 10)

    def bursts(n: int) -> None:
        if n in (3, 20, 40):  # every send answered 429 for a while
            env.double.fail_next(12, "429", retry_after=retry_after[1])

    sender = env.sender()
    settled = await env.settle(sender, each_round=bursts)
    rates = measured_rates(env.double)
    doubled = env.double.count_duplicates()
    line = figures(
        record_property,
        f"429 storm, retry_after {retry_after[0]}-{retry_after[1]} s",
        messages=sum(len(texts) for texts in queued.values()),
        chats=len(queued),
        lost=lost(env, queued),
        doubled=doubled,
        answered_429=sender.stats.rate_limited,
        sends_before_retry_after=env.double.early_retries,
        limit_violations=env.double.violations,
        business_seconds=settled.seconds,
        **rates,
    )
    assert (lost(env, queued), doubled) == (0, 0), line
    assert sender.stats.rate_limited > len(queued) * 3, line  # it was a storm
    assert env.double.early_retries == 0, line
    assert env.double.violations == 0, line
    assert rates["max_per_person_per_s"] <= 1, line
    assert rates["max_per_group_per_min"] <= 20, line
    assert rates["max_global_per_s"] <= 30, line
    assert first_seen_order_kept(env, queued), line
    assert {r.state for r in await env.rows()} == {OutboxState.SENT}, line


async def test_5xx_bursts_and_timeouts_lose_nothing_and_double_only_what_was_ambiguous(
    env, record_property, caplog
):
    """RELIABILITY B3/B4: 10% 5xx, 5% accepted-then-dropped answers, and bursts of 502s,
    dropped answers and requests lost on the way, over 150 messages to 30 chats; the sender
    stays up throughout and logs every ambiguous send."""
    env.double.enforce_limits()
    env.double.chaos(p5xx=0.1, p_drop_response=0.05, seed=11)
    queued = await queue_for_chats(env, GROUPS + PEOPLE, 5)
    kinds = ["502", "drop_response", "lost", "500"]

    def bursts(n: int) -> None:
        if n % 8 == 2 and n < 8 * 8:
            env.double.fail_next(6, kinds[(n // 8) % len(kinds)])  # type: ignore[arg-type]

    caplog.set_level(logging.WARNING, logger="bot.outbox")
    sender = env.sender()
    settled = await env.settle(sender, each_round=bursts)
    rates = measured_rates(env.double)
    doubled = env.double.count_duplicates()
    logged = [r for r in caplog.records if r.getMessage().startswith("ambiguous send")]
    failed = [r for r in await env.rows() if r.state != OutboxState.SENT]
    line = figures(
        record_property,
        "5xx bursts and timeouts",
        messages=150,
        lost=lost(env, queued),
        doubled=doubled,
        ambiguous_sends=env.double.ambiguous_sends,
        timeouts_seen_by_sender=sender.stats.ambiguous,
        ambiguous_logged=len(logged),
        retried=sender.stats.retried,
        given_up=len(failed),
        sends_before_retry_after=env.double.early_retries,
        limit_violations=env.double.violations,
        business_seconds=settled.seconds,
        **rates,
    )
    assert lost(env, queued) == 0, line
    assert failed == [], line
    assert env.double.ambiguous_sends > 0, line
    assert doubled <= env.double.ambiguous_sends <= sender.stats.ambiguous, line
    assert len(logged) == sender.stats.ambiguous, line
    assert (env.double.early_retries, env.double.violations) == (0, 0), line
    assert first_seen_order_kept(env, queued), line


# --------------------------------------------------------------------------- PostgreSQL faults

App = Application[Any, Any, Any, Any, Any, Any]
REPORTS = 200
KILLS = 5


def report_update(update_id: int, chat: int, user: int) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": int(T0.timestamp()),
            "chat": {"id": chat, "type": "supergroup", "title": "G"},
            "from": {"id": user, "is_bot": False, "first_name": "P"},
            "text": f"report {update_id}: the road to the plant is closed",
        },
    }


PROCESSED = "SELECT count(*) FROM inboxupdate WHERE processed"
TERMINATE = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


@ON_POSTGRES
async def test_killed_postgresql_connections_lose_no_update_and_double_no_ticket(
    engine, pg_url, record_property
):
    """Issue 5 point 2, RELIABILITY A9: the inbox worker files a stream of stored reports
    through the real ticket service while every connection to the database is killed five
    times; it reconnects (a rested connection is pinged, a dead one in use retires the pool
    and its update is retried), and each update is processed exactly once."""
    clock = ManualClock(T0)
    settings = make_settings()
    services = build_services(settings, clock=clock, engine=engine, limits=None)
    org = await build_org(services.uows)
    double = TeleDouble(clock=clock)
    app = _reporting_app(double, services)
    admin = create_async_engine(pg_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    authors = [(GROUP, org["beta_boss"]), (COUNTY_GROUP, org["acme_boss"])]
    updates = [report_update(i, *authors[i % 2]) for i in range(1, REPORTS + 1)]
    store_failures = [0]
    progress = Progress()
    started = time.monotonic()
    worker = InboxWorker(
        services.uows, app, clock, retry_after=timedelta(0), on_processed=progress.one_more
    )
    async with app:
        working = asyncio.create_task(worker.run(idle=0.01))
        feeding = asyncio.create_task(
            _feed(services.uows, progress, updates, clock, store_failures)
        )
        try:
            terminated = await _kill_while_working(admin, progress, KILLS)
            await asyncio.wait_for(feeding, timeout=60)
            # counted in the database: an update whose commit landed though the answer was
            # lost is found processed on its retry, and the worker does not count it again
            await _all_processed(admin)
        finally:
            worker.stop()
            feeding.cancel()
            await asyncio.wait_for(working, timeout=10)
            await admin.dispose()
    seconds = round(time.monotonic() - started, 2)
    async with services.uows(readonly=True) as uow:
        tickets = (await uow.session.exec(select(func.count()).select_from(Ticket))).one()
        sources = (
            await uow.session.exec(select(func.count(sa.distinct(col(Ticket.source_message_id)))))
        ).one()
        rows = (await uow.session.exec(select(InboxUpdate))).all()
        uow.session.expunge_all()
    line = figures(
        record_property,
        "PostgreSQL connections killed under the inbox worker",
        reports=REPORTS,
        kills=KILLS,
        connections_terminated=terminated,
        failed_store_batches_redelivered=store_failures[0],
        attempts_failed_then_retried=sum(r.attempts for r in rows),
        processed=sum(r.processed for r in rows),
        parked=sum(r.parked for r in rows),
        tickets=tickets,
        lost=REPORTS - sources,
        doubled=tickets - sources,
        handler_errors_reported=len(app.bot_data["final_errors"]),
        seconds=seconds,
    )
    assert terminated >= KILLS, line
    assert (tickets, sources) == (REPORTS, REPORTS), line
    assert all(r.processed and not r.parked for r in rows), line
    assert len(rows) == REPORTS, line
    assert app.bot_data["final_errors"] == [], line


def _reporting_app(double: TeleDouble, services: Any) -> App:
    """A bare Application whose one handler files each text as a report."""
    app: App = (
        ApplicationBuilder()
        .token(double.token)
        .request(DoubleRequest(double))
        .updater(None)
        .context_types(ContextTypes())
        .build()
    )
    app.bot_data["final_errors"] = []

    async def report(update: Update, context: Any) -> None:
        msg = update.effective_message
        await services.tickets.report(
            update.effective_user.id, msg.text, chat_id=msg.chat_id, message_id=msg.message_id
        )

    async def collect(update: object, context: Any) -> None:
        app.bot_data["final_errors"].append(context.error)

    app.add_handler(MessageHandler(filters.TEXT, report))
    app.add_error_handler(record_failure)
    app.add_error_handler(collect)
    return app


class Progress:
    """How many updates the worker has processed, and a way to wait for a number."""

    def __init__(self) -> None:
        self.processed = 0
        self._changed = asyncio.Event()

    def one_more(self) -> None:
        self.processed += 1
        self._changed.set()

    async def reached(self, count: int) -> None:
        while self.processed < count:
            self._changed.clear()
            await self._changed.wait()


async def _feed(
    uows: UnitOfWorkFactory,
    progress: Progress,
    updates: list[dict[str, Any]],
    clock: ManualClock,
    failures: list[int],
) -> None:
    """The receiver's side: updates arrive in batches of 10 over the whole run, about 20 ahead
    of the worker; a batch whose commit failed was never confirmed to Telegram, so it comes
    again and is stored again."""
    for start in range(0, len(updates), 10):
        await progress.reached(start - 20)
        batch = updates[start : start + 10]
        for _ in range(200):
            try:
                await store(uows, batch, clock=clock)
                break
            except (sa.exc.DBAPIError, OSError):
                failures[0] += 1
                await asyncio.sleep(0.01)
        else:
            raise AssertionError("the database never came back for the receiver")


async def _kill_while_working(admin: AsyncEngine, progress: Progress, kills: int) -> int:
    """Kill every other connection each time another share of the reports is processed."""
    terminated = 0
    for k in range(1, kills + 1):
        await asyncio.wait_for(progress.reached(REPORTS * k // (kills + 1)), timeout=60)
        async with admin.connect() as conn:
            terminated += int((await conn.exec_driver_sql(TERMINATE)).scalar() or 0)
    return terminated


async def _all_processed(admin: AsyncEngine, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with admin.connect() as conn:
            done = (await conn.exec_driver_sql(PROCESSED)).scalar()
        if done == REPORTS:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"only {done} of {REPORTS} updates processed after {timeout}s")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- SQLite faults

OTHER_WRITER = """
import os, sqlite3, sys, time
db, stop = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, timeout=30, isolation_level=None)
conn.execute("PRAGMA busy_timeout=30000")
conn.execute("CREATE TABLE IF NOT EXISTS other_process (n INTEGER, at REAL)")
print("ready", flush=True)
commits = locked = 0
while not os.path.exists(stop):
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO other_process VALUES (?, ?)", (commits, time.time()))
        time.sleep(0.004)  # a slow writer keeps the lock a while
        conn.execute("COMMIT")
        commits += 1
    except sqlite3.OperationalError as error:
        if "locked" not in str(error):
            raise
        locked += 1
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    time.sleep(0.002)
print(f"{commits} {locked}", flush=True)
"""


async def test_a_second_process_writing_the_sqlite_file_makes_the_service_wait_not_fail(
    tmp_path: Path, record_property
):
    """Issue 5 point 2, RELIABILITY D1: another process writes the same SQLite file in a loop
    while the ticket service files 200 reports: BEGIN IMMEDIATE and the busy timeout turn
    every collision into a wait; no "database is locked"."""
    db = tmp_path / "qunban.db"
    stop = tmp_path / "stop"
    engine = make_engine(f"sqlite+aiosqlite:///{db}")
    await create_schema(engine)
    clock = ManualClock(T0)
    services = build_services(make_settings(), clock=clock, engine=engine, limits=None)
    org = await build_org(services.uows)
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OTHER_WRITER,
        str(db),
        str(stop),
        stdout=asyncio.subprocess.PIPE,
    )
    errors: list[BaseException] = []
    waits: list[float] = []
    try:
        assert writer.stdout is not None
        assert (await asyncio.wait_for(writer.stdout.readline(), 30)).strip() == b"ready"

        for message_id in range(1, REPORTS + 1):
            began = time.monotonic()
            try:
                await services.tickets.report(
                    org["beta_boss"], f"report {message_id}", chat_id=GROUP, message_id=message_id
                )
            except Exception as error:  # counted: how many there were is the figure
                errors.append(error)
            waits.append(time.monotonic() - began)
            await asyncio.sleep(0.002)  # reports come in over time, leaving the other a turn
    finally:
        stop.touch()
        out, _ = await asyncio.wait_for(writer.communicate(), 30)
        await engine.dispose()
    other_commits, other_locked = (int(n) for n in out.split())
    locked = [e for e in errors if "locked" in str(e)]
    check = make_engine(f"sqlite+aiosqlite:///{db}")
    try:
        async with check.connect() as conn:
            tickets = (await conn.exec_driver_sql("SELECT count(*) FROM ticket")).scalar()
    finally:
        await check.dispose()
    waits.sort()
    line = figures(
        record_property,
        "a second process writing the SQLite file",
        reports=REPORTS,
        tickets=tickets,
        database_is_locked=len(locked),
        other_errors=len(errors) - len(locked),
        other_process_commits=other_commits,
        other_process_locked=other_locked,
        reports_that_waited_over_20ms=sum(w > 0.02 for w in waits),
        report_p50_ms=round(waits[len(waits) // 2] * 1000, 1),
        report_p99_ms=round(waits[int(len(waits) * 0.99)] * 1000, 1),
    )
    assert writer.returncode == 0, line
    assert errors == [], line
    assert tickets == REPORTS, line
    assert other_commits > 0, line
    assert other_locked == 0, line

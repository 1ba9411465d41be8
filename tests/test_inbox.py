"""The inbox: stored once, processed once, marked in the same transaction as the effect."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, func, select
from telegram import Update
from telegram.ext import Application, ApplicationBuilder, ContextTypes, MessageHandler, filters

from bot.app import Services, build_services
from bot.clock import ManualClock
from bot.config import load_settings
from bot.inbox import DatabaseAwayError, InboxWorker, chat_of, record_failure, store
from bot.notify import outbox_row
from bot.teledouble import DoubleRequest, TeleDouble
from storage.db import create_schema, make_engine, make_session_factory
from storage.tables import InboxUpdate, KeyValue, Nudge, Outbox, Ticket
from storage.uow import (
    UnitOfWorkFactory,
    UpdateAlreadyProcessedError,
    UpdateMark,
    current_update,
)
from tests.conftest import reset_postgres
from tests.factories import GROUP, build_org

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # a Monday, 10:00 in Shanghai
OTHER_GROUP = -1009999999999
App = Application[Any, Any, Any, Any, Any, Any]
Handler = Callable[[Update, Any], Any]


# --------------------------------------------------------------------------- helpers


def message(update_id: int, text: str, *, chat: int = GROUP, user: int = 7, mid: int = 0) -> dict:
    return {
        "update_id": update_id,
        "message": {
            "message_id": mid or update_id,
            "date": int(T0.timestamp()),
            "chat": {"id": chat, "type": "supergroup", "title": "G"},
            "from": {"id": user, "is_bot": False, "first_name": "P"},
            "text": text,
        },
    }


async def effects(uows: UnitOfWorkFactory, update_id: int | None = None) -> list[str]:
    prefix = "effect:" if update_id is None else f"effect:{update_id}:"
    async with uows(readonly=True) as uow:
        query = select(KeyValue.key).where(col(KeyValue.key).startswith(prefix))
        return list((await uow.session.exec(query)).all())


async def add_effect(uows: UnitOfWorkFactory, update_id: int) -> None:
    """A deliberately non-idempotent effect: every run adds a row of its own."""
    async with uows() as uow:
        key = f"effect:{update_id}:{uuid.uuid4().hex}"
        uow.schedule.add(KeyValue(key=key, value={}, updated_at=T0))
        await uow.commit()


async def inbox_row(uows: UnitOfWorkFactory, update_id: int) -> InboxUpdate:
    async with uows(readonly=True) as uow:
        row = await uow.inbox.get(update_id)
        assert row is not None
        uow.session.expunge(row)  # kept readable after the read-only unit of work ends
        return row


async def count(uows: UnitOfWorkFactory, table: Any) -> int:
    async with uows(readonly=True) as uow:
        return (await uow.session.exec(select(func.count()).select_from(table))).one()


class Harness:
    """A bare Application over the in-process double, with handlers the test chooses."""

    def __init__(self, uows: UnitOfWorkFactory, clock: ManualClock, services: Services):
        self.uows, self.clock, self.services = uows, clock, services
        self.double = TeleDouble(clock=clock)
        self.app: App = (
            ApplicationBuilder()
            .token(self.double.token)
            .request(DoubleRequest(self.double))
            .updater(None)
            .context_types(ContextTypes())
            .build()
        )
        self.app.add_error_handler(record_failure)
        self.seen: list[tuple[int, int]] = []  # (chat, update id) in the order handled
        self.final_errors: list[BaseException] = []
        self.app.add_error_handler(self._collect)

    async def _collect(self, update: object, context: Any) -> None:
        self.final_errors.append(context.error)

    def on_text(self, callback: Handler) -> None:
        async def handler(update: Update, context: Any) -> None:
            self.seen.append((update.effective_chat.id, update.update_id))
            await callback(update, context)

        self.app.add_handler(MessageHandler(filters.TEXT, handler))

    def worker(self, **kwargs: Any) -> InboxWorker:
        return InboxWorker(self.uows, self.app, self.clock, **kwargs)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def services(engine: AsyncEngine, clock: ManualClock) -> Services:
    settings = load_settings(calendar="24x7", report_limit_per_hour=10_000)
    return build_services(settings, clock=clock, engine=engine, limits=None)


@pytest.fixture
async def harness(uows, clock, services) -> AsyncIterator[Harness]:
    h = Harness(uows, clock, services)
    async with h.app:
        yield h


def reporting(h: Harness) -> Handler:
    """Files each text as a report through the real ticket service."""

    async def report(update: Update, context: Any) -> None:
        msg = update.effective_message
        await h.services.tickets.report(
            update.effective_user.id, msg.text, chat_id=msg.chat_id, message_id=msg.message_id
        )

    return report


# --------------------------------------------------------------------------- storing


async def test_storing_an_update_twice_keeps_one_row(uows, clock):
    update = message(10, "hello")
    assert await store(uows, [update], clock=clock) == 1
    assert await store(uows, [update, message(11, "again")], clock=clock) == 1
    assert await count(uows, InboxUpdate) == 2
    row = await inbox_row(uows, 10)
    assert (row.chat_id, row.payload, row.processed, row.received_at) == (GROUP, update, False, T0)


async def test_ten_concurrent_copies_of_a_batch_store_it_once(tmp_path: Path, clock):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}")
    await create_schema(engine)
    uows = UnitOfWorkFactory(make_session_factory(engine))
    batch = [message(i, f"m{i}") for i in range(1, 51)]
    try:
        added = await asyncio.gather(*(store(uows, batch, clock=clock) for _ in range(10)))
        assert sorted(added) == [0] * 9 + [50]
        assert await count(uows, InboxUpdate) == 50
    finally:
        await engine.dispose()


def test_the_order_key_is_the_chat_or_else_the_person():
    msg = message(1, "x", chat=-100123)
    query = {"id": "q", "from": {"id": 5}, "message": msg["message"]}
    press = {"update_id": 2, "callback_query": query}
    inline = {"update_id": 3, "callback_query": {"id": "q", "from": {"id": 5}, "data": "d"}}
    member = {"update_id": 4, "my_chat_member": {"chat": {"id": -100777}, "from": {"id": 5}}}
    assert [chat_of(u) for u in (msg, press, inline, member)] == [-100123] * 2 + [5, -100777]
    assert chat_of({"update_id": 5, "poll": {"id": "p", "options": []}}) is None


# --------------------------------------------------------------------------- the mark


async def test_a_commit_inside_an_update_marks_it_processed_in_the_same_transaction(uows, clock):
    await store(uows, [message(20, "x")], clock=clock)
    mark = UpdateMark(20, clock.now())
    token = current_update.set(mark)
    try:
        await add_effect(uows, 20)
    finally:
        current_update.reset(token)
    row = await inbox_row(uows, 20)
    assert mark.marked
    assert row.processed
    assert row.processed_at == T0
    assert len(await effects(uows, 20)) == 1


async def test_a_commit_that_fails_leaves_the_update_unprocessed(uows, clock):
    await store(uows, [message(21, "x")], clock=clock)
    await add_effect(uows, 999)
    [taken] = await effects(uows, 999)
    token = current_update.set(UpdateMark(21, clock.now()))
    try:
        async with uows() as uow:
            uow.schedule.add(KeyValue(key="effect:21:a", value={}, updated_at=T0))
            uow.schedule.add(KeyValue(key=taken, value={}, updated_at=T0))  # duplicate key
            with pytest.raises(sa.exc.IntegrityError):
                await uow.commit()
    finally:
        current_update.reset(token)
    assert not (await inbox_row(uows, 21)).processed
    assert await effects(uows, 21) == []


async def test_a_later_commit_in_the_same_update_does_not_mark_again(uows, clock):
    await store(uows, [message(22, "x")], clock=clock)
    mark = UpdateMark(22, clock.now())
    token = current_update.set(mark)
    try:
        await add_effect(uows, 22)
        await add_effect(uows, 22)
    finally:
        current_update.reset(token)
    assert mark.commits == 2
    assert len(await effects(uows, 22)) == 2


async def test_a_commit_for_an_update_processed_elsewhere_rolls_back(uows, clock):
    await store(uows, [message(23, "x")], clock=clock)
    async with uows() as uow:
        assert await uow.inbox.mark_processed(23, clock.now())
        await uow.commit()
    token = current_update.set(UpdateMark(23, clock.now()))
    try:
        with pytest.raises(UpdateAlreadyProcessedError):
            await add_effect(uows, 23)
    finally:
        current_update.reset(token)
    assert await effects(uows, 23) == []


class Handover:
    """A sender of this process taking the messages units of work write (`Handoff`)."""

    def __init__(self) -> None:
        self.adopted: list[tuple[int, int | None, dict[str, Any]]] = []

    def birth_lease(self) -> tuple[str, timedelta]:
        return "here", timedelta(seconds=15)

    def adopt(self, owner: str, rows: list[tuple[int, int | None, dict[str, Any]]]) -> None:
        self.adopted += rows


async def _answer(uows: UnitOfWorkFactory, update_id: int, clock: ManualClock) -> list[str]:
    """An update's effect and two messages, handed over, committed inside its mark; the
    statements it took."""
    seen: list[str] = []
    engine = uows.sessions.kw["bind"].sync_engine

    def note(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", note)
    token = current_update.set(UpdateMark(update_id, clock.now()))
    try:
        async with uows() as uow:
            uow.schedule.add(KeyValue(key=f"effect:{update_id}:a", value={}, updated_at=T0))
            for n in (1, 2):
                uow.queue_outbox([outbox_row(GROUP, {"text": f"{update_id}.{n}"}, now=T0)])
            await uow.commit()
    finally:
        current_update.reset(token)
        sa.event.remove(engine, "before_cursor_execute", note)
    return seen


async def test_on_postgresql_the_mark_goes_with_the_messages_handed_over(uows, clock):
    """One statement writes the messages and marks the update (a round trip less); SQLite
    marks it with a statement of its own. Either way the update is processed once."""
    await store(uows, [message(25, "x")], clock=clock)
    handover = uows.handoff = Handover()
    seen = await _answer(uows, 25, clock)
    postgres = uows.sessions.kw["bind"].dialect.name == "postgresql"
    marks = [s for s in seen if s.startswith("UPDATE inboxupdate")]
    with_messages = [s for s in seen if "INSERT INTO outbox" in s and "inboxupdate" in s]
    assert (len(marks), len(with_messages)) == ((0, 1) if postgres else (1, 0))
    assert (await inbox_row(uows, 25)).processed
    assert [row["payload"]["text"] for _, _, row in handover.adopted] == ["25.1", "25.2"]
    assert len(await effects(uows, 25)) == 1


async def test_messages_of_an_update_processed_elsewhere_are_neither_written_nor_handed(
    uows, clock
):
    await store(uows, [message(26, "x")], clock=clock)
    async with uows() as uow:
        assert await uow.inbox.mark_processed(26, clock.now())
        await uow.commit()
    handover = uows.handoff = Handover()
    with pytest.raises(UpdateAlreadyProcessedError):
        await _answer(uows, 26, clock)
    assert handover.adopted == []
    assert await effects(uows, 26) == []
    async with uows(readonly=True) as uow:
        assert await uow.outbox.depth() == 0


@contextlib.contextmanager
def handled_as(uows: UnitOfWorkFactory, update_id: int, clock: Any) -> Iterator[list[str]]:
    """Inside, service calls are handled as inbox update `update_id`; yields the statements
    they run, each on one line."""
    seen: list[str] = []
    engine = uows.sessions.kw["bind"].sync_engine

    def note(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", note)
    token = current_update.set(UpdateMark(update_id, clock.now()))
    try:
        yield seen
    finally:
        current_update.reset(token)
        sa.event.remove(engine, "before_cursor_execute", note)


def apart(seen: list[str], *heads: str) -> tuple[list[str], str]:
    """The statements that start with one of `heads`, and the one that writes the messages."""
    [together] = [s for s in seen if "INSERT INTO outbox" in s]
    return [s for s in seen if s.startswith(heads)], together


async def test_on_postgresql_a_reports_events_go_with_its_messages_and_its_mark(services, clock):
    """A group report handed over: its events, its messages and its update's mark in one
    statement on PostgreSQL, each in its own on SQLite; the same record either way."""
    uows = services.uows
    org = await build_org(uows)
    await store(uows, [message(27, "x")], clock=clock)
    handover = uows.handoff = Handover()
    with handled_as(uows, 27, clock) as seen:
        text = '路灯坏了 <b>&amp;</b> 🚧 "quoted" & more'
        outcome = await services.tickets.report(
            org["acme_boss"], text, chat_id=GROUP, message_id=27
        )
    postgres = uows.sessions.kw["bind"].dialect.name == "postgresql"
    alone, together = apart(seen, "INSERT INTO ticketevent", "UPDATE inboxupdate")
    assert len(alone) == (0 if postgres else 2)
    assert ("ticketevent" in together) is postgres
    assert (await inbox_row(uows, 27)).processed
    assert handover.adopted
    async with uows(readonly=True) as uow:
        events = await uow.events.of_ticket(outcome.ticket.number)
    assert events[0].kind == "report"
    assert events[0].at.replace(tzinfo=UTC) == T0
    assert all(e.ticket_id == outcome.ticket.number for e in events)
    assert {e.kind for e in events} <= {"report", "assign"}


async def test_on_postgresql_the_reminders_an_action_answers_go_with_its_messages(services, clock):
    """A claim handed over answers the ticket's reminders: in the statement of its messages
    and its mark on PostgreSQL, in one of their own on SQLite; only that ticket's, either way."""
    uows = services.uows
    org = await build_org(uows)
    numbers = []
    for mid in (28, 29):
        filed = await services.tickets.report(org["acme_boss"], "发票打不出来", chat_id=GROUP,
                                              message_id=mid)  # fmt: skip
        numbers.append(filed.ticket.number)
        await services.tickets.assign(org["city_coord"], filed.ticket.number, "tax")
    async with uows() as uow:
        clerk = await uow.org.person_by_telegram(org["tax_clerk"])
        assert clerk is not None
        for number in numbers:
            for slot in (1, 2):
                uow.schedule.add(Nudge(ticket_id=number, rung="idle", person_id=clerk.id,
                                       slot=slot, at=T0))  # fmt: skip
        await uow.commit()
    await store(uows, [message(30, "x")], clock=clock)
    handover = uows.handoff = Handover()
    with handled_as(uows, 30, clock) as seen:
        await services.tickets.claim(org["tax_clerk"], numbers[0])
    postgres = uows.sessions.kw["bind"].dialect.name == "postgresql"
    alone, together = apart(seen, "UPDATE nudge")
    assert len(alone) == (0 if postgres else 1)
    assert ("UPDATE nudge" in together) is postgres
    assert (await inbox_row(uows, 30)).processed
    assert handover.adopted
    async with uows(readonly=True) as uow:
        rows = (await uow.session.exec(select(Nudge.ticket_id, Nudge.acted))).all()
    assert sorted(rows) == [(numbers[0], True)] * 2 + [(numbers[1], False)] * 2


async def test_read_only_and_unmarked_units_of_work_leave_the_update_alone(uows, clock):
    await store(uows, [message(24, "x")], clock=clock)
    token = current_update.set(UpdateMark(24, clock.now()))
    try:
        async with uows(marks_update=False) as uow:
            uow.schedule.add(KeyValue(key="effect:24:side", value={}, updated_at=T0))
            await uow.commit()
    finally:
        current_update.reset(token)
    assert not (await inbox_row(uows, 24)).processed


# --------------------------------------------------------------------------- the worker


async def test_the_worker_handles_each_update_once_in_order_per_chat(harness, uows, clock):
    async def effect(update: Update, context: Any) -> None:
        await add_effect(uows, update.update_id)

    harness.on_text(effect)
    ids = [101, 102, 103, 104, 105, 1, 2, 3]  # update ids jumped down between the batches
    updates = [message(i, "x", chat=GROUP if i % 2 else OTHER_GROUP) for i in ids]
    await store(uows, updates[:5], clock=clock)
    clock.advance(timedelta(seconds=1))
    await store(uows, updates[5:], clock=clock)
    report = await harness.worker().process_pending()
    again = await harness.worker().process_pending()
    assert (report.processed, again.processed) == (8, 0)
    assert [u for c, u in harness.seen if c == GROUP] == [101, 103, 105, 1, 3]
    assert [u for c, u in harness.seen if c == OTHER_GROUP] == [102, 104, 2]
    for i in ids:
        assert len(await effects(uows, i)) == 1
        assert (await inbox_row(uows, i)).processed
    assert harness.final_errors == []


async def test_what_one_update_queued_can_go_out_before_the_next_is_handled(harness, uows, clock):
    """The worker lets other tasks (the sender) run between updates: on SQLite a handler never
    waits, and the replies of a whole batch would otherwise wait for its last update."""
    log: list[str] = []
    woken = asyncio.Event()

    async def effect(update: Update, context: Any) -> None:
        log.append(f"handled {update.update_id}")
        await add_effect(uows, update.update_id)

    async def sender() -> None:
        while True:
            await woken.wait()
            woken.clear()
            log.append("sender ran")

    harness.on_text(effect)
    await store(uows, [message(i, "x") for i in (1, 2, 3)], clock=clock)
    task = asyncio.create_task(sender())
    await asyncio.sleep(0)
    try:
        report = await harness.worker(on_processed=woken.set).process_pending()
    finally:
        task.cancel()
    assert report.processed == 3
    assert log == ["handled 1", "sender ran", "handled 2", "sender ran", "handled 3", "sender ran"]


async def test_an_update_no_handler_changes_anything_for_is_marked_processed(harness, uows, clock):
    async def chat(update: Update, context: Any) -> None:
        """Reads, answers nothing, changes nothing."""

    harness.on_text(chat)
    await store(uows, [message(30, "just chatting")], clock=clock)
    report = await harness.worker().process_pending()
    assert report.processed == 1
    assert (await inbox_row(uows, 30)).processed


async def test_the_same_report_delivered_twice_is_one_ticket(harness, uows, clock, services):
    org = await build_org(uows)
    harness.on_text(reporting(harness))
    update = message(40, "发票开不出来 #问题", user=org["beta_boss"])
    await store(uows, [update], clock=clock)
    await store(uows, [update], clock=clock)
    worker = harness.worker()
    assert (await worker.process_pending()).processed == 1
    outbox = await count(uows, Outbox)
    await store(uows, [update], clock=clock)
    assert (await worker.process_pending()).processed == 0
    assert await count(uows, Ticket) == 1
    assert await count(uows, Outbox) == outbox > 0
    assert harness.final_errors == []


async def test_a_handler_failing_five_times_parks_the_update_with_its_error(harness, uows, clock):
    calls: list[int] = []

    async def flaky(update: Update, context: Any) -> None:
        calls.append(update.update_id)
        if update.update_id == 50:
            raise RuntimeError("the printer is on fire")
        await add_effect(uows, update.update_id)

    harness.on_text(flaky)
    await store(
        uows, [message(50, "x"), message(51, "x"), message(52, "x", chat=OTHER_GROUP)], clock=clock
    )
    worker = harness.worker(retry_after=timedelta(seconds=10))
    first = await worker.process_pending()
    assert (first.failed, first.processed) == (1, 1)  # 52 went on; 51 waits behind 50
    assert calls == [50, 52]
    assert (await worker.process_pending()).failed == 0  # held: nothing is due yet
    for attempt in range(2, 6):
        clock.advance(timedelta(seconds=10 * 2 ** (attempt - 2)))
        report = await worker.process_pending()
        assert calls.count(50) == attempt
    assert report.parked_ids == [50]
    assert report.processed == 1
    row = await inbox_row(uows, 50)
    assert row.parked
    assert not row.processed
    assert row.attempts == 5
    assert "the printer is on fire" in row.error
    assert "Traceback" in row.error
    assert len(await effects(uows, 51)) == 1
    # the other error handlers heard of the final attempt only
    assert [str(e) for e in harness.final_errors] == ["the printer is on fire"]
    async with uows(readonly=True) as uow:
        assert [p.update_id for p in await uow.inbox.parked()] == [50]
    clock.advance(timedelta(days=1))
    assert (await worker.process_pending()).processed == 0  # parked stays parked


async def test_a_hold_ends_when_its_update_was_handled_elsewhere(harness, uows, clock):
    async def fails(update: Update, context: Any) -> None:
        raise RuntimeError("not yet")

    harness.on_text(fails)
    await store(uows, [message(55, "x")], clock=clock)
    worker = harness.worker(retry_after=timedelta(seconds=10))
    assert (await worker.process_pending()).failed == 1
    assert worker._next_pause(60) == pytest.approx(10)  # waits for the retry
    async with uows() as uow:  # another instance handled it meanwhile
        await uow.inbox.mark_processed(55, clock.now())
        await uow.commit()
    clock.advance(timedelta(seconds=11))
    await worker.process_pending()
    assert worker._next_pause(60) == 60  # nothing held: no busy loop


async def test_an_unreadable_payload_is_parked_at_once(harness, uows, clock):
    await store(uows, [{"update_id": 60, "message": {"chat": {"id": 1}}}], clock=clock)
    report = await harness.worker().process_pending()
    assert report.parked_ids == [60]
    assert (await inbox_row(uows, 60)).attempts == 1


class Outage(UnitOfWorkFactory):
    """The same database, unreachable while `down` is set."""

    def __init__(self, uows: UnitOfWorkFactory) -> None:
        super().__init__(uows.sessions)
        self.down = False

    def __call__(self, **kwargs: Any) -> Any:
        self._check()
        return super().__call__(**kwargs)

    def single(self) -> Any:
        self._check()
        return super().single()

    def _check(self) -> None:
        if self.down:
            raise sa.exc.OperationalError("BEGIN", {}, ConnectionRefusedError("db down"))


async def test_a_database_outage_counts_nothing_and_is_retried(harness, uows, clock):
    """RELIABILITY A9: what arrives while the database is away is handled after it returns."""
    outage, failing_passes = Outage(uows), [7]

    async def effect(update: Update, context: Any) -> None:
        if failing_passes[0]:
            failing_passes[0] -= 1
            outage.down = True  # it goes away while the update is in hand
        await add_effect(outage, update.update_id)

    harness.on_text(effect)
    await store(uows, [message(70, "x"), message(71, "x", chat=OTHER_GROUP)], clock=clock)
    worker = InboxWorker(outage, harness.app, clock)
    while failing_passes[0]:
        outage.down = False
        with pytest.raises(DatabaseAwayError):
            await worker.process_pending()
    outage.down = False
    for update_id in (70, 71):
        row = await inbox_row(uows, update_id)
        assert (row.processed, row.attempts, row.parked) == (False, 0, False)
    assert (await worker.process_pending()).processed == 2
    assert len(await effects(uows, 70)) == len(await effects(uows, 71)) == 1
    assert harness.final_errors == []


async def test_an_error_that_only_looks_like_an_outage_is_counted(harness, uows, clock):
    """A handler's own connection error must not hold every update back forever."""

    async def refuses(update: Update, context: Any) -> None:
        raise ConnectionRefusedError("a third-party service is down")

    harness.on_text(refuses)
    await store(uows, [message(75, "x")], clock=clock)
    report = await harness.worker(max_attempts=1).process_pending()
    assert report.parked_ids == [75]
    assert "a third-party service is down" in (await inbox_row(uows, 75)).error


# --------------------------------------------------------------------------- A3: replays


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def shared_engine(request, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A database several connections really share (an in-memory SQLite has one)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    else:
        url = request.getfixturevalue("pg_url")
        await reset_postgres(url)
    engine = make_engine(url)
    await create_schema(engine)
    yield engine
    await engine.dispose()


async def test_replayed_shuffled_and_concurrent_copies_make_no_duplicates(shared_engine, clock):
    """RELIABILITY A3: twice, shuffled, 10 copies at once, 10 workers at once."""
    uows = UnitOfWorkFactory(make_session_factory(shared_engine))
    settings = load_settings(calendar="24x7", report_limit_per_hour=10_000)
    services = build_services(settings, clock=clock, engine=shared_engine, limits=None)
    org = await build_org(uows)
    h = Harness(uows, clock, services)
    reporters = [org["beta_boss"], org["acme_boss"], org["gamma_boss"]]

    async def handle(update: Update, context: Any) -> None:
        # a handler waits on the network somewhere: the other workers get their turn here
        await asyncio.sleep(0)
        if update.effective_message.text.startswith("effect"):
            await add_effect(uows, update.update_id)
        else:
            await reporting(h)(update, context)

    h.on_text(handle)
    updates = [
        message(1000 + i, f"effect {i}" if i % 2 else f"税务 问题 {i}", user=reporters[i % 3])
        for i in range(40)
    ]
    shuffled = random.Random(7).sample(updates, len(updates))
    async with h.app:
        await store(uows, updates, clock=clock)
        await store(uows, updates, clock=clock)
        await asyncio.gather(*(store(uows, [u], clock=clock) for u in shuffled))
        await asyncio.gather(*(store(uows, shuffled, clock=clock) for _ in range(10)))
        workers = [h.worker(batch=7) for _ in range(10)]
        reports = await asyncio.gather(*(w.process_pending() for w in workers))
        replay = await h.worker().process_pending()
    assert await count(uows, InboxUpdate) == 40
    assert sum(r.duplicates for r in reports) > 0  # the workers did race for the same updates
    assert sum(r.processed for r in reports) == 40
    assert replay.processed == 0
    assert await count(uows, Ticket) == 20
    assert len(await effects(uows)) == 20
    async with uows(readonly=True) as uow:
        cards = await uow.session.exec(
            select(Outbox.ticket_id, func.count())
            .where(col(Outbox.is_card))
            .group_by(Outbox.ticket_id)
        )
        assert sorted(n for _, n in cards.all()) == [1] * 20
    errors = [e for e in h.final_errors if not isinstance(e, sa.exc.IntegrityError)]
    assert errors == []


async def test_run_processes_on_wake_and_stops_after_the_update_in_hand(shared_engine, clock):
    uows = UnitOfWorkFactory(make_session_factory(shared_engine))
    harness = Harness(uows, clock, None)  # type: ignore[arg-type]
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(update: Update, context: Any) -> None:
        started.set()
        await release.wait()
        await add_effect(uows, update.update_id)

    harness.on_text(slow)
    worker = harness.worker()
    async with harness.app:
        task = asyncio.create_task(worker.run(idle=60))
        await store(uows, [message(80, "x"), message(81, "x")], clock=clock)
        worker.wake()
        await asyncio.wait_for(started.wait(), 5)
        worker.stop()
        release.set()
        await asyncio.wait_for(task, 5)
    assert (await inbox_row(uows, 80)).processed
    assert not (await inbox_row(uows, 81)).processed


async def test_the_idle_hook_runs_only_when_nothing_came_in_during_the_pass(shared_engine, clock):
    uows = UnitOfWorkFactory(make_session_factory(shared_engine))
    harness = Harness(uows, clock, None)  # type: ignore[arg-type]
    idles: list[list[int]] = []
    worker = harness.worker(on_idle=lambda: idles.append(list(handled)))
    handled: list[int] = []

    async def note(update: Update, context: Any) -> None:
        handled.append(update.update_id)
        if update.update_id == 90:  # something new is stored while this one is in hand
            await store(uows, [message(91, "x")], clock=clock)
            worker.wake()

    harness.on_text(note)
    async with harness.app:
        task = asyncio.create_task(worker.run(idle=60))
        await store(uows, [message(90, "x")], clock=clock)
        worker.wake()
        for _ in range(200):
            if idles and idles[-1] == [90, 91]:
                break
            await asyncio.sleep(0.01)
        worker.stop()
        await asyncio.wait_for(task, 5)
    # the pass that handled 90 ended with 91 waiting: no idle moment until 91 was done too
    assert [90] not in idles
    assert idles[-1] == [90, 91]


# --------------------------------------------------------------------------- lanes


class InHand:
    """Handlers that note how many updates are in hand at once, each one waiting until
    `together` of them are (so overlap is shown, not hoped for)."""

    def __init__(self, together: int) -> None:
        self.now = self.most = 0
        self.together = together
        self._full = asyncio.Event()

    async def enter(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        if self.now >= self.together:
            self._full.set()
        async with asyncio.timeout(10):  # a guard against a hang, not a measurement
            await self._full.wait()

    def leave(self) -> None:
        self.now -= 1


async def test_lanes_handle_chats_side_by_side_and_each_chat_in_order(shared_engine, clock):
    uows = UnitOfWorkFactory(make_session_factory(shared_engine))
    harness = Harness(uows, clock, None)  # type: ignore[arg-type]
    hand = InHand(together=3)

    async def effect(update: Update, context: Any) -> None:
        await hand.enter()
        try:
            await add_effect(uows, update.update_id)
        finally:
            hand.leave()

    harness.on_text(effect)
    chats = [GROUP, OTHER_GROUP, -1007777777777, -1006666666666, -1005555555555]
    # chats interleaved, four updates each
    updates = [message(200 + i, "x", chat=chats[i % 5]) for i in range(20)]
    await store(uows, updates, clock=clock)
    async with harness.app:
        report = await harness.worker(concurrency=3).process_pending()
    assert report.processed == 20
    assert hand.most == 3  # as many as allowed, and no more
    for chat in chats:
        mine = [u["update_id"] for u in updates if u["message"]["chat"]["id"] == chat]
        assert [u for c, u in harness.seen if c == chat] == mine
    for update in updates:
        assert len(await effects(uows, update["update_id"])) == 1
    assert harness.final_errors == []


async def test_a_failing_update_holds_back_its_chat_while_other_lanes_go_on(shared_engine, clock):
    uows = UnitOfWorkFactory(make_session_factory(shared_engine))
    harness = Harness(uows, clock, None)  # type: ignore[arg-type]

    async def effect(update: Update, context: Any) -> None:
        if update.update_id == 300:
            raise ValueError("this one is broken")
        await add_effect(uows, update.update_id)

    harness.on_text(effect)
    updates = [message(300 + i, "x", chat=GROUP if i % 2 == 0 else OTHER_GROUP) for i in range(6)]
    await store(uows, updates, clock=clock)
    async with harness.app:
        report = await harness.worker(concurrency=2).process_pending()
    assert (report.processed, report.failed) == (3, 1)
    assert [u for c, u in harness.seen if c == GROUP] == [300]  # 302 and 304 wait behind it
    assert [u for c, u in harness.seen if c == OTHER_GROUP] == [301, 303, 305]
    assert [(await inbox_row(uows, i)).processed for i in range(300, 306)] == [
        False, True, False, True, False, True,
    ]  # fmt: skip


async def test_an_outage_in_one_lane_stops_them_all_and_loses_nothing(shared_engine, clock):
    uows = UnitOfWorkFactory(make_session_factory(shared_engine))
    outage = Outage(uows)
    harness = Harness(outage, clock, None)  # type: ignore[arg-type]
    in_hand, gone = asyncio.Event(), asyncio.Event()

    async def effect(update: Update, context: Any) -> None:
        async with asyncio.timeout(10):  # a guard against a hang, not a measurement
            if update.update_id == 400 and not gone.is_set():
                await in_hand.wait()  # the other lane has an update in hand too
                outage.down = True
                gone.set()
            elif update.update_id == 401 and not gone.is_set():
                in_hand.set()
                await gone.wait()
        await add_effect(outage, update.update_id)

    harness.on_text(effect)
    updates = [message(400 + i, "x", chat=GROUP if i % 2 == 0 else OTHER_GROUP) for i in range(6)]
    await store(uows, updates, clock=clock)
    worker = InboxWorker(outage, harness.app, clock, concurrency=2)
    async with harness.app:
        with pytest.raises(DatabaseAwayError):
            await worker.process_pending()
        assert sorted(u for _, u in harness.seen) == [400, 401]  # neither lane went on
        outage.down = False
        assert (await worker.process_pending()).processed == 6
    for update in updates:
        row = await inbox_row(uows, update["update_id"])
        assert (row.processed, row.attempts) == (True, 0)
        assert len(await effects(uows, update["update_id"])) == 1
    assert harness.final_errors == []


def test_lanes_default_to_one_on_sqlite_and_four_on_postgresql():
    sqlite = load_settings(_env_file=None, database_url="sqlite+aiosqlite:///x.db")
    pg = load_settings(_env_file=None, database_url="postgresql+asyncpg://u@h/db")
    assert (sqlite.inbox_lanes, pg.inbox_lanes) == (1, 4)
    assert load_settings(_env_file=None, inbox_concurrency=2).inbox_lanes == 2
    with pytest.raises(ValueError, match="inbox_concurrency"):
        load_settings(_env_file=None, inbox_concurrency=0)

"""The outbox sender against the Bot API double, on SQLite and PostgreSQL: in order per chat,
within the limits, every Telegram answer handled, and across crashes nothing lost and nothing
doubled but what Telegram's lack of an idempotency key allows."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import select
from telegram import Bot

from bot.calendar import load_calendar
from bot.clock import ManualClock
from bot.config import Settings
from bot.notify import Notifier
from bot.outbox import MAX_ATTEMPTS, DrainReport, OutboxSender
from bot.ratelimit import Limits, RateLimiter
from bot.services.tickets import TicketService
from bot.teledouble import DoubleRequest, TeleDouble
from storage.tables import ChatGroup, Outbox, OutboxState, Person, Ticket
from storage.uow import UnitOfWorkFactory
from tests.factories import COUNTY_GROUP, GROUP, Org, build_org

# Monday 2 March 2026, 10:00 in Shanghai; a whole second, so quarter-second steps stay exact
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
QUARTER = 0.25


def figures(record_property: Any, name: str, **values: object) -> str:
    """Report a test's figures: junit properties, a line on stdout (`-s`), and the text for
    assertion messages."""
    for key, value in values.items():
        record_property(key, value)
    line = f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
    print(f"\n[figures] {line}")
    return line


class ProcessDied(BaseException):
    """The process is gone: nothing after this point runs, no handler catches it."""


@dataclass
class Settled:
    """What draining until the queue was empty took."""

    rounds: int = 0
    seconds: float = 0.0
    reports: list[DrainReport] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(getattr(r, name) for r in self.reports)


@dataclass
class Env:
    """A database, a hand-moved clock, the Bot API double and a PTB Bot talking to it."""

    uows: UnitOfWorkFactory
    clock: ManualClock
    double: TeleDouble
    bot: Bot
    notifier: Notifier
    tickets: TicketService
    org: Org

    def monotonic(self) -> float:
        """The limiter's time is the double's time: both judge the same windows."""
        return self.clock.now().timestamp()

    def sender(
        self,
        *,
        limits: Limits | None = Limits(),
        instance: str | None = None,
        kind: type[OutboxSender] = OutboxSender,
        uows: UnitOfWorkFactory | None = None,
        **kwargs: Any,
    ) -> OutboxSender:
        limiter = RateLimiter(limits, monotonic=self.monotonic)
        return kind(uows or self.uows, self.clock, limiter, instance=instance, **kwargs)

    async def queue(
        self, chat_id: int, texts: Iterable[str], *, person_id: int | None = None
    ) -> list[int]:
        """Queue messages as the services do, through the notifier, in one transaction."""
        async with self.uows() as uow:
            rows = [
                row
                for text in texts
                for row in self.notifier.message(uow, chat_id, text, person_id=person_id)
            ]
            await uow.commit()
        return [row.id for row in rows]  # type: ignore[misc]

    async def add(self, row: Outbox) -> int:
        async with self.uows() as uow:
            uow.outbox.add(row)
            await uow.commit()
        return row.id  # type: ignore[return-value]

    async def rows(self) -> list[Outbox]:
        async with self.uows(readonly=True) as uow:
            found = list((await uow.session.exec(select(Outbox).order_by(Outbox.id))).all())
            uow.session.expunge_all()
        return found

    async def row(self, outbox_id: int) -> Outbox:
        [found] = [r for r in await self.rows() if r.id == outbox_id]
        return found

    async def ticket(self, number: int) -> Ticket:
        async with self.uows(readonly=True) as uow:
            found = await uow.tickets.get(number)
            assert found is not None
            uow.session.expunge_all()
        return found

    async def pending(self) -> list[Outbox]:
        return [r for r in await self.rows() if r.state == OutboxState.PENDING]

    def texts_to(self, chat_id: int) -> list[str]:
        return [r.text or "" for r in self.double.sent_to(chat_id)]

    def calls_to(self, chat_id: int) -> list[datetime]:
        return [
            c.at
            for c in self.double.calls
            if c.method.lower() in ("sendmessage", "editmessagetext")
            and c.params.get("chat_id") == chat_id
        ]

    async def settle(self, sender: OutboxSender, *, rounds: int = 2000) -> Settled:
        """Drain; when nothing more may go now, move the clock to the next moment something
        may (a retry, a lease, the limits), until nothing is pending."""
        out, start = Settled(), self.clock.now()
        for _ in range(rounds):
            out.rounds += 1
            report = await sender.drain(self.bot)
            out.reports.append(report)
            pending = await self.pending()
            if not pending:
                break
            self.clock.advance(timedelta(seconds=self._next_step(report, pending)))
        else:
            raise AssertionError(f"the queue never emptied: {len(pending)} rows pending")
        out.seconds = (self.clock.now() - start).total_seconds()
        return out

    def _next_step(self, report: DrainReport, pending: list[Outbox]) -> float:
        now = self.clock.now()
        waits = [report.next_in or 0.0]
        for row in pending:
            waits.append((row.not_before - now).total_seconds())
            if row.lease_until is not None:
                waits.append((row.lease_until - now).total_seconds())
        soonest = min((w for w in waits if w > 0), default=QUARTER)
        return max(QUARTER, math.ceil(soonest / QUARTER) * QUARTER)


def make_settings() -> Settings:
    return Settings(_env_file=None, calendar="24x7", report_limit_per_hour=100_000)  # type: ignore[call-arg]


@asynccontextmanager
async def open_env(uows: UnitOfWorkFactory, org: Org | None = None) -> AsyncIterator[Env]:
    clock = ManualClock(T0)
    settings = make_settings()
    notifier = Notifier(settings, clock)
    calendar = load_calendar(settings.calendar, settings.timezone)
    tickets = TicketService(uows, clock, calendar, settings, notifier)
    org = org or await build_org(uows)
    double = TeleDouble(clock=clock)
    for key, telegram_id in org.ids.items():
        double.add_user(telegram_id, key, username=key)
    double.add_chat(GROUP, type="supergroup", title="Metro 1+10+N")
    double.add_chat(COUNTY_GROUP, type="supergroup", title="East 1+10+N")
    async with Bot(double.token, request=DoubleRequest(double)) as bot:
        yield Env(uows, clock, double, bot, notifier, tickets, org)


@pytest.fixture
async def env(uows: UnitOfWorkFactory) -> AsyncIterator[Env]:
    async with open_env(uows) as env:
        yield env


async def card_posted(env: Env, sender: OutboxSender, chat: int = GROUP) -> tuple[int, int]:
    """A report filed in the group and its card sent: (ticket number, card message id)."""
    outcome = await env.tickets.report(
        env.org["beta_boss"], "The roof of hall 3 leaks", chat_id=chat, message_id=11
    )
    await env.settle(sender)
    ticket = await env.ticket(outcome.ticket.number)
    assert ticket.card_message_id is not None
    return outcome.ticket.number, ticket.card_message_id


def edit_row(number: int, text: str, chat: int = GROUP) -> Outbox:
    payload = {"card_of": number, "text": text, "parse_mode": "HTML"}
    payload["reply_markup"] = {"inline_keyboard": []}
    return Outbox(
        chat_id=chat,
        method="editMessageText",
        payload=payload,
        ticket_id=number,
        created_at=T0,
        not_before=T0,
    )


async def person_id(env: Env, telegram_id: int) -> int:
    async with env.uows(readonly=True) as uow:
        person = await uow.org.person_by_telegram(telegram_id)
        assert person is not None
        return person.id  # type: ignore[return-value]


async def dm_blocked(env: Env, telegram_id: int) -> bool:
    async with env.uows(readonly=True) as uow:
        query = select(Person.dm_blocked).where(Person.telegram_id == telegram_id)
        return (await uow.session.exec(query)).one()


def gaps(times: list[datetime]) -> list[float]:
    return [(b - a).total_seconds() for a, b in itertools.pairwise(times)]


# --------------------------------------------------------------------------- order and limits


async def test_rows_go_out_in_order_per_chat_within_the_limits(env, record_property):
    env.double.enforce_limits()
    chats = {GROUP: "metro", COUNTY_GROUP: "east", env.org["tax_head"]: "dm"}
    queued = {chat: [f"{label} #{i}" for i in range(6)] for chat, label in chats.items()}
    for i in range(6):  # interleaved, as the changes that cause them happen
        for chat in chats:
            await env.queue(chat, [queued[chat][i]])
    env.double.fail_next(1, "500")  # the very first row waits for its retry; its chat waits too
    settled = await env.settle(env.sender())
    line = figures(
        record_property,
        "order per chat",
        rows=18,
        seconds=settled.seconds,
        violations=env.double.violations,
        early_retries=env.double.early_retries,
    )
    for chat in chats:
        assert env.texts_to(chat) == queued[chat], line
        assert min(gaps([r.at for r in env.double.sent_to(chat)])) >= 1.0, line
    rows = await env.rows()
    assert {r.state for r in rows} == {OutboxState.SENT}
    delivered = {(r.chat_id, r.text): r.message_id for r in env.double.sent}
    assert all(r.sent_message_id == delivered[r.chat_id, r.payload["text"]] for r in rows)
    assert all(r.lease_until is None and r.sent_at is not None for r in rows)
    assert (env.double.violations, env.double.early_retries) == (0, 0), line


# --------------------------------------------------------------------------- the ticket card


async def test_the_card_is_recorded_on_its_ticket_and_later_changes_edit_it(env):
    sender = env.sender(limits=None)
    number, card_id = await card_posted(env, sender)
    [card_row] = [r for r in await env.rows() if r.is_card]
    assert card_row.sent_message_id == card_id
    assert env.double.message(GROUP, card_id)["text"].startswith(f"#{number}")
    await env.tickets.assign(env.org["city_coord"], number, "tax")
    await env.tickets.claim(env.org["tax_clerk"], number)
    await env.settle(sender)
    edits = [e for e in env.double.edits if e.chat_id == GROUP]
    assert [(e.method, e.message_id) for e in edits] == [("editMessageText", card_id)] * 2
    assert env.double.message(GROUP, card_id)["text"] == edits[-1].text
    assert (await env.ticket(number)).card_message_id == card_id
    assert [r.id for r in await env.rows() if r.is_card] == [card_row.id]


async def test_an_edit_that_changes_nothing_counts_as_sent(env):
    sender = env.sender(limits=None)
    number, card_id = await card_posted(env, sender)
    first = await env.add(edit_row(number, f"<b>#{number}</b> 已交办"))
    again = await env.add(edit_row(number, f"<b>#{number}</b> 已交办"))
    report = await sender.drain(env.bot)
    assert (report.sent, report.failed, report.errors) == (2, 0, [])
    assert [(await env.row(i)).state for i in (first, again)] == [OutboxState.SENT] * 2
    assert [e.message_id for e in env.double.edits] == [card_id]  # Telegram changed it once


async def test_a_card_deleted_in_the_group_is_posted_again_and_edited_from_then_on(env):
    sender = env.sender(limits=None)
    number, card_id = await card_posted(env, sender)
    await env.double.call("deleteMessage", {"chat_id": GROUP, "message_id": card_id})
    await env.tickets.assign(env.org["city_coord"], number, "tax")
    await env.settle(sender)
    reposted = (await env.ticket(number)).card_message_id
    assert reposted not in (None, card_id)
    shown = env.double.message(GROUP, reposted)
    assert shown is not None
    assert shown["text"].startswith(f"#{number}")
    assert not [e for e in env.double.edits if e.method == "editMessageText"]
    await env.tickets.claim(env.org["tax_clerk"], number)
    await env.settle(sender)
    edits = [e.message_id for e in env.double.edits if e.method == "editMessageText"]
    assert edits == [reposted]  # the new card is edited, not posted a third time
    assert len([r for r in await env.rows() if r.is_card]) == 2
    assert {r.state for r in await env.rows()} == {OutboxState.SENT}


# --------------------------------------------------------------------------- Telegram says no


@pytest.mark.parametrize("how", ["blocked", "deactivated", "never_started", "kicked"])
async def test_a_403_gives_up_at_once_with_the_reason_and_holds_up_nobody(env, how):
    """RELIABILITY B5: no retry of a 403, the person marked, other recipients unaffected."""
    clerk = env.org["tax_clerk"]
    if how == "kicked":
        target, who = COUNTY_GROUP, None
        env.double.kick(COUNTY_GROUP)
    else:
        target, who = clerk, await person_id(env, clerk)
        {"blocked": env.double.block, "deactivated": env.double.deactivate}.get(
            how, env.double.never_started
        )(clerk)
    doomed = await env.queue(target, ["first", "second"], person_id=who)
    await env.queue(GROUP, [f"metro #{i}" for i in range(3)])
    await env.queue(env.org["tax_head"], ["to the head"])
    sender = env.sender()
    settled = await env.settle(sender)
    env.clock.advance(timedelta(hours=1))
    await sender.drain(env.bot)
    for row_id in doomed:
        row = await env.row(row_id)
        assert row.state == OutboxState.FAILED
        assert row.last_error.startswith("403 Forbidden: ")
        assert row.attempts == 1
    assert len(env.calls_to(target)) == len(doomed)  # each tried once, never again
    assert env.texts_to(GROUP) == [f"metro #{i}" for i in range(3)]
    assert env.texts_to(env.org["tax_head"]) == ["to the head"]
    assert settled.seconds == 2.0  # the three group messages at 1/s, as without the 403s
    assert await dm_blocked(env, clerk) is (how != "kicked")


async def test_html_telegram_cannot_parse_fails_once_with_the_error_recorded(env):
    bad = await env.add(
        Outbox(
            chat_id=GROUP,
            payload={"text": "<b>unclosed", "parse_mode": "HTML"},
            created_at=T0,
            not_before=T0,
        )
    )
    await env.queue(GROUP, ["next in line"])
    sender = env.sender(limits=None)
    report = await sender.drain(env.bot)
    row = await env.row(bad)
    assert row.state == OutboxState.FAILED
    assert row.last_error.startswith("400 ")
    assert "can't parse entities" in row.last_error.lower()
    assert report.failed == 1
    assert any("can't parse entities" in e.lower() for e in report.errors)
    assert env.texts_to(GROUP) == ["next in line"]
    env.clock.advance(timedelta(hours=1))
    await sender.drain(env.bot)
    assert len(env.calls_to(GROUP)) == 2


async def test_a_group_that_became_a_supergroup_takes_its_binding_tickets_and_queue_along(env):
    """RELIABILITY A10: ChatMigrated handled, the message delivered at the new id."""
    basic = -4_000_000_123
    async with env.uows() as uow:
        uow.org.add(ChatGroup(chat_id=basic, region_id=env.org.regions["city"], title="Old"))
        await uow.commit()
    sender = env.sender(limits=None)
    number, _ = await card_posted(env, sender, chat=basic)
    new = env.double.migrate(basic)
    before = {r.id for r in await env.rows()}
    await env.tickets.assign(env.org["city_coord"], number, "tax")
    report = await sender.drain(env.bot)
    assert report.errors == []
    async with env.uows(readonly=True) as uow:
        assert await uow.org.group_by_chat(basic) is None
        assert await uow.org.group_by_chat(new) is not None
    ticket = await env.ticket(number)
    assert ticket.group_chat_id == new
    rows = await env.rows()
    assert {r.state for r in rows} == {OutboxState.SENT}
    moved = [r for r in rows if r.id not in before and r.chat_id < 0]
    assert moved, "the assignment told the group"
    assert {r.chat_id for r in moved} == {new}  # queued for the old id, sent to the new one
    assert len(env.double.sent_to(new)) == len(moved)
    assert ticket.card_message_id is not None
    assert env.double.message(new, ticket.card_message_id) is not None  # a card in the new chat
    await env.tickets.claim(env.org["tax_clerk"], number)
    await env.settle(sender)
    assert [e.chat_id for e in env.double.edits] == [new]
    assert [e.message_id for e in env.double.edits] == [ticket.card_message_id]


async def test_retry_after_is_waited_out_then_the_row_goes_and_nothing_is_lost(
    env, record_property
):
    env.double.enforce_limits()
    first, second = await env.queue(GROUP, ["metro #0", "metro #1"])
    await env.queue(env.org["tax_head"], ["to the head"])
    env.double.fail_next(1, "429", retry_after=5)
    sender = env.sender()
    report = await sender.drain(env.bot)
    assert report.rate_limited == 1
    assert env.texts_to(GROUP) == []
    assert env.texts_to(env.org["tax_head"]) == ["to the head"]  # other chats go on
    row = await env.row(first)
    assert (row.not_before, row.attempts) == (T0 + timedelta(seconds=5), 0)
    assert "429" in row.last_error
    for _ in range(19):  # up to 4.75 s: the chat is not tried again
        env.clock.advance(timedelta(seconds=QUARTER))
        await sender.drain(env.bot)
    assert len(env.calls_to(GROUP)) == 1
    env.clock.advance(timedelta(seconds=QUARTER))
    await sender.drain(env.bot)
    assert env.texts_to(GROUP) == ["metro #0"]
    settled = await env.settle(sender)
    assert env.texts_to(GROUP) == ["metro #0", "metro #1"]
    assert (await env.row(second)).state == OutboxState.SENT
    line = figures(
        record_property,
        "retry after",
        early_retries=env.double.early_retries,
        violations=env.double.violations,
        seconds=5 + settled.seconds,
    )
    assert (env.double.early_retries, env.double.violations) == (0, 0), line


async def test_network_errors_back_off_and_the_row_goes_when_the_network_is_back(env):
    [row_id] = await env.queue(GROUP, ["eventually"])
    env.double.fail_next(3, "500")
    report = (await env.settle(env.sender())).reports[0]
    assert report.retried == 1
    assert gaps(env.calls_to(GROUP)) == [1.0, 2.0, 4.0]
    row = await env.row(row_id)
    assert (row.state, row.attempts) == (OutboxState.SENT, 4)
    assert env.texts_to(GROUP) == ["eventually"]


async def test_a_row_that_keeps_failing_is_given_up_after_max_attempts_with_the_error(env):
    [doomed] = await env.queue(GROUP, ["never"])
    await env.queue(GROUP, ["after it"])
    env.double.fail_next(MAX_ATTEMPTS, "502")
    settled = await env.settle(env.sender())
    row = await env.row(doomed)
    assert (row.state, row.attempts) == (OutboxState.FAILED, MAX_ATTEMPTS)
    assert row.last_error.startswith("network: ")
    assert "Bad Gateway" in row.last_error
    assert len(env.calls_to(GROUP)) == MAX_ATTEMPTS + 1
    assert env.texts_to(GROUP) == ["after it"]
    assert settled.total("failed") == 1


async def test_a_send_whose_answer_never_came_is_retried_and_counted_as_ambiguous(
    env, record_property
):
    """RELIABILITY B3: duplicates no more than the ambiguous sends, and nothing lost."""
    await env.queue(GROUP, ["metro #0", "metro #1"])
    await env.queue(env.org["tax_head"], ["to the head"])
    env.double.fail_next(1, "drop_response")  # Telegram took it; the answer was lost
    env.double.fail_next(1, "lost")  # the request itself never arrived
    sender = env.sender()
    await env.settle(sender)
    doubled = env.double.count_duplicates()
    line = figures(
        record_property,
        "timeouts",
        ambiguous_counted=sender.stats.ambiguous,
        ambiguous_accepted=env.double.ambiguous_sends,
        duplicates=doubled,
        lost=0,
    )
    assert sender.stats.ambiguous == 2, line
    assert env.double.ambiguous_sends == 1, line
    assert doubled == 1 <= sender.stats.ambiguous, line
    assert env.texts_to(GROUP) == ["metro #0", "metro #0", "metro #1"]
    assert env.texts_to(env.org["tax_head"]) == ["to the head"]

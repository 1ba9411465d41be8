"""The outbox sender against the Bot API double, on SQLite and PostgreSQL: in order per chat,
within the limits, every Telegram answer handled, and across crashes nothing lost and nothing
doubled but what Telegram's lack of an idempotency key allows."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import func, select
from telegram import Bot

from bot.calendar import load_calendar
from bot.clock import ManualClock
from bot.config import Settings
from bot.notify import Notifier
from bot.outbox import LANES, LEASE, MAX_ATTEMPTS, Claimed, DrainReport, OutboxSender
from bot.ratelimit import Limits, RateLimiter
from bot.services.tickets import TicketService
from bot.teledouble import DoubleRequest, TeleDouble, parse_text, request_params
from storage.db import create_schema, make_engine, make_session_factory
from storage.repositories import TicketRepository
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
            before = (await uow.session.exec(select(func.max(Outbox.id)))).one() or 0
            for text in texts:
                self.notifier.message(uow, chat_id, text, person_id=person_id)
            await uow.commit()
        async with self.uows(readonly=True) as uow:
            query = (
                select(Outbox.id)
                .where(Outbox.id > before, Outbox.chat_id == chat_id)
                .order_by(Outbox.id)
            )
            return list((await uow.session.exec(query)).all())  # type: ignore[arg-type]

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
        async with self.uows(readonly=True) as uow:
            query = select(Outbox).where(Outbox.state == OutboxState.PENDING)
            found = list((await uow.session.exec(query.order_by(Outbox.id))).all())
            uow.session.expunge_all()
        return found

    def texts_to(self, chat_id: int) -> list[str]:
        return [r.text or "" for r in self.double.sent_to(chat_id)]

    def calls_to(self, chat_id: int) -> list[datetime]:
        return [
            c.at
            for c in self.double.calls
            if c.method.lower() in ("sendmessage", "editmessagetext")
            and c.params.get("chat_id") == chat_id
        ]

    async def settle(
        self,
        sender: OutboxSender,
        *,
        rounds: int = 2000,
        each_round: Callable[[int], object] | None = None,
    ) -> Settled:
        """Drain; when nothing more may go now, move the clock to the next moment something
        may (a retry, a lease, the limits), until nothing is pending. `each_round(n)` runs
        before each drain (to inject faults)."""
        out, start = Settled(), self.clock.now()
        for n in range(rounds):
            if each_round is not None:
                each_round(n)
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


async def card_posted(
    env: Env, sender: OutboxSender, chat: int = GROUP, *, bot: Bot | None = None
) -> tuple[int, int]:
    """A report filed in the group and its card sent: (ticket number, card message id).
    With `bot`, one drain through that bot rather than the environment's settling."""
    outcome = await env.tickets.report(
        env.org["beta_boss"], "The roof of hall 3 leaks", chat_id=chat, message_id=11
    )
    if bot is None:
        await env.settle(sender)
    else:
        await sender.drain(bot)
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


async def test_a_long_queue_for_one_chat_holds_up_no_other_chat(env, record_property):
    """A burst to one group (a digest, an announcement) waits out the group's 20 a minute;
    a message queued behind it for someone else goes at once (RELIABILITY B5)."""
    env.double.enforce_limits()
    await env.queue(GROUP, [f"metro #{i}" for i in range(120)])
    await env.queue(env.org["tax_head"], ["to the head"])
    await env.queue(COUNTY_GROUP, ["to the county"])
    report = await env.sender().drain(env.bot)
    line = figures(
        record_property,
        "a burst to one chat",
        burst=120,
        others_sent_at_once=len(env.texts_to(env.org["tax_head"]) + env.texts_to(COUNTY_GROUP)),
        deferred=report.deferred,
    )
    assert env.texts_to(GROUP) == ["metro #0"], line
    assert env.texts_to(env.org["tax_head"]) == ["to the head"], line
    assert env.texts_to(COUNTY_GROUP) == ["to the county"], line


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


async def test_a_card_edit_given_up_lets_the_next_change_set_the_card_right(env):
    """A change that leaves the card as it was edits nothing; but once an edit of the card
    is given up, the card no longer says what was last queued for it, and the next change
    edits it even when it would say the same as the edit given up."""
    sender = env.sender(limits=None)
    number, card_id = await card_posted(env, sender)
    await env.tickets.assign(env.org["city_coord"], number, "tax")
    await env.tickets.claim(env.org["tax_clerk"], number)
    *_, edit = [r for r in await env.pending() if r.method == "editMessageText"]
    claimed = parse_text(edit.payload["text"], "HTML", None, limit=4096)[0]  # as it shows
    async with env.uows() as uow:  # Telegram will refuse the claim's edit
        row = await uow.outbox.get(edit.id)  # type: ignore[arg-type]
        assert row is not None
        row.payload = {**row.payload, "text": "<b>unclosed"}
        await uow.commit()
    await env.settle(sender)
    assert (await env.row(edit.id)).state == OutboxState.FAILED
    assert (await env.ticket(number)).card_digest is None
    assert env.double.message(GROUP, card_id)["text"] != claimed
    await env.tickets.progress(env.org["tax_clerk"], number, "halfway")
    await env.settle(sender)
    assert env.double.edits[-1].message_id == card_id
    assert env.double.message(GROUP, card_id)["text"] == claimed
    await env.tickets.progress(env.org["tax_clerk"], number, "almost")
    edits = len(env.double.edits)
    await env.settle(sender)
    assert len(env.double.edits) == edits  # the card says it already


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


@pytest.fixture
def card_lookups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The tickets whose card the database is asked for, in order."""
    asked: list[int] = []
    lookup = TicketRepository.card_message_id

    async def counted(self: TicketRepository, ticket_id: int) -> int | None:
        asked.append(ticket_id)
        return await lookup(self, ticket_id)

    monkeypatch.setattr(TicketRepository, "card_message_id", counted)
    return asked


async def test_the_sender_edits_a_card_it_posted_without_asking_where_it_is(env, card_lookups):
    sender = env.sender(limits=None)
    number, card_id = await card_posted(env, sender)
    await env.tickets.assign(env.org["city_coord"], number, "tax")
    await env.tickets.claim(env.org["tax_clerk"], number)
    await env.settle(sender)
    edits = [e.message_id for e in env.double.edits if e.method == "editMessageText"]
    assert edits == [card_id, card_id]
    assert card_lookups == []
    other = env.sender(limits=None)  # a sender that did not post it asks, once
    await env.tickets.resolve(env.org["tax_clerk"], number, "done")
    await env.settle(other)
    assert env.double.edits[-1].message_id == card_id
    assert card_lookups == [number]


async def test_a_card_another_sender_posted_anew_is_edited_there_not_posted_again(
    env, card_lookups
):
    """This sender remembers the card it posted; another sender, finding it deleted, posted
    it anew. The edit of the old one is refused, and the row goes again to the new one."""
    sender = env.sender(limits=None)
    number, card_id = await card_posted(env, sender)
    await env.double.call("deleteMessage", {"chat_id": GROUP, "message_id": card_id})
    anew = await env.double.call("sendMessage", {"chat_id": GROUP, "text": f"#{number} anew"})
    async with env.uows() as uow:  # as the other sender records it
        await uow.tickets.remember_cards([(number, anew["message_id"], True)])
        await uow.commit()
    posted = len(env.double.sent)
    await env.tickets.assign(env.org["city_coord"], number, "tax")
    await env.settle(sender)
    edits = [e.message_id for e in env.double.edits if e.method == "editMessageText"]
    assert edits == [anew["message_id"]]
    assert env.double.message(GROUP, anew["message_id"])["text"].startswith(f"#{number}")
    assert len([r for r in env.double.sent[posted:] if r.chat_id == GROUP]) == 1  # its line
    assert (await env.ticket(number)).card_message_id == anew["message_id"]
    assert card_lookups == [number]
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


async def test_a_row_that_cannot_even_be_sent_holds_up_nobody_and_is_given_up_in_the_end(env):
    """A row Telegram never sees (its payload cannot make a request) is retried with backoff
    like a network error and given up with its error; it does not stop the drain."""
    await env.queue(GROUP, ["metro #0"])
    bad = await env.add(
        Outbox(chat_id=COUNTY_GROUP, payload={"parse_mode": "HTML"}, created_at=T0, not_before=T0)
    )
    await env.queue(env.org["tax_head"], ["to the head"])
    await env.queue(COUNTY_GROUP, ["east #1"])
    sender = env.sender(instance="host-a")
    report = await sender.drain(env.bot)
    assert env.texts_to(GROUP) == ["metro #0"]
    assert env.texts_to(env.org["tax_head"]) == ["to the head"]
    assert (report.retried, (await env.row(bad)).attempts) == (1, 1)
    await env.settle(sender)
    row = await env.row(bad)
    assert (row.state, row.attempts) == (OutboxState.FAILED, MAX_ATTEMPTS)
    assert "KeyError" in row.last_error
    assert env.texts_to(COUNTY_GROUP) == ["east #1"]  # its chat goes on after it


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


# --------------------------------------------------------------------------- crashes


class CrashingSender(OutboxSender):
    """Dies, as a killed process would, at one point of its n-th send."""

    def __init__(self, *args: Any, point: str, nth: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.point, self.nth, self.calls = point, nth, 0
        self.fatal: int | None = None  # the row of the n-th send

    async def _call(self, bot: Bot, row: Claimed) -> Any:
        self.calls += 1
        if self.calls == self.nth:
            self.fatal = row.id
            if self.point == "claimed":
                raise ProcessDied
        return await super()._call(bot, row)

    async def _record_sent(self, row: Claimed, message: Any) -> None:
        if self.point == "accepted" and row.id == self.fatal:
            raise ProcessDied
        await super()._record_sent(row, message)
        if self.point == "recorded" and row.id == self.fatal:
            raise ProcessDied


async def queue_for_chats(env: Env, chats: list[int], per_chat: int) -> dict[int, list[str]]:
    """per_chat messages to each chat, interleaved; returns what each chat must get, in order."""
    queued: dict[int, list[str]] = {chat: [] for chat in chats}
    async with env.uows() as uow:
        for i in range(per_chat):
            for chat in chats:
                text = f"to {chat} #{i}"
                env.notifier.message(uow, chat, text)
                queued[chat].append(text)
        await uow.commit()
    return queued


def accepted(env: Env) -> dict[tuple[int, str], int]:
    """How many times Telegram accepted each (chat, text)."""
    seen: dict[tuple[int, str], int] = {}
    for record in env.double.sent:
        key = (record.chat_id, record.text or "")
        seen[key] = seen.get(key, 0) + 1
    return seen


async def in_the_window(env: Env, before: dict[tuple[int, str], int]) -> int:
    """Rows Telegram accepted since `before` whose sending was never recorded: a crash landed
    between Telegram's answer and the commit. Each will be sent once more."""
    now = accepted(env)
    return sum(
        1
        for row in await env.pending()
        if now.get((row.chat_id, row.payload["text"]), 0)
        > before.get((row.chat_id, row.payload["text"]), 0)
    )


def first_seen_order_kept(env: Env, queued: dict[int, list[str]]) -> bool:
    for chat, texts in queued.items():
        firsts = list(dict.fromkeys(env.texts_to(chat)))
        if firsts != texts:
            return False
    return True


def lost(env: Env, queued: dict[int, list[str]]) -> int:
    got = accepted(env)
    return sum(1 for chat, texts in queued.items() for t in texts if (chat, t) not in got)


# where the process dies, and how many duplicates that may cost
CRASH_POINTS = {"claimed": 0, "accepted": 1, "recorded": 0}


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_a_sender_that_dies_mid_drain_loses_nothing_and_repeats_only_the_message_in_flight(
    env, point, record_property
):
    """After the lease, a sender of another name takes over: nothing is lost, and the only
    repeat is a message Telegram had accepted when the process died ("accepted"): the
    answers to the other chats' sends that had come by then are still recorded."""
    chats = [GROUP, COUNTY_GROUP, env.org["tax_head"], env.org["tax_clerk"]]
    queued = await queue_for_chats(env, chats, 5)
    env.double.enforce_limits()
    dead = env.sender(kind=CrashingSender, point=point, nth=7, instance="dead")
    with pytest.raises(ProcessDied):
        await env.settle(dead)
    window = await in_the_window(env, {})
    held = [r for r in await env.pending() if r.lease_owner == "dead" and r.lease_until]
    held_chats = {r.chat_id for r in held if r.lease_until > env.clock.now()}
    assert held_chats, "the dead sender still holds what it had claimed"
    env.clock.advance(timedelta(seconds=1))  # a process takes a moment to start again
    restarted = env.sender(instance="alive")
    before = len(env.double.sent)
    await restarted.drain(env.bot)
    assert not {r.chat_id for r in env.double.sent[before:]} & held_chats  # the lease holds
    env.clock.advance(LEASE)
    await env.settle(restarted)
    doubled = env.double.count_duplicates()
    line = figures(
        record_property,
        f"crash at {point}",
        rows=20,
        lost=lost(env, queued),
        doubled=doubled,
        crashes_inside_the_window=window,
        violations=env.double.violations,
    )
    assert lost(env, queued) == 0, line
    assert window == CRASH_POINTS[point], line
    assert doubled == window, line
    assert first_seen_order_kept(env, queued), line
    assert env.double.violations == 0, line


async def test_a_sender_restarted_under_its_own_name_takes_back_its_leases_at_once(env):
    queued = await queue_for_chats(env, [GROUP, env.org["tax_head"]], 3)
    dead = env.sender(kind=CrashingSender, point="claimed", nth=1, instance="host-a", limits=None)
    with pytest.raises(ProcessDied):
        await dead.drain(env.bot)
    await env.sender(instance="host-a", limits=None).drain(env.bot)  # the clock has not moved
    assert lost(env, queued) == 0
    assert env.double.count_duplicates() == 0
    assert first_seen_order_kept(env, queued)


class KillSwitch:
    """Cancels the task it is called from at its n-th moment: a kill -9 at that point."""

    def __init__(self) -> None:
        self.at = 0
        self.count = 0

    def arm(self, at: int) -> None:
        self.at, self.count = at, 0

    def moment(self) -> None:
        self.count += 1
        if self.count == self.at and (task := asyncio.current_task()) is not None:
            task.cancel()


class KilledUows(UnitOfWorkFactory):
    """Every unit of work the sender opens is a moment the process may die at."""

    def __init__(self, uows: UnitOfWorkFactory, switch: KillSwitch) -> None:
        super().__init__(uows.sessions)
        self.switch = switch

    def __call__(self, **kwargs: Any) -> Any:
        self.switch.moment()
        return super().__call__(**kwargs)

    def single(self) -> Any:
        self.switch.moment()
        return super().single()


class KilledRequest(DoubleRequest):
    """The moment right after Telegram answered is one the process may die at too."""

    def __init__(self, double: TeleDouble, switch: KillSwitch) -> None:
        super().__init__(double)
        self.switch = switch

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        answer = await super().do_request(*args, **kwargs)
        self.switch.moment()
        return answer


@pytest.fixture
async def shared_url(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[str]:
    """A database that several engines (processes) can open: a file for SQLite."""
    if engine.dialect.name != "sqlite":
        yield engine.url.render_as_string(hide_password=False)
        return
    url = f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}"
    file_engine = make_engine(url)
    await create_schema(file_engine)
    await file_engine.dispose()
    yield url


KILLS = 20


async def test_twenty_kills_at_random_moments_lose_nothing_and_repeat_only_what_was_in_flight(
    shared_url, record_property
):
    """RELIABILITY C1 for the sender: every incarnation gets its own engine and name and is
    cancelled at a random moment (a unit of work opening, or just after Telegram answered);
    the next starts after the lease. Duplicates equal the kills that landed in the window."""
    rng = random.Random(4)
    main = make_engine(shared_url)
    try:
        async with open_env(UnitOfWorkFactory(make_session_factory(main))) as env:
            chats = [GROUP - n for n in range(10)] + [6_000_000_000 + n for n in range(10)]
            # a life dies at its 30th moment at the latest, each answer being one, with up to
            # a lane's worth more in flight: enough rows that every life dies with some left
            per_chat = KILLS * (30 + LANES) // len(chats) + 1
            queued = await queue_for_chats(env, chats, per_chat)
            switch, window, kills = KillSwitch(), 0, 0
            for life in range(KILLS):
                before = accepted(env)
                finished = await _live(env, shared_url, switch, life, rng.randint(3, 30))
                kills += not finished
                window += await in_the_window(env, before)
                if finished:
                    break
                env.clock.advance(LEASE + timedelta(seconds=1))
            else:
                await env.settle(env.sender(instance="last", limits=None))
            doubled = env.double.count_duplicates()
            line = figures(
                record_property,
                "sender killed at random moments",
                rows=per_chat * len(chats),
                kills=kills,
                kills_inside_the_window=window,
                lost=lost(env, queued),
                doubled=doubled,
            )
            assert kills == KILLS, line
            assert lost(env, queued) == 0, line
            assert doubled == window, line
            assert first_seen_order_kept(env, queued), line
            assert {r.state for r in await env.rows()} == {OutboxState.SENT}, line
    finally:
        await main.dispose()


async def _live(env: Env, url: str, switch: KillSwitch, life: int, kill_at: int) -> bool:
    """One incarnation of the sender, with its own engine, Bot and name; True when it
    emptied the queue before its kill came."""
    engine = make_engine(url)
    uows = KilledUows(UnitOfWorkFactory(make_session_factory(engine)), switch)
    try:
        async with Bot(env.double.token, request=KilledRequest(env.double, switch)) as bot:
            sender = env.sender(instance=f"life-{life}", uows=uows, limits=None)
            switch.arm(kill_at)

            async def drain_until_empty() -> None:
                while True:
                    await sender.drain(bot)
                    async with uows(readonly=True) as uow:
                        if not await uow.outbox.depth():
                            return
                    env.clock.advance(timedelta(seconds=1))

            task = asyncio.create_task(drain_until_empty())
            try:
                await task
            except asyncio.CancelledError:
                return False
            finally:
                switch.arm(0)
            return True
    finally:
        await engine.dispose()  # the process is gone: its connections close


# --------------------------------------------------------------------------- several instances

ON_POSTGRES = pytest.mark.parametrize(
    "engine", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@asynccontextmanager
async def second_process(env: Env, url: str) -> AsyncIterator[tuple[UnitOfWorkFactory, Bot]]:
    """Another process over the same database: its own engine, pool and Bot."""
    engine = make_engine(url)
    try:
        async with Bot(env.double.token, request=DoubleRequest(env.double)) as bot:
            yield UnitOfWorkFactory(make_session_factory(engine)), bot
    finally:
        await engine.dispose()


async def drain_together(
    env: Env, senders: list[tuple[OutboxSender, Bot]], *, rounds: int = 200
) -> list[BaseException | DrainReport]:
    """All senders drain at once, again and again, until the queue is empty, nobody gets
    anything more out, or all are dead."""
    outcomes: list[BaseException | DrainReport] = []
    alive = list(senders)
    for _ in range(rounds):
        results = await asyncio.gather(
            *(sender.drain(bot) for sender, bot in alive), return_exceptions=True
        )
        outcomes.extend(results)
        reports = [r for r in results if isinstance(r, DrainReport)]
        alive = [s for s, r in zip(alive, results, strict=True) if isinstance(r, DrainReport)]
        if not alive or not await env.pending() or not any(r.sent for r in reports):
            break
    return outcomes


@ON_POSTGRES
async def test_two_senders_on_postgresql_send_each_of_500_rows_exactly_once_in_order(
    env, pg_url, record_property
):
    """RELIABILITY C4: SKIP LOCKED and the lease split the work between two processes; the
    order per chat holds across them."""
    chats = [GROUP - n for n in range(25)] + [6_000_000_000 + n for n in range(25)]
    queued = await queue_for_chats(env, chats, 10)
    async with second_process(env, pg_url) as (other_uows, other_bot):
        # a batch is the first row of up to `batch` chats: 10 leaves chats for the other
        a = env.sender(limits=None, instance="a", batch=10)
        b = env.sender(limits=None, instance="b", uows=other_uows, batch=10)
        outcomes = await drain_together(env, [(a, env.bot), (b, other_bot)])
    by_a, by_b = a.stats.sent, b.stats.sent
    doubled = env.double.count_duplicates()
    line = figures(
        record_property,
        "two senders on PostgreSQL",
        rows=500,
        chats=50,
        sent_by_a=by_a,
        sent_by_b=by_b,
        rounds=len(outcomes) // 2,
        lost=lost(env, queued),
        doubled=doubled,
    )
    assert [o for o in outcomes if not isinstance(o, DrainReport)] == []
    assert len(env.double.sent) == 500, line
    assert (lost(env, queued), doubled) == (0, 0), line
    assert all(env.texts_to(chat) == texts for chat, texts in queued.items()), line
    assert by_a + by_b == 500, line
    assert by_a > 0, line
    assert by_b > 0, line


@ON_POSTGRES
async def test_a_sender_that_dies_mid_batch_leaves_its_rows_to_the_other_after_the_lease(
    env, pg_url, record_property
):
    """RELIABILITY C4: kill one instance mid-batch; its claims are taken over once the lease
    ends, each row still sent once (it died before sending, outside the window)."""
    chats = [GROUP - n for n in range(25)] + [6_000_000_000 + n for n in range(25)]
    queued = await queue_for_chats(env, chats, 4)
    async with second_process(env, pg_url) as (other_uows, other_bot):
        a = env.sender(limits=None, instance="a", batch=10)
        b = env.sender(
            limits=None,
            instance="b",
            uows=other_uows,
            batch=10,
            kind=CrashingSender,
            point="claimed",
            nth=5,
        )
        outcomes = await drain_together(env, [(a, env.bot), (b, other_bot)])
        assert any(isinstance(o, ProcessDied) for o in outcomes)
        pending = await env.pending()
        orphaned = [r for r in pending if r.lease_owner == "b" and r.lease_until]
        held = {r.chat_id for r in orphaned}
        assert orphaned, "b died holding a claimed batch"
        assert {r.chat_id for r in pending} == held  # a sent everything else meanwhile
        waited = LEASE + timedelta(seconds=1)
        env.clock.advance(waited)
        await drain_together(env, [(a, env.bot)])
    doubled = env.double.count_duplicates()
    line = figures(
        record_property,
        "a sender dies on PostgreSQL",
        rows=200,
        sent_before_death_by_b=b.stats.sent,
        orphaned_claims=len(orphaned),
        rows_behind_them=len(pending) - len(orphaned),
        recovered_after_s=waited.total_seconds(),
        lost=lost(env, queued),
        doubled=doubled,
    )
    assert (lost(env, queued), doubled) == (0, 0), line
    assert all(env.texts_to(chat) == texts for chat, texts in queued.items()), line
    assert not await env.pending()


# --------------------------------------------------------------------------- batches and lanes


async def test_one_claim_leases_each_chats_next_rows_in_order_up_to_the_first_that_waits(env):
    """The next rows of many chats in one claim: each chat's from its first pending row on,
    in id order, up to `depth`, up to a row not due yet, and none of a chat whose first row
    another sender holds; chats in the order of their first rows."""
    dm, held, late = env.org["tax_head"], env.org["tax_clerk"], env.org["city_coord"]
    queued = await queue_for_chats(env, [GROUP, COUNTY_GROUP, dm, held, late], 4)
    rows = await env.rows()
    ids = {chat: [r.id for r in rows if r.chat_id == chat] for chat in queued}
    async with env.uows() as uow:
        first, third = await uow.outbox.get(ids[held][0]), await uow.outbox.get(ids[late][2])
        assert first is not None
        assert third is not None
        first.lease_owner, first.lease_until = "other", T0 + LEASE  # another sender's
        third.not_before = T0 + timedelta(seconds=5)  # a retry, say
        await uow.commit()
    async with env.uows() as uow:
        got = await uow.outbox.claim(
            T0, T0 + LEASE, owner="me", chats=3, depth=3, skip=[COUNTY_GROUP]
        )
        await uow.commit()
    assert (
        [(r.chat_id, r.id) for r in got]
        == [
            *((GROUP, i) for i in ids[GROUP][:3]),  # depth 3 of 4
            *((dm, i) for i in ids[dm][:3]),
            *((late, i) for i in ids[late][:2]),  # its third waits, so does its fourth
        ]
    )
    leased = {r.id for r in await env.rows() if r.lease_owner == "me"}
    assert leased == {r.id for r in got}
    async with env.uows() as uow:  # another sender: the chats held wait, whole, for "me"
        rest = await uow.outbox.claim(T0, T0 + LEASE, owner="you", chats=10, depth=10)
        await uow.commit()
    assert [(r.chat_id, r.id) for r in rest] == [(COUNTY_GROUP, i) for i in ids[COUNTY_GROUP]]


async def test_two_senders_on_one_database_send_every_row_once_and_in_order(
    env, shared_url, record_property
):
    """Two processes drain one queue at once, many lanes each: the leases split it, each
    row goes once, each chat's rows in order (SQLite: a file both open; PostgreSQL)."""
    if "sqlite" not in shared_url:
        await _two_senders(env, shared_url, record_property)
        return
    engine = make_engine(shared_url)
    try:
        other = _over(env, UnitOfWorkFactory(make_session_factory(engine)))
        await _two_senders(other, shared_url, record_property)
    finally:
        await engine.dispose()


async def _two_senders(env: Env, url: str, record_property: Any) -> None:
    chats = [GROUP - n for n in range(15)] + [6_000_000_000 + n for n in range(15)]
    queued = await queue_for_chats(env, chats, 8)
    async with second_process(env, url) as (other_uows, other_bot):
        a = env.sender(limits=None, instance="a", batch=8)
        b = env.sender(limits=None, instance="b", uows=other_uows, batch=8)
        outcomes = await drain_together(env, [(a, env.bot), (b, other_bot)])
    line = figures(
        record_property,
        "two senders, one database",
        rows=240,
        sent_by_a=a.stats.sent,
        sent_by_b=b.stats.sent,
        doubled=env.double.count_duplicates(),
    )
    assert [o for o in outcomes if not isinstance(o, DrainReport)] == [], line
    assert (lost(env, queued), env.double.count_duplicates()) == (0, 0), line
    assert all(env.texts_to(chat) == texts for chat, texts in queued.items()), line
    assert a.stats.sent + b.stats.sent == 240, line
    assert a.stats.sent > 0, line
    assert b.stats.sent > 0, line


def _over(env: Env, uows: UnitOfWorkFactory) -> Env:
    """The same environment over another engine of the same database."""
    return Env(uows, env.clock, env.double, env.bot, env.notifier, env.tickets, env.org)


class HeldRequest(DoubleRequest):
    """Telegram takes each request at once but its answer waits until `let_go`."""

    def __init__(self, double: TeleDouble) -> None:
        super().__init__(double)
        self.gate = asyncio.Event()
        self.waiting = 0
        self.arrived = asyncio.Event()
        self.expect = 0

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        answer = await super().do_request(*args, **kwargs)
        if "sendMessage" in str(kwargs.get("url", args[0] if args else "")):
            self.waiting += 1
            if self.waiting >= self.expect:
                self.arrived.set()
            await self.gate.wait()
        return answer


class CountedUows(UnitOfWorkFactory):
    """Counts the writing units of work."""

    def __init__(self, uows: UnitOfWorkFactory) -> None:
        super().__init__(uows.sessions)
        self.writes = 0

    def __call__(self, **kwargs: Any) -> Any:
        self.writes += not kwargs.get("readonly")
        return super().__call__(**kwargs)

    def single(self) -> Any:
        self.writes += 1
        return super().single()


async def test_answers_that_come_together_are_recorded_in_one_transaction(env):
    chats = [GROUP - n for n in range(LANES)]
    await queue_for_chats(env, chats, 1)
    request = HeldRequest(env.double)
    request.expect = LANES
    uows = CountedUows(env.uows)
    async with Bot(env.double.token, request=request) as bot:
        sender = env.sender(limits=None, uows=uows)
        drain = asyncio.create_task(sender.drain(bot))
        await request.arrived.wait()  # every lane's request is with Telegram
        writes = uows.writes  # the claim
        request.gate.set()
        report = await drain
    assert report.sent == LANES
    assert uows.writes - writes == 1  # one record for all the answers
    assert {r.state for r in await env.rows()} == {OutboxState.SENT}


class ChatHeldRequest(DoubleRequest):
    """Telegram takes each request at once; the answers to the chats of `gates` wait until
    their gate is set."""

    def __init__(self, double: TeleDouble, chats: Iterable[int]) -> None:
        super().__init__(double)
        self.gates = {chat: asyncio.Event() for chat in chats}
        self.held = {chat: asyncio.Event() for chat in chats}

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        answer = await super().do_request(*args, **kwargs)
        data = kwargs.get("request_data", args[2] if len(args) > 2 else None)
        chat = int(request_params(data).get("chat_id", 0))  # the wire's parameters are text
        if chat in self.gates:
            self.held[chat].set()
            await self.gates[chat].wait()
        return answer


class GatheringSender(OutboxSender):
    """Says when a record starts waiting for more answers, and when one is written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gathering = asyncio.Event()
        self.written: list[list[int]] = []
        self.wrote = asyncio.Event()

    async def _gather_more(self) -> None:
        self.gathering.set()
        await super()._gather_more()

    async def _write_sent(self, batch: Any) -> None:
        await super()._write_sent(batch)
        self.written.append([row.id for row, *_ in batch])
        self.wrote.set()


async def test_a_record_waits_for_the_answers_asked_for_before_it_not_for_later_sends(
    env, monkeypatch
):
    """A chat's next message waits for the record of its last, and the record waits a
    moment for the answers on their way to write them together; a send started meanwhile
    must not keep it waiting (a stream of them would keep it to the end of RECORD_WAIT)."""
    monkeypatch.setattr("bot.outbox.RECORD_WAIT", 3600.0)  # only the answers may end it
    a, b, c = GROUP, GROUP - 1, GROUP - 2
    [a1, a2] = await env.queue(a, ["a1", "a2"])
    [b1] = await env.queue(b, ["b1"])
    request = ChatHeldRequest(env.double, [b, c])
    async with Bot(env.double.token, request=request) as bot:
        sender = env.sender(limits=None, kind=GatheringSender, lanes=2)
        drain = asyncio.create_task(sender.drain(bot))
        await asyncio.wait_for(
            sender.gathering.wait(), timeout=30
        )  # a1 answered; b1's answer is on its way
        [c1] = await env.queue(c, ["c1"])
        sender.wake()
        await asyncio.wait_for(
            request.held[c].wait(), timeout=30
        )  # c1 is with Telegram, started after the gathering
        request.gates[b].set()
        await asyncio.wait_for(sender.wrote.wait(), timeout=30)
        first = sender.written[0]
        request.gates[c].set()
        report = await drain
    assert sorted(first) == [a1, b1]  # written once b1 answered, c1 still asking
    assert report.sent == 4
    assert env.texts_to(a) == ["a1", "a2"]
    assert {r.id for r in await env.rows() if r.state == OutboxState.SENT} == {a1, a2, b1, c1}


async def test_stop_lets_the_sends_in_flight_finish_and_gives_the_rest_back(env):
    """`stop()` while requests are with Telegram: their answers are recorded, nothing more
    is sent, and the rows claimed but not sent are free for any sender at once."""
    chats = [GROUP - n for n in range(LANES * 2)]
    await queue_for_chats(env, chats, 2)
    request = HeldRequest(env.double)
    request.expect = LANES
    async with Bot(env.double.token, request=request) as bot:
        sender = env.sender(limits=None, instance="host-a")
        running = asyncio.create_task(sender.run(bot, idle=3600))
        await request.arrived.wait()
        sender.stop()
        request.gate.set()
        await running
    rows = await env.rows()
    sent = [r for r in rows if r.state == OutboxState.SENT]
    assert len(sent) == len(env.double.sent) == LANES
    assert all(r.lease_until is None for r in rows)
    assert len([r for r in rows if r.state == OutboxState.PENDING]) == LANES * 4 - LANES


async def three_tickets_the_first_with_a_card(env: Env, first_message: int) -> list[int]:
    """Three tickets reported in the group; the first one's card is message 100."""
    numbers = []
    for message_id in range(first_message, first_message + 3):
        outcome = await env.tickets.report(
            env.org["beta_boss"], f"leak {message_id}", chat_id=GROUP, message_id=message_id
        )
        numbers.append(outcome.ticket.number)
    async with env.uows() as uow:
        await uow.tickets.remember_cards([(numbers[0], 100, False)])
        await uow.commit()
    return numbers


async def test_the_cards_of_a_batch_are_remembered_in_a_statement_each_way(env):
    """First cards never overwrite one already known; a card posted anew replaces it,
    whichever came first in the batch."""
    numbers = await three_tickets_the_first_with_a_card(env, 21)
    a, b, c = numbers
    statements: list[str] = []
    engine = env.uows.sessions.kw["bind"].sync_engine

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0].upper())

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        async with env.uows() as uow:
            await uow.tickets.remember_cards(
                [(a, 101, False), (b, 200, False), (c, 300, True), (b, 201, True), (c, 301, False)]
            )
            await uow.commit()
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert statements.count("UPDATE") == 2
    cards = [(await env.ticket(n)).card_message_id for n in numbers]
    assert cards == [100, 201, 300]


async def test_a_record_marks_the_rows_and_cards_and_is_one_round_trip_on_postgresql(env):
    """The sender's record: its rows sent (message id, time, one attempt more, no lease) and
    the cards remembered as `remember_cards` would; on PostgreSQL one statement outside any
    transaction (no BEGIN or COMMIT to wait for)."""
    numbers = await three_tickets_the_first_with_a_card(env, 31)
    a, b, c = numbers
    first, second = (await env.rows())[:2]
    at = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    statements: list[str] = []
    engine = env.uows.sessions.kw["bind"].sync_engine
    postgres = engine.dialect.name == "postgresql"

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        async with env.uows.single() as uow:
            cards = [(a, 101, False), (b, 200, False), (c, 300, True), (b, 201, True)]
            await uow.outbox.record_sent(
                [(first.id, at, 501), (second.id, at, None)], [*cards, (c, 301, False)]
            )
            if postgres:
                raw = await (await uow.session.connection()).get_raw_connection()
                assert not raw.driver_connection.is_in_transaction()
            await uow.commit()
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert len(statements) == (1 if postgres else 3)
    assert [(await env.ticket(n)).card_message_id for n in numbers] == [100, 201, 300]
    for row, message_id in ((first, 501), (second, None)):
        fresh = await env.row(row.id)
        assert (fresh.state, fresh.sent_message_id, fresh.attempts, fresh.lease_until) == (
            OutboxState.SENT,
            message_id,
            row.attempts + 1,
            None,
        )
        assert fresh.sent_at is not None
        assert fresh.sent_at.replace(tzinfo=UTC) == at

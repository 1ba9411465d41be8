"""A real PTB Application over an in-memory database, the Bot API replaced by the TeleDouble
at the request layer: an update goes in, and the double's ledger shows what people saw."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select, update
from telegram import Update
from telegram.ext import Application

from bot.app import Services, build_application, build_services
from bot.clock import ManualClock
from bot.config import Settings
from bot.teledouble import DoubleRequest, SentRecord, TeleDouble
from storage.tables import Outbox, OutboxState, Ticket
from tests.factories import GROUP, Org, build_org

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # a Monday, 09:00 in Shanghai
STRANGER = 7_000_000_001
UNBOUND = -1009999999999
JSON = dict[str, Any]


def make_settings(url: str = "sqlite+aiosqlite://") -> Settings:
    return Settings(_env_file=None, database_url=url, calendar="24x7")  # type: ignore[call-arg]


@dataclass
class Harness:
    """One bot, its double and its org chart, with the words tests speak in."""

    app: Application[Any, Any, Any, Any, Any, Any]
    double: TeleDouble
    services: Services
    org: Org
    clock: ManualClock
    errors: list[BaseException] = field(default_factory=list)
    sources: dict[int, JSON] = field(default_factory=dict)  # ticket -> the message it came from

    def uid(self, who: str | int) -> int:
        return who if isinstance(who, int) else self.org[who]

    # ---- updates in, as Telegram would send them ------------------------------------------

    def make_command_update(
        self, text: str, user: str | int, chat: int | None = None, reply_to: Any = None
    ) -> Update:
        """A message in a chat (the person's private chat when no chat is given)."""
        raw = self.double.user_says(self._chat(chat, user), self.uid(user), text, reply_to)
        return Update.de_json(raw, self.app.bot)

    make_message_update = make_command_update

    def make_update(self, raw: JSON) -> Update:
        return Update.de_json(raw, self.app.bot)

    def make_photo_update(
        self, user: str | int, chat: int | None = None, caption: str | None = None
    ) -> Update:
        raw = self.double.user_sends_photo(self._chat(chat, user), self.uid(user), caption)
        return Update.de_json(raw, self.app.bot)

    def make_callback_update(self, user: str | int, message: Any, data: str) -> Update:
        raw = self.double.user_presses(self.uid(user), message, data)
        return Update.de_json(raw, self.app.bot)

    def _chat(self, chat: int | None, user: str | int) -> int:
        return chat if chat is not None else self.uid(user)

    async def process(self, update: Update) -> list[SentRecord]:
        """Handle one update, send what it queued; the messages and edits it caused."""
        marks = len(self.double.sent), len(self.double.edits)
        await self.app.process_update(update)
        await self.services.sender.drain(self.app.bot)
        return self.double.sent[marks[0] :] + self.double.edits[marks[1] :]

    async def say(
        self, who: str | int, text: str, chat: int | None = None, reply_to: Any = None
    ) -> list[SentRecord]:
        return await self.process(self.make_command_update(text, who, chat, reply_to))

    async def press(self, who: str | int, message: Any, data: str) -> JSON:
        """Press a button; the answer the presser got (text, show_alert)."""
        update = self.make_callback_update(who, message, data)
        await self.process(update)
        assert update.callback_query is not None
        return self.double.callback_answers[update.callback_query.id]

    # ---- what people saw ------------------------------------------------------------------

    def texts(self, records: list[SentRecord], chat: int | None = None) -> list[str]:
        return [r.text or "" for r in records if chat is None or r.chat_id == chat]

    def only_reply(self, records: list[SentRecord], chat: int | None = None) -> str:
        found = self.texts(records, chat)
        assert len(found) == 1, found
        return found[0]

    def card(self, number: int, chat: int = GROUP) -> JSON:
        """The ticket's live card as the group shows it now."""
        for message in self.double.messages_in(chat, from_bot=True):
            if message.get("text", "").startswith(f"#{number} "):
                return message
        raise AssertionError(f"no card for #{number}")

    # ---- the database, for the assertions -------------------------------------------------

    async def ticket(self, number: int) -> Ticket:
        async with self.services.uows(readonly=True) as uow:
            row = await uow.tickets.get(number)
            assert row is not None
            uow.session.expunge(row)  # keep what was read past the rollback
            return row

    async def failed_sends(self) -> list[str]:
        """Outbox rows Telegram refused (a bad entity, a message too long …)."""
        async with self.services.uows(readonly=True) as uow:
            query = select(Outbox).where(Outbox.state == OutboxState.FAILED)
            return [row.last_error or "" for row in (await uow.session.exec(query)).all()]

    async def count_tickets(self) -> int:
        async with self.services.uows(readonly=True) as uow:
            return len((await uow.session.exec(select(Ticket))).all())

    async def attachments(self, number: int) -> list[tuple[str, str | None]]:
        async with self.services.uows(readonly=True) as uow:
            return [(a.kind, a.file_id) for a in await uow.events.attachments_of(number)]

    async def events(self, number: int) -> list[str]:
        async with self.services.uows(readonly=True) as uow:
            return [e.kind for e in await uow.events.of_ticket(number)]

    async def make_ticket(
        self, state: str = "reported", text: str = "路灯坏了 lamp out", *, quiet: bool = False
    ) -> int:
        """A ticket of Acme's (Ann) in the city group, walked to `state` by the services.

        `quiet` skips what the walk would have sent (the card, the notes): faster, for tests
        that only watch what their own step sends.
        """
        t, o = self.services.tickets, self.org
        self.clock.advance(timedelta(seconds=1))
        message = self.double.user_says(GROUP, o["acme_boss"], text)["message"]
        source = message["message_id"]
        n = (await t.report(o["acme_boss"], text, chat_id=GROUP, message_id=source)).ticket.number
        self.sources[n] = message
        for step in _WALKS[state]:
            if step == "assign":
                await t.assign(o["city_coord"], n, "tax")
            elif step == "claim":
                await t.claim(o["tax_clerk"], n)
            elif step == "return":
                await t.return_(o["tax_clerk"], n, "not ours", "market")
            elif step == "supervise":
                await t.supervise(o["mayor"], n, "hurry")
            elif step == "resolve":
                await t.resolve(o["tax_clerk"], n, "fixed")
        if quiet:
            await self._forget_queue()
        else:
            await self.services.sender.drain(self.app.bot)
        return n

    async def _forget_queue(self) -> None:
        async with self.services.uows() as uow:
            pending = Outbox.state == OutboxState.PENDING
            await uow.session.exec(update(Outbox).where(pending).values(state=OutboxState.SENT))
            await uow.commit()


_WALKS = {
    "reported": [],
    "assigned": ["assign"],
    "claimed": ["assign", "claim"],
    "returned": ["assign", "return"],
    "supervised": ["assign", "supervise"],
    "resolved": ["assign", "claim", "resolve"],
}


def _register_people(double: TeleDouble, org: Org) -> None:
    english = {"acme_boss", "beta_boss", "tax_head", "mayor"}
    for key, telegram_id in org.ids.items():
        lang = "en" if key in english else "zh-hans"
        double.add_user(telegram_id, key, username=key, language_code=lang)
    double.add_user(STRANGER, "Stan", username="stan_stranger", language_code="en")
    double.add_chat(GROUP, type="supergroup", title="Metro 1+10+N")
    double.add_chat(UNBOUND, type="supergroup", title="Somewhere else")


async def open_app(
    settings: Settings, clock: ManualClock, engine: AsyncEngine, double: TeleDouble
) -> tuple[Application[Any, Any, Any, Any, Any, Any], Services, list[BaseException]]:
    """An application over this engine, talking to this double, its errors collected."""
    services = build_services(settings, clock=clock, engine=engine, limits=None)
    app = build_application(
        settings, clock=clock, request=DoubleRequest(double), services=services, token=double.token
    )
    errors: list[BaseException] = []

    async def collect(update: object, context: Any) -> None:
        errors.append(context.error)

    app.add_error_handler(collect)
    return app, services, errors


@pytest.fixture
async def harness(engine: AsyncEngine) -> AsyncIterator[Harness]:
    clock = ManualClock(START)
    double = TeleDouble(clock=clock)
    settings = make_settings()
    app, services, errors = await open_app(settings, clock, engine, double)
    org = await build_org(services.uows)
    _register_people(double, org)
    async with app:
        h = Harness(app, double, services, org, clock, errors)
        yield h
        assert await h.failed_sends() == []
    assert errors == [], errors

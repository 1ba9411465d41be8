"""Services over a real database (SQLite, and PostgreSQL when set up) and a hand-moved clock."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import select

from bot.calendar import WorkCalendar, load_calendar
from bot.clock import ManualClock
from bot.config import Settings
from bot.notify import Notifier
from bot.services.queries import QueryService
from bot.services.tickets import TicketService
from storage.tables import Outbox, Ticket, TicketEvent
from storage.uow import UnitOfWorkFactory
from tests.factories import GROUP, Org, build_org

# Monday 2 March 2026, 10:00 in Beijing: a working morning
START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
REPORT_LIMIT = 5


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, calendar="cn", report_limit_per_hour=REPORT_LIMIT)  # type: ignore[call-arg]


@pytest.fixture
def calendar(settings: Settings) -> WorkCalendar:
    return load_calendar(settings.calendar, settings.timezone)


@pytest.fixture
def tickets(
    uows: UnitOfWorkFactory, clock: ManualClock, calendar: WorkCalendar, settings: Settings
) -> TicketService:
    return TicketService(uows, clock, calendar, settings, Notifier(settings, clock))


@pytest.fixture
def queries(uows: UnitOfWorkFactory, clock: ManualClock) -> QueryService:
    return QueryService(uows, clock)


@pytest.fixture
async def org(uows: UnitOfWorkFactory) -> Org:
    return await build_org(uows)


@dataclass
class Flow:
    """Shortcuts that walk a ticket to a state through the service, as people would."""

    tickets: TicketService
    uows: UnitOfWorkFactory
    org: Org
    messages: Any = None

    def __post_init__(self) -> None:
        self.messages = itertools.count(1000)

    async def reported(
        self, text: str = "The roof of hall 3 leaks", who: str = "acme_boss", chat: int = GROUP
    ) -> int:
        outcome = await self.tickets.report(
            self.org[who], text, chat_id=chat, message_id=next(self.messages)
        )
        return outcome.ticket.number

    async def assigned(self, department: str = "tax", **report: Any) -> int:
        number = await self.reported(**report)
        await self.tickets.assign(self.org["city_coord"], number, department)
        return number

    async def claimed(self, who: str = "tax_clerk", **report: Any) -> int:
        number = await self.assigned(**report)
        await self.tickets.claim(self.org[who], number)
        return number

    async def resolved(self, who: str = "tax_clerk", **report: Any) -> int:
        number = await self.claimed(who=who, **report)
        await self.tickets.resolve(self.org[who], number, "fixed the roof")
        return number

    async def closed(self, **report: Any) -> int:
        number = await self.resolved(**report)
        await self.tickets.rate(self.org["acme_boss"], number, "satisfied")
        return number

    async def stored(self, number: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The ticket row and its events, as plain values to compare before and after."""
        async with self.uows(readonly=True) as uow:
            ticket = await uow.tickets.get(number)
            assert ticket is not None
            events = await uow.events.of_ticket(number)
            return _plain(ticket), [_plain(e) for e in events]

    async def events(self, number: int) -> list[TicketEvent]:
        async with self.uows(readonly=True) as uow:
            rows = list(await uow.events.of_ticket(number))
            uow.session.expunge_all()  # leaving a unit of work rolls back, which expires rows
            return rows

    async def ticket(self, number: int) -> Ticket:
        async with self.uows(readonly=True) as uow:
            ticket = await uow.tickets.get(number)
            assert ticket is not None
            uow.session.expunge_all()
            return ticket

    async def outbox(self) -> list[Outbox]:
        async with self.uows(readonly=True) as uow:
            rows = list((await uow.session.exec(select(Outbox).order_by(Outbox.id))).all())
            uow.session.expunge_all()
            return rows

    async def count(self, table: type) -> int:
        async with self.uows(readonly=True) as uow:
            query = select(sa.func.count()).select_from(table)
            return (await uow.session.exec(query)).one()


def _plain(row: Any) -> dict[str, Any]:
    return {c.name: getattr(row, c.name) for c in type(row).__table__.columns}


@pytest.fixture
async def flow(tickets: TicketService, uows: UnitOfWorkFactory, org: Org) -> Flow:
    return Flow(tickets, uows, org)

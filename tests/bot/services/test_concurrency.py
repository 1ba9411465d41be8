"""Officials pressing "claim" at the same moment: exactly one gets the ticket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.calendar import WorkCalendar
from bot.clock import ManualClock
from bot.config import Settings
from bot.errors import InvalidTransitionError
from bot.notify import Notifier
from bot.services.tickets import TicketService
from storage.db import create_schema, make_engine, make_session_factory
from storage.tables import Person, Role, TicketState
from storage.uow import UnitOfWorkFactory
from tests.factories import GROUP, Org, build_org


@pytest.fixture
async def shared_engine(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A database several connections really share: a file for SQLite (in-memory SQLite is one
    connection for everybody, which would serialize the race away), the server for PostgreSQL.
    """
    if engine.dialect.name != "sqlite":
        yield engine
        return
    file_engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'race.db'}")
    await create_schema(file_engine)
    yield file_engine
    await file_engine.dispose()


@pytest.fixture
def race_uows(shared_engine: AsyncEngine) -> UnitOfWorkFactory:
    return UnitOfWorkFactory(make_session_factory(shared_engine))


@pytest.fixture
def race_service(
    race_uows: UnitOfWorkFactory, clock: ManualClock, calendar: WorkCalendar, settings: Settings
) -> TicketService:
    return TicketService(race_uows, clock, calendar, settings, Notifier(settings, clock))


async def add_tax_officials(uows: UnitOfWorkFactory, org: Org, count: int) -> list[int]:
    """More officials of the tax bureau, each with a 64-bit Telegram id."""
    ids = [7_000_000_000 + n for n in range(count)]
    async with uows() as uow:
        for n, telegram_id in enumerate(ids):
            uow.org.add(
                Person(
                    telegram_id=telegram_id,
                    name=f"Tax official {n}",
                    role=Role.OFFICIAL,
                    department_id=org.depts["tax"],
                    region_id=org.regions["city"],
                )
            )
        await uow.commit()
    return ids


async def assigned_ticket(service: TicketService, org: Org) -> int:
    outcome = await service.report(org["acme_boss"], "a leak", chat_id=GROUP, message_id=1)
    await service.assign(org["city_coord"], outcome.ticket.number, "tax")
    return outcome.ticket.number


@pytest.mark.parametrize("officials", [2, 20])
async def test_of_concurrent_claims_exactly_one_wins_and_the_rest_hear_who(
    race_service, race_uows, officials
):
    org = await build_org(race_uows)
    ids = await add_tax_officials(race_uows, org, officials)
    number = await assigned_ticket(race_service, org)

    results = await asyncio.gather(
        *(race_service.claim(telegram_id, number) for telegram_id in ids),
        return_exceptions=True,
    )

    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    assert len(wins) == 1
    [win] = wins
    assert win.ticket.state is TicketState.CLAIMED
    assert all(isinstance(loss, InvalidTransitionError) for loss in losses), losses
    assert {loss.code for loss in losses} == {"already_claimed"}
    assert {loss.params["claimant_name"] for loss in losses} == {win.ticket.claimant_name}
    assert len(losses) == officials - 1
    async with race_uows(readonly=True) as uow:
        events = await uow.events.of_ticket(number)
        ticket = await uow.tickets.get(number)
        assert [e.kind for e in events].count("claim") == 1
        assert ticket is not None
        assert ticket.state == TicketState.CLAIMED
        assert ticket.version == 3  # reported, assigned, claimed: one write each

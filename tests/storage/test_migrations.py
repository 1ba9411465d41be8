"""The migrations build exactly the schema storage/tables.py describes, triggers included."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from storage import tables  # noqa: F401  (registers the tables)
from storage.credit_code import make_code
from storage.db import make_engine, make_session_factory
from storage.migrate import current_async, head, upgrade_async
from storage.seeding import load_seed
from storage.tables import (
    Enterprise,
    Person,
    Region,
    RegionLevel,
    Role,
    Ticket,
    TicketEvent,
    TicketState,
)
from storage.uow import UnitOfWorkFactory
from tests.conftest import reset_postgres

BAOTOU = Path(__file__).resolve().parents[2] / "seeds" / "baotou.yaml"
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_url(request, tmp_path):
    """The URL of a database with nothing in it, not even alembic_version."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}"
    url = request.getfixturevalue("pg_url")
    await reset_postgres(url)
    return url


@pytest.fixture
async def migrated(empty_url):
    await upgrade_async(empty_url)
    engine = make_engine(empty_url)
    yield engine
    await engine.dispose()


def _differences(connection: sa.Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, SQLModel.metadata)


async def test_upgrade_builds_the_schema_of_the_tables_exactly(migrated, empty_url):
    async with migrated.connect() as connection:
        differences = await connection.run_sync(_differences)

    assert differences == []
    assert await current_async(empty_url) == head()


async def test_telegram_ids_are_64_bit_after_migration(migrated):
    async with migrated.connect() as connection:
        columns = await connection.run_sync(
            lambda sync: {c["name"]: c["type"] for c in sa.inspect(sync).get_columns("person")}
        )
    assert isinstance(columns["telegram_id"], sa.BigInteger)


async def test_upgrade_twice_is_harmless_and_the_seed_loads_on_the_migrated_schema(
    migrated, empty_url
):
    await upgrade_async(empty_url)
    uows = UnitOfWorkFactory(make_session_factory(migrated))

    report = await load_seed(uows, BAOTOU)

    assert report.people.created > 0
    async with uows() as uow:
        person = await uow.org.person_by_telegram(7598210346)  # beyond 32 bits
        assert person is not None


async def test_a_ticket_event_cannot_be_changed_or_deleted_after_migration(migrated):
    uows = UnitOfWorkFactory(make_session_factory(migrated))
    async with uows() as uow:
        event_id = await _one_event(uow)
        await uow.commit()

    for statement in (
        sa.update(TicketEvent).where(TicketEvent.id == event_id).values(note="rewritten"),
        sa.delete(TicketEvent).where(TicketEvent.id == event_id),
    ):
        async with uows() as uow:
            with pytest.raises(sa.exc.DBAPIError, match="ticket events are immutable"):
                await uow.session.exec(statement)  # type: ignore[call-overload]

    async with uows() as uow:
        event = await uow.session.get(TicketEvent, event_id)
        assert event is not None
        assert event.note == "filed"


async def _one_event(uow) -> int:
    region = Region(code="baotou", name="包头市", level=RegionLevel.CITY)
    uow.session.add(region)
    await uow.flush()
    firm = Enterprise(
        code="e1", name="甲", region_id=region.id, credit_code=make_code("91150200MA0N00000")
    )
    uow.session.add(firm)
    await uow.flush()
    reporter = Person(telegram_id=6_000_000_001, name="张", role=Role.ENTERPRISE,
                      enterprise_id=firm.id, region_id=region.id)  # fmt: skip
    uow.session.add(reporter)
    await uow.flush()
    ticket = Ticket(
        state=TicketState.REPORTED, region_id=region.id, enterprise_id=firm.id,
        reporter_id=reporter.id, summary="停电", text="厂区停电", created_at=NOW,
        last_activity_at=NOW,
    )  # fmt: skip
    uow.session.add(ticket)
    await uow.flush()
    event = TicketEvent(ticket_id=ticket.id, kind="report", to_state="reported", note="filed",
                        at=NOW)  # fmt: skip
    uow.session.add(event)
    await uow.flush()
    return event.id


def test_the_migrations_ship_inside_the_package_and_run_from_any_directory(tmp_path):
    from storage.migrate import MIGRATIONS, upgrade

    assert (MIGRATIONS / "env.py").is_file()
    assert (MIGRATIONS / "script.py.mako").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    before = Path.cwd()
    os.chdir(elsewhere)
    try:
        upgrade(f"sqlite+aiosqlite:///{tmp_path / 'cwd.db'}")
    finally:
        os.chdir(before)
    assert (tmp_path / "cwd.db").is_file()
    assert not list(elsewhere.iterdir())

"""A row made without SQLModel's constructor is the row the constructor makes, and the ORM
takes it like any other."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from storage.tables import KeyValue, Ticket, TicketState, fresh_row, put
from tests.factories import build_org

T0 = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)


def _values(org_ids: dict[str, int]) -> dict[str, object]:
    return {
        "state": TicketState.REPORTED,
        "region_id": org_ids["region"],
        "enterprise_id": org_ids["enterprise"],
        "reporter_id": org_ids["reporter"],
        "summary": "漏水 <&> 😀",
        "text": "漏水 <&> 😀",
        "source_chat_id": -1001,
        "source_message_id": 7,
        "created_at": T0,
        "last_activity_at": T0,
    }


async def _reporter(uow: Any) -> dict[str, int]:
    """The region, enterprise and person of someone of the org chart who may report."""
    person = (
        await uow.session.exec(
            sa.text("SELECT id, enterprise_id FROM person WHERE enterprise_id IS NOT NULL")
        )
    ).first()
    enterprise = await uow.org.enterprise(person.enterprise_id)
    return {"region": enterprise.region_id, "enterprise": enterprise.id, "reporter": person.id}


async def _stored(uows: Any, number: int) -> tuple[object, ...]:
    async with uows(readonly=True) as uow:
        stored = await uow.tickets.get(number)
        assert stored is not None
        return stored.state, stored.version, stored.summary


def test_it_has_every_field_the_constructor_gives():
    values = _values({"region": 1, "enterprise": 2, "reporter": 3})
    made, fresh = Ticket(**values), fresh_row(Ticket, **values)
    fields = list(Ticket.model_fields)
    assert [getattr(fresh, f) for f in fields] == [getattr(made, f) for f in fields]
    kept = fresh_row(KeyValue, key="k", value={"a": 1}, updated_at=T0)
    assert (kept.key, kept.value, kept.updated_at) == ("k", {"a": 1}, T0)
    assert fresh_row(KeyValue, key="k", updated_at=T0).value == {}  # a fresh default each


def test_a_missing_or_unknown_field_is_refused():
    values = _values({"region": 1, "enterprise": 2, "reporter": 3})
    del values["summary"]
    with pytest.raises(TypeError, match="needs summary"):
        fresh_row(Ticket, **values)
    with pytest.raises(TypeError, match="has no colour"):
        fresh_row(KeyValue, key="k", updated_at=T0, colour="red")


async def test_the_session_writes_it_and_tracks_changes_made_to_it(uows):
    await build_org(uows)
    async with uows() as uow:
        ticket = fresh_row(Ticket, **_values(await _reporter(uow)))
        uow.session.add(ticket)
        await uow.flush()
        ticket.state = TicketState.ASSIGNED  # tracked like any row's change
        ticket.version += 1
        await uow.commit()
        number = ticket.id
    assert await _stored(uows, number) == (TicketState.ASSIGNED, 2, "漏水 <&> 😀")


async def test_put_sets_a_new_rows_fields_and_a_stored_rows_changes_are_written(uows):
    await build_org(uows)
    async with uows() as uow:
        ticket = fresh_row(Ticket, **_values(await _reporter(uow)))
        put(ticket, {"state": TicketState.ASSIGNED, "version": 2})  # held by no session
        assert (ticket.state, ticket.version) == (TicketState.ASSIGNED, 2)
        uow.session.add(ticket)  # and written whole when it joins one
        await uow.flush()
        put(ticket, {"state": TicketState.CLAIMED, "version": 3, "summary": "<b>&</b> 🚰"})
        assert ticket in uow.session.dirty  # a stored row's change is noted
        await uow.commit()
        number = ticket.id
    assert await _stored(uows, number) == (TicketState.CLAIMED, 3, "<b>&</b> 🚰")

"""Small durable facts: set, set again, and set through a row the unit of work holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storage.uow import UnitOfWorkFactory

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


async def _read(uows: UnitOfWorkFactory, key: str) -> tuple[dict, datetime] | None:
    async with uows(readonly=True) as uow:
        row = await uow.schedule.get_value(key)
        return None if row is None else (dict(row.value), row.updated_at)


async def test_a_fact_is_set_then_replaced(uows):
    async with uows() as uow:
        await uow.schedule.put_value("offset", {"offset": 7, "note": "<&> 😀"}, T0)
        await uow.commit()
    assert await _read(uows, "offset") == ({"offset": 7, "note": "<&> 😀"}, T0)
    later = T0 + timedelta(minutes=1)
    async with uows() as uow:
        await uow.schedule.put_value("offset", {"offset": 9}, later)
        await uow.commit()
    assert await _read(uows, "offset") == ({"offset": 9}, later)


async def test_a_fact_the_unit_of_work_holds_is_changed_through_its_row(uows):
    async with uows() as uow:
        await uow.schedule.put_value("k", {"n": 1}, T0)
        await uow.commit()
    later = T0 + timedelta(seconds=5)
    async with uows() as uow:
        row = await uow.schedule.get_value("k")
        assert row is not None
        await uow.schedule.put_value("k", {"n": 2}, later)
        assert (row.value, row.updated_at) == ({"n": 2}, later)  # what it holds stays true
        await uow.commit()
    assert await _read(uows, "k") == ({"n": 2}, later)


async def test_a_fact_set_but_not_committed_is_not_kept(uows):
    async with uows() as uow:
        await uow.schedule.put_value("gone", {"n": 1}, T0)
    assert await _read(uows, "gone") is None


async def test_a_fact_is_forgotten_whether_or_not_it_was_there(uows):
    async with uows() as uow:
        await uow.schedule.put_value("a", {"n": 1}, T0)
        await uow.schedule.put_value("b", {"n": 2}, T0)
        await uow.commit()
    async with uows() as uow:
        await uow.schedule.delete_value("a")
        await uow.schedule.delete_value("never")  # nothing to forget: no error
        await uow.commit()
    assert await _read(uows, "a") is None
    assert await _read(uows, "b") == ({"n": 2}, T0)  # only the fact named goes


async def test_a_fact_the_unit_of_work_holds_is_forgotten_through_its_row(uows):
    async with uows() as uow:
        await uow.schedule.put_value("held", {"n": 1}, T0)
        await uow.commit()
    async with uows() as uow:
        assert await uow.schedule.get_value("held") is not None
        await uow.schedule.delete_value("held")
        await uow.commit()
    assert await _read(uows, "held") is None


async def test_forgetting_a_fact_is_undone_with_its_unit_of_work(uows):
    async with uows() as uow:
        await uow.schedule.put_value("kept", {"n": 1}, T0)
        await uow.commit()
    async with uows() as uow:
        await uow.schedule.delete_value("kept")  # and no commit
    assert await _read(uows, "kept") == ({"n": 1}, T0)

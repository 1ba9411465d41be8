"""The record: every ticket's state is the fold of its events, and auditors get both as CSV."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.audit import check, export, rows_of
from bot.cli import main
from storage.db import create_schema, make_engine
from storage.tables import Ticket, TicketState
from tests.opskit import OpsEnv, open_env


async def walk_every_path(env: OpsEnv) -> dict[str, int]:
    """Tickets taken through each kind of event the workflow has."""
    t, o = env.services.tickets, env.org
    numbers = {}
    numbers["closed"] = n = await env.report("路灯坏了 lamp out")
    await t.assign(o["city_coord"], n, "tax")
    await t.claim(o["tax_clerk"], n)
    await t.progress(o["tax_clerk"], n, "on it")
    await t.supervise(o["mayor"], n, "hurry")
    await t.resolve(o["tax_clerk"], n, "fixed")
    await t.rate(o["acme_boss"], n, "unsatisfied", "still dark")
    await t.resolve(o["tax_clerk"], n, "fixed again")
    await t.rate(o["acme_boss"], n, "satisfied")
    numbers["moved"] = n = await env.report("road sign fell")
    await t.assign(o["city_coord"], n, "tax")
    await t.return_(o["tax_clerk"], n, "not ours", "market")
    await t.approve_return(o["city_coord"], n)
    await t.transfer(o["city_coord"], n, "tax")
    numbers["rejected"] = n = await env.report("water pressure low")
    await t.assign(o["city_coord"], n, "tax")
    await t.return_(o["tax_clerk"], n, "not ours")
    await t.reject_return(o["city_coord"], n, "it is yours")
    numbers["withdrawn"] = n = await env.report("never mind this one")
    await t.withdraw(o["acme_boss"], n)
    numbers["merged"] = n = await env.report("road sign fell, again")
    await t.merge(o["city_coord"], n, numbers["moved"])
    numbers["routed"] = await env.report("发票开不出来 invoice")  # the routing rules assign it
    return numbers


async def tamper(engine: AsyncEngine, number: int, **values: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.update(Ticket).where(Ticket.id == number).values(**values))  # type: ignore[arg-type]


async def test_a_history_through_every_kind_of_event_checks_clean(engine: AsyncEngine) -> None:
    async with open_env(engine) as env:
        numbers = await walk_every_path(env)
        report = await check(env.services.uows, page=2)
    assert report.ok, report.mismatches
    assert report.tickets == len(numbers)
    assert report.events >= 20
    expected = f"checked {report.tickets} tickets and {report.events} events: no mismatch"
    assert report.summary() == expected


async def test_check_finds_a_ticket_whose_stored_state_was_tampered_with(
    engine: AsyncEngine,
) -> None:
    async with open_env(engine) as env:
        numbers = await walk_every_path(env)
        await tamper(engine, numbers["moved"], state=TicketState.CLOSED)
        await tamper(engine, numbers["rejected"], claimant_id=1)
        report = await check(env.services.uows)
    assert not report.ok
    assert {m.ticket_id for m in report.mismatches} == {numbers["moved"], numbers["rejected"]}
    problems = " | ".join(m.problem for m in report.mismatches)
    assert "its state is closed, but its last event left it assigned" in problems
    assert "state is stored as closed, but its events give assigned" in problems
    assert "claimant_id is stored as 1, but its events give None" in problems
    assert report.summary().endswith(f"{len(report.mismatches)} mismatches")


async def test_events_cannot_be_edited_so_tampering_shows_on_the_ticket_only(
    engine: AsyncEngine,
) -> None:
    async with open_env(engine) as env:
        await env.report("lamp out")
        with pytest.raises(sa.exc.DBAPIError, match="immutable"):
            async with engine.begin() as conn:
                await conn.exec_driver_sql("UPDATE ticketevent SET to_state = 'closed'")
        with pytest.raises(sa.exc.DBAPIError, match="immutable"):
            async with engine.begin() as conn:
                await conn.exec_driver_sql("DELETE FROM ticketevent")


async def test_a_ticket_without_its_report_event_is_a_mismatch(engine: AsyncEngine) -> None:
    async with open_env(engine) as env:
        number = await env.report("lamp out")
        async with env.services.uows() as uow:
            original = await uow.tickets.get(number)
            assert original is not None
            uow.tickets.add(  # written around the services, with no event to explain it
                Ticket(
                    state=TicketState.REPORTED,
                    region_id=original.region_id,
                    enterprise_id=original.enterprise_id,
                    reporter_id=original.reporter_id,
                    summary="smuggled in",
                    text="smuggled in",
                    created_at=original.created_at,
                    last_activity_at=original.created_at,
                )
            )
            await uow.commit()
        report = await check(env.services.uows)
    assert [m.problem for m in report.mismatches] == ["its history does not start with the report"]


async def test_export_writes_tickets_and_events_for_auditors(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    async with open_env(engine) as env:
        numbers = await walk_every_path(env)
        formula = await env.report('=HYPERLINK("http://x","click") 发票')
        done = await export(env.services.uows, tmp_path / "audit")
    tickets = list(rows_of(done.files[0]))
    events = list(rows_of(done.files[1]))
    assert done.tickets == len(tickets) == len(numbers) + 1
    assert done.events == len(events)
    closed = next(row for row in tickets if row["id"] == str(numbers["closed"]))
    assert closed["state"] == "closed"
    assert closed["department"] == "Tax Bureau"
    assert closed["reporter"] == "Ann Acme"
    assert closed["claimant"] == "税务小王"
    assert closed["redo_count"] == "1"
    assert closed["text"] == "路灯坏了 lamp out"
    assert closed["created_at"].endswith("+00:00")
    dangerous = next(row for row in tickets if row["id"] == str(formula))
    assert dangerous["text"].startswith("'=HYPERLINK")
    mine = [row for row in events if row["ticket_id"] == str(numbers["closed"])]
    assert [row["kind"] for row in mine][:3] == ["report", "assign", "claim"]
    assert mine[0]["actor"] == "Ann Acme"
    assert mine[1]["data"] == f'{{"department_id": {env.org.depts["tax"]}}}'
    assert done.files[0].read_bytes().startswith(b"\xef\xbb\xbf")  # Excel reads UTF-8 then


# ---- the command line -----------------------------------------------------------------------


def _file_database(path: Path, *, tampered: bool = False) -> str:
    url = f"sqlite+aiosqlite:///{path}"

    async def build() -> None:
        engine = make_engine(url)
        await create_schema(engine)
        try:
            async with open_env(engine) as env:
                await walk_every_path(env)
            if tampered:
                await tamper(engine, 1, state=TicketState.WITHDRAWN)
        finally:
            await engine.dispose()

    asyncio.run(build())
    return url


def test_qunban_check_says_clean_in_one_line(tmp_path: Path) -> None:
    url = _file_database(tmp_path / "q.db")
    result = CliRunner().invoke(main, ["check"], env={"QUNBAN_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert result.output.startswith("checked 6 tickets and ")
    assert result.output.endswith("events: no mismatch\n")


def test_qunban_check_lists_mismatches_and_fails(tmp_path: Path) -> None:
    url = _file_database(tmp_path / "q.db", tampered=True)
    result = CliRunner().invoke(main, ["check"], env={"QUNBAN_DATABASE_URL": url})
    assert result.exit_code == 1
    assert "ticket #1: state is stored as withdrawn, but its events give closed" in result.output
    assert result.output.splitlines()[-1].startswith("Error: checked 6 tickets and ")


def test_qunban_export_writes_the_two_files(tmp_path: Path) -> None:
    url = _file_database(tmp_path / "q.db")
    out = tmp_path / "for-auditors"
    result = CliRunner().invoke(main, ["export", str(out)], env={"QUNBAN_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert result.output.startswith("wrote 6 tickets to ")
    assert sorted(p.name for p in out.iterdir()) == ["events.csv", "tickets.csv"]


def test_qunban_check_on_an_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://qunban:hunter2-secret@127.0.0.1:1/qunban"
    result = CliRunner().invoke(main, ["check"], env={"QUNBAN_DATABASE_URL": url})
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert "cannot use the database" in result.output
    assert "hunter2-secret" not in result.output

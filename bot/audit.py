"""The record for auditors: recompute every ticket from its events, and export both as CSV."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from bot.services.org import facts_of
from bot.tickets import TicketFacts, fold
from storage.tables import Department, Enterprise, Person, Region, Ticket, TicketEvent, TicketState
from storage.uow import UnitOfWork, UnitOfWorkFactory

PAGE = 500


@dataclass(frozen=True)
class Mismatch:
    ticket_id: int
    problem: str


@dataclass
class CheckReport:
    tickets: int = 0
    events: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        found = f"{len(self.mismatches)} mismatches" if self.mismatches else "no mismatch"
        return f"checked {self.tickets} tickets and {self.events} events: {found}"


async def check(uows: UnitOfWorkFactory, *, page: int = PAGE) -> CheckReport:
    """Replay every ticket's events over its report and compare with the stored row.

    Pages of tickets are read with their events in one read transaction each; a ticket that
    looks wrong is read again on its own, so a change committed mid-check is no mismatch."""
    report, after = CheckReport(), 0
    while True:
        suspects = []
        async with uows(readonly=True) as uow:
            tickets = await _tickets_after(uow, after, page)
            events = await _events_of(uow, [t.id for t in tickets])  # type: ignore[misc]
            for ticket in tickets:
                history = events.get(ticket.id, [])  # type: ignore[call-overload]
                report.tickets += 1
                report.events += len(history)
                if problems_of(ticket, history):
                    suspects.append(ticket.id)
            after = tickets[-1].id if tickets else after
        if not tickets:
            return report
        for ticket_id in suspects:
            report.mismatches += await _recheck(uows, ticket_id)  # type: ignore[arg-type]


async def _recheck(uows: UnitOfWorkFactory, ticket_id: int) -> list[Mismatch]:
    async with uows(readonly=True) as uow:
        ticket = await uow.tickets.get(ticket_id)
        history = list(await uow.events.of_ticket(ticket_id))
        problems = problems_of(ticket, history) if ticket is not None else []
    return [Mismatch(ticket_id, p) for p in problems]


def problems_of(ticket: Ticket, events: Sequence[TicketEvent]) -> list[str]:
    """What disagrees between a ticket's row and its history, as sentences."""
    problems = []
    if not events or events[0].kind != "report":
        problems.append("its history does not start with the report")
    previous = None
    for event in events:
        if previous is not None and event.from_state and event.from_state != previous:
            problems.append(
                f"event {event.id} ({event.kind}) starts from {event.from_state}, "
                f"but the event before left it {previous}"
            )
        previous = event.to_state
    if previous is not None and previous != ticket.state:
        problems.append(f"its state is {ticket.state}, but its last event left it {previous}")
    initial = TicketFacts(
        state=TicketState.REPORTED,
        region_id=ticket.region_id,
        enterprise_id=ticket.enterprise_id,
        reporter_id=ticket.reporter_id,
    )
    try:
        replayed = fold(initial, [(e.kind, e.actor_id, e.data) for e in events])
    except Exception as error:  # a history the workflow cannot replay is itself the finding
        return [*problems, f"its events cannot be replayed: {error!r}"]
    stored = facts_of(ticket)
    for name in (f.name for f in fields(TicketFacts)):
        mine, theirs = getattr(stored, name), getattr(replayed, name)
        if mine != theirs:
            problems.append(f"{name} is stored as {mine}, but its events give {theirs}")
    return problems


async def _tickets_after(uow: UnitOfWork, after: int, limit: int) -> list[Ticket]:
    query = select(Ticket).where(col(Ticket.id) > after).order_by(col(Ticket.id)).limit(limit)
    return list((await uow.session.exec(query)).all())


async def _events_of(uow: UnitOfWork, ids: Sequence[int]) -> dict[int, list[TicketEvent]]:
    if not ids:
        return {}
    query = (
        select(TicketEvent)
        .where(col(TicketEvent.ticket_id).in_(ids))
        .order_by(col(TicketEvent.ticket_id), col(TicketEvent.id))
    )
    grouped: dict[int, list[TicketEvent]] = {}
    for event in (await uow.session.exec(query)).all():
        grouped.setdefault(event.ticket_id, []).append(event)
    return grouped


# ---- export ----------------------------------------------------------------------------------

TICKET_COLUMNS = list(Ticket.model_fields)
NAMED = {  # id column -> (name column, lookup table)
    "region_id": "region",
    "enterprise_id": "enterprise",
    "reporter_id": "reporter",
    "department_id": "department",
    "claimant_id": "claimant",
    "suggested_department_id": "suggested_department",
}
EVENT_COLUMNS = [
    *("id", "ticket_id", "at", "kind", "from_state", "to_state", "actor_id", "actor"),
    *("note", "data"),
]


@dataclass(frozen=True)
class ExportReport:
    tickets: int
    events: int
    files: tuple[Path, Path]


async def export(uows: UnitOfWorkFactory, folder: Path) -> ExportReport:
    """Write tickets.csv and events.csv (UTF-8 with a BOM, so that spreadsheet programs read
    the Chinese right). Times are UTC, ISO 8601. A cell that a spreadsheet would run as a
    formula (=, +, -, @) is written with a leading apostrophe. Read in one transaction."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    paths = (folder / "tickets.csv", folder / "events.csv")
    async with uows(readonly=True) as uow:
        names = await _names(uow)
        tickets = await _write(paths[0], _ticket_header(), _ticket_rows(uow, names))
        events = await _write(paths[1], EVENT_COLUMNS, _event_rows(uow, names))
    return ExportReport(tickets, events, paths)


def _ticket_header() -> list[str]:
    header = []
    for column in TICKET_COLUMNS:
        header.append(column)
        if column in NAMED:
            header.append(NAMED[column])
    return header


async def _names(uow: UnitOfWork) -> dict[str, dict[int, str]]:
    found: dict[str, dict[int, str]] = {}
    for kind, table in (
        ("region", Region),
        ("enterprise", Enterprise),
        ("department", Department),
        ("person", Person),
    ):
        rows = (await uow.session.exec(select(table.id, table.name))).all()  # type: ignore[attr-defined]
        found[kind] = {row[0]: row[1] for row in rows}
    return found


def _name_of(column: str, value: int | None, names: dict[str, dict[int, str]]) -> str:
    kind = {"reporter_id": "person", "claimant_id": "person", "actor_id": "person"}.get(column)
    kind = kind or NAMED.get(column, "").replace("suggested_", "")
    return names.get(kind, {}).get(value, "") if value is not None else ""


async def _ticket_rows(uow: UnitOfWork, names: dict[str, dict[int, str]]) -> Any:
    after = 0
    while tickets := await _tickets_after(uow, after, PAGE):
        for ticket in tickets:
            row: list[Any] = []
            for column in TICKET_COLUMNS:
                row.append(getattr(ticket, column))
                if column in NAMED:
                    row.append(_name_of(column, getattr(ticket, column), names))
            yield row
        after = tickets[-1].id  # type: ignore[assignment]


async def _event_rows(uow: UnitOfWork, names: dict[str, dict[int, str]]) -> Any:
    after = 0
    while True:
        query = (
            select(TicketEvent).where(col(TicketEvent.id) > after).order_by(col(TicketEvent.id))
        )
        events = (await uow.session.exec(query.limit(PAGE))).all()
        if not events:
            return
        for e in events:
            actor = _name_of("actor_id", e.actor_id, names)
            yield [
                *(e.id, e.ticket_id, e.at, e.kind, e.from_state, e.to_state, e.actor_id, actor),
                *(e.note, e.data),
            ]
        after = events[-1].id  # type: ignore[assignment]


async def _write(path: Path, header: list[str], rows: Any) -> int:
    partial = path.with_suffix(".csv.partial")
    count = 0
    with partial.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        async for row in rows:
            writer.writerow([_cell(v) for v in row])
            count += 1
    partial.replace(path)  # a failed export never leaves a half file under the real name
    return count


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def rows_of(path: Path) -> Iterable[dict[str, str]]:
    """Read an exported file back (tests, and anyone checking an export)."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        yield from csv.DictReader(handle)

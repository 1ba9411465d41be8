"""The digest's figures as a few aggregate queries: counted in the database, over index ranges
bounded in time or by the open states, so their cost follows the window and the backlog, never
the years of closed history.

The statements are plain SQL written for the engine at hand. Every value in them is an integer,
an instant or one of the workflow's own names, rendered as a literal: a statement is never
compiled by SQLAlchemy, and the working-time arithmetic below (dozens of constants) costs no
bound parameters.

The response rate needs working time: was a ticket claimed within `nudge_unclaimed_after` of
working time from its assignment? In SQL, each instant becomes its working time since the start
of the window (a binary tree of CASE over the working periods, a few comparisons deep); the
rare ticket that falls outside those periods is read and decided by the calendar itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import col, select

from bot.calendar import AlwaysOpen, OfficeCalendar, WorkCalendar
from storage.tables import OPEN_STATES, Ticket, TicketState
from storage.uow import UnitOfWork

S = TicketState
_MICRO = timedelta(microseconds=1)
_GONE = (S.WITHDRAWN, S.MERGED)
_UNRESOLVED = tuple(sorted(OPEN_STATES - {S.RESOLVED}))
_WAITING = (S.ASSIGNED, S.SUPERVISED)


@dataclass(frozen=True)
class Scope:
    """The regions a digest covers; `everywhere` when that is every region, so no ticket's
    region needs to be looked at."""

    region_ids: tuple[int, ...]
    everywhere: bool

    @classmethod
    async def of(cls, uow: UnitOfWork, region_ids: Iterable[int]) -> Scope:
        ids = tuple(sorted(set(region_ids)))
        every = {r.id for r in await uow.org.all_regions()}
        return cls(ids, set(ids) >= every)


class Sql:
    """Literals and expressions of one engine."""

    def __init__(self, dialect: str) -> None:
        self.postgres = dialect == "postgresql"

    def instant(self, t: datetime) -> str:
        text = f"{t.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"
        # SQLite keeps SQLAlchemy's text form (UTC): literals compare with it as text
        return f"TIMESTAMPTZ '{text}+00'" if self.postgres else f"'{text}'"

    def micros(self, column: str) -> str:
        """An instant as integer microseconds since the epoch."""
        if self.postgres:
            return f"CAST(EXTRACT(EPOCH FROM {column}) * 1000000 AS BIGINT)"
        # 'YYYY-MM-DD HH:MM:SS.ffffff': the whole seconds (strftime would round the fraction
        # into them), then the six digits of the fraction
        return f"(strftime('%s', substr({column}, 1, 19)) * 1000000 + substr({column}, 21))"

    @staticmethod
    def names(values: Iterable[str]) -> str:
        return ", ".join(f"'{v}'" for v in values)

    @staticmethod
    def ids(values: Iterable[int]) -> str:
        return ", ".join(str(int(v)) for v in values) or "NULL"


def micros(t: datetime) -> int:
    return (t.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // _MICRO


def working_periods(
    calendar: WorkCalendar, lo: datetime, hi: datetime
) -> list[tuple[datetime, datetime]]:
    """The working periods from lo (the one under way cut to begin at lo) up to and including
    the first one that begins after hi."""
    if isinstance(calendar, AlwaysOpen):
        return [(lo, hi + timedelta(days=1))]
    if not isinstance(calendar, OfficeCalendar):
        raise TypeError(f"no working periods for {type(calendar).__name__}")
    out = []
    for begin, end in calendar._periods_from(lo):  # the calendar's own walk over its days
        out.append((begin, end))
        if begin > hi:
            break
    return out


class WorkingTime:
    """Working time in SQL, as integer microseconds since the start of the periods.

    For an assignment at `a`, the deadline is the first instant d with W(d) = W(a) + span; a
    claim at `c` is in time when c <= d. With V(c) = 2 W(c), plus one when c falls in the gap
    after a period has ended (where W stands still, but the deadline has passed):
    c <= d exactly when V(c) <= 2 (W(a) + span). Both are NULL outside the periods.
    """

    def __init__(
        self, sql: Sql, start: datetime, periods: Sequence[tuple[datetime, datetime]]
    ) -> None:
        self._sql = sql
        self._start = start
        self._periods = [(micros(b), micros(e), b, e) for b, e in periods]

    def worked(self, column: str) -> str:
        """W(column): NULL before the first period and from the end of the last."""
        points, leaves = [(self._sql.instant(self._start), "<")], ["NULL", "0"]
        done = 0
        epoch = self._sql.micros(column)
        for i, (b, e, begin, end) in enumerate(self._periods):
            points.append((self._sql.instant(begin), "<"))
            leaves.append(f"({epoch} - {b - done})")
            points.append((self._sql.instant(end), "<"))
            done += e - b
            last = i == len(self._periods) - 1
            leaves.append("NULL" if last else str(done))
        return _tree(column, points, leaves)

    def claimed(self, column: str) -> str:
        """V(column): NULL before the first period and after the last."""
        # before the first period, the start lies in a gap: the clock has stood still since
        points, leaves = [(self._sql.instant(self._start), "<")], ["NULL", "1"]
        done = 0
        epoch = self._sql.micros(column)
        for i, (b, e, begin, end) in enumerate(self._periods):
            points.append((self._sql.instant(begin), "<"))
            leaves.append(f"(2 * ({epoch} - {b - done}))")
            points.append((self._sql.instant(end), "<="))
            done += e - b
            last = i == len(self._periods) - 1
            leaves.append("NULL" if last else str(2 * done + 1))
        return _tree(column, points, leaves)


def _tree(column: str, points: Sequence[tuple[str, str]], leaves: Sequence[str]) -> str:
    """CASE as a binary search: leaves[i] holds between points[i - 1] and points[i]."""
    if not points:
        return leaves[0]
    mid = len(points) // 2
    literal, op = points[mid]
    left = _tree(column, points[:mid], leaves[: mid + 1])
    right = _tree(column, points[mid + 1 :], leaves[mid + 1 :])
    return f"CASE WHEN {column} {op} {literal} THEN {left} ELSE {right} END"


def latest_missed(calendar: WorkCalendar, span: timedelta, now: datetime) -> datetime:
    """The latest assignment whose working-time deadline (assignment + span) has come by now:
    deadlines only move forward with the assignment, so these are all assignments up to it."""
    if span <= timedelta(0):
        return now
    # a deadline is never sooner than by the clock: later assignments are not missed yet
    good, bad, step = now - span, now - span + _MICRO, timedelta(hours=1)
    while calendar.add_working(good, span) > now:
        bad, good, step = good, good - step, step * 2
    while bad - good > _MICRO:
        mid = good + ((bad - good) // _MICRO // 2) * _MICRO
        if calendar.add_working(mid, span) <= now:
            good = mid
        else:
            bad = mid
    return good


# ---- the statements ---------------------------------------------------------------------------


async def rows(uow: UnitOfWork, statement: str) -> Sequence[Any]:
    conn = await uow.session.connection()
    return (await conn.exec_driver_sql(statement)).all()


def in_scope(scope: Scope, ticket_id: str) -> str:
    """A condition on an event's ticket being in the scope ('' when everywhere)."""
    if scope.everywhere:
        return ""
    return (
        f" AND (SELECT s.region_id FROM ticket s WHERE s.id = {ticket_id})"
        f" IN ({Sql.ids(scope.region_ids)})"
    )


def region_filter(scope: Scope, alias: str = "t") -> str:
    return "" if scope.everywhere else f" AND {alias}.region_id IN ({Sql.ids(scope.region_ids)})"


@dataclass(frozen=True)
class Flow:
    new: int
    claimed: int
    resolved: int
    closed: int
    escalations: int


async def flow(uow: UnitOfWork, scope: Scope, start: datetime, end: datetime) -> Flow:
    """The tickets reported, claimed, resolved and closed in [start, end), and the escalations:
    one pass over the (kind, at, ticket_id, to_state) index."""
    sql = Sql(uow.dialect)
    closing = "(e.kind = 'autoclose' OR (e.kind = 'rate' AND e.to_state = 'closed'))"
    kinds = ("report", "claim", "resolve", "rate", "autoclose", "escalate")
    statement = (
        "SELECT count(DISTINCT CASE WHEN e.kind = 'report' THEN e.ticket_id END),"
        " count(DISTINCT CASE WHEN e.kind = 'claim' THEN e.ticket_id END),"
        " count(DISTINCT CASE WHEN e.kind = 'resolve' THEN e.ticket_id END),"
        f" count(DISTINCT CASE WHEN {closing} THEN e.ticket_id END),"
        " coalesce(sum(CASE WHEN e.kind = 'escalate' THEN 1 ELSE 0 END), 0)"
        f" FROM ticketevent e WHERE e.kind IN ({sql.names(kinds)})"
        f" AND e.at >= {sql.instant(start)} AND e.at < {sql.instant(end)}"
        + in_scope(scope, "e.ticket_id")
    )
    (row,) = await rows(uow, statement)
    return Flow(*(int(v or 0) for v in row))


def assigned_in(sql: Sql, start: datetime, end: datetime) -> str:
    """The tickets assigned in [start, end), as a subquery over the event index."""
    return (
        "SELECT a.ticket_id FROM ticketevent a WHERE a.kind = 'assign'"
        f" AND a.at >= {sql.instant(start)} AND a.at < {sql.instant(end)}"
    )


def window_tickets(sql: Sql, scope: Scope, start: datetime, end: datetime) -> str:
    """The condition on `t` that picks the scope's tickets assigned in [start, end), neither
    withdrawn nor merged, with a department.

    PostgreSQL would hash the window's ids and scan the whole ticket table for them (its cost
    growing with the history); as an array, they are looked up by the key one by one."""
    window = assigned_in(sql, start, end)
    found = f"t.id = ANY(ARRAY({window}))" if sql.postgres else f"t.id IN ({window})"
    return (
        f"{found} AND t.state NOT IN ({sql.names(_GONE)}) AND t.department_id IS NOT NULL"
        + region_filter(scope)
    )


@dataclass
class Assigned:
    """One department's tickets assigned in the window."""

    department_id: int
    count: int = 0
    response_hit: int = 0
    response_late: int = 0  # claimed after the deadline
    response_waiting: int = 0  # unclaimed past the deadline
    undecided: int = 0  # claims outside the query's working periods, left to the calendar
    resolution_hit: int = 0
    resolution_total: int = 0
    promised: int = 0
    # of these, the ones still open and unresolved that the backlog counts too: unclaimed
    # past the deadline, and past the due time
    open_unclaimed_missed: int = 0
    open_past_due: int = 0


# how a claim went, by the sign of V(claimed_at) - 2 (W(assigned_at) + span)
_IN_TIME, _LATE, _UNCLAIMED, _UNDECIDED = (-1, 0), 1, 2, 9


async def assigned(
    uow: UnitOfWork,
    scope: Scope,
    calendar: WorkCalendar,
    span: timedelta,
    start: datetime,
    end: datetime,
    now: datetime,
) -> tuple[list[Assigned], str]:
    """Per department, how its tickets assigned in [start, end) did: claimed in time, resolved
    by the due time, and how many carry a promised date. Also the condition that picks the
    claims left undecided, to read them one by one.

    Grouped by department and by how the claim went, so the working time of each ticket is
    worked out once."""
    sql = Sql(uow.dialect)
    pick = window_tickets(sql, scope, start, end)
    if span > timedelta(0):
        clock = WorkingTime(sql, start, working_periods(calendar, start, max(now, end)))
        margin = (
            f"{clock.claimed('t.claimed_at')}"
            f" - 2 * ({clock.worked('t.assigned_at')} + {span // _MICRO})"
        )
        sign = f"sign({margin})" if sql.postgres else f"max(min({margin}, 1), -1)"
        how = f"coalesce({sign}, {_UNDECIDED})"
    else:  # no time at all: only a claim no later than the assignment is in time
        how = f"CASE WHEN t.claimed_at <= t.assigned_at THEN 0 ELSE {_LATE} END"
    how = (
        f"CASE WHEN t.claimed_at IS NOT NULL AND t.assigned_at IS NOT NULL THEN {how}"
        f" ELSE {_UNCLAIMED} END"
    )
    missed = latest_missed(calendar, span, now)
    statement = (
        f"SELECT t.department_id, {how} AS how, count(*),"
        " sum(CASE WHEN t.claimed_at IS NULL"
        f" AND t.assigned_at <= {sql.instant(missed)} THEN 1 ELSE 0 END),"
        " sum(CASE WHEN t.resolved_at <= t.due_at THEN 1 ELSE 0 END),"
        " sum(CASE WHEN t.due_at IS NOT NULL AND (t.resolved_at IS NOT NULL"
        f" OR t.due_at <= {sql.instant(now)}) THEN 1 ELSE 0 END),"
        " sum(CASE WHEN t.promised_date IS NOT NULL THEN 1 ELSE 0 END),"
        f" sum(CASE WHEN t.state IN ({sql.names(_WAITING)}) AND t.claimant_id IS NULL"
        f" AND t.assigned_at <= {sql.instant(missed)} THEN 1 ELSE 0 END),"
        f" sum(CASE WHEN t.state IN ({sql.names(_UNRESOLVED)})"
        f" AND t.due_at <= {sql.instant(now)} THEN 1 ELSE 0 END)"
        f" FROM ticket t WHERE {pick} GROUP BY t.department_id, how"
    )
    found: dict[int, Assigned] = {}
    for (
        dept,
        code,
        n,
        waiting,
        resolved,
        due,
        promised,
        open_unclaimed,
        open_due,
    ) in await rows(uow, statement):
        row = found.setdefault(int(dept), Assigned(int(dept)))
        code = int(code)
        row.count += int(n)
        row.response_hit += int(n) if code in _IN_TIME else 0
        row.response_late += int(n) if code == _LATE else 0
        row.undecided += int(n) if code == _UNDECIDED else 0
        row.response_waiting += int(waiting or 0)
        row.resolution_hit += int(resolved or 0)
        row.resolution_total += int(due or 0)
        row.promised += int(promised or 0)
        row.open_unclaimed_missed += int(open_unclaimed or 0)
        row.open_past_due += int(open_due or 0)
    return list(found.values()), f"{how} = {_UNDECIDED}"


@dataclass
class Backlog:
    """One department's open, unresolved tickets, whenever assigned."""

    department_id: int
    unclaimed_missed: int = 0  # still unclaimed past the deadline
    past_due: int = 0  # past the due time, or at it
    overdue: int = 0  # past the due time


@dataclass(frozen=True)
class OpenTickets:
    by_state: dict[str, int]  # every open ticket, by state
    backlog: list[Backlog]  # the unresolved ones, per department


async def open_tickets(
    uow: UnitOfWork, scope: Scope, calendar: WorkCalendar, span: timedelta, now: datetime
) -> OpenTickets:
    """The open tickets by state, and per department what the unresolved ones owe: one range
    of the state index per open state."""
    sql = Sql(uow.dialect)
    at_now = sql.instant(now)
    statement = (
        "SELECT t.department_id, t.state, count(*),"
        " sum(CASE WHEN t.claimant_id IS NULL"
        f" AND t.assigned_at <= {sql.instant(latest_missed(calendar, span, now))}"
        " THEN 1 ELSE 0 END),"
        f" sum(CASE WHEN t.due_at <= {at_now} THEN 1 ELSE 0 END),"
        f" sum(CASE WHEN t.due_at < {at_now} THEN 1 ELSE 0 END)"
        f" FROM ticket t WHERE t.state IN ({sql.names(sorted(OPEN_STATES))})"
        + region_filter(scope)
        + " GROUP BY t.department_id, t.state"
    )
    by_state: dict[str, int] = {}
    backlog: dict[int, Backlog] = {}
    for dept, state, n, unclaimed, due, overdue in await rows(uow, statement):
        by_state[state] = by_state.get(state, 0) + int(n)
        if dept is None or state == S.RESOLVED:
            continue
        row = backlog.setdefault(int(dept), Backlog(int(dept)))
        row.overdue += int(overdue or 0)
        row.past_due += int(due or 0)
        row.unclaimed_missed += int(unclaimed or 0) if state in _WAITING else 0
    return OpenTickets(by_state, list(backlog.values()))


async def department_events(
    uow: UnitOfWork, scope: Scope, start: datetime, end: datetime
) -> list[tuple[int, str, bool, int]]:
    """(department, kind, closed, count) of the ratings, disputed returns and escalations in
    [start, end): the event index, and each event's ticket by its key."""
    sql = Sql(uow.dialect)
    region = region_filter(scope, "s")
    department = f"(SELECT s.department_id FROM ticket s WHERE s.id = e.ticket_id{region})"
    statement = (
        f"SELECT {department} AS d, e.kind AS kind,"
        " CASE WHEN e.to_state = 'closed' THEN 1 ELSE 0 END AS closing, count(*)"
        " FROM ticketevent e"
        f" WHERE e.kind IN ({sql.names(('rate', 'reject_return', 'escalate'))})"
        f" AND e.at >= {sql.instant(start)} AND e.at < {sql.instant(end)}"
        " GROUP BY d, kind, closing"
    )
    found = await rows(uow, statement)
    return [(int(d), str(k), bool(c), int(n)) for d, k, c, n in found if d is not None]


async def ticket_ids(
    uow: UnitOfWork, scope: Scope, condition: str, start: datetime, end: datetime
) -> list[int]:
    """The ids of the tickets assigned in [start, end) that meet a condition."""
    sql = Sql(uow.dialect)
    statement = f"SELECT t.id FROM ticket t WHERE {window_tickets(sql, scope, start, end)}"
    statement += f" AND {condition}"
    return [int(i) for (i,) in await rows(uow, statement)]


async def tickets_by_id(uow: UnitOfWork, ids: Sequence[int]) -> Sequence[Any]:
    """Rows (department_id, assigned_at, claimed_at, promised_date, resolved_at) of tickets."""
    if not ids:
        return []
    query = select(  # type: ignore[call-overload]
        Ticket.department_id,
        Ticket.assigned_at,
        Ticket.claimed_at,
        Ticket.promised_date,
        Ticket.resolved_at,
    ).where(col(Ticket.id).in_(ids))
    return (await uow.session.exec(query)).all()


async def open_summaries(uow: UnitOfWork, scope: Scope, limit: int) -> Sequence[Any]:
    """The newest open, unresolved reports, as rows (id, department_id, enterprise_id,
    summary): what the near-alike reports are found among."""
    sql = Sql(uow.dialect)
    statement = (
        "SELECT t.id, t.department_id, t.enterprise_id, t.summary FROM ticket t"
        f" WHERE t.state IN ({sql.names(_UNRESOLVED)})"
        + region_filter(scope)
        + f" ORDER BY t.id DESC LIMIT {int(limit)}"
    )
    return await rows(uow, statement)

"""The digest's figures, counted by the database, against the same figures counted one ticket
at a time in Python, over a seeded jumble of tickets whose times sit on the edges that matter:
claims at the working-time deadline to the microsecond, in the lunch break, at the end of a
working period, assignments before the window, promised dates, tickets withdrawn or merged."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from bot.app import Services, build_services
from bot.calendar import WorkCalendar, load_calendar
from bot.clock import ManualClock
from bot.config import Settings
from bot.services import digest_queries as q
from bot.services.digests import RATE_WINDOW_DAYS
from bot.services.org import working_span
from storage.tables import OPEN_STATES, Person, Role, Ticket, TicketEvent, TicketState
from storage.uow import UnitOfWorkFactory
from tests.factories import Org, build_org

S = TicketState
TZ = ZoneInfo("Asia/Shanghai")
GONE = (S.WITHDRAWN, S.MERGED)
UNRESOLVED = OPEN_STATES - {S.RESOLVED}
# the digest of Tuesday 10 March 2026 at 08:30: the window reaches back to 9 February
END = datetime(2026, 3, 10, 8, 30, tzinfo=TZ).astimezone(UTC)
START = END - timedelta(days=RATE_WINDOW_DAYS)
NOWS = (
    END,  # before office hours
    datetime(2026, 3, 10, 10, 0, tzinfo=TZ).astimezone(UTC),  # inside a working period
    datetime(2026, 3, 10, 12, 45, tzinfo=TZ).astimezone(UTC),  # in the lunch break
)
ALL_STATES = list(S)


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, calendar="cn")  # type: ignore[call-arg]


@pytest.fixture
def calendar(settings: Settings) -> WorkCalendar:
    return load_calendar(settings.calendar, settings.timezone)


def local(day: int, hour: int, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=TZ).astimezone(UTC)


def edges() -> list[datetime]:
    """Assignment times on the edges of working periods, before and inside the window."""
    days = ((2, 6), (2, 9), (2, 27), (3, 6), (3, 9))
    hours = ((8, 30), (12, 0), (13, 30), (17, 30), (11, 0), (16, 45), (20, 0))
    return [local(d, h, m, month) for month, d in days for h, m in hours]


def anytime(rng: random.Random) -> datetime:
    """From six days before the window to the day before the digest."""
    return START + timedelta(seconds=rng.uniform(-6 * 86400, 29 * 86400))


def claim_after(cal: WorkCalendar, span: timedelta, a: datetime, rng: random.Random) -> Any:
    deadline = cal.add_working(a, span)
    return rng.choice(
        [
            None,
            deadline,
            deadline + timedelta(microseconds=1),
            deadline - timedelta(microseconds=1),
            a + timedelta(minutes=rng.uniform(0, 600)),
            a + timedelta(hours=rng.uniform(0, 120)),
            a - timedelta(hours=1),  # claimed before the (first) assignment was stamped
            local(9, 12, 30),  # the lunch break
            local(9, 17, 30),  # the end of a working period
            local(9, 17, 30) + timedelta(microseconds=1),
        ]
    )


async def seed(uows: UnitOfWorkFactory, org: Org, cal: WorkCalendar, span: timedelta) -> None:
    rng = random.Random(20260310)
    async with uows() as uow:
        reporter = (
            await uow.session.exec(select(Person).where(Person.role == Role.ENTERPRISE))
        ).first()
        assert reporter is not None
        depts = [*org.depts.values(), None]
        regions = list(org.regions.values())
        firms = list(org.enterprises.values())
        points = edges()
        for n in range(260):
            a = rng.choice(points) if rng.random() < 0.5 else anytime(rng)
            assigned = None if rng.random() < 0.08 else a
            claimed = claim_after(cal, span, a, rng) if assigned else None
            due = None if assigned is None else a + timedelta(days=rng.choice((2, 5, 7)))
            resolved = rng.choice([None, due, claimed, a + timedelta(days=rng.uniform(0, 9))])
            if resolved is not None and due is not None and rng.random() < 0.2:
                resolved = due + timedelta(microseconds=rng.choice((-1, 0, 1)))
            promised = None
            if rng.random() < 0.3:
                promised = (END.astimezone(TZ) + timedelta(days=rng.randint(-20, 5))).date()
            ticket = Ticket(
                state=rng.choice(ALL_STATES),
                region_id=rng.choice(regions),
                enterprise_id=rng.choice(firms),
                reporter_id=reporter.id,  # type: ignore[arg-type]
                department_id=rng.choice(depts),
                claimant_id=reporter.id if claimed and rng.random() < 0.7 else None,
                summary=f"report {n}",
                text=f"report {n}",
                created_at=a - timedelta(hours=1),
                assigned_at=assigned,
                claimed_at=claimed,
                resolved_at=resolved,
                due_at=due,
                promised_date=promised,
                last_activity_at=a,
            )
            uow.tickets.add(ticket)
            await uow.flush()
            kinds = ["assign"] * rng.randint(0, 2) + rng.sample(
                ["report", "claim", "resolve", "rate", "autoclose", "escalate", "reject_return"],
                rng.randint(0, 5),
            )
            for kind in kinds:
                at = rng.choice(
                    [a, START, END, START - timedelta(microseconds=1), END - timedelta(hours=2)]
                    + [anytime(rng) for _ in range(3)]
                )
                uow.events.add(
                    TicketEvent(
                        ticket_id=ticket.id,  # type: ignore[arg-type]
                        kind=kind,
                        to_state=rng.choice(["closed", "claimed", "resolved"]),
                        at=at,
                    )
                )
        await uow.commit()


@dataclass
class Tally:
    assigned: int = 0
    rates: Counter[str] | None = None
    overdue: int = 0
    redo: int = 0
    returns_disputed: int = 0
    escalations: int = 0

    def rate(self, name: str, hit: bool) -> None:
        assert self.rates is not None
        self.rates[name + ".hit"] += hit
        self.rates[name + ".total"] += 1


def by_hand(
    tickets: list[Ticket],
    events: list[TicketEvent],
    cal: WorkCalendar,
    span: timedelta,
    now: datetime,
) -> dict[int, Tally]:
    """The figures as the digest defines them, one ticket and one event at a time."""
    tally: dict[int, Tally] = defaultdict(lambda: Tally(rates=Counter()))
    of = {t.id: t for t in tickets}
    window = {e.ticket_id for e in events if e.kind == "assign" and START <= e.at < END}
    today = now.astimezone(TZ).date()
    for t in tickets:
        if t.department_id is None:
            continue
        row = tally[t.department_id]
        if t.state in UNRESOLVED and t.due_at is not None and t.due_at < now:
            row.overdue += 1
        if t.id in window:
            if t.state in GONE:
                continue
            row.assigned += 1
            if t.assigned_at is not None:
                deadline = cal.add_working(t.assigned_at, span)
                if t.claimed_at is not None:
                    row.rate("response", t.claimed_at <= deadline)
                elif now >= deadline:
                    row.rate("response", False)
            if t.due_at is not None and (t.resolved_at is not None or now >= t.due_at):
                row.rate("resolution", t.resolved_at is not None and t.resolved_at <= t.due_at)
            if t.promised_date is not None:
                done = t.resolved_at.astimezone(TZ).date() if t.resolved_at else None
                if done is not None or today > t.promised_date:
                    row.rate("promises", done is not None and done <= t.promised_date)
        elif t.state in UNRESOLVED:
            waiting = t.state in (S.ASSIGNED, S.SUPERVISED) and t.claimant_id is None
            if waiting and t.assigned_at and now >= cal.add_working(t.assigned_at, span):
                row.rate("response", False)
            if t.due_at is not None and now >= t.due_at:
                row.rate("resolution", False)
    for e in events:
        t = of[e.ticket_id]
        if not (START <= e.at < END) or t.department_id is None:
            continue
        row = tally[t.department_id]
        if e.kind == "rate":
            row.rate("satisfaction", e.to_state == "closed")
            row.redo += e.to_state != "closed"
        elif e.kind == "reject_return":
            row.returns_disputed += 1
        elif e.kind == "escalate":
            row.escalations += 1
    return tally


async def read_all(uows: UnitOfWorkFactory, region_ids: set[int]) -> tuple[list[Any], list[Any]]:
    async with uows(readonly=True) as uow:
        tickets = [
            t for t in (await uow.session.exec(select(Ticket))).all() if t.region_id in region_ids
        ]
        ids = {t.id for t in tickets}
        events = [
            e for e in (await uow.session.exec(select(TicketEvent))).all() if e.ticket_id in ids
        ]
        uow.session.expunge_all()
    return tickets, events


def as_tally(figures: Any) -> Tally:
    rates: Counter[str] = Counter()
    for name in ("response", "resolution", "satisfaction", "promises"):
        rate = getattr(figures, name)
        rates[name + ".hit"], rates[name + ".total"] = rate.hit, rate.total
    return Tally(
        figures.assigned,
        +rates,
        figures.overdue,
        figures.redo,
        figures.returns_disputed,
        figures.escalations,
    )


@pytest.fixture
async def seeded(
    uows: UnitOfWorkFactory, calendar: WorkCalendar, settings: Settings, engine: Any
) -> tuple[Services, Org, timedelta]:
    org = await build_org(uows)
    span = working_span(calendar, settings.nudge_unclaimed_after)
    await seed(uows, org, calendar, span)
    services = build_services(settings, clock=ManualClock(END), engine=engine, limits=None)
    return services, org, span


@pytest.mark.parametrize("region", ["city", "east"])
@pytest.mark.parametrize("now", NOWS, ids=["before-hours", "working", "lunch"])
async def test_the_department_figures_match_a_count_by_hand(
    seeded: tuple[Services, Org, timedelta], calendar: WorkCalendar, region: str, now: datetime
) -> None:
    services, org, span = seeded
    async with services.uows(readonly=True) as uow:
        region_ids = set(await uow.org.region_and_below(org.regions[region]))
        figures = await services.digests.scorer.departments(
            uow, sorted(region_ids), START, END, now
        )
    tickets, events = await read_all(services.uows, region_ids)
    expected = by_hand(tickets, events, calendar, span, now)
    got = {f.department_id: as_tally(f) for f in figures}
    for dept, want in expected.items():
        want.rates = +want.rates  # type: ignore[operator]
        assert got.get(dept) == want, dept
    assert all(got[d] == Tally(rates=Counter()) for d in set(got) - set(expected))
    # enough of the jumble lands on each side of each rule to mean something
    rates = sum((t.rates for t in expected.values()), Counter())  # type: ignore[misc]
    for name in ("response", "resolution", "promises", "satisfaction"):
        assert 0 < rates[name + ".hit"] < rates[name + ".total"], name


async def test_the_flow_and_the_open_tickets_match_a_count_by_hand(
    seeded: tuple[Services, Org, timedelta], calendar: WorkCalendar
) -> None:
    services, org, span = seeded
    start = END - timedelta(days=1)
    async with services.uows(readonly=True) as uow:
        region_ids = sorted(await uow.org.region_and_below(org.regions["east"]))
        scope = await q.Scope.of(uow, region_ids)
        assert not scope.everywhere
        flow = await q.flow(uow, scope, start, END)
        opened = await q.open_tickets(uow, scope, calendar, span, END)
    tickets, events = await read_all(services.uows, set(region_ids))
    day = [e for e in events if start <= e.at < END]

    def touched(*kinds: str) -> int:
        return len({e.ticket_id for e in day if e.kind in kinds})

    closing = {
        e.ticket_id
        for e in day
        if e.kind == "autoclose" or (e.kind == "rate" and e.to_state == "closed")
    }
    assert (flow.new, flow.claimed, flow.resolved, flow.closed, flow.escalations) == (
        touched("report"),
        touched("claim"),
        touched("resolve"),
        len(closing),
        sum(e.kind == "escalate" for e in day),
    )
    assert opened.by_state == dict(
        Counter(str(t.state) for t in tickets if t.state in OPEN_STATES)
    )


def test_the_latest_missed_assignment_is_exact(calendar: WorkCalendar) -> None:
    span = timedelta(hours=2)
    for now in (*NOWS, local(9, 14, 0), local(9, 8, 30)):
        latest = q.latest_missed(calendar, span, now)
        assert calendar.add_working(latest, span) <= now
        assert calendar.add_working(latest + timedelta(microseconds=1), span) > now

"""The open tickets, one by one: a backlog active within the hour, and the few the ladder
must act on now (each kind of rung in turn)."""

from __future__ import annotations

import json
import random
from datetime import date, datetime

from bench.history import (
    EVENT_COLUMNS,
    NAN,
    NUDGE_COLUMNS,
    SOURCE_IDS,
    TICKET_COLUMNS,
    Chunk,
    Columns,
    D,
    H,
    Sizes,
    stamps,
    trouble,
)
from bench.orgchart import Chart
from bench.settings import NOW, TZ

STATES = ("reported",) * 5 + ("assigned",) * 20 + ("claimed",) * 55 + ("supervised",) * 5
NOW_S = NOW.timestamp()
TIMES = (
    "created_at", "assigned_at", "claimed_at", "supervised_at", "resolved_at", "closed_at",
    "due_at", "last_activity_at", "at",
)  # fmt: skip


class _Rows:
    def __init__(self, chart: Chart, rng: random.Random, ticket: int, event: int) -> None:
        self.chart, self.rng = chart, rng
        self.ticket_id, self.event_id = ticket - 1, event - 1
        self.tickets: list[tuple] = []
        self.events: list[tuple] = []

    def event(
        self,
        tid: int,
        kind: str,
        actor: int | None,
        before: str | None,
        after: str,
        at: float,
        data: dict | None = None,
        note: str | None = None,
    ) -> None:
        self.event_id += 1
        self.events.append(
            (self.event_id, tid, kind, actor, before, after, note, json.dumps(data or {}), at)
        )

    def ticket(
        self,
        state: str,
        created: float,
        last: float,
        due: float,
        supervised: float = NAN,
        resolved: float = NAN,
    ) -> None:
        """An open ticket in `state`, last touched at `last`, with the events that led there."""
        rng, chart = self.rng, self.chart
        self.ticket_id += 1
        tid = self.ticket_id
        region = rng.choice(chart.regions)
        ent = rng.choice(chart.enterprises[region])
        reporter = rng.choice(chart.members[ent])
        dept = rng.choice(chart.bureaus_for(region))
        text = trouble(rng.randrange(1 << 20), rng.choice(chart.keywords[dept]))
        self.event(tid, "report", reporter, None, "reported", created)
        assigned, claimant = NAN, None
        if state != "reported":
            assigned = min(created + rng.uniform(300, 2 * H), last)
            self.event(
                tid,
                "assign",
                chart.coordinators[region],
                "reported",
                "assigned",
                assigned,
                {"department_id": dept},
            )
        if state in ("claimed", "supervised", "resolved"):
            claimant = rng.choice(chart.officials[dept])
            self.event(tid, "claim", claimant, "assigned", "claimed", assigned)
        if supervised == supervised:  # not NaN
            self.event(
                tid, "supervise", chart.leaders[region], "claimed", "supervised", supervised
            )
        if resolved == resolved:
            self.event(tid, "resolve", claimant, "claimed", "resolved", resolved, note="已办结")
        elif last > created and state != "assigned":
            self.event(tid, "progress", claimant or reporter, state, state, last, note="正在协调")
        group = chart.group_of[region]
        self.tickets.append(
            (
                tid,
                state,
                region,
                ent,
                reporter,
                None if state == "reported" else dept,
                claimant,
                None,
                None,
                None,
                text,
                text,
                False,
                group,
                SOURCE_IDS + tid,
                group,
                SOURCE_IDS + tid,
                None,
                created,
                assigned,
                assigned if claimant else NAN,
                supervised,
                resolved,
                NAN,
                due,
                last,
                0,
                0,
                None,
                3,
            )
        )


def backlog(
    chart: Chart, sizes: Sizes, first_ticket: int, first_event: int, first_nudge: int, *, seed: int
) -> Chunk:
    """The open tickets: active within the hour (nothing due yet), then `sizes.due` due."""
    rng = random.Random(seed)
    rows = _Rows(chart, rng, first_ticket, first_event)
    for _ in range(sizes.open - sizes.due):
        state = rng.choice((*STATES, *("resolved",) * 15))
        last = NOW_S - rng.uniform(60, 50 * 60)
        created = last - rng.uniform(0, 5 * D) if state != "reported" else last
        rows.ticket(
            state,
            created,
            last,
            created + 7 * D,
            supervised=last if state == "supervised" else NAN,
            resolved=last if state == "resolved" else NAN,
        )
    for k in range(sizes.due):
        _due(rows, k)
    empty: Columns = {c: [] for c in NUDGE_COLUMNS}
    return Chunk(
        _columns(rows.tickets, TICKET_COLUMNS), _columns(rows.events, EVENT_COLUMNS), empty
    )


def _columns(rows: list[tuple], names: tuple[str, ...]) -> Columns:
    """Rows as columns, with the float times turned into stored text."""
    if not rows:
        return {c: [] for c in names}
    columns = dict(zip(names, (list(c) for c in zip(*rows, strict=True)), strict=True))
    for name in TIMES:
        if name in columns:
            columns[name] = stamps(columns[name])
    return columns


def local(day: date, hour: int, minute: int = 0) -> float:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=TZ).timestamp()


def _due(rows: _Rows, k: int) -> None:
    """One of the tickets the ladder must act on at NOW, by turns of each kind of rung."""
    tue, mon, thu = date(2026, 11, 24), date(2026, 11, 23), date(2026, 11, 19)
    future = NOW_S + 3 * D
    match k % 5:
        case 0:  # reported yesterday afternoon, nobody assigned it: the coordinators
            rows.ticket("reported", local(tue, 15), local(tue, 15), NAN)
        case 1:  # assigned, not claimed for a working morning: the department's officials
            rows.ticket("assigned", local(tue, 10), local(tue, 14), future)
        case 2:  # claimed, idle since Monday afternoon: the claimant
            rows.ticket("claimed", local(mon, 9), local(mon, 15), future)
        case 3:  # supervised past its due time and idle: the claimant, the leaders, the city
            at = local(tue, 9)
            rows.ticket("supervised", local(thu, 9), at, at, supervised=at)
        case _:  # resolved last Thursday and not rated: the reporter is invited to rate
            at = local(thu, 10)
            rows.ticket("resolved", local(thu, 9), at, future, resolved=at)

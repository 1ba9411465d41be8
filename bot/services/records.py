"""Accountability: the department ranking and the record of a department or an official."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot import texts_digest
from bot.calendar import WorkCalendar
from bot.clock import Clock
from bot.config import Settings
from bot.errors import InvalidTransitionError
from bot.services.digests import (
    DepartmentFigures,
    OverdueItem,
    Scorer,
    leader_and_region,
    overdue_item,
    ranking_chart,
)
from storage.tables import Department, Person, Role
from storage.uow import UnitOfWork, UnitOfWorkFactory

_KINDS = (
    "assign",
    "transfer",
    "approve_return",
    "claim",
    "return",
    "reject_return",
    "progress",
    "resolve",
    "rate",
    "autoclose",
    "escalate",
)
_GIVEN = ("assign", "transfer", "approve_return")
_BY_ACTOR = {
    "claim": "claimed",
    "return": "returned",
    "progress": "progress",
    "resolve": "resolved",
}
OVERDUE_LISTED = 10


@dataclass(frozen=True)
class Record:
    """What a department, or one official, did with the region's tickets over a period."""

    subject: str
    is_person: bool
    department: str | None
    days: int
    start: datetime
    end: datetime
    day_length: timedelta
    assigned: int = 0  # tickets given to the department (assigned, transferred or moved to it)
    claimed: int = 0
    returned: int = 0
    returns_rejected: int = 0
    progress: int = 0
    resolved: int = 0
    closed: int = 0
    closed_unrated: int = 0
    redo: int = 0
    escalations: int = 0
    nudges: int = 0
    nudges_ignored: int = 0
    overdue_total: int = 0
    overdue: tuple[OverdueItem, ...] = ()
    ratings: tuple[tuple[str, int], ...] = ()
    figures: DepartmentFigures | None = None


class RecordService:
    """`/stats` and `/record` for leaders (and admins), scoped to the leader's region and below."""

    def __init__(
        self, uows: UnitOfWorkFactory, clock: Clock, calendar: WorkCalendar, settings: Settings
    ) -> None:
        self._uows = uows
        self._clock = clock
        self._calendar = calendar
        self._settings = settings
        self.scorer = Scorer(calendar, settings)

    async def ranking(self, telegram_id: int, days: int = 30) -> str:
        """The departments ranked by the three rates over the last `days` days.

        Raises NotRegisteredError, LeadersOnlyError.
        """
        lang, region, rows = await self._ranking(telegram_id, days)
        return texts_digest.ranking(lang, region, days, rows)

    async def ranking_chart(self, telegram_id: int, days: int = 30) -> bytes | None:
        """The same ranking as a PNG chart (None when no department has a rate yet)."""
        lang, region, rows = await self._ranking(telegram_id, days)
        return ranking_chart(lang, region, None, days, rows)

    async def _ranking(
        self, telegram_id: int, days: int
    ) -> tuple[str, str, tuple[DepartmentFigures, ...]]:
        """(the asker's language, the region's name, the departments ranked)."""
        now = self._clock.now()
        async with self._uows(readonly=True) as uow:
            person, region = await leader_and_region(uow, telegram_id)
            lang, name = person.language, region.name
            scope = sorted(await uow.org.region_and_below(region.id))  # type: ignore[arg-type]
            rows = await self.scorer.departments(uow, scope, now - timedelta(days=days), now, now)
        return lang, name, rows

    async def record(self, telegram_id: int, target: str | None, days: int = 30) -> str:
        """The accountability record of a department (code or name) or an official (@username
        or name) over the last `days` days; without a target, the ranking.

        Raises NotRegisteredError, LeadersOnlyError, InvalidTransitionError
        ("unknown_department") when the target names nobody in the leader's scope.
        """
        if not (target or "").strip():
            return await self.ranking(telegram_id, days)
        found, lang = await self._record(telegram_id, target, days)  # type: ignore[arg-type]
        return texts_digest.record(lang, found, self._settings.tz)

    async def record_of(self, telegram_id: int, target: str, days: int = 30) -> Record:
        """The figures behind `record` (same refusals)."""
        return (await self._record(telegram_id, target, days))[0]

    async def _record(self, telegram_id: int, target: str, days: int) -> tuple[Record, str]:
        now = self._clock.now()
        start = now - timedelta(days=days)
        async with self._uows(readonly=True) as uow:
            leader, region = await leader_and_region(uow, telegram_id)
            scope = sorted(await uow.org.region_and_below(region.id))  # type: ignore[arg-type]
            dept, official = await self._target(uow, region.id, scope, target)  # type: ignore[arg-type]
            events = await uow.events.window_events(start, now, _KINDS, scope)
            counts = _count(events, dept.id, official.id if official else None)  # type: ignore[arg-type]
            people = [official] if official else await uow.org.officials_of(dept.id)  # type: ignore[arg-type]
            sent, ignored = await uow.schedule.nudge_counts(
                [p.id for p in people],  # type: ignore[misc]
                start,
                scope,
            )
            overdue = await uow.tickets.overdue_rows(
                scope,
                now,
                department_id=None if official else dept.id,
                claimant_id=official.id if official else None,
                limit=1000,
            )
            figures = None
            if official is None:
                ranked = await self.scorer.departments(uow, scope, start, now, now)
                figures = next((r for r in ranked if r.department_id == dept.id), None)
            # built before leaving: the rollback at the end of the unit of work expires rows
            found = Record(
                subject=official.name if official else dept.name,
                is_person=official is not None,
                department=dept.name,
                days=days,
                start=start,
                end=now,
                day_length=self._calendar.working_day_length(),
                nudges=sent,
                nudges_ignored=ignored,
                overdue_total=len(overdue),
                overdue=tuple(
                    overdue_item(self._calendar, r, now) for r in overdue[:OVERDUE_LISTED]
                ),
                figures=figures,
                **counts,
            )
            return found, leader.language

    async def _target(
        self, uow: UnitOfWork, region_id: int, scope: list[int], target: str
    ) -> tuple[Department, Person | None]:
        """The department, or the official and their department, that the leader may see."""
        chain = [r.id for r in await uow.org.region_and_above(region_id)]
        serving = await uow.org.departments_in(sorted(set(chain) | set(scope)))  # type: ignore[arg-type]
        wanted = target.strip().lstrip("@").casefold()
        by_id = {d.id: d for d in serving}
        for matcher in (
            lambda d: d.code.casefold() == wanted,
            lambda d: d.name.casefold() == wanted,
            lambda d: wanted in d.name.casefold() or wanted in d.code.casefold(),
        ):
            hits = [d for d in serving if matcher(d)]
            if len(hits) == 1:
                return hits[0], None
            if len(hits) > 1:
                break
        official = await uow.org.person_by_username(wanted)
        if official is None:
            officials = [
                p
                for d in serving
                for p in await uow.org.officials_of(d.id)  # type: ignore[arg-type]
                if p.name.casefold() == wanted
            ]
            official = officials[0] if len(officials) == 1 else None
        if (
            official is not None
            and Role(official.role) is Role.OFFICIAL
            and official.department_id in by_id
        ):
            return by_id[official.department_id], official
        raise InvalidTransitionError(
            "unknown_department",
            number="—",
            query=target[:40],
            options=[d.code for d in serving][:20],
        )


def _count(events: Any, dept: int, official: int | None) -> dict[str, Any]:
    """Tally the window's events for a department, or for one official of it: their own acts,
    and what happened to the tickets they held."""
    out: Counter[str] = Counter()
    ratings: Counter[str] = Counter()
    returned_by: dict[int, int | None] = {}  # a rejected return counts against its returner
    for e in events:
        if official is None:
            mine = e.ticket_department_id == dept
            acted = e.actor_department_id == dept
        else:
            mine = e.ticket_claimant_id == official
            acted = e.actor_id == official
            if e.kind == "reject_return":
                mine = returned_by.get(e.ticket_id) == official
        if e.kind == "return":
            returned_by[e.ticket_id] = e.actor_id
        if (
            e.kind in _GIVEN
            and (e.data or {}).get("department_id", e.ticket_department_id) == dept
        ):
            out["assigned"] += 1
        elif e.kind in _BY_ACTOR and acted:
            out[_BY_ACTOR[e.kind]] += 1
        elif e.kind == "reject_return" and mine:
            out["returns_rejected"] += 1
        elif e.kind == "rate" and mine:
            ratings[str((e.data or {}).get("rating"))] += 1
            out["closed" if e.to_state == "closed" else "redo"] += 1
        elif e.kind == "autoclose" and mine:
            out["closed"] += 1
            out["closed_unrated"] += 1
        elif e.kind == "escalate" and mine:
            out["escalations"] += 1
    order = ("satisfied", "basic", "unsatisfied", "unsolved")
    return dict(out) | {"ratings": tuple((k, ratings[k]) for k in order if ratings[k])}

"""The leaders' daily digest: the region's flow, what is open, the exceptions, the three rates."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any

from bot import texts_digest
from bot.calendar import WorkCalendar
from bot.clock import Clock
from bot.config import Settings
from bot.errors import LeadersOnlyError, NotRegisteredError, UsageError
from bot.markup import clip, escape
from bot.notify import Notifier, outbox_row
from bot.services import digest_queries as q
from bot.services.nudges import IGNORABLE_RUNGS
from bot.services.org import working_span
from storage.tables import DigestRun, Person, Region, Role
from storage.uow import UnitOfWork, UnitOfWorkFactory

log = logging.getLogger(__name__)
RATE_WINDOW_DAYS = 30
LATE_AFTER = timedelta(minutes=5)
TIERS = ((0.90, "A"), (0.75, "B"))
OVERDUE_LISTED = 15
IGNORED_LISTED = 8
CLUSTERS_LISTED = 5
OPEN_SCANNED = 5000  # the newest open reports the near-alike ones are looked for among


@dataclass(frozen=True)
class Rate:
    hit: int = 0
    total: int = 0

    @property
    def value(self) -> float | None:
        return self.hit / self.total if self.total else None

    def add(self, ok: bool) -> Rate:
        return Rate(self.hit + int(ok), self.total + 1)


def tier_of(score: float | None) -> str:
    """A at 90% and above, B at 75% and above, C below; "—" without data."""
    if score is None:
        return "—"
    return next((name for floor, name in TIERS if score >= floor), "C")


@dataclass(frozen=True)
class DepartmentFigures:
    """One department over the rate window: the three rates, its tier and what it owes."""

    department_id: int
    name: str
    code: str
    assigned: int = 0
    response: Rate = Rate()  # claimed within nudge_unclaimed_after (working time) of assignment
    resolution: Rate = Rate()  # resolved by the due time
    satisfaction: Rate = Rate()  # satisfied or basically satisfied among the ratings given
    promises: Rate = Rate()  # resolved on or before the date promised at the claim
    redo: int = 0
    returns_disputed: int = 0
    nudges_ignored: int = 0
    escalations: int = 0
    overdue: int = 0
    rank: int = 0

    @property
    def score(self) -> float | None:
        rates = [r.value for r in (self.response, self.resolution, self.satisfaction)]
        known = [r for r in rates if r is not None]
        return sum(known) / len(known) if known else None

    @property
    def tier(self) -> str:
        return tier_of(self.score)


@dataclass(frozen=True)
class OverdueItem:
    number: int
    summary: str
    department: str | None
    claimant: str | None
    due_at: datetime
    idle: timedelta


@dataclass(frozen=True)
class IgnoredBy:
    name: str
    department: str | None
    count: int


@dataclass(frozen=True)
class Cluster:
    """Similar open reports of one department from different enterprises."""

    numbers: tuple[int, ...]
    department: str | None
    enterprises: int
    summary: str


@dataclass(frozen=True)
class Digest:
    region_name: str
    region_code: str
    day: date
    start: datetime
    end: datetime
    due_at: datetime
    late: bool
    timezone: str
    day_length: timedelta
    new: int
    claimed: int
    resolved: int
    closed: int
    escalations: int
    open_by_state: tuple[tuple[str, int], ...]
    overdue: tuple[OverdueItem, ...]
    overdue_total: int
    departments: tuple[DepartmentFigures, ...]
    window_days: int
    ignored: tuple[IgnoredBy, ...]
    nudges_ignored: int
    clusters: tuple[Cluster, ...]


@dataclass(frozen=True)
class DueDigest:
    leader_id: int
    region_id: int
    telegram_id: int | None
    language: str
    dm_blocked: bool
    day: date
    late: bool


@dataclass(frozen=True)
class LeaderDigest:
    html: str
    chart_png: bytes | None


class _Sums:
    """One department's counts while the figures are added up (cheaper than a new frozen
    DepartmentFigures for every ticket and event)."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(
            ("assigned", "redo", "returns_disputed", "nudges_ignored", "escalations", "overdue"), 0
        )
        self.rates = {name: [0, 0] for name in _RATE_NAMES}

    def rate(self, name: str, hit: bool) -> None:
        self.add(name, int(hit), int(not hit))

    def add(self, name: str, hits: int, misses: int) -> None:
        pair = self.rates[name]
        pair[0] += hits
        pair[1] += hits + misses

    def figures(self, department: Any) -> DepartmentFigures:
        return DepartmentFigures(
            department.id,
            department.name,
            department.code,
            **self.counts,
            **{name: Rate(*pair) for name, pair in self.rates.items()},
        )


_RATE_NAMES = ("response", "resolution", "satisfaction", "promises")


class Scorer:
    """The departments' figures, added up by the database over the window's assignments and
    the open backlog: a few aggregate queries whose cost follows the window, not the history."""

    def __init__(self, calendar: WorkCalendar, settings: Settings) -> None:
        self._cal = calendar
        self._tz = settings.tz
        self._respond = working_span(calendar, settings.nudge_unclaimed_after)

    async def departments(
        self,
        uow: UnitOfWork,
        region_ids: Sequence[int],
        start: datetime,
        end: datetime,
        now: datetime,
        *,
        ignored_rows: Sequence[Any] | None = None,
        scope: q.Scope | None = None,
        opened: q.OpenTickets | None = None,
    ) -> tuple[DepartmentFigures, ...]:
        """Every department serving the regions, ranked best first. `ignored_rows` (the
        regions' ignored nudges) and `opened` (their open tickets, from `open_tickets` at the
        same moment) are passed when already read."""
        scope = scope or await q.Scope.of(uow, region_ids)
        known = {d.id: d for d in await uow.org.all_departments()}
        sums = {d.id: _Sums() for d in known.values() if d.region_id in scope.region_ids}

        def of(dept: int | None) -> _Sums | None:
            tally = sums.get(dept)  # type: ignore[arg-type]
            if tally is None and dept in known:
                tally = sums[dept] = _Sums()  # type: ignore[index]
            return tally

        span, cal = self._respond, self._cal
        found, undecided = await q.assigned(uow, scope, cal, span, start, end, now)
        for row in found:
            if (tally := of(row.department_id)) is not None:
                tally.counts["assigned"] += row.count
                tally.add("response", row.response_hit, row.response_late + row.response_waiting)
                tally.add(
                    "resolution", row.resolution_hit, row.resolution_total - row.resolution_hit
                )
        if any(row.undecided for row in found):
            await self._undecided(uow, scope, undecided, start, end, of)
        if any(row.promised for row in found):
            await self._promises(uow, scope, start, end, now, of)
        # the open tickets assigned before the window owe their misses too: all the open
        # ones, less those already counted with the window's assignments
        counted = {row.department_id: row for row in found}
        if opened is None:
            opened = await self.open_tickets(uow, scope, now)
        for row in opened.backlog:
            if (tally := of(row.department_id)) is not None:
                fresh = counted.get(row.department_id, q.Assigned(row.department_id))
                tally.add("response", 0, row.unclaimed_missed - fresh.open_unclaimed_missed)
                tally.add("resolution", 0, row.past_due - fresh.open_past_due)
                tally.counts["overdue"] = row.overdue
        for dept, kind, closed, n in await q.department_events(uow, scope, start, end):
            if (tally := of(dept)) is None:
                continue
            if kind == "rate":
                tally.add("satisfaction", n if closed else 0, 0 if closed else n)
                tally.counts["redo"] += 0 if closed else n
            elif kind == "reject_return":
                tally.counts["returns_disputed"] += n
            else:
                tally.counts["escalations"] += n
        if ignored_rows is None:
            ignored_rows = await uow.schedule.ignored_nudges(scope.region_ids, IGNORABLE_RUNGS)
        for dept, _person, _name, n in ignored_rows:
            if (tally := of(dept)) is not None:
                tally.counts["nudges_ignored"] += n
        return ranked(tally.figures(known[dept]) for dept, tally in sums.items())

    async def open_tickets(self, uow: UnitOfWork, scope: q.Scope, now: datetime) -> q.OpenTickets:
        return await q.open_tickets(uow, scope, self._cal, self._respond, now)

    async def _undecided(self, uow: UnitOfWork, scope: q.Scope, condition: str,
                         start: datetime, end: datetime, of: Any) -> None:  # fmt: skip
        """Claims the working-time query could not place (an assignment before the window):
        each decided by the calendar."""
        ids = await q.ticket_ids(uow, scope, condition, start, end)
        for t in await q.tickets_by_id(uow, ids):
            if (tally := of(t.department_id)) is not None:
                late = t.claimed_at - t.assigned_at > self._respond
                tally.rate("response", not late or t.claimed_at <= self._deadline(t.assigned_at))

    async def _promises(self, uow: UnitOfWork, scope: q.Scope, start: datetime,
                        end: datetime, now: datetime, of: Any) -> None:  # fmt: skip
        """Promised dates kept, by the local date of the resolution; a promise whose date has
        not passed yet counts neither way."""
        ids = await q.ticket_ids(uow, scope, "t.promised_date IS NOT NULL", start, end)
        today = now.astimezone(self._tz).date()
        for t in await q.tickets_by_id(uow, ids):
            if (tally := of(t.department_id)) is None:
                continue
            done = t.resolved_at.astimezone(self._tz).date() if t.resolved_at else None
            if done is not None or today > t.promised_date:
                tally.rate("promises", done is not None and done <= t.promised_date)

    def _deadline(self, assigned_at: datetime) -> datetime:
        return self._cal.add_working(assigned_at, self._respond)


def ranked(rows: Iterable[DepartmentFigures]) -> tuple[DepartmentFigures, ...]:
    """Best score first (no data last), then by name; ranks numbered from 1."""
    ordered = sorted(rows, key=lambda r: (r.score is None, -(r.score or 0.0), r.name))
    return tuple(replace(row, rank=i) for i, row in enumerate(ordered, start=1))


class DigestService:
    """Each leader's digest, once per working day at settings.digest_at, for the leader's region
    and the regions below it.

    The sweep records DigestRun (leader, day) in the same transaction as the outbox rows, so a
    restart across the digest time sends it once, late (and marked so), never twice. The rows:

    - the text: method "sendMessage", payload {"text", "parse_mode": "HTML"}, split into
      several rows when longer than Telegram allows;
    - the ranking chart: method "sendPhoto", payload {"photo_b64": the PNG, base64 (standard
      alphabet, padded), "caption": Telegram HTML of at most 1024 characters,
      "parse_mode": "HTML", "filename": "ranking.png"}; the sender uploads the decoded bytes.
    """

    def __init__(
        self,
        uows: UnitOfWorkFactory,
        clock: Clock,
        calendar: WorkCalendar,
        settings: Settings,
        notifier: Notifier,
    ) -> None:
        self._uows = uows
        self._clock = clock
        self._calendar = calendar
        self._settings = settings
        self._notify = notifier
        self.scorer = Scorer(calendar, settings)

    # ---- when ---------------------------------------------------------------------------

    def moment(self, day: date) -> datetime:
        """When the digest of a local day is due, in UTC."""
        at = self._settings.digest_at.replace(tzinfo=None)
        return datetime.combine(day, at, tzinfo=self._settings.tz).astimezone(UTC)

    def previous_working_day(self, day: date) -> date:
        before = day - timedelta(days=1)
        for _ in range(60):
            if self._calendar.is_working_day(before):
                return before
            before -= timedelta(days=1)
        return day - timedelta(days=1)

    def period(self, day: date, now: datetime) -> tuple[datetime, datetime]:
        """From the previous working day's digest time to this day's (or now, if earlier)."""
        start = self.moment(self.previous_working_day(day))
        return start, max(start, min(now, self.moment(day)))

    async def due(self, now: datetime | None = None) -> list[DueDigest]:
        """The leaders still owed today's digest: none before the digest time or on a day off."""
        now = now or self._clock.now()
        day = now.astimezone(self._settings.tz).date()
        if not self._calendar.is_working_day(day) or now < self.moment(day):
            return []
        late = now - self.moment(day) > LATE_AFTER
        async with self._uows(readonly=True) as uow:
            return [
                DueDigest(p.id, p.region_id, p.telegram_id, p.language, p.dm_blocked, day, late)  # type: ignore[arg-type]
                for p in await uow.schedule.owed_digest(Role.LEADER, day)
            ]

    async def send_due(self, now: datetime | None = None) -> tuple[DueDigest, ...]:
        """Queue every digest that is due and not yet recorded; returns those queued.

        A digest that fails to build is logged and retried by the next sweep.
        """
        now = now or self._clock.now()
        sent = []
        for item in await self.due(now):
            try:
                if await self._send(item, now):
                    sent.append(item)
            except Exception:
                log.exception(
                    "digest for leader %s failed; the next sweep retries", item.leader_id
                )
        return tuple(sent)

    async def _send(self, item: DueDigest, now: datetime) -> bool:
        digest = await self.build(item.region_id, item.day, now, late=item.late)
        html = self.render(item.language, digest)
        png = self.chart(item.language, digest)
        async with self._uows() as uow:
            run = DigestRun(leader_id=item.leader_id, day=item.day, at=now, late=item.late)
            if not await uow.schedule.insert_ignoring_duplicate(run):
                return False  # another instance (or an earlier sweep) has sent it
            if item.telegram_id and not item.dm_blocked:
                self._queue(uow, item, html, png, self._caption(item.language, digest), now)
            await uow.commit()
        return True

    def _queue(
        self,
        uow: UnitOfWork,
        item: DueDigest,
        html: str,
        png: bytes | None,
        caption: str,
        now: datetime,
    ) -> None:
        chat = item.telegram_id
        self._notify.message(uow, chat, html, person_id=item.leader_id)  # type: ignore[arg-type]
        if png is None:
            return
        payload = {
            "photo_b64": base64.b64encode(png).decode("ascii"),
            "caption": caption,
            "parse_mode": "HTML",
            "filename": "ranking.png",
        }
        uow.queue_outbox(
            [outbox_row(chat, payload, now=now, method="sendPhoto", person_id=item.leader_id)]  # type: ignore[arg-type]
        )

    # ---- what ---------------------------------------------------------------------------

    async def build(
        self, region_id: int, day: date, now: datetime | None = None, *, late: bool = False
    ) -> Digest:
        """The figures of one region (and those below it) for the digest of a local day."""
        now = now or self._clock.now()
        async with self._uows(readonly=True) as uow:
            region = await uow.org.region(region_id)
            if region is None:
                raise UsageError("unknown_region", region=region_id)
            return await self._build(uow, region, day, now, late)

    async def _build(
        self, uow: UnitOfWork, region: Region, day: date, now: datetime, late: bool
    ) -> Digest:
        region_ids = sorted(await uow.org.region_and_below(region.id))  # type: ignore[arg-type]
        scope = await q.Scope.of(uow, region_ids)
        start, end = self.period(day, now)
        flow = await q.flow(uow, scope, start, end)
        window = end - timedelta(days=RATE_WINDOW_DAYS)
        ignored_rows = await uow.schedule.ignored_nudges(region_ids, IGNORABLE_RUNGS)
        opened = await self.scorer.open_tickets(uow, scope, now)
        # The near-alike reports are Python's work; the department figures mostly the
        # database's, which leaves the interpreter free while it adds them up. So the reports
        # are grouped on a thread meanwhile, handed to it at once (a SQLite statement on the
        # loop's thread does not yield to the loop, so a task would only start after them).
        summaries = await q.open_summaries(uow, scope, OPEN_SCANNED)
        grouping = asyncio.get_running_loop().run_in_executor(None, similar_groups, summaries)
        try:
            departments = await self.scorer.departments(
                uow,
                region_ids,
                window,
                end,
                now,
                ignored_rows=ignored_rows,
                scope=scope,
                opened=opened,
            )
            clusters = await self._clusters(uow, await grouping)
        finally:
            # a thread cannot be stopped: should the figures fail, let it finish, its outcome read
            await asyncio.gather(grouping, return_exceptions=True)
        overdue = await self._overdue(uow, region_ids, now)
        ignored = await self._ignored(uow, ignored_rows)
        return Digest(
            region_name=region.name,
            region_code=region.code,
            day=day,
            start=start,
            end=end,
            due_at=self.moment(day),
            late=late,
            timezone=self._settings.timezone,
            day_length=self._calendar.working_day_length(),
            new=flow.new,
            claimed=flow.claimed,
            resolved=flow.resolved,
            closed=flow.closed,
            escalations=flow.escalations,
            open_by_state=tuple(sorted(opened.by_state.items())),
            overdue=overdue,
            overdue_total=sum(d.overdue for d in departments),
            departments=departments,
            window_days=RATE_WINDOW_DAYS,
            ignored=ignored[:IGNORED_LISTED],
            nudges_ignored=sum(i.count for i in ignored),
            clusters=clusters,
        )

    async def _overdue(
        self, uow: UnitOfWork, region_ids: Sequence[int], now: datetime
    ) -> tuple[OverdueItem, ...]:
        rows = await uow.tickets.overdue_rows(region_ids, now, limit=OVERDUE_LISTED)
        return tuple(overdue_item(self._calendar, row, now) for row in rows)

    async def _ignored(self, uow: UnitOfWork, rows: Sequence[Any]) -> list[IgnoredBy]:
        """Who let reminders go unanswered on the open tickets (`rows` of ignored_nudges),
        most first."""
        counts: dict[int, int] = defaultdict(int)
        names: dict[int, str] = {}
        for _dept, person_id, name, n in rows:
            counts[person_id] += n
            names[person_id] = name
        depts = {d.id: d.name for d in await uow.org.all_departments()}
        people = {p.id: p for p in await uow.org.people(sorted(counts))}
        out = [
            IgnoredBy(names[i], depts.get(people[i].department_id or -1), n)
            for i, n in counts.items()
            if i in people
        ]
        return sorted(out, key=lambda x: (-x.count, x.name))

    async def _clusters(
        self, uow: UnitOfWork, groups: Sequence[Sequence[Any]]
    ) -> tuple[Cluster, ...]:
        """The groups of similar open reports (`similar_groups`), as the digest lists them."""
        depts = {d.id: d.name for d in await uow.org.all_departments()}
        found = [
            Cluster(
                tuple(sorted(r.id for r in group)),
                depts.get(group[0].department_id),
                len({r.enterprise_id for r in group}),
                min(group, key=lambda r: r.id).summary,
            )
            for group in groups
        ]
        found.sort(key=lambda c: (-c.enterprises, -len(c.numbers), c.numbers))
        return tuple(found[:CLUSTERS_LISTED])

    # ---- how it reads -------------------------------------------------------------------

    def render(self, lang: str, digest: Digest) -> str:
        return texts_digest.digest(lang, digest)

    def chart(self, lang: str, digest: Digest) -> bytes | None:
        """The ranking as a PNG; None when no department has any rate yet."""
        return ranking_chart(
            lang, digest.region_name, digest.day, digest.window_days, digest.departments
        )

    def _caption(self, lang: str, digest: Digest) -> str:
        title = texts_digest.chart_title(lang, digest.region_name, digest.day, digest.window_days)
        return escape(clip(title, 1000))

    async def text_for(
        self, who: str | int | None = None, day: date | None = None, lang: str | None = None
    ) -> str:
        """The digest, printed on demand: `qunban digest` names a region by code (None: the top
        region); `/digest` passes the asker's Telegram id and gets the asker's region.

        Raises UsageError (unknown region), NotRegisteredError, LeadersOnlyError.
        """
        if isinstance(who, int):
            return (await self.for_leader(who, day)).html
        now = self._clock.now()
        day = day or now.astimezone(self._settings.tz).date()
        async with self._uows(readonly=True) as uow:
            region = await (uow.org.region_by_code(who) if who else top_region(uow))
            if region is None:
                raise UsageError("unknown_region", region=who)
            digest = await self._build(uow, region, day, now, late=False)
        return self.render(lang or "zh", digest)

    async def for_leader(self, telegram_id: int, day: date | None = None) -> LeaderDigest:
        """A leader's (or an admin's) digest now, in their language, with the chart.

        Raises NotRegisteredError, LeadersOnlyError.
        """
        now = self._clock.now()
        day = day or now.astimezone(self._settings.tz).date()
        async with self._uows(readonly=True) as uow:
            person, region = await leader_and_region(uow, telegram_id)
            lang = person.language  # read before leaving: the rollback expires the row
            digest = await self._build(uow, region, day, now, late=False)
        return LeaderDigest(self.render(lang, digest), self.chart(lang, digest))


# ---- shared with the records ----------------------------------------------------------------


async def top_region(uow: UnitOfWork) -> Region | None:
    return next((r for r in await uow.org.all_regions() if r.parent_id is None), None)


async def leader_and_region(uow: UnitOfWork, telegram_id: int) -> tuple[Person, Region]:
    """The asking leader and their region (an admin gets the top region).

    Raises NotRegisteredError, LeadersOnlyError.
    """
    person = await uow.org.person_by_telegram(telegram_id)
    if person is None or not person.active:
        raise NotRegisteredError(telegram_id=telegram_id)
    role = Role(person.role)
    if role is Role.LEADER and person.region_id is not None:
        region = await uow.org.region(person.region_id)
    elif role is Role.ADMIN:
        region = await top_region(uow)
    else:
        raise LeadersOnlyError(role=role.value)
    if region is None:
        raise LeadersOnlyError(role=role.value)
    return person, region


def overdue_item(calendar: WorkCalendar, row: Any, now: datetime) -> OverdueItem:
    return OverdueItem(
        number=row.id,
        summary=row.summary,
        department=row.department_name,
        claimant=row.claimant_name,
        due_at=row.due_at,
        idle=calendar.working_between(row.last_activity_at, now),
    )


def ranking_chart(
    lang: str, region: str, day: date | None, days: int, rows: Sequence[DepartmentFigures]
) -> bytes | None:
    from bot import charts  # Pillow is loaded when the first chart is drawn, not at start-up

    bars = [
        charts.Bar(
            r.name, r.code, r.tier, r.response.value, r.resolution.value, r.satisfaction.value
        )
        for r in rows
        if r.score is not None
    ]
    if not bars:
        return None
    # without a Chinese font the chart speaks English rather than drawing boxes
    chart_lang = lang if charts.cjk_font() else "en"
    title = texts_digest.chart_title(chart_lang, region, day, days)
    return charts.ranking_png(title, texts_digest.chart_labels(chart_lang), bars)


# ---- clusters of similar reports ------------------------------------------------------------

_CJK_RUN = re.compile(r"[\u3400-\u9fff]+")
_WORD = re.compile(r"[a-z0-9]{3,}")
_STOP = frozenset(
    {"我们", "公司", "企业", "问题", "一个", "没有", "希望", "请问", "目前", "已经", "情况"}
    | {"the", "and", "for", "with", "not", "our", "has", "have", "was", "are", "from", "that"}
)
MIN_SHARED = 2
MIN_OVERLAP = 0.4


def tokens(text: str) -> frozenset[str]:
    """Character bigrams of the Chinese runs and the Latin words of a summary."""
    lowered = text.lower()
    grams = {run[i : i + 2] for run in _CJK_RUN.findall(lowered) for i in range(len(run) - 1)}
    return frozenset((grams | set(_WORD.findall(lowered))) - _STOP)


def similar(a: frozenset[str], b: frozenset[str]) -> bool:
    """Enough shared tokens, relative to the shorter summary."""
    shared = len(a & b)
    return shared >= MIN_SHARED and shared / max(min(len(a), len(b)), 1) >= MIN_OVERLAP


def similar_groups(rows: Sequence[Any], per_department: int = 200) -> list[list[Any]]:
    """Open reports grouped by department, then joined when their summaries are similar and
    they come from different enterprises; groups of at least two enterprises."""
    by_dept: dict[int | None, list[Any]] = defaultdict(list)
    for row in rows:
        if len(by_dept[row.department_id]) < per_department:
            by_dept[row.department_id].append(row)
    groups: list[list[Any]] = []
    for items in by_dept.values():
        groups += [g for g in _joined(items) if len({r.enterprise_id for r in g}) >= 2]
    return groups


def _joined(items: Sequence[Any]) -> list[list[Any]]:
    """The reports joined by similarity (and different enterprises), as groups in the order
    of `items`.

    Taken from the fewest tokens up, the later report of a pair is never the shorter, so one
    report needs the same number of shared tokens with every later one. Each token's reports
    are the bits of one integer, and a report's shared tokens with all the later ones are
    counted at once: bit-sliced, one integer per binary digit of the count. The groups are
    sets of bits too: a report is only joined to the groups it is not in yet.
    """
    grams = [tokens(r.summary) for r in items]
    order = sorted(range(len(items)), key=lambda i: len(grams[i]))
    having: dict[str, int] = defaultdict(int)  # token -> the reports (positions) with it
    firms: dict[Any, int] = defaultdict(int)  # enterprise -> its reports
    for position, i in enumerate(order):
        bit = 1 << position
        for token in grams[i]:
            having[token] |= bit
        firms[items[i].enterprise_id] |= bit
    parent = list(range(len(order)))
    members = [1 << position for position in range(len(order))]
    everyone = (1 << len(order)) - 1
    for position, i in enumerate(order):
        need = _needed(len(grams[i]))
        later = everyone >> (position + 1) << (position + 1)
        top = _root(parent, position)
        others = later & ~firms[items[i].enterprise_id] & ~members[top]
        if not others or need > len(grams[i]):
            continue
        digits: list[int] = []  # digits[d]: the reports whose count has binary digit d set
        for token in grams[i]:
            carry = having[token] & others
            for d, digit in enumerate(digits):
                digits[d], carry = digit ^ carry, digit & carry
                if not carry:
                    break
            if carry:
                digits.append(carry)
        found = _at_least(digits, need, others)
        while found:
            other = _root(parent, (found & -found).bit_length() - 1)
            parent[other] = top
            members[top] |= members[other]
            found &= ~members[top]
    joined: dict[int, list[Any]] = defaultdict(list)
    at = {i: position for position, i in enumerate(order)}
    for i, row in enumerate(items):
        joined[_root(parent, at[i])].append(row)
    return list(joined.values())


@cache
def _needed(size: int) -> int:
    """The fewest shared tokens that make a summary of `size` tokens `similar` to a longer
    one (more than it has: never)."""
    return next(
        (k for k in range(MIN_SHARED, size + 1) if k / max(size, 1) >= MIN_OVERLAP), size + 1
    )


def _at_least(digits: Sequence[int], need: int, among: int) -> int:
    """The reports (of `among`) whose bit-sliced count is at least `need`."""
    if need >> len(digits):
        return 0
    above, equal = 0, among
    for d in range(len(digits) - 1, -1, -1):
        if need >> d & 1:
            equal &= digits[d]
        else:
            above |= equal & digits[d]
            equal &= ~digits[d]
    return above | equal


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i

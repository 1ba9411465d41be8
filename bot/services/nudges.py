"""The escalation ladder: one sweep over the open tickets nudges, supervises and closes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from bot import texts, texts_digest
from bot.calendar import WorkCalendar
from bot.clock import Clock
from bot.config import Settings
from bot.errors import QunbanError
from bot.notify import Notifier, outbox_values
from bot.services.org import working_span
from bot.services.tickets import TicketService
from bot.tickets import Action
from storage.tables import Role, TicketState
from storage.uow import UnitOfWork, UnitOfWorkFactory

log = logging.getLogger(__name__)
S = TicketState
PAGE = 200
SUPERVISE_NOTE = "逾期自动督办 / overdue"
_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
_UNRESOLVED = frozenset({S.ASSIGNED, S.CLAIMED, S.SUPERVISED, S.RETURNED})


class Rung(StrEnum):
    UNASSIGNED = "unassigned"  # coordinators: reported (or returned) and waiting for a department
    UNCLAIMED = "unclaimed"  # the department's officials, mentioned in the group
    IDLE = "idle"  # the claimant
    IDLE_HEAD = "idle_head"  # the department's head, a second idle interval later
    OVERDUE = "overdue"  # the region's leader, once the due time has passed
    ESCALATE = "escalate"  # the city's leaders: supervised and still idle
    RATE_INVITE = "rate_invite"  # the reporter: resolved and not rated


# the rungs whose unanswered nudges count against officials and coordinators
IGNORABLE_RUNGS = (Rung.UNASSIGNED, Rung.UNCLAIMED, Rung.IDLE, Rung.IDLE_HEAD)
_EVENT_KIND = {
    Rung.OVERDUE: "escalate",
    Rung.ESCALATE: "escalate",
    Rung.RATE_INVITE: "remind_rate",
}


class Snapshot(Protocol):
    """The times of a ticket the ladder reads: a scan row or the locked Ticket itself."""

    state: str
    claimant_id: int | None
    last_activity_at: datetime
    due_at: datetime | None
    supervised_at: datetime | None
    resolved_at: datetime | None


@dataclass(frozen=True)
class Due:
    """A nudge that has fallen due: its rung, what the wait counts from, and its key slot."""

    rung: Rung
    since: datetime
    at: datetime
    slot: int


def slot_of(at: datetime) -> int:
    """The minute at which this repeat of a nudge fell due.

    A count of repeats alone would restart at 0 when activity resets the wait, and the unique
    key would then swallow the next round; the moment itself is the same for every rerun,
    restart or instance that reads the same ticket, and differs from one round to the next.
    """
    return int((at - _EPOCH).total_seconds() // 60)


class Ladder:
    """The ladder's arithmetic on a ticket's times; every duration is working time."""

    def __init__(self, calendar: WorkCalendar, settings: Settings) -> None:
        self._cal = calendar
        span = lambda d: working_span(calendar, d)  # noqa: E731
        self.unassigned = span(settings.nudge_unassigned_after)
        self.unclaimed = span(settings.nudge_unclaimed_after)
        self.idle = span(settings.nudge_idle_after)
        self.escalate = span(settings.escalate_after)
        self.repeat = span(settings.nudge_repeat_every)
        self.rate_invite = span(settings.rate_invite_after)
        self.autoclose = span(settings.autoclose_after)
        # the sweep asks again for a ticket it has just read, once it holds the ticket's lock;
        # the answer depends on these times alone
        self._due = functools.lru_cache(maxsize=4096)(self._compute_due)

    def quiet_since(self, now: datetime) -> datetime:
        """Nothing idle only since this moment can be due: working time never outruns the clock."""
        shortest = min(self.unassigned, self.unclaimed, self.idle, self.escalate, self.rate_invite)
        return now - shortest

    def due(self, t: Snapshot, now: datetime) -> list[Due]:
        """The nudges due for this ticket at `now` (each at its current repeat)."""
        times = (t.last_activity_at, t.due_at, t.supervised_at, t.resolved_at)
        return list(self._due(S(t.state), t.claimant_id is not None, *times, now))

    def _compute_due(
        self,
        state: S,
        claimed: bool,
        last: datetime,
        due_at: datetime | None,
        supervised_at: datetime | None,
        resolved_at: datetime | None,
        now: datetime,
    ) -> tuple[Due, ...]:
        out: list[Due] = []
        if state in (S.REPORTED, S.RETURNED):
            out += self._repeating(Rung.UNASSIGNED, last, self.after(last, self.unassigned), now)
        if state is S.ASSIGNED or (state is S.SUPERVISED and not claimed):
            out += self._repeating(Rung.UNCLAIMED, last, self.after(last, self.unclaimed), now)
        if state in (S.CLAIMED, S.SUPERVISED) and claimed:
            first = self.after(last, self.idle)
            out += self._repeating(Rung.IDLE, last, first, now)
            out += self._repeating(Rung.IDLE_HEAD, last, self.after(first, self.idle), now)
        if state in _UNRESOLVED and due_at is not None and now >= due_at:
            out.append(Due(Rung.OVERDUE, due_at, due_at, slot_of(due_at)))
        if state is S.SUPERVISED and supervised_at is not None:
            since = max(last, supervised_at)
            at = self.after(since, self.escalate)
            if now >= at:
                out.append(Due(Rung.ESCALATE, since, at, slot_of(at)))
        if state is S.RESOLVED and resolved_at is not None:
            invite = self.after(resolved_at, self.rate_invite)
            if invite <= now < self.after(resolved_at, self.autoclose):
                out.append(Due(Rung.RATE_INVITE, resolved_at, invite, slot_of(invite)))
        return tuple(out)

    def system_action(self, t: Snapshot, now: datetime) -> Action | None:
        """Close a resolved ticket nobody rated; supervise one past its due time."""
        state = S(t.state)
        if state is S.RESOLVED and t.resolved_at is not None:
            return Action.AUTOCLOSE if now >= self.after(t.resolved_at, self.autoclose) else None
        if state in (S.ASSIGNED, S.CLAIMED) and t.supervised_at is None:
            return Action.SUPERVISE if t.due_at is not None and now >= t.due_at else None
        return None

    def after(self, start: datetime, span: timedelta) -> datetime:
        return self._cal.add_working(start, span)

    def waited(self, since: datetime, now: datetime) -> timedelta:
        return self._cal.working_between(since, now)

    def _repeating(self, rung: Rung, since: datetime, first: datetime, now: datetime) -> list[Due]:
        if now < first:
            return []
        rounds = self.waited(first, now) // self.repeat if self.repeat else 0
        at = self.after(first, rounds * self.repeat)
        return [Due(rung, since, at, slot_of(at))]


@dataclass(frozen=True)
class SentNudge:
    ticket: int
    rung: str
    person_id: int
    slot: int


@dataclass(frozen=True)
class ScanReport:
    """What one scan did; `working` is False when it ran outside working time and did nothing."""

    at: datetime
    working: bool
    candidates: int = 0
    nudges: tuple[SentNudge, ...] = ()
    supervised: tuple[int, ...] = ()
    closed: tuple[int, ...] = ()

    @property
    def queued(self) -> bool:
        return bool(self.nudges or self.supervised or self.closed)


@dataclass
class _Tally:
    candidates: int = 0
    nudges: list[SentNudge] = field(default_factory=list)
    supervised: list[int] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)


class NudgeService:
    """The idle scan: the ladder applied to every open ticket, from the database each time."""

    def __init__(
        self,
        uows: UnitOfWorkFactory,
        clock: Clock,
        calendar: WorkCalendar,
        settings: Settings,
        notifier: Notifier,
        tickets: TicketService,
    ) -> None:
        self._uows = uows
        self._clock = clock
        self._calendar = calendar
        self._settings = settings
        self._notify = notifier
        self._tickets = tickets
        self.ladder = Ladder(calendar, settings)

    async def scan(self, now: datetime | None = None) -> ScanReport:
        """Nudge, supervise and close whatever the ladder says is due now.

        Does nothing outside working time. Each nudge is recorded under its unique key
        (ticket, rung, person, slot) with its outbox rows and its event in one transaction, so
        a rerun, a restart or a second instance sends nothing twice. A ticket that fails is
        logged and left for the next scan; nothing is raised.
        """
        now = now or self._clock.now()
        if not self._calendar.is_working_time(now):
            return ScanReport(now, working=False)
        quiet = self.ladder.quiet_since(now)
        tally, chart = _Tally(), _Chart()
        candidates: Sequence[int] | None = None
        start = 0
        while candidates is None or start < len(candidates):
            async with self._uows(readonly=True) as uow:
                if candidates is None:
                    candidates = await uow.tickets.scan_candidates(quiet, now)
                page = candidates[start : start + PAGE]
                rows = await uow.tickets.scan_page(page, quiet, now)
                latest = {
                    (t, rung): (slot, at)
                    for t, rung, slot, at in await uow.schedule.latest_nudges([r.id for r in rows])
                }
            wanted: dict[int, set[tuple[Rung, int]]] = {}
            for row in rows:
                tally.candidates += 1
                try:
                    if want := await self._work(row, latest, now, tally):
                        wanted[row.id] = want
                except Exception:
                    log.exception("idle scan: ticket #%s failed; the next scan retries it", row.id)
            tally.nudges += await self._nudge_page(wanted, now, chart)
            start += PAGE
        return ScanReport(
            now,
            True,
            tally.candidates,
            tuple(tally.nudges),
            tuple(tally.supervised),
            tuple(tally.closed),
        )

    async def _work(
        self,
        row: Any,
        latest: dict[tuple[int, str], tuple[int, datetime]],
        now: datetime,
        tally: _Tally,
    ) -> set[tuple[Rung, int]]:
        """Move the ticket if the ladder says so; the nudges it is owed now."""
        action = self.ladder.system_action(row, now)
        if action is not None and await self._system(row.id, action):
            (tally.closed if action is Action.AUTOCLOSE else tally.supervised).append(row.id)
        if action is Action.AUTOCLOSE:
            return set()
        return {
            (d.rung, d.slot)
            for d in self.ladder.due(row, now)
            if self._fresh(d, latest.get((row.id, d.rung)), now)
        }

    def _fresh(self, due: Due, last: tuple[int, datetime] | None, now: datetime) -> bool:
        """Not sent for this round yet, and the rung's last nudge is a repeat interval ago."""
        if last is None:
            return True
        slot, at = last
        return due.slot > slot and self.ladder.waited(at, now) >= self.ladder.repeat

    async def _system(self, number: int, action: Action) -> bool:
        note = SUPERVISE_NOTE if action is Action.SUPERVISE else None
        try:
            await self._tickets.system(number, action, note)
        except QunbanError:
            return False  # someone (or another instance) moved it first
        return True

    async def _nudge_page(
        self, wanted: dict[int, set[tuple[Rung, int]]], now: datetime, chart: _Chart
    ) -> list[SentNudge]:
        """A page's nudges in one transaction; should that fail, ticket by ticket, so that
        one ticket that fails holds up no other."""
        if not wanted:
            return []
        try:
            return await self._nudge_together(wanted, now, chart)
        except Exception:
            log.warning("idle scan: a page of nudges failed; sending them one ticket at a time")
        sent: list[SentNudge] = []
        for number, want in wanted.items():
            try:
                sent += await self._nudge_together({number: want}, now, chart)
            except Exception:
                log.exception("idle scan: ticket #%s failed; the next scan retries it", number)
        return sent

    async def _nudge(
        self, number: int, wanted: set[tuple[Rung, int]], now: datetime
    ) -> list[SentNudge]:
        return await self._nudge_together({number: wanted}, now)

    async def _nudge_together(
        self,
        wanted: dict[int, set[tuple[Rung, int]]],
        now: datetime,
        chart: _Chart | None = None,
    ) -> list[SentNudge]:
        """Lock the tickets (another instance keeps those it holds), re-read each under its
        lock (a claim or resolve that just landed cancels its nudge), record every nudge's key
        in one statement, and write the messages and events of those that were new, a
        statement for each table: the round trips follow the page, not its tickets."""
        chart = chart or _Chart()
        async with self._uows() as uow:
            tickets = await uow.tickets.lock_for_nudges(sorted(wanted))
            await chart.read(uow, tickets)
            planned: list[tuple[Any, Due, list[Any]]] = []
            for ticket in tickets:
                for due in self.ladder.due(ticket, now):
                    if (due.rung, due.slot) in wanted[ticket.id]:
                        planned.append((ticket, due, chart.recipients(ticket, due.rung)))
            keys = [(t.id, d.rung.value, p.id, d.slot) for t, d, people in planned for p in people]
            fresh = await uow.schedule.add_nudges(keys, now)
            sent: list[SentNudge] = []
            page = _Page(self._clock.now())
            for ticket, due, people in planned:
                new = [p for p in people if (ticket.id, due.rung.value, p.id, due.slot) in fresh]
                if new:
                    sent += self._record(page, chart, ticket, due, new, now)
            if sent:
                await uow.schedule.queue_nudges(page.messages, page.events)
                await uow.commit()
        return sent

    def _record(
        self, page: _Page, chart: _Chart, ticket: Any, due: Due, people: list[Any], now: datetime
    ) -> list[SentNudge]:
        self._tell(page, chart, ticket, due, people, now)
        page.events.append(
            {
                "ticket_id": ticket.id,
                "kind": _EVENT_KIND.get(due.rung, "nudge"),
                "actor_id": None,
                "from_state": ticket.state,
                "to_state": ticket.state,
                "note": ", ".join(p.name for p in people),
                "data": {
                    "rung": due.rung.value,
                    "slot": due.slot,
                    "people": [p.id for p in people],
                },
                "at": now,
            }
        )
        return [SentNudge(ticket.id, due.rung.value, p.id, due.slot) for p in people]

    def _tell(
        self,
        page: _Page,
        chart: _Chart,
        ticket: Any,
        due: Due,
        people: Sequence[Any],
        now: datetime,
    ) -> None:
        """Privately to each who can get it; in the group, a mention for the rest (and for all
        of the department when a ticket waits to be claimed)."""
        facts = self._facts(chart, ticket, due, now)
        texts_in: dict[str, str] = {}
        for person in people:
            if person.dm_blocked:
                continue
            lang = person.language
            if lang not in texts_in:
                texts_in[lang] = texts_digest.nudge(lang, facts)
            page.message(
                person.telegram_id,
                texts_in[lang],
                ticket_id=ticket.id,
                person_id=person.id,
                buttons=_buttons(lang, due.rung, facts.number),
            )
        named = [p for p in people if p.dm_blocked or due.rung is Rung.UNCLAIMED]
        hidden = due.rung is Rung.RATE_INVITE and ticket.anonymous
        if named and ticket.group_chat_id is not None and not hidden:
            lang = ticket.group_language or "zh"
            mentions = [(p.telegram_id, p.name) for p in named]
            page.message(
                ticket.group_chat_id,
                texts_digest.nudge_in_group(lang, facts, mentions),
                ticket_id=ticket.id,
            )

    def _facts(
        self, chart: _Chart, ticket: Any, due: Due, now: datetime
    ) -> texts_digest.NudgeFacts:
        claimant = chart.person(ticket.claimant_id)
        return texts_digest.NudgeFacts(
            rung=due.rung.value,
            number=ticket.id,
            summary=ticket.summary,
            department=ticket.department_name if ticket.department_id else None,
            claimant=claimant.name if claimant else None,
            waited=self.ladder.waited(due.since, now),
            day_length=self._calendar.working_day_length(),
            due_at=ticket.due_at,
            resolved_at=ticket.resolved_at,
            tz=self._settings.tz,
        )


class _Chart:
    """The org chart as one sweep's nudges need it: who each rung goes to.

    Read in one query a page at most (only people, departments and roles not read yet), and
    kept for the sweep, a matter of seconds in which the org chart does not change: the
    pages of a sweep do not read the same people again. Rows are narrow: (id, telegram_id,
    name, language, dm_blocked, active, role, region_id, department_id, is_head).
    """

    ROLES = (Role.COORDINATOR, Role.LEADER)

    def __init__(self) -> None:
        self._people: dict[int, Any] = {}  # claimants and reporters by id, None when gone
        self._officials: dict[int, list[Any]] = {}  # the active officials of a department
        self._with_role: dict[tuple[str, int], list[Any]] | None = None  # by (role, region)
        self._parents: dict[int, int | None] | None = None  # each region's parent

    async def read(self, uow: UnitOfWork, tickets: Sequence[Any]) -> None:
        """Read what these tickets' nudges need and the sweep has not read yet."""
        ids = sorted(
            {
                i
                for t in tickets
                for i in (t.claimant_id, t.reporter_id)
                if i and i not in self._people
            }
        )
        departments = sorted(
            {t.department_id for t in tickets if t.department_id}.difference(self._officials)
        )
        roles = self.ROLES if self._with_role is None else ()
        parents = self._parents
        if parents is None:
            parents = {r.id: r.parent_id for r in await uow.org.all_regions()}  # type: ignore[misc]
        rows = (
            await uow.org.people_to_nudge(ids, departments, roles)
            if ids or departments or roles
            else []
        )
        wanted = set(ids)
        officials: dict[int, list[Any]] = {d: [] for d in departments}
        with_role: dict[tuple[str, int], list[Any]] = {}
        for row in rows:
            if row.id in wanted:
                self._people[row.id] = row
            if not row.active:
                continue
            if row.role == Role.OFFICIAL and row.department_id in officials:
                officials[row.department_id].append(row)
            if roles and row.role in roles and row.region_id is not None:
                with_role.setdefault((row.role, row.region_id), []).append(row)
        for i in ids:
            self._people.setdefault(i, None)
        self._officials.update(officials)
        if roles:
            self._with_role = with_role
        self._parents = parents

    def person(self, person_id: int | None) -> Any:
        return self._people.get(person_id) if person_id else None

    def recipients(self, ticket: Any, rung: Rung) -> list[Any]:
        """Who gets this rung's nudge: each once, and only those Telegram can reach."""
        people: dict[int, Any] = {}
        for person in self._rung(ticket, rung):
            if person.telegram_id and person.id not in people:
                people[person.id] = person
        return list(people.values())

    def _rung(self, ticket: Any, rung: Rung) -> list[Any]:
        dept = ticket.department_id
        match rung:
            case Rung.UNASSIGNED:
                return self._first_up(ticket.region_id, Role.COORDINATOR) or self._first_up(
                    ticket.region_id, Role.LEADER
                )
            case Rung.UNCLAIMED:
                return list(self._officials.get(dept, ())) if dept else []
            case Rung.IDLE:
                return self._active(ticket.claimant_id)
            case Rung.IDLE_HEAD:
                heads = [p for p in self._officials.get(dept, ()) if p.is_head] if dept else []
                return [h for h in heads if h.id != ticket.claimant_id]
            case Rung.OVERDUE:
                return self._first_up(ticket.region_id, Role.LEADER)
            case Rung.ESCALATE:
                chain = self._region_and_above(ticket.region_id)
                return list(self._role_in(Role.LEADER, chain[-1])) if chain else []
            case Rung.RATE_INVITE:
                return self._active(ticket.reporter_id)
        return []

    def _role_in(self, role: Role, region_id: int) -> list[Any]:
        return (self._with_role or {}).get((role, region_id), [])

    def _first_up(self, region_id: int, role: Role) -> list[Any]:
        """The people of a role in the region, or in the nearest region above that has any."""
        for region in self._region_and_above(region_id):
            if found := self._role_in(role, region):
                return list(found)
        return []

    def _region_and_above(self, region_id: int) -> list[int]:
        parents = self._parents or {}
        chain: list[int] = []
        current: int | None = region_id if region_id in parents else None
        while current is not None and current not in chain:
            chain.append(current)
            parent = parents[current]
            current = parent if parent and parent in parents else None
        return chain

    def _active(self, person_id: int | None) -> list[Any]:
        person = self.person(person_id)
        return [person] if person is not None and person.active else []


@dataclass
class _Page:
    """The outbox rows and events one transaction of the sweep writes, as plain values."""

    at: datetime  # when the messages were queued (the notifier's clock)
    messages: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def message(
        self,
        chat_id: int,
        html: str,
        *,
        ticket_id: int,
        person_id: int | None = None,
        buttons: list[list[dict[str, str]]] | None = None,
    ) -> None:
        """Queue a message as `Notifier.message` does."""
        self.messages.extend(
            outbox_values(
                chat_id, html, now=self.at, ticket_id=ticket_id, person_id=person_id,
                buttons=buttons,
            )
        )  # fmt: skip


def _buttons(lang: str, rung: Rung, number: int) -> list[list[dict[str, str]]] | None:
    if rung is Rung.RATE_INVITE:
        return texts.rating_buttons(lang, number)
    if rung is Rung.UNCLAIMED:
        return texts_digest.claim_buttons(lang, number)
    return None

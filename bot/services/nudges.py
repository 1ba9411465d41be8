"""The escalation ladder: one sweep over the open tickets nudges, supervises and closes."""

from __future__ import annotations

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
from bot.notify import Notifier
from bot.services.org import working_span
from bot.services.tickets import TicketService
from bot.tickets import Action
from storage.tables import Person, Role, Ticket, TicketEvent, TicketState
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

    def quiet_since(self, now: datetime) -> datetime:
        """Nothing idle only since this moment can be due: working time never outruns the clock."""
        shortest = min(self.unassigned, self.unclaimed, self.idle, self.escalate, self.rate_invite)
        return now - shortest

    def due(self, t: Snapshot, now: datetime) -> list[Due]:
        """The nudges due for this ticket at `now` (each at its current repeat)."""
        state, last = S(t.state), t.last_activity_at
        out: list[Due] = []
        if state in (S.REPORTED, S.RETURNED):
            out += self._repeating(Rung.UNASSIGNED, last, self.after(last, self.unassigned), now)
        if state is S.ASSIGNED or (state is S.SUPERVISED and t.claimant_id is None):
            out += self._repeating(Rung.UNCLAIMED, last, self.after(last, self.unclaimed), now)
        if state in (S.CLAIMED, S.SUPERVISED) and t.claimant_id is not None:
            first = self.after(last, self.idle)
            out += self._repeating(Rung.IDLE, last, first, now)
            out += self._repeating(Rung.IDLE_HEAD, last, self.after(first, self.idle), now)
        if state in _UNRESOLVED and t.due_at is not None and now >= t.due_at:
            out.append(Due(Rung.OVERDUE, t.due_at, t.due_at, slot_of(t.due_at)))
        if state is S.SUPERVISED and t.supervised_at is not None:
            since = max(last, t.supervised_at)
            at = self.after(since, self.escalate)
            if now >= at:
                out.append(Due(Rung.ESCALATE, since, at, slot_of(at)))
        if state is S.RESOLVED and t.resolved_at is not None:
            invite = self.after(t.resolved_at, self.rate_invite)
            if invite <= now < self.after(t.resolved_at, self.autoclose):
                out.append(Due(Rung.RATE_INVITE, t.resolved_at, invite, slot_of(invite)))
        return out

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
        tally, after = _Tally(), 0
        while True:
            async with self._uows(readonly=True) as uow:
                quiet = self.ladder.quiet_since(now)
                rows = await uow.tickets.scan_page(quiet, now, after, PAGE)
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
            tally.nudges += await self._nudge_page(wanted, now)
            if len(rows) < PAGE:
                break
            after = rows[-1].id
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
        self, wanted: dict[int, set[tuple[Rung, int]]], now: datetime
    ) -> list[SentNudge]:
        """A page's nudges in one transaction; should that fail, ticket by ticket, so that
        one ticket that fails holds up no other."""
        if not wanted:
            return []
        try:
            return await self._nudge_together(wanted, now)
        except Exception:
            log.warning("idle scan: a page of nudges failed; sending them one ticket at a time")
        sent: list[SentNudge] = []
        for number, want in wanted.items():
            try:
                sent += await self._nudge(number, want, now)
            except Exception:
                log.exception("idle scan: ticket #%s failed; the next scan retries it", number)
        return sent

    async def _nudge(
        self, number: int, wanted: set[tuple[Rung, int]], now: datetime
    ) -> list[SentNudge]:
        return await self._nudge_together({number: wanted}, now)

    async def _nudge_together(
        self, wanted: dict[int, set[tuple[Rung, int]]], now: datetime
    ) -> list[SentNudge]:
        """Lock the tickets (another instance keeps those it holds), re-read each under its
        lock (a claim or resolve that just landed cancels its nudge), record every nudge's key
        in one statement, and queue the messages of those that were new."""
        async with self._uows() as uow:
            tickets = await uow.tickets.claim_all_for_work(sorted(wanted))
            await _preload(uow, tickets)
            planned: list[tuple[Ticket, Due, list[Person]]] = []
            for ticket in tickets:
                for due in self.ladder.due(ticket, now):
                    if (due.rung, due.slot) in wanted[ticket.id]:  # type: ignore[index]
                        people = await self._people(uow, ticket, due.rung)
                        planned.append((ticket, due, people))
            keys = [(t.id, d.rung.value, p.id, d.slot) for t, d, people in planned for p in people]
            fresh = await uow.schedule.add_nudges(keys, now)  # type: ignore[arg-type]
            sent: list[SentNudge] = []
            for ticket, due, people in planned:
                new = [p for p in people if (ticket.id, due.rung.value, p.id, due.slot) in fresh]
                if new:
                    sent += await self._record(uow, ticket, due, new, now)
            if sent:
                await uow.commit()
        return sent

    async def _people(self, uow: UnitOfWork, ticket: Ticket, rung: Rung) -> list[Person]:
        """Who gets this rung's nudge: each once, and only those Telegram can reach."""
        people: dict[int, Person] = {}
        for person in await self._recipients(uow, ticket, rung):
            if person.telegram_id and person.id not in people:
                people[person.id] = person  # type: ignore[index]
        return list(people.values())

    async def _record(
        self, uow: UnitOfWork, ticket: Ticket, due: Due, people: list[Person], now: datetime
    ) -> list[SentNudge]:
        await self._tell(uow, ticket, due, people, now)
        uow.events.add(
            TicketEvent(
                ticket_id=ticket.id,  # type: ignore[arg-type]
                kind=_EVENT_KIND.get(due.rung, "nudge"),
                from_state=ticket.state,
                to_state=ticket.state,
                note=", ".join(p.name for p in people),
                data={"rung": due.rung.value, "slot": due.slot, "people": [p.id for p in people]},
                at=now,
            )
        )
        return [SentNudge(ticket.id, due.rung.value, p.id, due.slot) for p in people]  # type: ignore[arg-type]

    async def _tell(
        self, uow: UnitOfWork, ticket: Ticket, due: Due, people: Sequence[Person], now: datetime
    ) -> None:
        """Privately to each who can get it; in the group, a mention for the rest (and for all
        of the department when a ticket waits to be claimed)."""
        facts = await self._facts(uow, ticket, due, now)
        for person in people:
            if person.dm_blocked:
                continue
            self._notify.message(
                uow,
                person.telegram_id,  # type: ignore[arg-type]
                texts_digest.nudge(person.language, facts),
                ticket_id=ticket.id,
                person_id=person.id,
                buttons=_buttons(person.language, due.rung, facts.number),
            )
        named = [p for p in people if p.dm_blocked or due.rung is Rung.UNCLAIMED]
        hidden = due.rung is Rung.RATE_INVITE and ticket.anonymous
        if named and ticket.group_chat_id is not None and not hidden:
            group = await uow.org.group_by_chat(ticket.group_chat_id)
            lang = group.language if group else "zh"
            mentions = [(p.telegram_id, p.name) for p in named]
            self._notify.message(
                uow,
                ticket.group_chat_id,
                texts_digest.nudge_in_group(lang, facts, mentions),  # type: ignore[arg-type]
                ticket_id=ticket.id,
            )

    async def _facts(
        self, uow: UnitOfWork, ticket: Ticket, due: Due, now: datetime
    ) -> texts_digest.NudgeFacts:
        department = (
            await uow.org.department(ticket.department_id) if ticket.department_id else None
        )
        claimant = await uow.org.person(ticket.claimant_id) if ticket.claimant_id else None
        return texts_digest.NudgeFacts(
            rung=due.rung.value,
            number=ticket.id,  # type: ignore[arg-type]
            summary=ticket.summary,
            department=department.name if department else None,
            claimant=claimant.name if claimant else None,
            waited=self.ladder.waited(due.since, now),
            day_length=self._calendar.working_day_length(),
            due_at=ticket.due_at,
            resolved_at=ticket.resolved_at,
            tz=self._settings.tz,
        )

    async def _recipients(self, uow: UnitOfWork, ticket: Ticket, rung: Rung) -> list[Person]:
        dept = ticket.department_id
        match rung:
            case Rung.UNASSIGNED:
                return await _first_up(uow, ticket.region_id, Role.COORDINATOR) or await _first_up(
                    uow, ticket.region_id, Role.LEADER
                )
            case Rung.UNCLAIMED:
                return list(await uow.org.officials_of(dept)) if dept else []
            case Rung.IDLE:
                return await _active(uow, ticket.claimant_id)
            case Rung.IDLE_HEAD:
                heads = await uow.org.officials_of(dept, heads_only=True) if dept else []
                return [h for h in heads if h.id != ticket.claimant_id]
            case Rung.OVERDUE:
                return await _first_up(uow, ticket.region_id, Role.LEADER)
            case Rung.ESCALATE:
                chain = await uow.org.region_and_above(ticket.region_id)
                top = [chain[-1].id] if chain else []
                return list(await uow.org.people_with_role(Role.LEADER, top))  # type: ignore[arg-type]
            case Rung.RATE_INVITE:
                return await _active(uow, ticket.reporter_id)
        return []


async def _preload(uow: UnitOfWork, tickets: Sequence[Ticket]) -> None:
    """Read the people these tickets' nudges go to in a few queries, not one each."""
    await uow.org.people(sorted({i for t in tickets for i in (t.claimant_id, t.reporter_id) if i}))
    await uow.org.all_departments()
    await uow.org.preload_officials(sorted({t.department_id for t in tickets if t.department_id}))
    regions = [r.id for r in await uow.org.all_regions()]
    await uow.org.preload_roles([Role.COORDINATOR, Role.LEADER], regions)  # type: ignore[arg-type]


async def _first_up(uow: UnitOfWork, region_id: int, role: Role) -> list[Person]:
    """The people of a role in the region, or in the nearest region above that has any."""
    for region in await uow.org.region_and_above(region_id):
        found = await uow.org.people_with_role(role, [region.id])  # type: ignore[list-item]
        if found:
            return list(found)
    return []


async def _active(uow: UnitOfWork, person_id: int | None) -> list[Person]:
    person = await uow.org.person(person_id) if person_id else None
    return [person] if person is not None and person.active else []


def _buttons(lang: str, rung: Rung, number: int) -> list[list[dict[str, str]]] | None:
    if rung is Rung.RATE_INVITE:
        return texts.rating_buttons(lang, number)
    if rung is Rung.UNCLAIMED:
        return texts_digest.claim_buttons(lang, number)
    return None

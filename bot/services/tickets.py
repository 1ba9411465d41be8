"""The ticket use cases: each runs one transaction, appends its event and queues who is told."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from bot import tickets as flow
from bot.calendar import WorkCalendar
from bot.clock import Clock
from bot.config import Settings
from bot.errors import (
    InvalidTransitionError,
    NotRegisteredError,
    RateLimitedError,
    TicketNotFoundError,
    UnboundGroupError,
)
from bot.markup import clip
from bot.notify import Notifier, Origin
from bot.services.org import OrgDirectory, facts_of, working_span
from bot.services.views import EventView, Outcome, TicketView
from bot.tickets import Action, Actor
from storage.tables import (
    AnyEvent,
    Attachment,
    NewEvent,
    Person,
    Role,
    Ticket,
    TicketEvent,
    TicketState,
    event_row,
    fresh_row,
    put,
)
from storage.uow import UnitOfWork, UnitOfWorkFactory

S = TicketState


@dataclass(frozen=True)
class NewAttachment:
    kind: str
    file_id: str | None = None
    latitude: float | None = None
    longitude: float | None = None


class TicketService:
    """Report, assign, claim … : the workflow run against the database."""

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
        self.org = OrgDirectory()

    # ---- intake -------------------------------------------------------------------------

    async def report(
        self,
        telegram_id: int,
        text: str,
        *,
        chat_id: int,
        message_id: int | None,
        private: bool = False,
        anonymous: bool = False,
        category: str | None = None,
        attachments: Sequence[NewAttachment] = (),
    ) -> Outcome:
        """File a ticket from a group message or a private conversation.

        Raises NotRegisteredError, UnboundGroupError, InvalidTransitionError (not an
        enterprise member), RateLimitedError. A message already filed returns its ticket.
        """
        now = self._clock.now()
        async with self._uows() as uow:
            person, _ = await self._actor(uow, telegram_id)
            known, recent = await uow.tickets.intake_check(
                chat_id,
                message_id,
                person.id,  # type: ignore[arg-type]
                now - timedelta(hours=1),
            )
            if known is not None:
                return Outcome(await self.org.view(uow, known), "report", created=False)
            if person.role != Role.ENTERPRISE or person.enterprise_id is None:
                raise InvalidTransitionError("role", number="—", action="report")
            region_id, group_chat = await self._intake_place(uow, person, chat_id, private)
            if recent >= self._settings.report_limit_per_hour:  # type: ignore[operator]
                raise RateLimitedError(limit=self._settings.report_limit_per_hour)
            ticket = fresh_row(
                Ticket,
                state=S.REPORTED,
                region_id=region_id,
                enterprise_id=person.enterprise_id,
                reporter_id=person.id,  # type: ignore[arg-type]
                summary=clip(" ".join(text.split()), 120) or "—",
                text=text,
                anonymous=anonymous and private,
                category=category,
                source_chat_id=chat_id,
                source_message_id=message_id,
                group_chat_id=group_chat,
                created_at=now,
                last_activity_at=now,
            )
            routed, why = await self._route(uow, ticket, text, category)
            move = None
            if routed is not None:
                # the ticket is written once, already where the routing rules sent it
                move = flow.decide(
                    self._facts(ticket), Action.ASSIGN, flow.SYSTEM, department_id=routed
                )
                self._apply(ticket, move, now)
            await uow.tickets.insert_new(ticket)
            event = self._append(
                uow, ticket, "report", person.id, None, S.REPORTED, None, {}, now,
                keep=bool(attachments),
            )  # fmt: skip
            auto = None if move is None else self._append_move(uow, ticket, move, None, why, now)
            if attachments:  # they refer to the event's id; other events wait for the commit
                await uow.flush()
            self._attach(uow, ticket, event, attachments, now)
            # the ticket is final from here on: one view of it serves every message
            view = await self.org.view(uow, ticket)
            # one card, already showing where the routing rules sent it
            origin = Origin(chat_id, message_id)
            await self._after(uow, ticket, event, person, origin, new=True, view=view)
            if auto is not None:
                await self._after(uow, ticket, auto, None, None, view=view)
            await uow.commit()
        return Outcome(view, "report")

    async def _intake_place(
        self, uow: UnitOfWork, person: Person, chat_id: int, private: bool
    ) -> tuple[int, int | None]:
        if not private:
            group = await uow.org.group_by_chat(chat_id, read_only=True)
            if group is None:
                raise UnboundGroupError(chat_id=chat_id)
            return group.region_id, group.chat_id
        enterprise = await uow.org.enterprise(person.enterprise_id)  # type: ignore[arg-type]
        assert enterprise is not None
        for region in await uow.org.region_and_above(enterprise.region_id):
            groups = await uow.org.groups_of(region.id)  # type: ignore[arg-type]
            if groups:
                return enterprise.region_id, groups[0].chat_id
        return enterprise.region_id, None

    async def _route(
        self, uow: UnitOfWork, ticket: Ticket, text: str, category: str | None
    ) -> tuple[int | None, str]:
        """Where the routing rules send a new report, and why: the department the enterprise
        chose in private, else the one department whose keywords the text names, looking at
        the ticket's own region first and then up the chain (a county bureau before the
        city's)."""
        chain = await uow.org.region_and_above(ticket.region_id)
        if category:
            chosen = [
                d.id
                for d in await uow.org.departments_in([r.id for r in chain])  # type: ignore[misc]
                if d.name == category or d.code == category
            ]
            if len(chosen) == 1:
                return chosen[0], "chosen by the enterprise"
        for region in chain:
            matched = []
            for department in await uow.org.departments_in([region.id]):  # type: ignore[list-item]
                for word in department.keywords:
                    if word and word in text:
                        matched.append(department.id)
                        break
            if matched:
                return (matched[0], "keywords") if len(matched) == 1 else (None, "")
        return None, ""

    # ---- the workflow -------------------------------------------------------------------

    async def assign(
        self, telegram_id: int, number: int, department: str, origin: Origin | None = None
    ) -> Outcome:
        """交办: coordinator or leader gives a reported ticket to a department."""
        return await self._act(telegram_id, number, Action.ASSIGN, origin, department=department)

    async def claim(
        self,
        telegram_id: int,
        number: int,
        promised: date | None = None,
        origin: Origin | None = None,
    ) -> Outcome:
        """领办: an official of the department takes the ticket, optionally promising a date."""
        if promised is not None and promised < self._today():
            raise InvalidTransitionError("bad_promise", number=number)
        return await self._act(telegram_id, number, Action.CLAIM, origin, promised_date=promised)

    async def return_(
        self,
        telegram_id: int,
        number: int,
        reason: str,
        department: str | None = None,
        origin: Origin | None = None,
    ) -> Outcome:
        """退单: "not ours", with a reason and perhaps the department it should go to."""
        return await self._act(
            telegram_id, number, Action.RETURN, origin, note=reason, suggested=department
        )

    async def approve_return(
        self,
        telegram_id: int,
        number: int,
        department: str | None = None,
        origin: Origin | None = None,
    ) -> Outcome:
        return await self._act(
            telegram_id, number, Action.APPROVE_RETURN, origin, department=department
        )

    async def reject_return(
        self, telegram_id: int, number: int, note: str | None = None, origin: Origin | None = None
    ) -> Outcome:
        return await self._act(telegram_id, number, Action.REJECT_RETURN, origin, note=note)

    async def supervise(
        self,
        telegram_id: int,
        number: int,
        note: str | None = None,
        attachments: Sequence[NewAttachment] = (),
        origin: Origin | None = None,
    ) -> Outcome:
        """督办: a leader puts the ticket under supervision, perhaps with photos and a place."""
        return await self._act(
            telegram_id, number, Action.SUPERVISE, origin, note=note, attachments=attachments
        )

    async def progress(
        self, telegram_id: int, number: int, note: str, origin: Origin | None = None
    ) -> Outcome:
        return await self._act(telegram_id, number, Action.PROGRESS, origin, note=note)

    async def resolve(
        self, telegram_id: int, number: int, note: str, origin: Origin | None = None
    ) -> Outcome:
        """办结: the holder says it is done; the enterprise is asked to rate."""
        return await self._act(telegram_id, number, Action.RESOLVE, origin, note=note)

    async def rate(
        self,
        telegram_id: int,
        number: int,
        rating: str,
        reason: str | None = None,
        origin: Origin | None = None,
    ) -> Outcome:
        """The enterprise confirms: good ratings close it, bad ones send it back (重办)."""
        return await self._act(
            telegram_id, number, Action.RATE, origin, rating=rating, note=reason
        )

    async def withdraw(
        self, telegram_id: int, number: int, origin: Origin | None = None
    ) -> Outcome:
        return await self._act(telegram_id, number, Action.WITHDRAW, origin)

    async def merge(
        self, telegram_id: int, number: int, into: int, origin: Origin | None = None
    ) -> Outcome:
        """并单: a duplicate follows the other ticket."""
        return await self._act(telegram_id, number, Action.MERGE, origin, into_id=into)

    async def transfer(
        self, telegram_id: int, number: int, department: str, origin: Origin | None = None
    ) -> Outcome:
        return await self._act(telegram_id, number, Action.TRANSFER, origin, department=department)

    async def system(self, number: int, action: Action, note: str | None = None) -> Outcome:
        """The scheduler's own moves (auto-supervision, closing unrated)."""
        async with self._uows() as uow:
            ticket = await self._load(uow, number, flow.SYSTEM)
            move = flow.decide(self._facts(ticket), action, flow.SYSTEM, note=note)
            event = await self._record(uow, ticket, move, None, note, self._clock.now())
            await self._after(uow, ticket, event, None, None)
            view = await self.org.view(uow, ticket)
            await uow.commit()
        return Outcome(view, action.value)

    # ---- machinery ----------------------------------------------------------------------

    async def _act(
        self, telegram_id: int, number: int, action: Action, origin: Origin | None, **args: Any
    ) -> Outcome:
        now = self._clock.now()
        async with self._uows() as uow:
            person, actor = await self._actor(uow, telegram_id)
            ticket = await self._load(uow, number, actor)
            facts = self._facts(ticket)
            resolved = await self._resolve_args(uow, ticket, action, actor, args)
            try:
                move = flow.decide(facts, action, actor, ticket_id=ticket.id, **resolved)
            except InvalidTransitionError as err:
                raise await self._explained(uow, err, ticket) from None
            files = args.get("attachments", ())
            event = await self._record(
                uow, ticket, move, person.id, args.get("note"), now, keep=bool(files)
            )
            self._attach(uow, ticket, event, files, now)
            await self._after(uow, ticket, event, person, origin)
            view = await self.org.view(uow, ticket)
            await uow.commit()
        return Outcome(view, action.value)

    async def _resolve_args(
        self, uow: UnitOfWork, ticket: Ticket, action: Action, actor: Actor, args: dict[str, Any]
    ) -> dict[str, Any]:
        out = {
            k: v for k, v in args.items() if k not in ("department", "suggested", "attachments")
        }
        if args.get("department"):
            out["department_id"] = await self.org.department_id(uow, ticket, args["department"])
        if args.get("suggested"):
            out["suggested_department_id"] = await self.org.department_id(
                uow, ticket, args["suggested"]
            )
        if action is Action.MERGE:
            target = await uow.tickets.get(args["into_id"])
            if (
                target is None
                or target.state not in flow.OPEN_STATES - {S.RESOLVED}
                or target.id == ticket.id
                or not flow.can_see(self._facts(target), actor)
            ):
                raise InvalidTransitionError(
                    "merge_target", number=ticket.id, into_id=args["into_id"]
                )
        return out

    async def _explained(
        self, uow: UnitOfWork, err: InvalidTransitionError, ticket: Ticket
    ) -> InvalidTransitionError:
        params = dict(err.params, number=ticket.id)
        if ticket.claimant_id:
            claimant = await uow.org.person(ticket.claimant_id)
            params["claimant_name"] = claimant.name if claimant else None
        return InvalidTransitionError(err.code, **params)

    async def _record(
        self,
        uow: UnitOfWork,
        ticket: Ticket,
        move: flow.Move,
        actor_id: int | None,
        note: str | None,
        now: Any,
        *,
        keep: bool = False,
    ) -> AnyEvent:
        """Write the new facts onto the ticket and append the event that explains them."""
        self._apply(ticket, move, now)
        event = self._append_move(uow, ticket, move, actor_id, note, now, keep=keep)
        if actor_id is not None:
            # a person acting answers the reminders; the scheduler's own moves do not
            uow.answer_nudges(ticket.id)  # type: ignore[arg-type]
        if keep:  # an event kept as a row gets its id now, for what refers to it
            await uow.flush()
        # otherwise the ticket is written at the commit, with what its card says (`announce`
        # notes it) in the same UPDATE
        return event

    def _apply(self, ticket: Ticket, move: flow.Move, now: Any) -> None:
        after = move.after
        changes = {
            "state": after.state,
            "department_id": after.department_id,
            "claimant_id": after.claimant_id,
            "suggested_department_id": after.suggested_department_id,
            "redo_count": after.redo_count,
            "return_count": after.return_count,
            "merged_into_id": after.merged_into_id,
            "rating": after.rating,
            "version": ticket.version + 1,
        }
        changes.update(self._stamps(ticket, move, now))
        put(ticket, changes)

    def _append_move(
        self,
        uow: UnitOfWork,
        ticket: Ticket,
        move: flow.Move,
        actor_id: int | None,
        note: str | None,
        now: Any,
        *,
        keep: bool = False,
    ) -> AnyEvent:
        return self._append(
            uow,
            ticket,
            move.action.value,
            actor_id,
            move.before.state,
            move.after.state,
            note,
            move.data,
            now,
            keep=keep,
        )

    def _stamps(self, ticket: Ticket, move: flow.Move, now: Any) -> dict[str, Any]:
        """The times a move sets on the ticket."""
        action, out = move.action, {}
        if (
            action in (Action.ASSIGN, Action.TRANSFER, Action.APPROVE_RETURN)
            and not ticket.assigned_at
        ):
            out["assigned_at"] = now
            out["due_at"] = self._calendar.add_working(
                now, working_span(self._calendar, self._settings.supervise_after)
            )
        if action is Action.CLAIM:
            out["claimed_at"] = ticket.claimed_at or now
            out["promised_date"] = move.data.get("promised_date") and date.fromisoformat(
                move.data["promised_date"]
            )
        if action is Action.SUPERVISE:
            out["supervised_at"] = now
        if action is Action.TRANSFER:
            out["supervised_at"] = None
        if action is Action.RESOLVE:
            out["resolved_at"] = now
        if move.after.state in (S.CLOSED, S.WITHDRAWN, S.MERGED):
            out["closed_at"] = now
        if move.after.state in (S.CLAIMED, S.SUPERVISED) and move.before.state is S.RESOLVED:
            out["resolved_at"] = None
        out["last_activity_at"] = now
        return out

    def _append(
        self,
        uow: UnitOfWork,
        ticket: Ticket,
        kind: str,
        actor_id: int | None,
        from_state: str | None,
        to_state: str,
        note: str | None,
        data: dict[str, Any],
        now: Any,
        *,
        keep: bool = False,
    ) -> AnyEvent:
        """The event, appended to the ticket's history; `keep`: as a row of the session,
        whose id is known after the next flush."""
        facts = {
            "ticket_id": ticket.id,
            "kind": kind,
            "actor_id": actor_id,
            "from_state": from_state,
            "to_state": to_state,
            "note": note,
            "data": data,
            "at": now,
        }
        if keep:
            kept = TicketEvent(**facts)
            uow.events.add(kept)  # its attachments will refer to its id
            return kept
        event = NewEvent(**facts)
        uow.append_events([event_row(event)])
        return event

    def _attach(
        self,
        uow: UnitOfWork,
        ticket: Ticket,
        event: AnyEvent,
        attachments: Sequence[NewAttachment],
        now: Any,
    ) -> None:
        for item in attachments:
            uow.events.add(
                Attachment(
                    ticket_id=ticket.id,
                    event_id=event.id,
                    kind=item.kind,  # type: ignore[arg-type]
                    file_id=item.file_id,
                    latitude=item.latitude,
                    longitude=item.longitude,
                    at=now,
                )
            )

    async def _after(
        self,
        uow: UnitOfWork,
        ticket: Ticket,
        event: AnyEvent,
        person: Person | None,
        origin: Origin | None,
        *,
        new: bool = False,
        view: TicketView | None = None,
    ) -> None:
        from bot.services.announce import announce

        await announce(
            uow, self._notify, self.org, ticket, event, person, origin, new=new, view=view
        )

    async def _actor(self, uow: UnitOfWork, telegram_id: int) -> tuple[Person, Actor]:
        # whoever acts is named and told, never changed here: the cache's own row serves
        person = await uow.org.person_by_telegram(telegram_id, read_only=True)
        if person is None or not person.active:
            raise NotRegisteredError(telegram_id=telegram_id)
        return person, await self.org.actor(uow, person)

    async def _load(self, uow: UnitOfWork, number: int, actor: Actor) -> Ticket:
        ticket = await uow.tickets.get(number, for_update=True) if 0 < number < 2**62 else None
        if ticket is None or not flow.can_see(self._facts(ticket), actor):
            raise TicketNotFoundError(number=number)
        return ticket

    @staticmethod
    def _facts(ticket: Ticket) -> flow.TicketFacts:
        return facts_of(ticket)

    def _today(self) -> date:
        return self._clock.now().astimezone(self._settings.tz).date()


def event_view(event: AnyEvent, actor_name: str | None) -> EventView:
    return EventView(
        kind=event.kind,
        at=event.at,
        actor_name=actor_name,
        from_state=event.from_state,
        to_state=event.to_state,
        note=event.note,
        data=dict(event.data or {}),
    )

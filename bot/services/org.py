"""The org chart as the workflow sees it: who someone is, what they may see, names of things."""

from __future__ import annotations

from datetime import timedelta

from bot import tickets as flow
from bot.calendar import WorkCalendar
from bot.errors import InvalidTransitionError
from bot.services.views import AttachmentView, EventView, PersonView, TicketView
from storage.tables import Person, Role, Ticket, TicketState
from storage.uow import UnitOfWork

DAY = timedelta(days=1)


def working_span(calendar: WorkCalendar, duration: timedelta) -> timedelta:
    """A setting given in whole days means working days: '1d' is one office day, not 24 hours."""
    if duration >= DAY and duration % DAY == timedelta(0):
        return (duration // DAY) * calendar.working_day_length()
    return duration


def facts_of(ticket: Ticket) -> flow.TicketFacts:
    """The workflow's view of a stored ticket."""
    return flow.TicketFacts(
        state=TicketState(ticket.state),
        region_id=ticket.region_id,
        enterprise_id=ticket.enterprise_id,
        reporter_id=ticket.reporter_id,
        department_id=ticket.department_id,
        claimant_id=ticket.claimant_id,
        suggested_department_id=ticket.suggested_department_id,
        supervised=ticket.supervised_at is not None,
        redo_count=ticket.redo_count,
        return_count=ticket.return_count,
        merged_into_id=ticket.merged_into_id,
        rating=ticket.rating,
    )


def person_view(person: Person) -> PersonView:
    return PersonView(
        id=person.id,  # type: ignore[arg-type]
        name=person.name,
        role=Role(person.role),
        language=person.language,
        telegram_id=person.telegram_id,
        username=person.username,
        enterprise_id=person.enterprise_id,
        department_id=person.department_id,
        region_id=person.region_id,
        is_head=person.is_head,
    )


class OrgDirectory:
    """Lookups the services share; stateless, each takes the unit of work it runs in."""

    async def actor(self, uow: UnitOfWork, person: Person) -> flow.Actor:
        role = Role(person.role)
        regions: frozenset[int] = frozenset()
        if role is Role.ADMIN:
            regions = frozenset(r.id for r in await uow.org.all_regions())  # type: ignore[misc]
        elif person.region_id is not None:
            if role in (Role.LEADER, Role.COORDINATOR):
                regions = await uow.org.region_and_below(person.region_id)
            else:
                regions = frozenset({person.region_id})
        return flow.Actor(
            person_id=person.id,
            role=role,
            enterprise_id=person.enterprise_id,
            department_id=person.department_id,
            region_ids=regions,
            is_head=person.is_head,
        )

    async def department_id(self, uow: UnitOfWork, ticket: Ticket, query: str) -> int:
        """A department named by code, by name, or by a unique part of its name."""
        chain = [r.id for r in await uow.org.region_and_above(ticket.region_id)]
        below = await uow.org.region_and_below(ticket.region_id)
        candidates = await uow.org.departments_in(sorted(set(chain) | below))  # type: ignore[arg-type]
        wanted = query.strip().lstrip("@").casefold()
        for matcher in (
            lambda d: d.code.casefold() == wanted,
            lambda d: d.name.casefold() == wanted,
            lambda d: wanted in d.name.casefold() or wanted in d.code.casefold(),
        ):
            found = [d for d in candidates if matcher(d)]
            if len(found) == 1:
                return found[0].id  # type: ignore[return-value]
            if len(found) > 1:
                break
        raise InvalidTransitionError(
            "unknown_department",
            number=ticket.id,
            query=query[:40],
            options=[d.code for d in candidates][:20],
        )

    async def view(self, uow: UnitOfWork, ticket: Ticket, *, timeline: bool = False) -> TicketView:
        """A snapshot of the ticket with names resolved (and its events when asked)."""
        org = uow.org  # rows read for their names only
        enterprise = await org.enterprise(ticket.enterprise_id, read_only=True)
        region = await org.region(ticket.region_id, read_only=True)
        department = (
            await org.department(ticket.department_id, read_only=True)
            if ticket.department_id
            else None
        )
        suggested = (
            await org.department(ticket.suggested_department_id, read_only=True)
            if ticket.suggested_department_id
            else None
        )
        ids = [i for i in (ticket.claimant_id, ticket.reporter_id) if i]
        people = {p.id: p for p in await org.people(ids, read_only=True)}
        events: tuple[EventView, ...] = ()
        attachments: tuple[AttachmentView, ...] = ()
        if timeline:
            events, attachments = await self._history(uow, ticket)
        county = region.name if region else ""
        industry = (enterprise.industry or "") if enterprise else ""
        return TicketView(
            number=ticket.id,  # type: ignore[arg-type]
            state=TicketState(ticket.state),
            summary=ticket.summary,
            text=ticket.text,
            enterprise_name=enterprise.name if enterprise else "—",
            anonymous=ticket.anonymous,
            anonymous_label=" · ".join(x for x in (county, industry) if x) or "—",
            region_name=county,
            department_name=department.name if department else None,
            department_code=department.code if department else None,
            claimant_name=people[ticket.claimant_id].name
            if ticket.claimant_id in people
            else None,
            reporter_name=people[ticket.reporter_id].name if ticket.reporter_id in people else "—",
            promised_date=ticket.promised_date,
            created_at=ticket.created_at,
            last_activity_at=ticket.last_activity_at,
            due_at=ticket.due_at,
            resolved_at=ticket.resolved_at,
            redo_count=ticket.redo_count,
            rating=ticket.rating,
            merged_into=ticket.merged_into_id,
            category=ticket.category,
            suggested_department_name=suggested.name if suggested else None,
            group_chat_id=ticket.group_chat_id,
            events=events,
            attachments=attachments,
        )

    async def _history(
        self, uow: UnitOfWork, ticket: Ticket
    ) -> tuple[tuple[EventView, ...], tuple[AttachmentView, ...]]:
        rows = await uow.events.of_ticket(ticket.id)  # type: ignore[arg-type]
        names = {
            p.id: p.name
            for p in await uow.org.people(sorted({r.actor_id for r in rows if r.actor_id}))
        }
        events = tuple(
            EventView(
                kind=r.kind,
                at=r.at,
                actor_name=names.get(r.actor_id) if r.actor_id else None,
                from_state=r.from_state,
                to_state=r.to_state,
                note=r.note,
                data=dict(r.data or {}),
            )
            for r in rows
        )
        files = await uow.events.attachments_of(ticket.id)  # type: ignore[arg-type]
        attachments = tuple(
            AttachmentView(a.kind, a.file_id, a.latitude, a.longitude) for a in files
        )
        return events, attachments

"""The telling rules: for each event, the group card, the group line and the private notes."""

from __future__ import annotations

from collections.abc import Sequence

from bot.notify import Notifier, Origin
from bot.services.org import OrgDirectory
from bot.services.views import EventView, TicketView
from storage.tables import AnyEvent, Person, Role, Ticket
from storage.uow import UnitOfWork

_TO_DEPARTMENT = {"assign", "approve_return", "transfer", "reject_return"}
_TO_REPORTER = {"claim", "progress", "resolve", "autoclose", "merge", "supervise", "remind_rate"}
_TO_HOLDER = {"supervise", "rate"}


async def announce(
    uow: UnitOfWork,
    notify: Notifier,
    org: OrgDirectory,
    ticket: Ticket,
    event: AnyEvent,
    actor: Person | None,
    origin: Origin | None,
    *,
    new: bool = False,
    view: TicketView | None = None,
) -> None:
    """Queue everything people should learn from this event, in the same transaction;
    `new`: the ticket was made in this one; `view`: the ticket's view, when the caller has
    it as it now stands."""
    view = view or await org.view(uow, ticket)
    names = {actor.id: actor.name} if actor else {}
    line = EventView(
        kind=event.kind,
        at=event.at,
        actor_name=names.get(event.actor_id),
        from_state=event.from_state,
        to_state=event.to_state,
        note=event.note,
        data=dict(event.data or {}),
    )
    group_lang = await _group_language(uow, ticket)
    in_group = origin is not None and origin.chat_id == ticket.group_chat_id
    reply_to = origin.message_id if in_group and origin else None
    if event.kind == "report":
        await notify.card(uow, ticket, view, group_lang, reply_to=reply_to, new=new)
    elif not (
        event.kind == "assign" and event.actor_id is None and ticket.card_message_id is None
    ):
        # (a keyword-routed report's card already shows the department)
        await notify.card(uow, ticket, view, group_lang)
        notify.event_line(
            uow, ticket, view, line, _lang(actor, group_lang, in_group), reply_to=reply_to
        )
    if origin is not None and not in_group and actor is not None:
        notify.direct(uow, [actor], view, line, skip=None)
    skip = actor.id if actor else None
    notify.direct(
        uow,
        await _audience(uow, ticket, event),
        view,
        line,
        skip=skip,
        rating=event.kind in ("resolve", "remind_rate"),
        claim=event.kind in _TO_DEPARTMENT,
    )


def _lang(actor: Person | None, group_lang: str, in_group: bool) -> str:
    # a command's answer in the group speaks the language of the person who gave it
    return actor.language if actor is not None and in_group else group_lang


async def _group_language(uow: UnitOfWork, ticket: Ticket) -> str:
    if ticket.group_chat_id is None:
        return "zh"
    group = await uow.org.group_by_chat(ticket.group_chat_id, read_only=True)
    return group.language if group else "zh"


async def _audience(uow: UnitOfWork, ticket: Ticket, event: AnyEvent) -> Sequence[Person]:
    kind = event.kind
    people: list[Person] = []
    if kind in _TO_DEPARTMENT and ticket.department_id:
        people += await uow.org.officials_of(ticket.department_id)
    if kind in _TO_REPORTER or (kind == "rate" and event.to_state != "closed"):
        reporter = await uow.org.person(ticket.reporter_id, read_only=True)
        people += [reporter] if reporter else []
    if kind in _TO_HOLDER or kind == "resolve":
        people += await _holders(uow, ticket)
    if kind == "return":
        people += await _coordinators(uow, ticket.region_id)
    if kind in ("withdraw", "merge") and ticket.department_id and event.from_state != "reported":
        people += await uow.org.officials_of(ticket.department_id)
    if kind == "resolve":
        # the department hears of it from its own member; the reporter must rate it
        people = [p for p in people if p.role == Role.ENTERPRISE]
    return people


async def _holders(uow: UnitOfWork, ticket: Ticket) -> list[Person]:
    people: list[Person] = []
    if ticket.claimant_id:
        claimant = await uow.org.person(ticket.claimant_id, read_only=True)
        people += [claimant] if claimant else []
    if ticket.department_id:
        heads = await uow.org.officials_of(ticket.department_id, heads_only=True)
        people += heads or ([] if people else await uow.org.officials_of(ticket.department_id))
    return people


async def _coordinators(uow: UnitOfWork, region_id: int) -> list[Person]:
    for region in await uow.org.region_and_above(region_id):
        found = await uow.org.people_with_role(Role.COORDINATOR, [region.id])  # type: ignore[list-item]
        if found:
            return list(found)
    leaders = await uow.org.people_with_role(Role.LEADER, [region_id])
    return list(leaders)

"""Every sentence Qunban says, rendered as Telegram HTML in the reader's language."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any

from bot import callback_data
from bot.i18n import gettext
from bot.markup import clip, escape
from bot.services.views import EventView, PersonView, TicketView
from storage.tables import Role, TicketState

S = TicketState


def _(lang: str, message: str, **params: Any) -> str:
    text = gettext(lang, message)
    return text.format(**params) if params else text


_STATE_WORDS = {
    S.REPORTED: "reported",
    S.ASSIGNED: "assigned",
    S.CLAIMED: "claimed",
    S.RETURNED: "returned",
    S.SUPERVISED: "supervised",
    S.RESOLVED: "resolved",
    S.CLOSED: "closed",
    S.WITHDRAWN: "withdrawn",
    S.MERGED: "merged",
}


def state_word(lang: str, state: str) -> str:
    return gettext(lang, f"state:{_STATE_WORDS[S(state)]}").removeprefix("state:")


_RATING_WORDS = {
    "satisfied": "rating:satisfied",
    "basic": "rating:basically satisfied",
    "unsatisfied": "rating:unsatisfied",
    "unsolved": "rating:not solved",
}


def rating_word(lang: str, rating: str | None) -> str:
    if rating is None:
        return gettext(lang, "rating:unrated").removeprefix("rating:")
    return gettext(lang, _RATING_WORDS[rating]).removeprefix("rating:")


def local(when: datetime | None, tz: tzinfo, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return when.astimezone(tz).strftime(fmt) if when else "—"


def ticket_ref(number: int) -> str:
    return f"#{number}"


def card(lang: str, tz: tzinfo, view: TicketView, *, reveal: bool = False) -> str:
    """The live card of a ticket in a group: number, enterprise, summary, state, department."""
    lines = [
        f"<b>{ticket_ref(view.number)}</b> · <b>{escape(state_word(lang, view.state))}</b>",
        _(lang, "Enterprise: {name}", name=escape(view.shown_enterprise(reveal=reveal))),
        _(lang, "Problem: {summary}", summary=escape(view.summary)),
        _(lang, "Department: {name}", name=escape(view.department_name or "—")),
    ]
    if view.claimant_name:
        lines.append(_(lang, "Claimed by: {name}", name=escape(view.claimant_name)))
    if view.promised_date:
        lines.append(_(lang, "Promised by: {day}", day=view.promised_date.isoformat()))
    if view.due_at and view.state not in (S.CLOSED, S.WITHDRAWN, S.MERGED, S.RESOLVED):
        lines.append(_(lang, "Due: {when}", when=local(view.due_at, tz)))
    if view.redo_count:
        lines.append(_(lang, "Reopened {n} time(s)", n=view.redo_count))
    if view.merged_into:
        lines.append(_(lang, "Merged into {ref}", ref=ticket_ref(view.merged_into)))
    if view.rating:
        lines.append(_(lang, "Rating: {rating}", rating=escape(rating_word(lang, view.rating))))
    return "\n".join(lines)


def card_buttons(lang: str, view: TicketView) -> list[list[dict[str, str]]]:
    """The buttons that fit the state: claim while nobody holds it, rating once resolved."""
    if view.state in (S.ASSIGNED,) or (view.state is S.SUPERVISED and not view.claimant_name):
        return [[_button(_(lang, "Claim 领办"), "claim", view.number)]]
    if view.state is S.RESOLVED:
        return rating_buttons(lang, view.number)
    return []


def rating_buttons(lang: str, number: int) -> list[list[dict[str, str]]]:
    return [
        [
            _button(rating_word(lang, "satisfied"), "rate", number, "s"),
            _button(rating_word(lang, "basic"), "rate", number, "b"),
        ],
        [
            _button(rating_word(lang, "unsatisfied"), "rate", number, "u"),
            _button(rating_word(lang, "unsolved"), "rate", number, "n"),
        ],
    ]


def _button(label: str, action: str, number: int, arg: str | None = None) -> dict[str, str]:
    return {"text": label, "callback_data": callback_data.build(action, number, arg)}


_EVENT_SENTENCES = {
    "report": "{ref} reported by {actor}: {summary}",
    "assign": "{ref} assigned to {department}",
    "claim": "{ref} claimed by {actor}",
    "return": "{ref} returned by {actor} (not ours): {note}",
    "approve_return": "{ref} return approved by {actor}; now with {department}",
    "reject_return": "{ref} return rejected by {actor}; stays with {department}",
    "supervise": "{ref} is under supervision by {actor}: {note}",
    "progress": "{ref} progress from {actor}: {note}",
    "resolve": "{ref} resolved by {actor}: {note}",
    "rate": "{ref} rated {rating} by {actor}",
    "autoclose": "{ref} closed without a rating",
    "withdraw": "{ref} withdrawn by {actor}",
    "merge": "{ref} merged into {into} by {actor}",
    "transfer": "{ref} transferred to {department} by {actor}",
    "nudge": "{ref} reminder sent: {note}",
    "escalate": "{ref} escalated: {note}",
    "remind_rate": "{ref} rating invitation sent again",
}


def event_sentence(lang: str, view: TicketView, event: EventView, *, reveal: bool = False) -> str:
    """One line saying what just happened to a ticket."""
    template = _EVENT_SENTENCES.get(event.kind, "{ref} {kind}")
    actor = event.actor_name or gettext(lang, "actor:the system").removeprefix("actor:")
    if event.kind == "report" and view.anonymous and not reveal:
        actor = view.anonymous_label
    into = event.data.get("into_id")
    text = _(
        lang,
        template,
        ref=f"<b>{ticket_ref(view.number)}</b>",
        actor=escape(actor),
        summary=escape(view.summary),
        department=escape(view.department_name or "—"),
        note=escape(event.note or "—"),
        rating=escape(
            rating_word(lang, str(event.data.get("rating")) if event.data.get("rating") else None)
        ),
        into=ticket_ref(int(into)) if isinstance(into, int) else "—",
        kind=escape(event.kind),
    )
    if event.kind == "claim" and event.data.get("promised_date"):
        text += _(lang, ", promised by {day}", day=escape(str(event.data["promised_date"])))
    if event.kind == "rate" and event.to_state in (S.CLAIMED, S.SUPERVISED):
        text += _(lang, "; sent back for redo")
    return text


def timeline(lang: str, tz: tzinfo, view: TicketView, *, reveal: bool = False) -> str:
    """The card followed by every event with its note, author and time."""
    parts = [card(lang, tz, view, reveal=reveal), "", f"<b>{_(lang, 'Timeline')}</b>"]
    for event in view.events:
        actor = event.actor_name or gettext(lang, "actor:the system").removeprefix("actor:")
        if event.kind == "report" and view.anonymous and not reveal:
            actor = view.anonymous_label
        line = f"{local(event.at, tz)} · {escape(actor)} · {escape(_event_word(lang, event.kind))}"
        if event.note:
            line += f": {escape(clip(event.note, 300))}"
        if event.from_state and event.from_state != event.to_state:
            line += f" ({escape(state_word(lang, event.from_state))} → "
            line += f"{escape(state_word(lang, event.to_state))})"
        parts.append(line)
    for attachment in view.attachments:
        if attachment.kind == "location":
            parts.append(
                _(
                    lang,
                    "📍 location {lat:.5f}, {lon:.5f}",
                    lat=attachment.latitude or 0,
                    lon=attachment.longitude or 0,
                )
            )
        else:
            parts.append(_(lang, "📎 {kind} attached", kind=escape(attachment.kind)))
    return "\n".join(parts)


def _event_word(lang: str, kind: str) -> str:
    return gettext(lang, f"event:{kind}").removeprefix("event:")


def ticket_line(lang: str, tz: tzinfo, view: TicketView, *, reveal: bool = False) -> str:
    dept = view.department_name or "—"
    return (
        f"<b>{ticket_ref(view.number)}</b> {escape(state_word(lang, view.state))} · "
        f"{escape(dept)} · {escape(clip(view.summary, 60))}"
    )


def ticket_list(lang: str, tz: tzinfo, title: str, views: Sequence[TicketView]) -> str:
    if not views:
        return f"<b>{escape(title)}</b>\n" + _(lang, "Nothing here.")
    return "\n".join([f"<b>{escape(title)}</b>", *(ticket_line(lang, tz, v) for v in views)])


_REFUSALS = {
    "not_found": "Ticket {ref} was not found, or is not yours to see.",
    "wrong_state": "Ticket {ref} is {state}; that cannot be done now.",
    "already_claimed": "Ticket {ref} is already claimed by {claimant}.",
    "not_claimant": "Ticket {ref} is held by {claimant}; only they or the head can do that.",
    "not_your_department": "Ticket {ref} belongs to another department.",
    "not_reporter": "Only the person who reported {ref} can do that.",
    "not_your_ticket": "Ticket {ref} was reported by another enterprise.",
    "not_your_region": "Ticket {ref} is outside your region.",
    "role": "Your role cannot do that with ticket {ref}.",
    "need_department": "Say which department, e.g. /assign {number} tax.",
    "same_department": "Ticket {ref} is already with that department.",
    "need_reason": "Say why, e.g. /return {number} not our matter.",
    "bad_rating": "Rate with satisfied, basic, unsatisfied or unsolved.",
    "bad_merge": "A ticket cannot be merged into itself.",
    "merge_target": "Ticket {ref} cannot be merged into {into}: that ticket is not open to you.",
    "unknown_department": "No department matches “{query}”. Try one of: {options}",
    "bad_promise": "The promised date must not be in the past.",
}


def refusal(lang: str, code: str, params: dict[str, Any]) -> str:
    """A refused action, as a sentence for the person who tried."""
    number = params.get("number", "?")
    template = _REFUSALS.get(code, "That cannot be done: {code}.")
    values = {
        "ref": f"#{number}",
        "number": number,
        "state": state_word(lang, params["state"]) if params.get("state") else "",
        "claimant": params.get("claimant_name") or "—",
        "query": params.get("query", ""),
        "options": ", ".join(params.get("options", [])),
        "into": f"#{params.get('into_id', '?')}",
        "code": code,
    }
    return _(lang, template, **{k: escape(str(v)) for k, v in values.items()})


def person_label(person: PersonView) -> str:
    return person.name


def role_word(lang: str, role: Role) -> str:
    return gettext(lang, f"role:{role.value}").removeprefix("role:")

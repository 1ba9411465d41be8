"""Who is told of what: outbox rows written in the same transaction as the change."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot import texts
from bot.clock import Clock
from bot.config import Settings
from bot.markup import split_html
from bot.services.views import EventView, TicketView
from storage.tables import OutboxState, Person, Role, Ticket
from storage.uow import UnitOfWork


@dataclass(frozen=True)
class Origin:
    """The chat and message a command came from, so the answer can reply to it."""

    chat_id: int
    message_id: int | None = None


def _markup(rows: list[list[dict[str, str]]]) -> dict[str, Any] | None:
    return {"inline_keyboard": rows} if rows else None


def outbox_row(
    chat_id: int,
    payload: dict[str, Any],
    *,
    now: datetime,
    method: str = "sendMessage",
    ticket_id: int | None = None,
    person_id: int | None = None,
    dedupe_key: str | None = None,
    is_card: bool = False,
) -> dict[str, Any]:
    """One outbox row as plain values; every row has the same keys, so a transaction's rows
    go in one executemany."""
    return {
        "chat_id": chat_id,
        "method": method,
        "payload": payload,
        "ticket_id": ticket_id,
        "person_id": person_id,
        "dedupe_key": dedupe_key,
        "is_card": is_card,
        "state": OutboxState.PENDING,
        "created_at": now,
        "not_before": now,
        "attempts": 0,
    }


def outbox_values(
    chat_id: int,
    html: str,
    *,
    now: datetime,
    ticket_id: int | None = None,
    person_id: int | None = None,
    buttons: list[list[dict[str, str]]] | None = None,
    reply_to: int | None = None,
    dedupe_key: str | None = None,
    is_card: bool = False,
) -> list[dict[str, Any]]:
    """The outbox rows of one message, as plain values: split when longer than Telegram
    allows, the buttons on the last part, the reply on the first."""
    chunks = split_html(html)
    rows = []
    for index, chunk in enumerate(chunks):
        payload: dict[str, Any] = {"text": chunk, "parse_mode": "HTML"}
        if index == len(chunks) - 1 and buttons:
            payload["reply_markup"] = _markup(buttons)
        if index == 0 and reply_to:
            payload["reply_parameters"] = {
                "message_id": reply_to,
                "allow_sending_without_reply": True,
            }
        key = f"{dedupe_key}:{index}" if dedupe_key and len(chunks) > 1 else dedupe_key
        rows.append(
            outbox_row(
                chat_id,
                payload,
                now=now,
                ticket_id=ticket_id,
                person_id=person_id,
                dedupe_key=key,
                is_card=is_card and index == 0,
            )
        )
    return rows


class Notifier:
    def __init__(self, settings: Settings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._tz = settings.tz

    def message(
        self,
        uow: UnitOfWork,
        chat_id: int,
        html: str,
        *,
        ticket_id: int | None = None,
        person_id: int | None = None,
        buttons: list[list[dict[str, str]]] | None = None,
        reply_to: int | None = None,
        dedupe_key: str | None = None,
        is_card: bool = False,
    ) -> None:
        """Queue a message, split when longer than Telegram allows; buttons on the last part.
        The rows are written with the unit of work's others, in one statement."""
        uow.queue_outbox(
            outbox_values(
                chat_id,
                html,
                now=self._clock.now(),
                ticket_id=ticket_id,
                person_id=person_id,
                buttons=buttons,
                reply_to=reply_to,
                dedupe_key=dedupe_key,
                is_card=is_card,
            )
        )

    async def card(
        self,
        uow: UnitOfWork,
        ticket: Ticket,
        view: TicketView,
        lang: str,
        reply_to: int | None = None,
        new: bool = False,
    ) -> None:
        """Post the ticket's card in its group, or edit the one already there, unless the edit
        would say what the card was last queued to say. `new`: the ticket was made in this
        unit of work, so it has no card yet."""
        if ticket.group_chat_id is None:
            return
        html = texts.card(lang, self._tz, view)
        buttons = texts.card_buttons(lang, view)
        first = new or (
            ticket.card_message_id is None and not await uow.card_queued(ticket.id)  # type: ignore[arg-type]
        )
        if not new:  # (a new ticket is written already: its card's fingerprint would be lost)
            digest = card_digest(html, buttons)
            if not first and ticket.card_digest == digest:
                return
            ticket.card_digest = digest
        if first:
            self.message(
                uow,
                ticket.group_chat_id,
                html,
                ticket_id=ticket.id,
                buttons=buttons,
                reply_to=reply_to,
                is_card=True,
            )
            return
        payload: dict[str, Any] = {"card_of": ticket.id, "text": html, "parse_mode": "HTML"}
        payload["reply_markup"] = _markup(buttons) or {"inline_keyboard": []}
        uow.queue_outbox(
            [
                outbox_row(
                    ticket.group_chat_id,
                    payload,
                    now=self._clock.now(),
                    method="editMessageText",
                    ticket_id=ticket.id,
                )
            ]
        )

    def direct(
        self,
        uow: UnitOfWork,
        people: Iterable[Person],
        view: TicketView,
        event: EventView,
        *,
        skip: int | None = None,
        rating: bool = False,
        claim: bool = False,
    ) -> None:
        """Tell people privately, each in their own language; nobody is told of their own act."""
        seen: set[int] = set()
        # a department's officials mostly share a language: each wording is made once
        said: dict[tuple[str, bool], tuple[str, list[list[dict[str, str]]]]] = {}
        for person in people:
            if person.id in seen or person.id == skip or not person.telegram_id:
                continue
            seen.add(person.id)  # type: ignore[arg-type]
            reveal = person.role != Role.ENTERPRISE or person.enterprise_id is not None
            wording = said.get((person.language, reveal))
            if wording is None:
                wording = said[person.language, reveal] = self._direct_words(
                    person.language, view, event, reveal, rating=rating, claim=claim
                )
            html, buttons = wording
            self.message(
                uow,
                person.telegram_id,
                html,
                ticket_id=view.number,
                person_id=person.id,
                buttons=buttons,
            )

    @staticmethod
    def _direct_words(
        lang: str, view: TicketView, event: EventView, reveal: bool, *, rating: bool, claim: bool
    ) -> tuple[str, list[list[dict[str, str]]]]:
        html = texts.event_sentence(lang, view, event, reveal=reveal)
        buttons: list[list[dict[str, str]]] = []
        if rating:
            buttons = texts.rating_buttons(lang, view.number)
        elif claim:
            buttons = texts.card_buttons(lang, view)
        return html, buttons

    def event_line(
        self,
        uow: UnitOfWork,
        ticket: Ticket,
        view: TicketView,
        event: EventView,
        lang: str,
        reply_to: int | None = None,
    ) -> None:
        if ticket.group_chat_id is None:
            return
        html = texts.event_sentence(lang, view, event)
        self.message(uow, ticket.group_chat_id, html, ticket_id=ticket.id, reply_to=reply_to)


def card_digest(html: str, buttons: list[list[dict[str, str]]]) -> str:
    """A short fingerprint of what a card says: its text and its buttons."""
    said = json.dumps([html, buttons], ensure_ascii=False, sort_keys=True).encode()
    return hashlib.blake2b(said, digest_size=8).hexdigest()


def people_of(groups: Sequence[Sequence[Person]]) -> list[Person]:
    return [person for group in groups for person in group]

"""What services hand back: frozen snapshots, never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from storage.tables import Role, TicketState


@dataclass(frozen=True)
class PersonView:
    id: int
    name: str
    role: Role
    language: str
    telegram_id: int | None = None
    username: str | None = None
    enterprise_id: int | None = None
    department_id: int | None = None
    region_id: int | None = None
    is_head: bool = False


@dataclass(frozen=True)
class EventView:
    kind: str
    at: datetime
    actor_name: str | None
    from_state: str | None
    to_state: str
    note: str | None
    data: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class AttachmentView:
    kind: str
    file_id: str | None
    latitude: float | None = None
    longitude: float | None = None


@dataclass(frozen=True)
class TicketView:
    """Everything a card, a list line or a timeline needs to show a ticket."""

    number: int
    state: TicketState
    summary: str
    text: str
    enterprise_name: str
    anonymous: bool
    anonymous_label: str
    region_name: str
    department_name: str | None
    department_code: str | None
    claimant_name: str | None
    reporter_name: str
    promised_date: date | None
    created_at: datetime
    last_activity_at: datetime
    due_at: datetime | None
    resolved_at: datetime | None
    redo_count: int
    rating: str | None
    merged_into: int | None
    category: str | None
    suggested_department_name: str | None = None
    group_chat_id: int | None = None
    events: tuple[EventView, ...] = ()
    attachments: tuple[AttachmentView, ...] = ()

    def shown_enterprise(self, *, reveal: bool) -> str:
        """The enterprise's name, or only its county and industry when it asked so."""
        return self.enterprise_name if reveal or not self.anonymous else self.anonymous_label


@dataclass(frozen=True)
class Outcome:
    """A change that was made: the ticket after it and the event that made it."""

    ticket: TicketView
    kind: str
    created: bool = True

"""The SQLModel tables: org chart, tickets and their events, inbox, outbox and schedule records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

TG_ID = sa.BigInteger  # Telegram user and chat ids are 64-bit


class RegionLevel(StrEnum):
    CITY = "city"
    COUNTY = "county"


class Role(StrEnum):
    ENTERPRISE = "enterprise"
    OFFICIAL = "official"
    LEADER = "leader"
    COORDINATOR = "coordinator"
    ADMIN = "admin"


class TicketState(StrEnum):
    REPORTED = "reported"
    ASSIGNED = "assigned"
    CLAIMED = "claimed"
    RETURNED = "returned"
    SUPERVISED = "supervised"
    RESOLVED = "resolved"
    CLOSED = "closed"
    WITHDRAWN = "withdrawn"
    MERGED = "merged"


OPEN_STATES = frozenset(
    {
        TicketState.REPORTED,
        TicketState.ASSIGNED,
        TicketState.CLAIMED,
        TicketState.RETURNED,
        TicketState.SUPERVISED,
        TicketState.RESOLVED,
    }
)


class OutboxState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


def _str(length: int = 32, **kw: Any) -> Any:
    return Field(sa_type=sa.String(length), **kw)


def _fk(target: str, **kw: Any) -> Any:
    return Field(default=None, foreign_key=target, **kw)


class Region(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    code: str = _str(64, unique=True, index=True)
    name: str = _str(128)
    level: RegionLevel = _str(16)
    parent_id: int | None = _fk("region.id")


class Department(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    code: str = _str(64, unique=True, index=True)
    name: str = _str(128)
    region_id: int = Field(foreign_key="region.id", index=True)
    keywords: list[str] = Field(default_factory=list, sa_type=sa.JSON)


class Enterprise(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    code: str = _str(64, unique=True, index=True)
    name: str = _str(256)
    region_id: int = Field(foreign_key="region.id", index=True)
    credit_code: str = _str(18, unique=True)
    industry: str | None = _str(64, default=None)


class Person(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    telegram_id: int | None = Field(default=None, sa_type=TG_ID, unique=True, index=True)
    username: str | None = _str(64, default=None)
    name: str = _str(128)
    role: Role = _str(16)
    enterprise_id: int | None = _fk("enterprise.id", index=True)
    department_id: int | None = _fk("department.id", index=True)
    region_id: int | None = _fk("region.id", index=True)
    is_head: bool = False
    language: str = _str(8, default="zh")
    active: bool = True
    dm_blocked: bool = False  # the bot cannot write to them privately (403)


class ChatGroup(SQLModel, table=True):
    """A Telegram group bound to a region."""

    id: int | None = Field(default=None, primary_key=True)
    chat_id: int = Field(sa_type=TG_ID, unique=True, index=True)
    region_id: int = Field(foreign_key="region.id", index=True)
    title: str = _str(256, default="")
    language: str = _str(8, default="zh")


class Ticket(SQLModel, table=True):
    __table_args__ = (
        sa.UniqueConstraint("source_chat_id", "source_message_id", name="uq_ticket_source"),
        # the idle scan and the digest read open tickets by state and activity
        sa.Index("ix_ticket_open_scan", "state", "last_activity_at"),
        sa.Index("ix_ticket_due", "state", "due_at"),
        sa.Index("ix_ticket_region_state", "region_id", "state", "department_id"),
        sa.Index("ix_ticket_dept_state", "department_id", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    state: TicketState = _str(16)
    region_id: int = Field(foreign_key="region.id")
    enterprise_id: int = Field(foreign_key="enterprise.id", index=True)
    reporter_id: int = Field(foreign_key="person.id", index=True)
    department_id: int | None = _fk("department.id")
    claimant_id: int | None = _fk("person.id", index=True)
    suggested_department_id: int | None = _fk("department.id")
    merged_into_id: int | None = _fk("ticket.id")
    category: str | None = _str(64, default=None)
    summary: str = _str(200)
    text: str = Field(sa_type=sa.Text)
    anonymous: bool = False
    source_chat_id: int | None = Field(default=None, sa_type=TG_ID)
    source_message_id: int | None = Field(default=None, sa_type=TG_ID)
    group_chat_id: int | None = Field(default=None, sa_type=TG_ID, index=True)
    card_message_id: int | None = Field(default=None, sa_type=TG_ID)
    # what the card was last queued to say (`bot.notify.card_digest`): an edit that would say
    # the same again is not sent, so a group's messages go to what changed
    card_digest: str | None = _str(16, default=None)
    promised_date: date | None = None
    created_at: datetime
    assigned_at: datetime | None = None
    claimed_at: datetime | None = None
    supervised_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    due_at: datetime | None = None
    last_activity_at: datetime
    redo_count: int = 0
    return_count: int = 0
    rating: str | None = _str(16, default=None)
    version: int = 1


class TicketEvent(SQLModel, table=True):
    """One immutable line of a ticket's history."""

    __table_args__ = (
        sa.Index("ix_event_ticket", "ticket_id", "id"),
        # the digest counts the events of some kinds in a window: covered, it never reads them
        sa.Index("ix_event_kind_at_ticket", "kind", "at", "ticket_id", "to_state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id")
    kind: str = _str(32)
    actor_id: int | None = _fk("person.id", index=True)
    from_state: str | None = _str(16, default=None)
    to_state: str = _str(16)
    note: str | None = Field(default=None, sa_type=sa.Text)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    at: datetime


_M = TypeVar("_M", bound=SQLModel)


def fresh_row(model: type[_M], **values: Any) -> _M:
    """A new row, its fields set as SQLModel's constructor would set them but straight into
    the instance: the constructor sets each through SQLAlchemy's instrumentation, which cost
    a report about 80 us for a ticket that is written by a plain INSERT and then only read.
    (A table model's constructor validates nothing, so nothing is skipped but that.)"""
    row = model.__new__(model)
    model._sa_class_manager._new_state_if_none(row)  # type: ignore[attr-defined]
    fields = row.__dict__
    for name, info in model.model_fields.items():
        if name in values:
            fields[name] = values.pop(name)
        elif info.default_factory is not None:
            fields[name] = info.default_factory()  # type: ignore[call-arg]
        elif info.is_required():
            raise TypeError(f"{model.__name__} needs {name}")
        else:
            fields[name] = info.default
    if values:
        raise TypeError(f"{model.__name__} has no {', '.join(values)}")
    return row


def put(row: Any, values: dict[str, Any]) -> None:
    """Set a row's fields: on a row no session holds (a new one, as `fresh_row` makes it)
    straight into the instance, since nothing is there to note the change; on any other
    through SQLAlchemy's instrumentation, so that its session writes the change."""
    if sa.inspect(row).transient:
        row.__dict__.update(values)
        return
    for name, value in values.items():
        setattr(row, name, value)


@dataclass(slots=True, kw_only=True)
class NewEvent:
    """An event written by a plain INSERT, as the services pass it on: a TicketEvent's facts
    without a row of the session (making one cost more than writing it)."""

    ticket_id: int
    kind: str
    actor_id: int | None
    from_state: str | None
    to_state: str
    note: str | None
    data: dict[str, Any]
    at: datetime
    id: None = None  # nothing reads an appended event's id back


AnyEvent = TicketEvent | NewEvent


def event_row(event: AnyEvent) -> dict[str, Any]:
    """The event's values for a plain INSERT (its id left to the database)."""
    return {
        "ticket_id": event.ticket_id,
        "kind": event.kind,
        "actor_id": event.actor_id,
        "from_state": event.from_state,
        "to_state": event.to_state,
        "note": event.note,
        "data": event.data,
        "at": event.at,
    }


class Attachment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    event_id: int | None = _fk("ticketevent.id")
    kind: str = _str(16)  # photo | document | location
    file_id: str | None = _str(256, default=None)
    latitude: float | None = None
    longitude: float | None = None
    at: datetime


class Outbox(SQLModel, table=True):
    """A message to send, written in the same transaction as the change that causes it."""

    __table_args__ = (
        sa.Index("ix_outbox_pending", "state", "not_before", "id"),
        sa.Index("ix_outbox_ticket", "ticket_id", "is_card"),  # is a ticket's card queued?
        # the last message pending in a chat, asked as each new one is queued: the chat's
        # pending few, not the years it has been sent
        sa.Index(
            "ix_outbox_chat_pending",
            "chat_id",
            "id",
            sqlite_where=sa.text("state = 'pending'"),
            postgresql_where=sa.text("state = 'pending'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    chat_id: int = Field(sa_type=TG_ID, index=True)
    method: str = _str(32, default="sendMessage")
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    ticket_id: int | None = _fk("ticket.id")
    is_card: bool = False  # the message id it gets back becomes the ticket's card
    dedupe_key: str | None = _str(200, default=None, unique=True)
    person_id: int | None = _fk("person.id")
    state: OutboxState = _str(16, default=OutboxState.PENDING)
    created_at: datetime
    not_before: datetime
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    sent_message_id: int | None = Field(default=None, sa_type=TG_ID)
    sent_at: datetime | None = None
    lease_owner: str | None = _str(64, default=None)
    lease_until: datetime | None = None


class InboxUpdate(SQLModel, table=True):
    """A raw Telegram update, stored before it is confirmed to Telegram."""

    __table_args__ = (sa.Index("ix_inbox_pending", "processed", "parked", "update_id"),)

    update_id: int = Field(
        sa_type=TG_ID, primary_key=True, sa_column_kwargs={"autoincrement": False}
    )
    chat_id: int | None = Field(default=None, sa_type=TG_ID)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    received_at: datetime
    processed: bool = False
    processed_at: datetime | None = None
    attempts: int = 0
    parked: bool = False
    error: str | None = Field(default=None, sa_type=sa.Text)


class Nudge(SQLModel, table=True):
    """A reminder or escalation sent; the unique key keeps it from being sent twice."""

    __table_args__ = (
        sa.UniqueConstraint("ticket_id", "rung", "person_id", "slot", name="uq_nudge_key"),
        # the digest counts the nudges nobody answered: a few, among years of answered ones
        sa.Index(
            "ix_nudge_unanswered",
            "ticket_id",
            "person_id",
            "rung",
            sqlite_where=sa.text("NOT acted"),
            postgresql_where=sa.text("NOT acted"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    rung: str = _str(32)
    person_id: int | None = _fk("person.id", index=True)
    slot: int = 0
    at: datetime
    acted: bool = False  # someone acted on the ticket after this nudge


class DigestRun(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("leader_id", "day", name="uq_digest_leader_day"),)

    id: int | None = Field(default=None, primary_key=True)
    leader_id: int = Field(foreign_key="person.id")
    day: date
    at: datetime
    late: bool = False


class Invite(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    code: str = _str(64, unique=True, index=True)
    role: Role = _str(16)
    name: str = _str(128)
    enterprise_id: int | None = _fk("enterprise.id")
    department_id: int | None = _fk("department.id")
    region_id: int | None = _fk("region.id")
    is_head: bool = False
    language: str = _str(8, default="zh")
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    used_by_telegram_id: int | None = Field(default=None, sa_type=TG_ID)


class KeyValue(SQLModel, table=True):
    """Small durable facts: the receiver's offset, heartbeats of the sweeps, conversation state."""

    key: str = Field(sa_type=sa.String(128), primary_key=True)
    value: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    updated_at: datetime

"""Cheap read-only figures for the health check, the metrics and the admins' status view."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select

from storage.tables import InboxUpdate, KeyValue, Outbox, OutboxState, Ticket
from storage.uow import UnitOfWork


@dataclass(frozen=True)
class QueueFigures:
    """Where the inbox and the outbox stand; times are None when nothing waits."""

    inbox_oldest: datetime | None
    inbox_pending: int
    parked: int
    outbox_depth: int
    outbox_oldest: datetime | None


async def ping(uow: UnitOfWork) -> None:
    """Raises the driver's error unless the database answers a trivial query."""
    await uow.session.exec(select(sa.literal(1)))  # type: ignore[call-overload]


async def queue_figures(uow: UnitOfWork) -> QueueFigures:
    """Four aggregates, each over an index whose first column is the state being counted."""
    waiting = ~col(InboxUpdate.processed) & ~col(InboxUpdate.parked)
    inbox = select(sa.func.min(InboxUpdate.received_at), sa.func.count()).where(waiting)
    oldest, pending = (await uow.session.exec(inbox)).one()  # type: ignore[call-overload]
    parked_q = select(sa.func.count()).where(~col(InboxUpdate.processed), col(InboxUpdate.parked))
    parked = (await uow.session.exec(parked_q)).one()
    outbox = select(sa.func.min(Outbox.created_at), sa.func.count()).where(
        Outbox.state == OutboxState.PENDING
    )
    out_oldest, depth = (await uow.session.exec(outbox)).one()  # type: ignore[call-overload]
    return QueueFigures(
        inbox_oldest=oldest,
        inbox_pending=int(pending or 0),
        parked=int(parked or 0),
        outbox_depth=int(depth or 0),
        outbox_oldest=out_oldest,
    )


async def tickets_by_state(uow: UnitOfWork) -> dict[str, int]:
    """One GROUP BY over the (state, last_activity_at) index."""
    query = select(Ticket.state, sa.func.count()).group_by(Ticket.state)  # type: ignore[call-overload]
    return {str(state): int(n) for state, n in (await uow.session.exec(query)).all()}


async def parked_updates(uow: UnitOfWork, limit: int = 20) -> Sequence[InboxUpdate]:
    query = (
        select(InboxUpdate)
        .where(~col(InboxUpdate.processed), col(InboxUpdate.parked))
        .order_by(col(InboxUpdate.update_id))
        .limit(limit)
    )
    return (await uow.session.exec(query)).all()


async def values(uow: UnitOfWork, keys: Sequence[str]) -> dict[str, KeyValue]:
    """Several small facts by key, in one query."""
    if not keys:
        return {}
    query = select(KeyValue).where(col(KeyValue.key).in_(list(keys)))
    return {row.key: row for row in (await uow.session.exec(query)).all()}

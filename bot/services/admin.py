"""The admins' view of the running bot: /status, and retrying or dropping a parked update."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from bot.errors import NotRegisteredError, QunbanError
from bot.heartbeats import DIGEST, SCAN
from storage import stats
from storage.tables import InboxUpdate, KeyValue, Person, Role
from storage.uow import UnitOfWork

if TYPE_CHECKING:
    from bot.app import Services

log = logging.getLogger(__name__)

AUDIT_KEY = "audit:{action}:{update_id}:{at}"


class NotAdminError(QunbanError):
    """Only an admin may see the bot's state or touch its inbox."""

    code = "not_allowed"


class WrongChatError(QunbanError):
    """The bot's state is shown privately or in the ops chat, not in a service group."""

    code = "private_only"


class NotParkedError(QunbanError):
    code = "not_parked"


@dataclass(frozen=True)
class ParkedView:
    update_id: int
    chat_id: int | None
    received_at: datetime
    attempts: int
    error: str  # the last line of what went wrong


@dataclass(frozen=True)
class StatusView:
    version: str
    engine: str
    started_at: datetime
    now: datetime
    inbox_pending: int
    inbox_lag: timedelta | None
    parked: tuple[ParkedView, ...]
    parked_total: int
    outbox_depth: int
    outbox_oldest: timedelta | None
    beats: dict[str, datetime | None]
    late: tuple[str, ...]
    database: str | None  # None when it answered

    @property
    def uptime(self) -> timedelta:
        return self.now - self.started_at

    @property
    def last_scan(self) -> datetime | None:
        return self.beats.get(SCAN)

    @property
    def last_digest(self) -> datetime | None:
        return self.beats.get(DIGEST)


@dataclass(frozen=True)
class ParkedAction:
    update_id: int
    action: str  # retry | drop
    by: str
    at: datetime


class AdminService:
    def __init__(self, services: Services) -> None:
        self._services = services

    async def status(self, telegram_id: int, *, chat_id: int, private: bool) -> StatusView:
        """The bot's state. Raises NotRegisteredError, NotAdminError, WrongChatError."""
        from bot.ops import health

        s = self._services
        async with s.uows(readonly=True) as uow:
            await self._admin(uow, telegram_id)
            if not private and chat_id != s.settings.ops_chat_id:
                raise WrongChatError()
            figures = await stats.queue_figures(uow)
            parked = [_parked(row) for row in await stats.parked_updates(uow)]
        now = s.clock.now()
        report = await health(s, now)
        return StatusView(
            version=s.ops.version,
            engine=s.ops.engine,
            started_at=s.ops.started_at,
            now=now,
            inbox_pending=figures.inbox_pending,
            inbox_lag=now - figures.inbox_oldest if figures.inbox_oldest else None,
            parked=tuple(parked),
            parked_total=figures.parked,
            outbox_depth=figures.outbox_depth,
            outbox_oldest=now - figures.outbox_oldest if figures.outbox_oldest else None,
            beats={c.name: c.last for c in report.components},
            late=tuple(report.late),
            database=report.database,
        )

    async def retry(self, telegram_id: int, update_id: int) -> ParkedAction:
        """Give a parked update a fresh set of attempts. Raises NotAdminError, NotParkedError."""
        return await self._act(telegram_id, update_id, "retry")

    async def drop(self, telegram_id: int, update_id: int) -> ParkedAction:
        """Give up on a parked update for good; the row and its error stay for the record.
        Raises NotAdminError, NotParkedError."""
        return await self._act(telegram_id, update_id, "drop")

    async def _act(self, telegram_id: int, update_id: int, action: str) -> ParkedAction:
        now = self._services.clock.now()
        async with self._services.uows() as uow:
            person = await self._admin(uow, telegram_id)
            row = await uow.inbox.get(update_id) if 0 < update_id < 2**63 else None
            if row is None or not row.parked or row.processed:
                raise NotParkedError(update_id=update_id)
            before = row.error or ""
            row.parked = False
            if action == "retry":
                row.attempts, row.error = 0, None
            else:
                row.processed, row.processed_at = True, now
                row.error = (
                    f"dropped by {person.name} (#{person.id}) at {now.isoformat()}\n{before}"
                )
            key = AUDIT_KEY.format(action=action, update_id=update_id, at=now.isoformat())
            value = {
                "action": action,
                "update_id": update_id,
                "by": person.id,
                "by_name": person.name,
                "at": now.isoformat(),
                "error": _last_line(before),
            }
            uow.schedule.add(KeyValue(key=key, value=value, updated_at=now))
            await uow.commit()
        log.info(
            "admin %s (#%s) did %s on parked update %s", person.name, person.id, action, update_id
        )
        return ParkedAction(update_id, action, person.name, now)

    async def _admin(self, uow: UnitOfWork, telegram_id: int) -> Person:
        person = await uow.org.person_by_telegram(telegram_id)
        if person is None or not person.active:
            raise NotRegisteredError(telegram_id=telegram_id)
        if Role(person.role) is not Role.ADMIN:
            raise NotAdminError()
        return person


def _parked(row: InboxUpdate) -> ParkedView:
    return ParkedView(
        update_id=row.update_id,
        chat_id=row.chat_id,
        received_at=row.received_at,
        attempts=row.attempts,
        error=_last_line(row.error or ""),
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""

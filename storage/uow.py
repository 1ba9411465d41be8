"""The unit of work: one transaction per service call; leaving without commit rolls back."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.db import READONLY
from storage.repositories import (
    EventRepository,
    InboxRepository,
    OrgRepository,
    OutboxRepository,
    ScheduleRepository,
    TicketRepository,
)


class UnitOfWork:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, readonly: bool = False):
        self._sessions = sessions
        self._readonly = readonly
        self._committed = False

    async def __aenter__(self) -> Self:
        self.session = self._sessions()
        if self._readonly:
            await self.session.connection(execution_options={READONLY: True})
        self.org = OrgRepository(self.session)
        self.tickets = TicketRepository(self.session)
        self.events = EventRepository(self.session)
        self.outbox = OutboxRepository(self.session)
        self.inbox = InboxRepository(self.session)
        self.schedule = ScheduleRepository(self.session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._committed:
                await self.session.rollback()
        finally:
            await self.session.close()

    @property
    def dialect(self) -> str:
        return self.session.bind.dialect.name  # type: ignore[union-attr]

    async def commit(self) -> None:
        await self.session.commit()
        self._committed = True

    async def flush(self) -> None:
        await self.session.flush()


class UnitOfWorkFactory:
    """Makes units of work over one session factory: `async with uows() as uow`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    def __call__(self, *, readonly: bool = False) -> UnitOfWork:
        return UnitOfWork(self.sessions, readonly=readonly)

"""The unit of work: one transaction per service call; leaving without commit rolls back."""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.db import READONLY
from storage.orgcache import OrgCache, org_cache_for
from storage.repositories import (
    MARKING_ROWS,
    EventRepository,
    InboxRepository,
    KeptOrg,
    OrgRepository,
    OutboxRepository,
    ScheduleRepository,
    TicketRepository,
)

log = logging.getLogger(__name__)


@dataclass
class UpdateMark:
    """The inbox update being handled in this context; the first commit marks it processed."""

    update_id: int
    at: datetime
    final_attempt: bool = True
    marked: bool = False
    closed: bool = False  # the worker is done with it; late commits leave it alone
    commits: int = 0
    error: BaseException | None = None


class UpdateAlreadyProcessedError(Exception):
    """Another worker (or an earlier run) already recorded this update's effect."""

    def __init__(self, update_id: int) -> None:
        super().__init__(f"update {update_id} was already processed")
        self.update_id = update_id


# Set by the inbox worker around `Application.process_update`.
current_update: ContextVar[UpdateMark | None] = ContextVar("current_update", default=None)


class Handoff(Protocol):
    """A sender of this process that takes the messages its units of work queue straight
    from them, rather than finding them in the outbox with a query of its own."""

    def birth_lease(self) -> tuple[str, timedelta] | None:
        """The owner and length of the lease a message due at once is written with; None
        while the sender is not taking messages."""

    def adopt(self, owner: str, rows: list[tuple[int, int | None, dict[str, Any]]]) -> None:
        """Messages committed under that lease: (id, the last row pending before it in its
        chat when it was written, its values), in the order written."""


class UnitOfWork:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        readonly: bool = False,
        marks_update: bool = True,
        writers: WriterTurn | None = None,
        org: OrgCache | None = None,
        handoff: Handoff | None = None,
    ):
        self._org = org
        self._handoff = None if readonly else handoff
        self._handed: tuple[str, list[tuple[int, int | None, dict[str, Any]]]] | None = None
        self._sessions = sessions
        self._readonly = readonly
        self._marks_update = marks_update
        self._writers = None if readonly else writers
        self._outbox: list[dict[str, Any]] = []  # queued messages, written at the commit
        self._events: list[dict[str, Any]] = []  # appended events, written at the next flush
        self._answered: list[int] = []  # tickets whose reminders are answered, likewise

    async def __aenter__(self) -> Self:
        if self._writers is not None:
            await self._writers.acquire()
        try:
            return await self._open()
        except BaseException:
            if self._writers is not None:
                self._writers.release()
            raise

    async def _open(self) -> Self:
        self.session = self._sessions()
        if self._readonly and not _reads_only(self._sessions):
            await self.session.connection(execution_options={READONLY: True})
        self.org = OrgRepository(self.session, self._org, reads_only=self._readonly)
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
        # closing ends a transaction left open by rolling it back: a reader's, or a writer's
        # that failed or did not commit (one step, where a rollback first had been two)
        try:
            await self.session.close()
        finally:
            if self._writers is not None:
                self._writers.release()

    def queue_outbox(self, rows: list[dict[str, Any]]) -> None:
        """Outbox rows as plain values (`bot.notify.outbox_row`), written in call order with
        the transaction's other messages in one executemany, at the commit."""
        self._outbox.extend(rows)

    async def card_queued(self, ticket_id: int) -> bool:
        """Whether the ticket's card is queued, in this unit of work or already stored."""
        if any(row["is_card"] and row["ticket_id"] == ticket_id for row in self._outbox):
            return True
        return await self.outbox.card_queued(ticket_id)

    def append_events(self, rows: list[dict[str, Any]]) -> None:
        """Ticket events as plain values (`storage.tables.event_row`), written in call order
        at the next flush or commit in one executemany. Nothing reads an event's id back, so
        none is asked for: on SQLite the ORM would first read the table's highest id."""
        self._events.extend(rows)

    def answer_nudges(self, ticket_id: int) -> None:
        """A person acted on the ticket: its reminders so far are answered, at the next flush
        or commit (with the events)."""
        self._answered.append(ticket_id)

    async def _write_events(self) -> None:
        if self._events:
            rows, self._events = self._events, []
            await self.events.append(rows)
        if self._answered:
            answered, self._answered = self._answered, []
            await self.schedule.mark_nudges_acted(answered)

    async def _write_outbox(self, mark: UpdateMark | None = None) -> bool | None:
        """Write the appended events, the answered reminders and the queued messages; with
        `mark`, on PostgreSQL, when there are messages to hand over, mark its update processed
        in the same statement (and append the events in it, for a few messages): whether it
        was marked then, None when it was not tried."""
        if self._outbox or self._events or self._answered:
            await self.session.flush()  # the rows they may refer to
        lease = self._handoff.birth_lease() if self._outbox and self._handoff else None
        # on PostgreSQL a few messages handed over carry the mark, the events and the answered
        # reminders in their statement; otherwise those go first, in statements of their own
        together = (
            lease is not None
            and mark is not None
            and self.dialect == "postgresql"
            and len(self._outbox) <= MARKING_ROWS
        )
        if not together:
            await self._write_events()
        marked = None
        if self._outbox:
            rows, self._outbox = self._outbox, []
            if lease is None:
                await self.outbox.queue(rows)
                return None
            # leased to this process's sender as they are written: no other sender takes them,
            # and its own claims leave them to the handoff after the commit
            owner, length = lease
            for row in rows:
                if row["not_before"] <= row["created_at"]:
                    row["lease_owner"], row["lease_until"] = owner, row["created_at"] + length
                else:
                    row["lease_owner"], row["lease_until"] = None, None
            if mark is not None and self.dialect == "postgresql":
                events, self._events = (self._events, []) if together else ([], self._events)
                answered, self._answered = self._answered, []
                written, marked = await self.outbox.queue_marking(
                    rows, mark.update_id, mark.at, events, answered
                )
            else:
                written = await self.outbox.queue_returning(rows)
            handed = [
                (outbox_id, before, row)
                for (outbox_id, before), row in zip(written, rows, strict=True)
                if row["lease_owner"] is not None
            ]
            earlier = self._handed[1] if self._handed and self._handed[0] == owner else []
            self._handed = (owner, earlier + handed)
        return marked

    @property
    def dialect(self) -> str:
        return self.session.bind.dialect.name  # type: ignore[union-attr]

    async def commit(self) -> None:
        """Commit; inside an inbox update, the first commit also marks the update processed.

        Raises UpdateAlreadyProcessedError (and rolls back) when the update was processed
        elsewhere meanwhile: its effect is already in the database.
        """
        mark = current_update.get() if self._marks_update and not self._readonly else None
        marking = mark is not None and not mark.closed and not mark.marked
        marked = await self._write_outbox(mark if marking else None)
        if mark is None or mark.closed:
            await self._commit()
            return
        mark.commits += 1
        if mark.marked:
            # the update's effect should be one transaction; say so where it is split
            log.debug("update %s committed again after it was marked processed", mark.update_id)
            await self._commit()
            return
        if marked is None:
            marked = await self.inbox.mark_processed(mark.update_id, mark.at)
        if not marked:
            self._handed = None
            await self.session.rollback()
            raise UpdateAlreadyProcessedError(mark.update_id)
        await self._commit()
        mark.marked = True

    async def _commit(self) -> None:
        handed, self._handed = self._handed, None
        await self.session.commit()
        if handed is not None and handed[1]:
            assert self._handoff is not None
            self._handoff.adopt(*handed)

    async def flush(self) -> None:
        """The rows changed so far and the events appended (queued messages wait for the
        commit)."""
        await self.session.flush()
        await self._write_events()


def _reads_only(sessions: async_sessionmaker[AsyncSession]) -> bool:
    """The sessions' engine begins every transaction as a reader's."""
    bind = sessions.kw.get("bind")
    return bind is not None and bool(bind.get_execution_options().get(READONLY))


def _reader(bind: Any) -> Any:
    """The engine as readers use it. On PostgreSQL they read outside any transaction: at
    READ COMMITTED each statement sees what was committed when it began, in a transaction
    or not, so BEGIN and ROLLBACK would be two round trips that change nothing."""
    options: dict[str, Any] = {READONLY: True}
    if bind.dialect.name == "postgresql":
        options["isolation_level"] = "AUTOCOMMIT"
    return bind.execution_options(**options)


class WriterTurn:
    """SQLite lets one transaction write at a time; the others sleep and retry inside the
    driver (the busy timeout, in steps of up to 100 ms), so two writers of one process cost
    each other whole sleeps. Here they wait their turn instead: the next one starts the moment
    the last one ends. A unit of work that writes inside another one's turn, in the same task,
    would wait forever; it is refused."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None

    async def acquire(self) -> None:
        task = asyncio.current_task()
        if self._holder is not None and self._holder is task:
            raise RuntimeError("a writing unit of work inside another one in the same task")
        await self._lock.acquire()
        self._holder = task

    def release(self) -> None:
        self._holder = None
        self._lock.release()


class UnitOfWorkFactory:
    """Makes units of work over one session factory: `async with uows() as uow`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        bind = sessions.kw.get("bind")
        sqlite = bind is not None and bind.dialect.name == "sqlite"
        self._writers = WriterTurn() if sqlite else None
        self._org = org_cache_for(bind) if bind is not None else None
        # the answers a reader would get from that cache, asked without a unit of work
        self.kept = KeptOrg(self._org)
        self.handoff: Handoff | None = None  # the sender of this process, once it runs
        # a reader whose answers all come from the org cache never takes a connection
        self._readers = (
            async_sessionmaker(class_=sessions.class_, **{**sessions.kw, "bind": _reader(bind)})
            if bind is not None
            else sessions
        )
        self._singles = (
            async_sessionmaker(
                class_=sessions.class_,
                **{**sessions.kw, "bind": bind.execution_options(isolation_level="AUTOCOMMIT")},
            )
            if bind is not None and bind.dialect.name == "postgresql"
            else sessions
        )

    def __call__(self, *, readonly: bool = False, marks_update: bool = True) -> UnitOfWork:
        """`marks_update=False`: an idempotent side commit (a member upsert, say) that must not
        count as the inbox update's effect."""
        return UnitOfWork(
            self._readers if readonly else self.sessions,
            readonly=readonly,
            marks_update=marks_update,
            writers=self._writers,
            org=self._org,
            handoff=self.handoff,
        )

    def single(self) -> UnitOfWork:
        """A unit of work for one statement that is whole by itself. On PostgreSQL the
        statement commits on its own, without the BEGIN and COMMIT round trips of a
        transaction (a second statement would commit apart from the first); on SQLite, where
        those cost nothing on the wire, it is a transaction like any other. It never marks
        an inbox update processed and hands no messages over."""
        return UnitOfWork(self._singles, marks_update=False, writers=self._writers, org=self._org)

"""The durable inbox: raw updates stored before they are confirmed, fed to the Application once."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from telegram import Update
from telegram.ext import Application, ApplicationHandlerStop, CallbackContext

from bot.clock import Clock, SystemClock
from bot.logs import update_context
from storage.uow import (
    UnitOfWork,
    UnitOfWorkFactory,
    UpdateAlreadyProcessedError,
    UpdateMark,
    current_update,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
ERROR_LIMIT = 4000  # characters of traceback kept with a failed update


def chat_of(update: Mapping[str, Any]) -> int | None:
    """The chat an update belongs to (its order key), or the person for chatless updates."""
    for body in _bodies(update):
        for holder in (body, body.get("message")):
            if isinstance(holder, Mapping) and isinstance(holder.get("chat"), Mapping):
                return int(holder["chat"]["id"])
        sender = _sender_in(body)
        if sender is not None:
            return sender
    return None


def sender_of(update: Mapping[str, Any]) -> int | None:
    """The Telegram user who made the update, when it names one."""
    for body in _bodies(update):
        sender = _sender_in(body)
        if sender is not None:
            return sender
    return None


def _bodies(update: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [b for k, b in update.items() if k != "update_id" and isinstance(b, Mapping)]


def _sender_in(body: Mapping[str, Any]) -> int | None:
    sender = body.get("from") or body.get("user")
    if isinstance(sender, Mapping) and isinstance(sender.get("id"), int):
        return int(sender["id"])
    return None


async def store_in(uow: UnitOfWork, updates: Sequence[Mapping[str, Any]], now: datetime) -> int:
    """Add raw updates to the inbox inside `uow` (not committed); returns how many were new."""
    rows = {}
    for update in updates:
        update_id = int(update["update_id"])
        rows[update_id] = {
            "update_id": update_id,
            "chat_id": chat_of(update),
            "payload": dict(update),
            "received_at": now,
            "processed": False,
            "attempts": 0,
            "parked": False,
        }
    return await uow.inbox.add_new(list(rows.values()))


async def store(
    uows: UnitOfWorkFactory,
    updates: Sequence[Mapping[str, Any]],
    *,
    clock: Clock | None = None,
) -> int:
    """Store raw updates in one transaction (a repeated update id is ignored); returns how
    many were new. Raises the database's error when it cannot commit: nothing is stored."""
    if not updates:
        return 0
    async with uows(marks_update=False) as uow:
        added = await store_in(uow, updates, (clock or SystemClock()).now())
        await uow.commit()
    return added


def is_transient(error: BaseException) -> bool:
    """The error looks like the database (or the network to it) being away for a while."""
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    # asyncpg's failed connects arrive as plain OSError
    transient = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError, OSError)
    return isinstance(error, transient)


async def record_failure(update: object, context: CallbackContext[Any, Any, Any, Any]) -> None:
    """First error handler: note a handler's failure on the update being handled.

    The worker retries the update (up to MAX_ATTEMPTS) or parks it, so the other error
    handlers (which tell the person and the admins) only hear of the final attempt; an update
    already processed elsewhere is no error at all.
    """
    mark = current_update.get()
    if mark is None or mark.closed or context.error is None:
        return
    mark.error = context.error
    if mark.marked:
        return  # the effect is committed; what failed after it is for the other handlers
    if isinstance(context.error, UpdateAlreadyProcessedError) or not mark.final_attempt:
        raise ApplicationHandlerStop


@dataclass
class WorkReport:
    processed: int = 0
    duplicates: int = 0
    failed: int = 0
    parked: int = 0
    parked_ids: list[int] = field(default_factory=list)


class DatabaseAwayError(Exception):
    """A handler hit a transient database error: the worker pauses and retries."""


@dataclass(frozen=True)
class _Stored:
    update_id: int
    chat_id: int | None
    payload: dict[str, Any]
    attempts: int


class InboxWorker:
    """Feeds stored updates to the Application in order per chat, each exactly once."""

    def __init__(
        self,
        uows: UnitOfWorkFactory,
        app: Application[Any, Any, Any, Any, Any, Any],
        clock: Clock,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        retry_after: timedelta = timedelta(seconds=1),
        batch: int = 100,
        on_processed: Callable[[], object] | None = None,
        on_pass: Callable[[], Awaitable[object]] | None = None,
        on_idle: Callable[[], object] | None = None,
        concurrency: int = 1,
    ) -> None:
        self._uows = uows
        # updates of different chats handled at once; one chat's always one after another
        self._concurrency = max(1, concurrency)
        self._app = app
        self._clock = clock
        self._max_attempts = max_attempts
        self._retry_after = retry_after
        self._batch = batch
        self._on_processed = on_processed
        self._on_pass = on_pass  # a heartbeat: the worker is alive and the database answers
        self._on_idle = on_idle  # the inbox is empty and nothing new has come meanwhile
        # a failed update holds back its chat (or itself, when it has none) until then
        self._held_chats: dict[int, datetime] = {}
        self._held_updates: dict[int, datetime] = {}
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """New updates were stored: look now rather than at the next tick."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the update in hand, then let `run` return."""
        self._stopping = True
        self._wake.set()

    async def process_pending(self) -> WorkReport:
        """Handle every stored update that is due; a failing update holds back its chat only.

        Raises DatabaseAwayError when the database is unreachable (nothing is marked).
        """
        report = WorkReport()
        while not self._stopping:
            now = self._clock.now()
            # a lapsed hold goes: its update is due again (or was handled elsewhere meanwhile)
            self._held_chats = {c: when for c, when in self._held_chats.items() if when > now}
            self._held_updates = {u: when for u, when in self._held_updates.items() if when > now}
            chats, updates = set(self._held_chats), set(self._held_updates)
            rows = await self._pending(chats)
            if self._concurrency == 1:
                progressed = await self._lane(rows, chats, updates, report)
            else:
                progressed = await self._lanes(rows, chats, updates, report)
            if not progressed or len(rows) < self._batch:
                break
        return report

    async def _lane(
        self,
        rows: Sequence[_Stored],
        chats: set[int],
        updates: set[int],
        report: WorkReport,
        turn: asyncio.Semaphore | None = None,
        halted: list[BaseException] | None = None,
    ) -> bool:
        """Handle rows one after another, skipping those of a chat a failure holds back;
        True when any was finished with. `turn`: a slot to hold while handling each;
        `halted`: the other lanes' errors, which stop this one too."""
        progressed = False
        for row in rows:
            if self._stopping or halted:
                break
            if row.chat_id in chats or row.update_id in updates:
                continue
            if turn is None:
                handled = await self._handle(row, report)
            else:
                async with turn:
                    if halted:
                        break
                    try:
                        handled = await self._handle(row, report)
                    except Exception as error:
                        assert halted is not None
                        halted.append(error)
                        raise
            if handled:
                progressed = True
            elif row.chat_id is not None:
                chats.add(row.chat_id)
            else:
                updates.add(row.update_id)
            # let the sender take this update's replies before the next is handled: on SQLite
            # a handler's statements run in place and give the loop no turn, and a batch of
            # updates would otherwise hold every reply of the batch until its last was done
            await asyncio.sleep(0)
        return progressed

    async def _lanes(
        self, rows: Sequence[_Stored], chats: set[int], updates: set[int], report: WorkReport
    ) -> bool:
        """One lane per chat, up to `concurrency` updates in hand at once. While one waits on
        the database, another's handler runs: on a networked database most of an update's
        time is round trips. A database outage stops every lane; the first error is raised
        once all have finished the update in hand."""
        lanes: dict[object, list[_Stored]] = {}
        for row in rows:
            key = row.chat_id if row.chat_id is not None else ("update", row.update_id)
            lanes.setdefault(key, []).append(row)
        turn, halted = asyncio.Semaphore(self._concurrency), []
        outcomes = await asyncio.gather(
            *(self._lane(lane, chats, updates, report, turn, halted) for lane in lanes.values()),
            return_exceptions=True,
        )
        if halted:
            raise halted[0]
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return any(outcomes)

    async def run(self, idle: float = 1.0) -> None:
        """Process until `stop()`: on `wake()`, every `idle` seconds, and when a retry is due."""
        pause = idle
        while not self._stopping:
            self._wake.clear()
            try:
                await self.process_pending()
                pause = idle
                if self._on_pass is not None:
                    await self._on_pass()
                if self._on_idle is not None and not self._wake.is_set():
                    self._on_idle()
            except Exception as error:
                pause = min(max(pause * 2, idle), 30.0)
                if isinstance(error, DatabaseAwayError) or is_transient(error):
                    log.warning("database unavailable (%s); retrying in %.0fs", error, pause)
                else:
                    log.exception("inbox worker pass failed; retrying in %.0fs", pause)
            if self._stopping:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._next_pause(pause))
            except TimeoutError:
                pass

    def _next_pause(self, pause: float) -> float:
        waits = [*self._held_chats.values(), *self._held_updates.values()]
        if not waits:
            return pause
        soonest = (min(waits) - self._clock.now()).total_seconds()
        return max(0.01, min(pause, soonest))

    async def _pending(self, held_chats: set[int]) -> list[_Stored]:
        async with self._uows(readonly=True) as uow:
            rows = await uow.inbox.pending(self._batch, skip_chats=held_chats)
            # every update's first question is who sent it: asked here for the whole batch
            # in one statement, the handlers find the answers in the org cache
            await uow.org.know_people({p for r in rows if (p := sender_of(r.payload))})
            return [_Stored(r.update_id, r.chat_id, r.payload, r.attempts) for r in rows]

    async def _handle(self, row: _Stored, report: WorkReport) -> bool:
        """True when the update is finished with (processed, already done or parked)."""
        final = row.attempts + 1 >= self._max_attempts
        mark = UpdateMark(row.update_id, self._clock.now(), final_attempt=final)
        try:
            update = Update.de_json(row.payload, self._app.bot)
        except Exception as error:  # a payload PTB cannot read will never get better
            return await self._failed(row, error, report, park=True)
        token = current_update.set(mark)
        try:
            with update_context(row.payload):
                await self._app.process_update(update)
        finally:
            mark.closed = True
            current_update.reset(token)
        if mark.marked or isinstance(mark.error, UpdateAlreadyProcessedError):
            return self._done(row, report, duplicate=not mark.marked)
        if mark.error is None:
            async with self._uows(marks_update=False) as uow:
                fresh = await uow.inbox.mark_processed(row.update_id, mark.at)
                await uow.commit()
            return self._done(row, report, duplicate=not fresh)
        if is_transient(mark.error) and not await self._database_answers():
            raise DatabaseAwayError(_one_line(mark.error)) from mark.error
        # an error that only looks like an outage counts too, or one update could stall all
        return await self._failed(row, mark.error, report, park=final)

    async def _database_answers(self) -> bool:
        try:
            async with self._uows(readonly=True) as uow:
                await uow.session.exec(sa.select(1))  # type: ignore[call-overload]
        except Exception:
            return False
        return True

    def _done(self, row: _Stored, report: WorkReport, *, duplicate: bool) -> bool:
        self._release(row)
        if duplicate:
            report.duplicates += 1
            return True
        report.processed += 1
        if self._on_processed is not None:
            self._on_processed()
        return True

    def _release(self, row: _Stored) -> None:
        if row.chat_id is not None:
            self._held_chats.pop(row.chat_id, None)
        self._held_updates.pop(row.update_id, None)

    async def _failed(
        self, row: _Stored, error: BaseException, report: WorkReport, *, park: bool
    ) -> bool:
        text = self._describe(error)
        async with self._uows(marks_update=False) as uow:
            counted = await uow.inbox.record_failure(row.update_id, text, park=park)
            await uow.commit()
        if not counted:
            return self._done(row, report, duplicate=True)
        attempt = row.attempts + 1
        if park:
            log.error("update %s parked after %d attempts: %s", row.update_id, attempt, text)
            self._release(row)
            report.parked += 1
            report.parked_ids.append(row.update_id)
            return True
        log.warning("update %s failed (attempt %d): %s", row.update_id, attempt, _one_line(error))
        report.failed += 1
        until = self._clock.now() + self._retry_after * 2 ** (attempt - 1)
        if row.chat_id is not None:
            self._held_chats[row.chat_id] = until
        else:
            self._held_updates[row.update_id] = until
        return False

    def _describe(self, error: BaseException) -> str:
        text = "".join(traceback.format_exception(error))[-ERROR_LIMIT:]
        token = self._app.bot.token
        return text.replace(token, "<token>") if token else text


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]

"""Long polling that confirms an update to Telegram only after the inbox has it on disk."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from telegram import Bot
from telegram.error import Conflict, NetworkError, RetryAfter, TelegramError

from bot.clock import Clock, SystemClock
from bot.inbox import store_in
from storage.uow import UnitOfWorkFactory

log = logging.getLogger(__name__)

JSONDict = dict[str, Any]
T = TypeVar("T")

# What Qunban handles; Telegram leaves chat_member out unless asked (RELIABILITY A12).
ALLOWED_UPDATES = ("message", "edited_message", "callback_query", "my_chat_member", "chat_member")
OFFSET_KEY = "receiver.offset"
# Telegram numbers updates at random again after a week without any: an offset older than
# this could confirm (drop) fresh updates with lower ids, so it is not sent.
OFFSET_TRUSTED_FOR = timedelta(days=5)


class _Stopped(Exception):
    pass


class Receiver:
    """getUpdates → store in the inbox → commit → only then confirm with the next offset."""

    def __init__(
        self,
        bot: Bot,
        uows: UnitOfWorkFactory,
        on_stored: Callable[[int], object],
        *,
        on_poll: Callable[[], Awaitable[object]] | None = None,
        clock: Clock | None = None,
        timeout: int = 25,
        poll_interval: float = 0.5,
        limit: int = 100,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        allowed_updates: tuple[str, ...] = ALLOWED_UPDATES,
    ) -> None:
        self.bot = bot
        self._uows = uows
        self._on_stored = on_stored
        self._on_poll = on_poll  # a heartbeat: Telegram answered and the inbox took it
        self._clock = clock or SystemClock()
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.limit = limit
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.allowed_updates = list(allowed_updates)
        # the offset still to be sent: it confirms what was stored; None once it was sent
        # and Telegram answered, so a stale offset never confirms updates not yet seen
        self.offset: int | None = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """End `run`: an open long poll is abandoned (what it held stays unconfirmed)."""
        self._stop.set()

    async def start(self) -> None:
        """Turn off any webhook (keeping its pending updates) and pick up the stored offset."""
        await self._retrying(lambda: self.bot.delete_webhook(drop_pending_updates=False))
        self.offset = await self._load_offset()

    async def run(self) -> None:
        """Poll until `stop()`; then confirm the last stored batch to Telegram."""
        try:
            await self.start()
            failures = 0
            while not self._stop.is_set():
                try:
                    updates = await self._or_stop(self._fetch())
                    await self._keep(updates)  # never interrupted: a batch is stored whole
                    failures = 0
                    if self._on_poll is not None:
                        await self._on_poll()
                    if not updates:
                        await self._pause(self.poll_interval)
                except _Stopped:
                    break
                except Exception as error:
                    failures += 1
                    await self._pause(self._after_error(error, failures))
        except _Stopped:
            pass
        await self._confirm_before_exit()

    async def poll_once(self) -> int:
        """One getUpdates; the updates are stored and committed before the next offset is
        used. Returns how many came; raises what Telegram or the database raised."""
        updates = await self._fetch()
        await self._keep(updates)
        return len(updates)

    async def _fetch(self) -> list[JSONDict]:
        """The updates exactly as Telegram sent them: the inbox keeps that JSON, which the
        worker decodes once, rather than PTB's decoding turned back into JSON."""
        data = {
            "offset": self.offset,
            "limit": self.limit,
            "timeout": self.timeout,
            "allowed_updates": self.allowed_updates,
        }
        # as `Bot.get_updates` does: the long poll may take `timeout` beyond the usual wait
        waits = self.bot._request[0].read_timeout or 0
        result = await self.bot._post("getUpdates", data, read_timeout=waits + self.timeout)
        updates = [u for u in result or [] if isinstance(u, dict) and _numbered(u)]
        if len(updates) != len(result or []):
            log.error("getUpdates answered entries without an update_id: %r", result)
        return updates

    async def _keep(self, updates: list[JSONDict]) -> None:
        if not updates:
            self.offset = None  # the offset just sent has confirmed everything before it
            return
        next_offset = max(int(update["update_id"]) for update in updates) + 1
        now = self._clock.now()
        async with self._uows(marks_update=False) as uow:
            added = await store_in(uow, updates, now)
            await uow.schedule.put_value(OFFSET_KEY, {"offset": next_offset}, now)
            await uow.commit()
        self.offset = next_offset
        self._on_stored(added)  # how many were new

    async def _load_offset(self) -> int | None:
        async with self._uows(readonly=True) as uow:
            row = await uow.schedule.get_value(OFFSET_KEY)
            if row is None:
                return None
            offset, saved_at = row.value.get("offset"), row.updated_at
        if self._clock.now() - saved_at > OFFSET_TRUSTED_FOR:
            log.info("offset %s saved at %s is too old to trust; asking for all", offset, saved_at)
            return None
        return int(offset) if offset is not None else None

    def _after_error(self, error: Exception, failures: int) -> float:
        backoff = min(self.max_backoff, self.min_backoff * 2 ** (failures - 1))
        if isinstance(error, RetryAfter):
            retry = error.retry_after
            backoff = retry.total_seconds() if isinstance(retry, timedelta) else float(retry)
        if isinstance(error, Conflict):
            log.warning(
                "Telegram refuses this poll (%s): another instance may be polling with the same "
                "token; retrying in %.0fs",
                error.message,
                backoff,
            )
        elif isinstance(error, NetworkError | RetryAfter):
            log.warning("getUpdates failed (%s); retrying in %.0fs", error, backoff)
        elif isinstance(error, TelegramError):
            log.error("getUpdates refused (%s); retrying in %.0fs", error, backoff)
        else:
            # the inbox could not be written: the batch stays unconfirmed and comes again
            log.warning("storing updates failed (%s); retrying in %.0fs", error, backoff)
        return backoff

    async def _confirm_before_exit(self) -> None:
        if self.offset is None:
            return
        try:
            await asyncio.wait_for(
                self.bot.get_updates(
                    offset=self.offset, limit=1, timeout=0, allowed_updates=self.allowed_updates
                ),
                timeout=10,
            )
            self.offset = None
        except Exception as error:  # the next start confirms it instead
            log.warning("could not confirm the last updates before exit: %s", error)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        failures = 0
        while True:
            try:
                return await self._or_stop(call())
            except (NetworkError, RetryAfter) as error:
                failures += 1
                await self._pause(self._after_error(error, failures))
                if self._stop.is_set():
                    raise _Stopped from error

    async def _or_stop(self, work: Awaitable[T]) -> T:
        task: asyncio.Future[Any] = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if task.done():
            return task.result()  # type: ignore[no-any-return]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise _Stopped

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)


def _numbered(update: JSONDict) -> bool:
    return isinstance(update.get("update_id"), int) and not isinstance(update["update_id"], bool)

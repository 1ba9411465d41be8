"""The outbox sender: drains queued messages to Telegram within its limits, losing none."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from telegram import Bot, InlineKeyboardMarkup, LinkPreviewOptions, Message, ReplyParameters
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)

from bot.clock import Clock
from bot.ratelimit import RateLimiter
from storage.tables import Outbox, OutboxState
from storage.uow import UnitOfWorkFactory

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
MAX_ATTEMPTS = 12
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


@dataclass
class DrainReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    ambiguous: int = 0
    rate_limited: int = 0
    deferred: int = 0
    next_in: float | None = None  # seconds until the limiter lets the next deferred row go
    errors: list[str] = field(default_factory=list)


@dataclass
class SenderStats:
    """Running totals for the metrics endpoint."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    ambiguous: int = 0
    rate_limited: int = 0
    last_run: Any = None


class OutboxSender:
    """Claims due rows (leased, SKIP LOCKED on PostgreSQL), sends them in order per chat,
    records what Telegram answered. A crash between Telegram's answer and the record can
    repeat that one message; nothing else is sent twice, and nothing is dropped."""

    def __init__(
        self,
        uows: UnitOfWorkFactory,
        clock: Clock,
        limiter: RateLimiter | None = None,
        *,
        instance: str | None = None,
        batch: int = 50,
    ) -> None:
        self._uows = uows
        self._clock = clock
        self.limiter = limiter or RateLimiter(None)
        self.instance = instance or uuid.uuid4().hex[:12]
        self._batch = batch
        self._wake = asyncio.Event()
        self._stopping = False
        self._draining = asyncio.Lock()  # one drain at a time: a row is never claimed twice
        self.stats = SenderStats()

    def wake(self) -> None:
        """Something was queued: drain now rather than at the next tick."""
        self._wake.set()

    def stop(self) -> None:
        """Let `run` finish the drain in hand and return: a row is never left half sent."""
        self._stopping = True
        self._wake.set()

    async def run(self, bot: Bot, idle: float = 1.0) -> None:
        """Drain forever; wakes on `wake()`, after `idle` seconds, or when the limits allow."""
        self._stopping = False
        while not self._stopping:
            try:
                report = await self.drain(bot)
                pause = idle if report.next_in is None else min(idle, max(report.next_in, 0.01))
            except Exception:  # the sender must outlive any single bad moment
                log.exception("outbox drain failed")
                pause = idle
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=pause)
            except TimeoutError:
                pass

    async def drain(self, bot: Bot, *, limit: int | None = None) -> DrainReport:
        """Send everything due that the limits allow now; returns what happened."""
        async with self._draining:
            return await self._drain(bot, limit)

    async def _drain(self, bot: Bot, limit: int | None) -> DrainReport:
        report = DrainReport()
        while limit is None or report.sent + report.failed < limit:
            if self._stopping:
                break
            rows = await self._claim()
            if not rows:
                break
            progressed = await self._send_batch(bot, rows, report)
            if not progressed:
                break
        self.stats.last_run = self._clock.now()
        return report

    async def _claim(self) -> list[Outbox]:
        now = self._clock.now()
        async with self._uows() as uow:
            rows = await uow.outbox.due(
                now, limit=self._batch, skip_locked=uow.dialect != "sqlite", owner=self.instance
            )
            mine = []
            for row in rows:
                row.lease_owner = self.instance
                row.lease_until = now + LEASE
                mine.append(row)
            await uow.commit()
        return mine

    async def _send_batch(self, bot: Bot, rows: list[Outbox], report: DrainReport) -> bool:
        held: set[int] = set()
        released: list[int] = []
        progressed = False
        first = await self._first_pending({row.chat_id for row in rows})
        for row in rows:
            if row.chat_id in held or first.get(row.chat_id, row.id) < row.id:  # type: ignore[operator]
                held.add(row.chat_id)  # an earlier message of the chat goes first
                released.append(row.id)  # type: ignore[arg-type]
                continue
            wait = self.limiter.wait(row.chat_id)
            if wait > 0:
                held.add(row.chat_id)
                report.deferred += 1
                report.next_in = wait if report.next_in is None else min(report.next_in, wait)
                released.append(row.id)  # type: ignore[arg-type]
                continue
            done = await self._send_one(bot, row, report)
            progressed = progressed or done
            if not done:
                held.add(row.chat_id)
        await self._release_all(released)
        return progressed

    async def _first_pending(self, chats: set[int]) -> dict[int, int]:
        """Each chat's first pending row, looked up again for the batch just before sending."""
        async with self._uows(readonly=True) as uow:
            return await uow.outbox.first_pending_in(chats)

    async def _send_one(self, bot: Bot, row: Outbox, report: DrainReport) -> bool:
        """True when the row is finished (sent or given up), False when it waits for a retry."""
        self.limiter.record(row.chat_id)
        try:
            message = await self._call(bot, row)
        except RetryAfter as err:
            seconds = _seconds(err.retry_after)
            self.limiter.block(row.chat_id, seconds)
            report.rate_limited += 1
            self.stats.rate_limited += 1
            await self._retry(row, seconds, f"429 retry after {seconds}s", count=False)
            return False
        except ChatMigrated as err:
            await self._migrate(row.chat_id, err.new_chat_id)
            return False
        except Forbidden as err:
            await self._give_up(row, f"403 {err.message}", blocked_person=True)
            report.failed += 1
            return True
        except BadRequest as err:
            return await self._bad_request(bot, row, err, report)
        except TimedOut as err:
            # the message may have been delivered: retrying can repeat it once, dropping
            # it would lose it; we retry and count it
            log.warning("ambiguous send of outbox row %s to chat %s: %s", row.id, row.chat_id, err)
            report.ambiguous += 1
            self.stats.ambiguous += 1
            return await self._network(row, err, report)
        except NetworkError as err:
            return await self._network(row, err, report)
        except InvalidToken:
            raise  # nothing can be sent: stop, rather than give up every row
        except Exception as err:
            # the request could not even be made (a bad payload, a failed read): retried
            # and then given up like a network error, so one row cannot stop the drain
            log.exception("outbox row %s to chat %s not sent", row.id, row.chat_id)
            return await self._network(row, err, report, f"error: {err!r}")
        await self._record_sent(row, message)
        report.sent += 1
        self.stats.sent += 1
        return True

    async def _call(self, bot: Bot, row: Outbox) -> Message | bool:
        p = dict(row.payload)
        markup = (
            InlineKeyboardMarkup.de_json(p["reply_markup"], bot) if p.get("reply_markup") else None
        )
        if row.method == "editMessageText":
            message_id = await self._card_message_id(p.get("card_of")) or p.get("message_id")
            if message_id is None:
                return await self._send_text(bot, row, p, markup)
            return await bot.edit_message_text(
                p["text"],
                chat_id=row.chat_id,
                message_id=message_id,
                parse_mode=p.get("parse_mode"),
                reply_markup=markup,
                link_preview_options=_NO_PREVIEW,
            )
        if row.method == "sendPhoto":
            photo = base64.b64decode(p["photo_b64"]) if p.get("photo_b64") else p["photo"]
            return await bot.send_photo(
                row.chat_id,
                photo=photo,
                caption=p.get("caption"),
                parse_mode=p.get("parse_mode"),
                reply_markup=markup,
            )
        return await self._send_text(bot, row, p, markup)

    async def _send_text(
        self, bot: Bot, row: Outbox, p: dict[str, Any], markup: InlineKeyboardMarkup | None
    ) -> Message:
        reply = p.get("reply_parameters")
        return await bot.send_message(
            row.chat_id,
            p["text"],
            parse_mode=p.get("parse_mode"),
            reply_markup=markup,
            reply_parameters=ReplyParameters(**reply) if reply else None,
            link_preview_options=_NO_PREVIEW,
        )

    async def _card_message_id(self, ticket_id: int | None) -> int | None:
        if ticket_id is None:
            return None
        async with self._uows(readonly=True) as uow:
            ticket = await uow.tickets.get(ticket_id)
            return ticket.card_message_id if ticket else None

    async def _bad_request(
        self, bot: Bot, row: Outbox, err: BadRequest, report: DrainReport
    ) -> bool:
        text = err.message.lower()
        if "message is not modified" in text:
            await self._record_sent(row, None)
            report.sent += 1
            return True
        if row.method == "editMessageText" and "message to edit not found" in text:
            # the card was deleted in the group: post it anew and make that the card
            async with self._uows() as uow:
                fresh = await uow.outbox.get(row.id)  # type: ignore[arg-type]
                assert fresh is not None
                fresh.method, fresh.is_card, fresh.lease_until = "sendMessage", True, None
                await uow.commit()
            return False
        await self._give_up(row, f"400 {err.message}")
        report.failed += 1
        report.errors.append(err.message)
        return True

    async def _network(
        self, row: Outbox, err: Exception, report: DrainReport, error: str | None = None
    ) -> bool:
        error = error or f"network: {err}"
        if row.attempts + 1 >= MAX_ATTEMPTS:
            await self._give_up(row, error)
            report.failed += 1
            return True
        backoff = min(300.0, 2.0**row.attempts)
        await self._retry(row, backoff, error)
        report.retried += 1
        self.stats.retried += 1
        return False

    async def _record_sent(self, row: Outbox, message: Message | bool | None) -> None:
        """Record Telegram's answer in two statements at most; the row as claimed says all
        that is needed (only this sender, holding its lease, changes it meanwhile)."""
        message_id = message.message_id if isinstance(message, Message) else None
        async with self._uows() as uow:
            await uow.outbox.mark_sent(row.id, self._clock.now(), message_id)  # type: ignore[arg-type]
            card_of = row.ticket_id or row.payload.get("card_of")
            if message_id is not None and card_of and (row.is_card or row.payload.get("card_of")):
                # an edit posted anew (its card was deleted) is the card from now on
                reposted = row.method == "sendMessage" and "card_of" in row.payload
                await uow.tickets.remember_card(card_of, message_id, replace=reposted)
            await uow.commit()

    async def _retry(self, row: Outbox, seconds: float, error: str, *, count: bool = True) -> None:
        async with self._uows() as uow:
            fresh = await uow.outbox.get(row.id)  # type: ignore[arg-type]
            assert fresh is not None
            fresh.attempts += 1 if count else 0
            fresh.last_error = error
            fresh.not_before = self._clock.now() + timedelta(seconds=seconds)
            fresh.lease_until = None
            await uow.commit()

    async def _release_all(self, outbox_ids: list[int]) -> None:
        if outbox_ids:
            async with self._uows() as uow:
                await uow.outbox.release(outbox_ids, self.instance)
                await uow.commit()

    async def _give_up(self, row: Outbox, error: str, *, blocked_person: bool = False) -> None:
        log.warning("outbox row %s to chat %s given up: %s", row.id, row.chat_id, error)
        self.stats.failed += 1
        async with self._uows() as uow:
            fresh = await uow.outbox.get(row.id)  # type: ignore[arg-type]
            assert fresh is not None
            fresh.state = OutboxState.FAILED
            fresh.last_error = error
            fresh.attempts += 1
            fresh.lease_until = None
            if blocked_person and fresh.person_id is not None:
                person = await uow.org.person(fresh.person_id)
                if person is not None:
                    person.dm_blocked = True
            await uow.commit()

    async def _migrate(self, old: int, new: int) -> None:
        """The group became a supergroup: its binding, tickets and queue follow the new id."""
        async with self._uows() as uow:
            await uow.org.move_chat(old, new)
            await uow.commit()


def _seconds(retry_after: int | timedelta) -> float:
    return (
        retry_after.total_seconds() if isinstance(retry_after, timedelta) else float(retry_after)
    )

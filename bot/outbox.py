"""The outbox sender: drains queued messages to Telegram within its limits, losing none."""

from __future__ import annotations

import asyncio
import base64
import functools
import heapq
import importlib.util
import logging
import math
import sys
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from telegram import Bot, InlineKeyboardMarkup, LinkPreviewOptions, ReplyParameters
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
from storage.tables import OutboxState
from storage.uow import UnitOfWorkFactory

log = logging.getLogger(__name__)

# httpcore asks for the optional sniffio package each time it sets up a lock, several times a
# request; where it is not installed, each ask searches the whole import path again, which
# cost the sender about as much as the rest of a send. Python is told once that it is not
# there: the imports fail at once, as they did before, and nothing else changes.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

LEASE = timedelta(seconds=60)
# the lease a message is written with when this process's sender takes it from the unit of
# work that queued it: long enough for the limits to let it go, short enough that after a
# crash another sender takes it soon
BIRTH_LEASE = timedelta(seconds=15)
# while messages come by hand, how often the sender still looks in the outbox for the rest
# (other processes' messages, retries come due, leases lapsed), in seconds
HANDED_LOOK = 0.05
DONE_KEPT = 10_000  # chats whose last message sent the sender remembers
MAX_ATTEMPTS = 12
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
_NO_PREVIEW_WIRE = {"is_disabled": True}


CHATS = 100  # chats one claim takes at most
DEPTH = 20  # rows of one chat one claim takes at most, sent one after another
# requests to Telegram in flight at once, each to a chat of its own: four reach Telegram's 30
# a second while answers take up to 130 ms; each costs the client more the more there are
# (httpcore looks over every connection it holds for every request)
LANES = 4
RECORD_WAIT = 0.01  # seconds a record waits for more answers to write with it, at most
RECORD_BATCH = 64  # answers written together at most
RECORD_GRACE = timedelta(seconds=5)  # for a drain cut off, to record the answers come


@dataclass
class DrainReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    ambiguous: int = 0
    rate_limited: int = 0
    deferred: int = 0  # chats left waiting on the limits
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


@dataclass(slots=True)
class Claimed:
    """An outbox row this sender holds the lease of: what sending it needs."""

    id: int
    chat_id: int
    method: str
    payload: dict[str, Any]
    ticket_id: int | None
    is_card: bool
    person_id: int | None
    attempts: int
    fresh_until: datetime  # no send starts later: the lease must outlast it and its record


@dataclass(eq=False)
class _Pass:
    """What one drain holds: the claimed rows chat by chat, and the sends in flight."""

    bot: Bot
    patience: float  # how long to wait for the limits before giving the rows back
    look_every: float  # how often to look for rows queued meanwhile (seconds, loop time)
    report: DrainReport = field(default_factory=DrainReport)
    queues: dict[int, deque[Claimed]] = field(default_factory=dict)  # claimed, not yet sent
    ready: deque[int] = field(default_factory=deque)  # chats that may go when all may
    waiting: list[tuple[float, int]] = field(default_factory=list)  # (limiter time, chat)
    busy: dict[int, tuple[asyncio.Task[bool], Claimed]] = field(default_factory=dict)
    asking: int = 0  # sends waiting for Telegram's answer (the others, for their record)
    finished: deque[int] = field(default_factory=deque)  # chats whose send has ended
    loose: list[int] = field(default_factory=list)  # leased rows no longer in hand
    deep: set[int] = field(default_factory=set)  # chats whose claim may have left rows
    more: bool = True  # a claim may find rows not in hand
    claims: int = 0
    claiming: asyncio.Task[None] | None = None  # a claim made while rows in hand go out
    next_look: float = 0.0
    error: Exception | None = None


class OutboxSender:
    """Claims due rows (leased, SKIP LOCKED on PostgreSQL) for many chats at once and sends
    them, several chats at a time but one message at a time and in order within a chat, as
    fast as Telegram's limits allow; records what Telegram answered. A crash between
    Telegram's answer and the record can repeat the messages in flight then (one per chat at
    most); nothing else is sent twice, and nothing is dropped."""

    def __init__(
        self,
        uows: UnitOfWorkFactory,
        clock: Clock,
        limiter: RateLimiter | None = None,
        *,
        instance: str | None = None,
        batch: int = CHATS,
        depth: int = DEPTH,
        lanes: int = LANES,
        look_while_handed: float = HANDED_LOOK,
    ) -> None:
        self._uows = uows
        self._clock = clock
        self.limiter = limiter or RateLimiter(None)
        self.instance = instance or uuid.uuid4().hex[:12]
        self._batch = batch
        self._depth = depth
        self._lanes = max(1, lanes)
        self._look_while_handed = look_while_handed
        self._wake = asyncio.Event()
        self._woken = False  # rows were queued since the last claim
        # messages this process queues, taken straight from the unit of work (`adopt`)
        self._adopting = False
        self._birth_owner = f"{self.instance[:48]}~{uuid.uuid4().hex[:8]}"
        self._adopted: list[tuple[Claimed, int | None]] = []
        self._done: dict[int, int] = {}  # chat -> the last of its rows this sender finished
        # ticket -> its card's (chat, message), as this sender recorded it: the edits of a
        # card it posted need not ask the database where the card is
        self._cards: dict[int, tuple[int, int]] = {}
        self._last_claim = -math.inf  # loop time
        self._claim_wanted = False  # a claim waits for HANDED_LOOK to pass
        self._waker: asyncio.Future[None] | None = None  # a drain waiting for news
        self._stopping = False
        self._draining = asyncio.Lock()  # one drain at a time: a row is never claimed twice
        self._db = asyncio.Lock()  # one unit of work at a time, whichever send asks
        self._unrecorded: list[tuple[Claimed, datetime, int | None, asyncio.Future[None]]] = []
        self._recorder: asyncio.Task[None] | None = None
        self._recorder_killed = False
        self._gathering: asyncio.Future[None] | None = None  # a record waiting for more
        self._asking = 0  # sends of the drain in hand waiting for Telegram's answer
        self._answers = 0  # answers come from Telegram, all told
        self._gather_for = 0  # the count of answers a record waiting for more waits for
        self.stats = SenderStats()

    def wake(self, *, look: bool = True) -> None:
        """Something was queued: drain now rather than at the next tick. `look=False`: by a
        unit of work of this process, which hands its messages over (`adopt`) while `run`
        runs; the outbox itself needs no look for them then."""
        if look or not self._adopting:
            self._woken = True
        self._wake.set()
        self._poke()

    def birth_lease(self) -> tuple[str, timedelta] | None:
        """While `run` runs: the lease under which a unit of work writes the messages it
        queues, to hand them over here once committed (`adopt`)."""
        if self._adopting and not self._stopping:
            return self._birth_owner, BIRTH_LEASE
        return None

    def adopt(self, owner: str, rows: list[tuple[int, int | None, dict[str, Any]]]) -> None:
        """Messages just committed under the lease of `birth_lease`: (id, the last row pending
        before it in its chat when it was written, its values). They go out without a claim,
        in order behind what the sender holds of their chats; one whose chat has a message
        pending that the sender does not hold is left to a claim, which keeps the order."""
        if owner != self._birth_owner or not self._adopting:
            return  # a lease of a run that has ended: it lapses, and a claim takes the row
        for outbox_id, before, row in rows:
            payload = row["payload"]
            fresh_until = row["created_at"] + BIRTH_LEASE / 2
            claimed = Claimed(outbox_id, row["chat_id"], row["method"], payload, row["ticket_id"],
                              row["is_card"], row["person_id"], 0, fresh_until)  # fmt: skip
            self._adopted.append((claimed, before))
        self._wake.set()
        self._poke()

    def stop(self) -> None:
        """Let `run` finish the sends in hand and return: a row is never left half sent."""
        self._stopping = True
        self._wake.set()
        self._poke()

    async def run(self, bot: Bot, idle: float = 1.0) -> None:
        """Drain forever; wakes on `wake()`, after `idle` seconds, or when the limits allow.
        A drain waits for the limits itself (up to a second, or `idle` if longer) rather
        than give its rows back, and looks for rows queued meanwhile every `idle` seconds."""
        self._stopping = False
        self._adopting = True
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    report = await self.drain(bot, patience=max(idle, 1.0), look_every=idle)
                    pause = idle if report.next_in is None else min(idle, report.next_in)
                except Exception:  # the sender must outlive any single bad moment
                    log.exception("outbox drain failed")
                    pause = idle
                if self._claim_wanted:
                    pause = min(pause, self._next_claim() - asyncio.get_running_loop().time())
                if self._stopping:
                    break
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=max(pause, 0.001))
                except TimeoutError:
                    pass
        finally:
            self._adopting = False
            await self._let_go_adopted()

    async def _let_go_adopted(self) -> None:
        """Messages handed over but not taken into a drain: their leases given back."""
        adopted, self._adopted = self._adopted, []
        if not adopted:
            return
        try:
            async with self._db, self._uows() as uow:
                await uow.outbox.release([row.id for row, _ in adopted], self._birth_owner)
                await uow.commit()
        except Exception:
            log.exception("outbox leases not given back; they lapse in %s", BIRTH_LEASE)

    async def drain(
        self,
        bot: Bot,
        *,
        limit: int | None = None,
        patience: float = 0.0,
        look_every: float = math.inf,
    ) -> DrainReport:
        """Send everything due that the limits allow now; returns what happened. With
        `patience`, waits up to that long (the limiter's seconds) each time the limits hold
        every row in hand, rather than return."""
        async with self._draining:
            p = _Pass(bot, patience=patience, look_every=look_every)
            if self._adopting:
                # what this process queues comes by hand: a drain starts knowing of nothing
                # more, and looks when the last look is `look_every` old
                p.more, p.next_look = False, self._last_claim + look_every
            try:
                await self._drain(p, limit)
            except BaseException:
                await self._cut_off(p)
                raise
            await self._give_back(p)
            self.stats.last_run = self._clock.now()
            if p.error is not None:
                raise p.error
            return p.report

    async def _drain(self, p: _Pass, limit: int | None) -> None:
        while True:
            self._see_to_finished(p)
            self._take_adopted(p)
            if p.claiming is not None and p.claiming.done():
                claim, p.claiming = p.claiming, None
                claim.result()  # its failure is the drain's, as if it had been awaited
            if (
                self._stopping
                or p.error is not None
                or (limit is not None and p.report.sent + p.report.failed + len(p.busy) >= limit)
            ):
                if not p.busy and p.claiming is None:
                    return
                await self._nap(p, math.inf)
                continue
            if p.claiming is None and self._claim_due(p):
                if not p.queues:
                    await self._claim(p)
                    continue  # see to the sends that ended meanwhile first
                # the rows in hand keep going out while the claim waits for the database
                p.claiming = asyncio.create_task(self._claim(p))
                p.claiming.add_done_callback(lambda _: self._poke())
            wait = self._dispatch(p)
            if not p.asking:
                self._record_now()  # no more answers on the way: write what there is
            if p.busy:
                await self._nap(p, wait)
            elif p.claiming is not None and (not p.queues or wait > p.patience):
                await self._nap(p, wait)  # the claim's end wakes it
            elif not p.queues:
                return  # nothing in hand, and the claim found nothing more
            elif wait > p.patience:
                p.report.next_in = wait
                p.report.deferred = len(p.queues)
                return
            else:
                await self._nap(p, wait)

    def _claim_due(self, p: _Pass) -> bool:
        if self._adopting:
            return self._look_due(p)
        if p.claims == 0:
            return True
        room = self._batch - len(p.queues)
        if room <= 0:
            return False
        if self._woken:
            return True
        if p.more and (room >= self._batch - self._batch // 2 or not p.queues):
            return True
        return asyncio.get_running_loop().time() >= p.next_look

    def _look_due(self, p: _Pass) -> bool:
        """While what this process queues comes by hand, the outbox is looked at for the rest
        (other processes' messages, retries come due, leases lapsed) every `look_every`, and
        sooner when there is reason to (a wake that was no handover, rows let go, a claim
        that left rows behind), but not more often than every `look_while_handed`."""
        if len(p.queues) >= self._batch:
            return False
        now = asyncio.get_running_loop().time()
        if self._woken or p.more:
            if now >= self._next_claim():
                return True
            self._claim_wanted = True
            return False
        return now >= self._last_claim + p.look_every

    def _next_claim(self) -> float:
        """While messages come by hand: the loop time the outbox may next be looked at."""
        return self._last_claim + self._look_while_handed

    async def _claim(self, p: _Pass) -> None:
        """Lease more rows, of chats not in hand; give back first the leases let go."""
        loose, p.loose = p.loose, []
        self._woken = self._claim_wanted = False
        self._last_claim = asyncio.get_running_loop().time()
        now = self._clock.now()
        async with self._db, self._uows() as uow:
            await uow.outbox.release(loose, self.instance, self._birth_owner)
            rows = await uow.outbox.claim(
                now,
                now + LEASE,
                owner=self.instance,
                chats=self._batch,
                depth=self._depth,
                skip=list(p.queues),
                skip_locked=uow.dialect != "sqlite",
            )
            await uow.commit()
        p.claims += 1
        p.next_look = asyncio.get_running_loop().time() + p.look_every
        fresh_until = now + LEASE / 2
        chats = 0
        for r in rows:
            queue = p.queues.get(r.chat_id)
            if queue is None:
                queue = p.queues[r.chat_id] = deque()
                p.ready.append(r.chat_id)
                chats += 1
            queue.append(Claimed(r.id, r.chat_id, r.method, r.payload, r.ticket_id, r.is_card,
                                 r.person_id, r.attempts, fresh_until))  # fmt: skip
        for chat in {r.chat_id for r in rows}:
            if len(p.queues[chat]) >= self._depth:
                p.deep.add(chat)
        p.more = chats >= self._batch

    def _dispatch(self, p: _Pass) -> float:
        """Start sends while lanes are free and the limits allow; returns the seconds until
        the next may start (infinite: when a send in flight ends)."""
        limiter = self.limiter
        now = limiter.now()
        while p.waiting and p.waiting[0][0] <= now:
            p.ready.append(heapq.heappop(p.waiting)[1])
        soonest = p.waiting[0][0] - now if p.waiting else math.inf
        fresh = self._clock.now()
        while p.ready and p.asking < self._lanes:
            overall = limiter.wait_global()
            if overall > 0:
                return min(soonest, overall)
            chat = p.ready.popleft()
            own = limiter.wait(chat)
            if own > 0:
                heapq.heappush(p.waiting, (now + own, chat))
                soonest = min(soonest, own)
                continue
            row = p.queues[chat][0]
            if row.fresh_until <= fresh:  # held too long: claim it again, with a new lease
                self._drop(p, chat)
                continue
            p.queues[chat].popleft()
            limiter.start(chat)
            p.asking += 1
            self._asking = p.asking
            task = asyncio.create_task(self._send_one(p, row))
            p.busy[chat] = (task, row)
            task.add_done_callback(functools.partial(self._ended, p, chat))
        return math.inf if p.ready else soonest

    def _answered(self, p: _Pass, chat: int) -> None:
        self.limiter.done(chat)
        p.asking -= 1
        self._asking = p.asking
        self._answers += 1
        if self._answers >= self._gather_for:
            self._record_now()
        self._poke()

    def _ended(self, p: _Pass, chat: int, _task: asyncio.Task[bool]) -> None:
        p.finished.append(chat)
        self._poke()

    def _see_to_finished(self, p: _Pass) -> None:
        """Each chat whose send ended goes on with its next row, or is let go."""
        if self._recorder_killed:
            self._recorder_killed = False
            raise asyncio.CancelledError
        while p.finished:
            chat = p.finished.popleft()
            task, row = p.busy.pop(chat)
            if task.cancelled():
                raise asyncio.CancelledError  # killed: the whole drain goes with it
            error = task.exception()
            if error is not None and not isinstance(error, Exception):
                raise error
            if error is not None or not task.result():
                # the database failed, say (finish what is in flight), or the row waits for
                # a retry (or its chat moved)
                p.error = p.error or error
                self._drop(p, chat, row)
                continue
            if len(self._done) >= DONE_KEPT:
                self._done.clear()  # forgetting only sends a later message by a claim
            self._done[chat] = row.id
            if p.queues[chat]:
                p.ready.append(chat)
            else:
                del p.queues[chat]
                if chat in p.deep:
                    p.deep.discard(chat)
                    p.more = True

    def _take_adopted(self, p: _Pass) -> None:
        """Put the messages handed over since the last look in hand, each behind its chat's."""
        if not self._adopted:
            return
        adopted, self._adopted = self._adopted, []
        let_go: set[int] = set()  # chats with a message left to a claim: the rest follow it
        for row, before in adopted:
            chat = row.chat_id
            if chat in let_go or not self._next_in_chat(p, chat, before):
                let_go.add(chat)
                p.loose.append(row.id)
                p.more = self._woken = True
                continue
            queue = p.queues.get(chat)
            if queue is None:
                queue = p.queues[chat] = deque()
                p.ready.append(chat)
            queue.append(row)

    def _next_in_chat(self, p: _Pass, chat: int, before: int | None) -> bool:
        """Whether a message whose chat had `before` pending ahead of it (None: nothing, or
        nothing written before the statement that wrote it) may follow what is in hand."""
        if before is None or before == self._done.get(chat):
            return True
        if any(r.id == before for r in p.queues.get(chat, ())):
            return True
        busy = p.busy.get(chat)
        return busy is not None and busy[1].id == before

    def _drop(self, p: _Pass, chat: int, row: Claimed | None = None) -> None:
        """Let the chat's rows go; a claim takes them again when they may go."""
        p.loose.extend(r.id for r in p.queues.pop(chat, ()))
        if row is not None:
            p.loose.append(row.id)
        p.deep.discard(chat)
        p.more = True

    async def _nap(self, p: _Pass, timeout: float) -> None:
        """Wait until a send ends, `timeout` passes, or `wake`/`stop` is called."""
        if (
            p.finished
            or timeout <= 0
            or self._recorder_killed
            or (p.claiming is not None and p.claiming.done())
        ):
            return
        loop = asyncio.get_running_loop()
        if p.look_every < math.inf and not p.busy and len(p.queues) < self._batch:
            look = min(p.next_look, self._next_claim()) if self._claim_wanted else p.next_look
            timeout = min(timeout, max(look - loop.time(), 0.0))  # time to look again
        waker = self._waker = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waker) if timeout < math.inf else None
        try:
            await waker
        finally:
            self._waker = None
            if timer is not None:
                timer.cancel()

    def _poke(self) -> None:
        if self._waker is not None:
            _resolve(self._waker)

    async def _give_back(self, p: _Pass) -> None:
        """The leases of the rows still in hand, given back as the drain ends."""
        loose = p.loose + [r.id for queue in p.queues.values() for r in queue]
        p.loose, p.queues = [], {}
        if not loose:
            return
        try:
            async with self._db, self._uows() as uow:
                await uow.outbox.release(loose, self.instance, self._birth_owner)
                await uow.commit()
        except Exception:
            if p.error is None:
                raise
            log.exception("outbox leases not given back; they lapse in %s", LEASE)

    async def _cut_off(self, p: _Pass) -> None:
        """The drain is cut off (cancelled, or dying): its sends go with it, but answers
        already come are still recorded if the database takes them within a few seconds:
        each one not recorded would be sent again."""
        sends = [task for task, _ in p.busy.values()]
        if p.claiming is not None:  # its rows, if it got them, lapse with their lease
            sends.append(p.claiming)
            p.claiming = None
        for task in sends:
            task.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
        recorder = self._recorder
        if recorder is not None:
            await asyncio.wait({recorder}, timeout=RECORD_GRACE.total_seconds())
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)
        self._recorder_killed = False
        self._asking = 0
        self.limiter.end_open()

    async def _send_one(self, p: _Pass, row: Claimed) -> bool:
        """True when the row is finished (sent or given up), False when it waits for a retry.
        Its lane is free for another chat once Telegram has answered; its chat goes on once
        the answer is recorded."""
        bot, report = p.bot, p.report
        try:
            try:
                message_id = await self._call(bot, row)
            finally:
                self._answered(p, row.chat_id)
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
        await self._record_sent(row, message_id)
        report.sent += 1
        self.stats.sent += 1
        return True

    async def _call(self, bot: Bot, row: Claimed) -> int | None:
        """Make the row's request; returns the id of the message Telegram sent or edited
        (None when its answer names none)."""
        p = row.payload
        if row.method == "editMessageText":
            card = await self._card_message_id(p.get("card_of"), row.chat_id)
            message_id = card or p.get("message_id")
            if message_id is None:
                return await self._send_text(bot, row, p)
            if not _plain(bot):
                markup = _markup(bot, p)
                return _message_id(
                    await bot.edit_message_text(
                        p["text"],
                        chat_id=row.chat_id,
                        message_id=message_id,
                        parse_mode=p.get("parse_mode"),
                        reply_markup=markup,
                        link_preview_options=_NO_PREVIEW,
                    )
                )
            params = {
                "chat_id": row.chat_id,
                "message_id": message_id,
                "text": p["text"],
                "parse_mode": p.get("parse_mode"),
                "reply_markup": _wire(p.get("reply_markup")),
                "link_preview_options": _NO_PREVIEW_WIRE,
            }
            return _message_id(await bot._post("editMessageText", params))
        if row.method == "sendPhoto":
            photo = base64.b64decode(p["photo_b64"]) if p.get("photo_b64") else p["photo"]
            message = await bot.send_photo(
                row.chat_id,
                photo=photo,
                caption=p.get("caption"),
                parse_mode=p.get("parse_mode"),
                reply_markup=_markup(bot, p),
            )
            return message.message_id
        return await self._send_text(bot, row, p)

    async def _send_text(self, bot: Bot, row: Claimed, p: dict[str, Any]) -> int | None:
        if not _plain(bot):
            reply = p.get("reply_parameters")
            message = await bot.send_message(
                row.chat_id,
                p["text"],
                parse_mode=p.get("parse_mode"),
                reply_markup=_markup(bot, p),
                reply_parameters=ReplyParameters(**reply) if reply else None,
                link_preview_options=_NO_PREVIEW,
            )
            return message.message_id
        params = {
            "chat_id": row.chat_id,
            "text": p["text"],
            "parse_mode": p.get("parse_mode"),
            "reply_markup": _wire(p.get("reply_markup")),
            "reply_parameters": _wire(p.get("reply_parameters")),
            "link_preview_options": _NO_PREVIEW_WIRE,
        }
        return _message_id(await bot._post("sendMessage", params))

    async def _card_message_id(self, ticket_id: int | None, chat_id: int) -> int | None:
        """Where the ticket's card is, for an edit of it in this chat. (A card this sender
        knows in another chat is not this one: the group has moved, and its card with it.)"""
        if ticket_id is None:
            return None
        known = self._cards.get(ticket_id)
        if known is not None and known[0] == chat_id:
            return known[1]
        async with self._db, self._uows(readonly=True) as uow:
            return await uow.tickets.card_message_id(ticket_id)

    def _remember_cards(self, cards: list[tuple[int, int, int, bool]]) -> None:
        """(ticket, chat, message, posted anew), as `remember_cards` takes them."""
        if len(self._cards) + len(cards) > DONE_KEPT:
            self._cards.clear()  # forgetting only makes an edit ask the database
        for ticket_id, chat_id, message_id, reposted in cards:
            if reposted or ticket_id not in self._cards:
                self._cards[ticket_id] = (chat_id, message_id)

    async def _bad_request(
        self, bot: Bot, row: Claimed, err: BadRequest, report: DrainReport
    ) -> bool:
        text = err.message.lower()
        if "message is not modified" in text:
            await self._record_sent(row, None)
            report.sent += 1
            return True
        if row.method == "editMessageText" and "message to edit not found" in text:
            if self._cards.pop(row.payload.get("card_of"), None) is not None:
                # what this sender knew of the card may be out of date (another sender
                # posted it anew): the row goes again, asking the database where it is
                return False
            # the card was deleted in the group: post it anew and make that the card
            async with self._db, self._uows() as uow:
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
        self, row: Claimed, err: Exception, report: DrainReport, error: str | None = None
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

    async def _record_sent(self, row: Claimed, message_id: int | None) -> None:
        """Record Telegram's answer; returns once it is committed. Answers that come while
        one record is being written are written together next, in one transaction."""
        recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unrecorded.append((row, self._clock.now(), message_id, recorded))
        if len(self._unrecorded) >= RECORD_BATCH:
            self._record_now()
        if self._recorder is None:
            self._recorder = asyncio.create_task(self._record_all())
            self._recorder.add_done_callback(self._recorder_ended)
        await recorded

    def _recorder_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():  # killed: the drain it records for goes with it
            self._recorder_killed = True
            self._poke()

    async def _record_all(self) -> None:
        batch: list[tuple[Claimed, datetime, int | None, asyncio.Future[None]]] = []
        try:
            while self._unrecorded:
                if self._asking and len(self._unrecorded) < RECORD_BATCH:
                    await self._gather_more()  # one write for the answers about to come too
                batch, self._unrecorded = self._unrecorded, []
                try:
                    await self._write_sent(batch)
                except Exception as err:  # each send waiting for its record fails with it
                    _settle([f for *_, f in batch], err)
                else:
                    _settle([f for *_, f in batch], None)
        except BaseException as err:  # cut off: so is every send waiting for a record
            _settle([f for *_, f in batch + self._unrecorded], err)
            self._unrecorded = []
            raise
        finally:
            self._recorder = None

    async def _gather_more(self) -> None:
        """Wait for the answers of the sends asking now (RECORD_WAIT at most), not for those
        started meanwhile: a chat's next message waits for this record."""
        self._gather_for = self._answers + self._asking
        loop = asyncio.get_running_loop()
        gathering = self._gathering = loop.create_future()
        timer = loop.call_later(RECORD_WAIT, _resolve, gathering)
        try:
            await gathering
        finally:
            self._gathering = None
            timer.cancel()

    def _record_now(self) -> None:
        if self._gathering is not None:
            _resolve(self._gathering)

    async def _write_sent(
        self, batch: list[tuple[Claimed, datetime, int | None, asyncio.Future[None]]]
    ) -> None:
        """One statement for the lot on PostgreSQL, three at most on SQLite; each row as
        claimed says all that is needed (only this sender, holding its lease, changes it
        meanwhile)."""
        async with self._db, self._uows.single() as uow:
            cards: list[tuple[int, int, int, bool]] = []  # (ticket, chat, message, anew)
            for row, _, message_id, _ in batch:
                card_of = row.ticket_id or row.payload.get("card_of")
                if (
                    message_id is not None
                    and card_of
                    and (row.is_card or row.payload.get("card_of"))
                ):
                    # an edit posted anew (its card was deleted) is the card from now on
                    reposted = row.method == "sendMessage" and "card_of" in row.payload
                    cards.append((card_of, row.chat_id, message_id, reposted))
            await uow.outbox.record_sent(
                [(row.id, at, mid) for row, at, mid, _ in batch],
                [(t, m, anew) for t, _, m, anew in cards],
            )
            await uow.commit()
        self._remember_cards(cards)

    async def _retry(
        self, row: Claimed, seconds: float, error: str, *, count: bool = True
    ) -> None:
        async with self._db, self._uows() as uow:
            fresh = await uow.outbox.get(row.id)  # type: ignore[arg-type]
            assert fresh is not None
            fresh.attempts += 1 if count else 0
            fresh.last_error = error
            fresh.not_before = self._clock.now() + timedelta(seconds=seconds)
            fresh.lease_until = None
            await uow.commit()

    async def _give_up(self, row: Claimed, error: str, *, blocked_person: bool = False) -> None:
        log.warning("outbox row %s to chat %s given up: %s", row.id, row.chat_id, error)
        self.stats.failed += 1
        async with self._db, self._uows() as uow:
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
            card_of = (fresh.payload or {}).get("card_of") or (fresh.is_card and fresh.ticket_id)
            if card_of:
                # the card does not say what was last queued for it: the next change edits it
                await uow.tickets.forget_card_digest(card_of)
            await uow.commit()

    async def _migrate(self, old: int, new: int) -> None:
        """The group became a supergroup: its binding, tickets and queue follow the new id."""
        async with self._db, self._uows() as uow:
            await uow.org.move_chat(old, new)
            await uow.commit()
        self._cards.clear()  # the cards of the old chat are no longer where they were


def _plain(bot: Bot) -> bool:
    """Whether the bot adds nothing of its own to a request: no defaults to fill in and no
    callback data to replace. Then the sender makes its requests through the bot's request
    layer itself (errors mapped as for any call, a rate limiter of the bot still asked) and
    reads only the message id of the answer: building PTB's Message of each answer, and the
    objects of each call, had cost about a tenth of the sender's time."""
    return (
        getattr(bot, "defaults", None) is None
        and getattr(bot, "callback_data_cache", None) is None
    )


def _wire(value: Any) -> Any:
    """A stored keyboard or reply as PTB's objects would have put it on the wire: without
    fields that are None or empty lists (an empty keyboard is `{}`, which takes the buttons
    off an edited message); nothing when the row has none."""
    if not value:
        return None
    return _clean(value)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None and v != []}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _markup(bot: Bot, payload: dict[str, Any]) -> InlineKeyboardMarkup | None:
    markup = payload.get("reply_markup")
    return InlineKeyboardMarkup.de_json(markup, bot) if markup else None


def _message_id(answer: Any) -> int | None:
    """The message id of an answer: a Message, its JSON, or True (an inline message edited)."""
    if isinstance(answer, dict):
        message_id = answer.get("message_id")
        return message_id if isinstance(message_id, int) else None
    return getattr(answer, "message_id", None)


def _seconds(retry_after: int | timedelta) -> float:
    return (
        retry_after.total_seconds() if isinstance(retry_after, timedelta) else float(retry_after)
    )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        elif isinstance(error, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(error)

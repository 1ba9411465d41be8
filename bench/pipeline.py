"""The bot under test, in this process: the real receiver, inbox worker, Application and outbox
sender, with the Bot API double in-process; and the bare Application that is their floor."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from telegram import Bot, Update
from telegram.ext import Application, ApplicationBuilder, CommandHandler

from bench.orgchart import Chart
from bench.settings import TOKEN, bench_settings
from bot.app import build_application, build_services
from bot.clock import SystemClock
from bot.heap import Heap
from bot.inbox import InboxWorker
from bot.receiver import Receiver
from bot.teledouble import JSON, DoubleRequest, TeleDouble
from storage.db import make_engine, make_session_factory
from storage.tables import KeyValue

HISTORY = 2_000  # messages the double keeps: Telegram's store is not the bot's heap to carry


class TimedDouble(TeleDouble):
    """The double, noting when each reply to a person's message reaches it. It keeps only
    its latest messages and records: kept, the tens of thousands of a long run would sit in
    the bot's process, and each full pass of its garbage collector would walk them."""

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("history", HISTORY)
        super().__init__(token=TOKEN, **kw)
        self.replied: dict[tuple[int, int], float] = {}  # (chat, message replied to) -> when
        self.last_send = 0.0
        self.recorded = 0  # messages sent and edited, all told

    def _record(self, into: list[Any], method: str, chat_id: int, msg: JSON, params: JSON):
        now = time.perf_counter()
        self.last_send = now
        self.recorded += 1
        answered = (msg.get("reply_to_message") or {}).get("message_id")
        if answered is not None:
            self.replied.setdefault((chat_id, answered), now)
        super()._record(into, method, chat_id, msg, params)


def says(double: TeleDouble, chart: Chart, person: int, region: int, text: str) -> JSON:
    """A person of the chart writes in their region's group; the update it makes."""
    chat = {"id": chart.group_of[region], "type": "supergroup", "title": f"群{region}"}
    user = {"id": chart.telegram[person], "first_name": f"p{person}", "language_code": "zh"}
    return double.user_says(chat, user, text)


@dataclass
class Running:
    """A started bot: stamps when each update is stored, counts what the worker finished."""

    double: TimedDouble
    stored: dict[int, float] = field(default_factory=dict)  # update id -> stored at
    stored_upto: int = 1  # the double numbers updates from 1
    processed: int = 0
    processed_at: float = 0.0  # when the last update was finished
    services: Any = None
    receiver: Any = None
    worker: Any = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_stored(self, *_: Any) -> None:
        # called right after the batch's commit, with the offset that confirms it
        now, offset = time.perf_counter(), self.receiver.offset or 0
        for uid in range(self.stored_upto, offset):
            self.stored[uid] = now
        self.stored_upto = max(self.stored_upto, offset)
        self.worker.wake()

    def on_processed(self) -> None:
        self.processed += 1
        self.processed_at = time.perf_counter()
        self.services.sender.wake(look=False)
        self._changed.set()

    async def until_processed(self, n: int, timeout: float = 600) -> None:
        deadline = time.perf_counter() + timeout
        while self.processed < n:
            self._changed.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"{self.processed} of {n} updates processed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 1.0))

    async def until_sent(self, timeout: float = 600) -> float:
        """Wait for an empty outbox; the moment the last message reached the double."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            async with self.services.uows(readonly=True) as uow:
                if await uow.outbox.depth() == 0:
                    return self.double.last_send
            await asyncio.sleep(0.02)
        raise TimeoutError("the outbox did not empty")


@contextlib.asynccontextmanager
async def running(url: str, double: TimedDouble):
    """Receiver → inbox → worker → Application → services → outbox → sender, all started."""
    settings = bench_settings(url)
    clock = SystemClock()
    services = build_services(settings, clock=clock, limits=None)
    app = build_application(
        settings, clock=clock, request=DoubleRequest(double), services=services, token=TOKEN
    )
    bot = Running(double, services=services)
    await app.initialize()
    heap = Heap()
    bot.worker = InboxWorker(
        services.uows,
        app,
        clock,
        on_processed=bot.on_processed,
        on_idle=heap.idle,
        concurrency=settings.inbox_lanes,
    )
    # the Application's bot polls through its own request object, which only `.request` sets
    poller = Bot(TOKEN, request=DoubleRequest(double), get_updates_request=DoubleRequest(double))
    await poller.initialize()
    bot.receiver = Receiver(poller, services.uows, bot.on_stored, clock=clock, timeout=5)
    heap.settle()  # as `qunban run` does once it has started
    bot.tasks = [
        asyncio.create_task(bot.receiver.run()),
        asyncio.create_task(bot.worker.run(idle=0.5)),
        asyncio.create_task(services.sender.run(app.bot, idle=0.5)),
    ]
    try:
        yield bot
    finally:
        bot.receiver.stop()
        bot.worker.stop()
        bot.tasks[2].cancel()
        await asyncio.gather(*bot.tasks, return_exceptions=True)
        await poller.shutdown()
        await app.shutdown()
        await services.close()


async def floor(
    url: str, double: TeleDouble, updates: Sequence[JSON], *, inline: bool = False
) -> float:
    """Seconds a bare Application takes for these updates (made by `double`): decode, reply,
    one SQLModel insert and commit each. SQLite goes through aiosqlite, as the stack has it,
    unless `inline` asks for the driver Qunban itself uses."""
    engine = make_engine(url, inline=inline)
    sessions = make_session_factory(engine)

    async def handler(update: Update, _: Any) -> None:
        assert update.message is not None
        await update.message.reply_text("收到")
        async with sessions() as session:
            key = f"floor:{update.update_id}"
            session.add(KeyValue(key=key, value={"text": update.message.text}, updated_at=_now()))
            await session.commit()

    app: Application[Any, Any, Any, Any, Any, Any] = (
        ApplicationBuilder().token(TOKEN).request(DoubleRequest(double)).updater(None).build()
    )
    app.add_handler(CommandHandler("report", handler))
    await app.initialize()
    try:
        started = time.perf_counter()
        for raw in updates:
            await app.process_update(Update.de_json(dict(raw), app.bot))
        return time.perf_counter() - started
    finally:
        await app.shutdown()
        await engine.dispose()


def _now() -> datetime:
    return datetime.now(UTC)

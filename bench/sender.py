"""Case 4, the sender: a queue of messages for many chats drained against the Bot API double
over HTTP, the double enforcing Telegram's limits made `SCALE` times looser, and the sender
given the same scaled limits. What counts is how close it gets to them, within them."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from bench.core import TOKEN, Result, Workspace, bench_settings
from bench.pipeline import TimedDouble
from bot.app import build_application, build_services
from bot.clock import SystemClock
from bot.ratelimit import Limits
from bot.teledouble_http import serve
from storage.tables import Outbox, OutboxState

SCALE = 20
SHARE = 0.95
GROUPS = 0.1  # of the chats; the rest are people's private chats


@dataclass(frozen=True)
class SenderSizes:
    messages: int
    chats: int


def chats(n: int) -> list[int]:
    groups = max(1, round(n * GROUPS))
    return [-1001900000000 - k for k in range(groups)] + [
        8_000_000_000 + k for k in range(n - groups)
    ]


def allowed_per_s(limits: Limits, per_chat: Counter[int]) -> float:
    """The most messages a second these limits let through for this queue: the overall
    limit, unless one chat's share would take longer on its own."""
    total = sum(per_chat.values())
    seconds = total / limits.global_per_s
    for chat, n in per_chat.items():
        alone = (n - 1) / limits.per_chat_per_s
        if chat < 0 and n > limits.per_group_per_min:
            alone = max(alone, (math.ceil(n / limits.per_group_per_min) - 1) * 60.0)
        seconds = max(seconds, alone)
    return total / seconds


async def _queue(engine: object, targets: list[int], n: int) -> Counter[int]:
    now = datetime.now(UTC) - timedelta(seconds=1)
    rows = []
    for k in range(n):
        payload = {"text": f"第 {k} 条：工单 #{k} 已有进展", "parse_mode": "HTML"}
        rows.append({
            "chat_id": targets[k % len(targets)], "method": "sendMessage",
            "payload": payload, "is_card": False, "state": OutboxState.PENDING,
            "created_at": now, "not_before": now, "attempts": 0,
        })  # fmt: skip
    async with engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(sa.insert(Outbox.__table__), rows)  # type: ignore[attr-defined]
    return Counter(targets[k % len(targets)] for k in range(n))


async def run(ws: Workspace, engine: str, sizes: SenderSizes) -> list[Result]:
    db = await ws.fresh(engine, "sender")
    limits = Limits().scaled(SCALE)
    double = TimedDouble()
    double.enforce_limits(limits.per_chat_per_s, limits.per_group_per_min, limits.global_per_s)
    server = await serve(double)
    settings = bench_settings(db.url, telegram_base_url=server.base_url)
    clock = SystemClock()
    services = build_services(settings, clock=clock, limits=limits)
    app = build_application(settings, clock=clock, services=services, token=TOKEN)
    try:
        await app.initialize()
        per_chat = await _queue(services.engine, chats(sizes.chats), sizes.messages)
        started = time.perf_counter()
        task = asyncio.create_task(services.sender.run(app.bot, idle=0.05))
        while len(double.sent) < sizes.messages and time.perf_counter() - started < 600:
            await asyncio.sleep(0.05)
        elapsed = double.last_send - started
        services.sender.stop()
        await asyncio.wait_for(task, timeout=30)
        async with services.engine.connect() as conn:
            pending = (
                await conn.execute(
                    sa.select(sa.func.count()).where(Outbox.state != OutboxState.SENT)
                )
            ).scalar_one()
    finally:
        await app.shutdown()
        await services.close()
        await server.stop()
    texts = Counter(r.text for r in double.sent)
    delivered = len(texts)
    rate = delivered / elapsed
    allowed = allowed_per_s(limits, per_chat)
    lost = sizes.messages - delivered
    figures = {
        "messages": sizes.messages,
        "chats": sizes.chats,
        "scale": SCALE,
        "limits": json.dumps(limits.__dict__),
        "sent_per_s": rate,
        "allowed_per_s": allowed,
        "seconds": elapsed,
        "violations": double.violations,
        "rate_limited_429": services.sender.stats.rate_limited,
        "lost": lost,
        "not_sent_rows": pending,
        "duplicates": sum(n - 1 for n in texts.values()),
    }
    ratio = rate / allowed
    return [
        Result(
            name="sender",
            engine=engine,
            figures=figures,
            floor=allowed,
            ratio=ratio,
            target=f"≥ {SHARE:.0%} of the allowed messages/s, 0 violations, 0 lost",
            passed=ratio >= SHARE and double.violations == 0 and lost == 0 and pending == 0,
            unit="messages/s",
            value=rate,
            notes=[f"floor: what Telegram's limits ×{SCALE} allow for this queue"],
        )
    ]

"""Case 4, the sender: a queue of messages for many chats drained against the Bot API double
over HTTP, the double enforcing Telegram's limits made `SCALE` times looser, and the sender
given the same scaled limits. What counts is how close it gets to them, within them.

The scale is `SCALE` unless this machine cannot send that fast at all: PTB's client alone is
timed against the double first, and the limits are scaled down (to ×10, ×5, ...) until they
leave it `HEADROOM` to spare, so the case measures the sender and not the machine's CPU."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from telegram import Bot

from bench.core import TOKEN, Result, Workspace, bench_settings, child_env, free_port
from bot.app import build_application, build_services
from bot.clock import SystemClock
from bot.ratelimit import Limits
from storage.tables import Outbox, OutboxState

SCALES = (20, 10, 5, 2, 1)
SCALE = SCALES[0]
# the bare client must manage this many times the allowed rate: the sender's own work for a
# message (its claim, its record, the limiter) costs it about a quarter more CPU than the bare
# call (1.0–1.26× measured here), and the double's process shares the machine; at 1.4× the
# sender needed nine-tenths of a core at ×20 and the case measured the CPU, not the pacing
HEADROOM = 2.0
SHARE = 0.95
GROUPS = 0.1  # of the chats; the rest are people's private chats
CALIBRATION = 300  # messages the bare client sends first


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


@contextlib.asynccontextmanager
async def double_process(limits: Limits) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """The Bot API double over HTTP in a process of its own (Telegram's work is not ours to
    pay for), enforcing `limits`; yields its URL and a client for its control API."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.teledouble_http", "--port", str(port), "--token", TOKEN,
        env=child_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as control:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await control.get("/_control/health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            (await control.post("/_control/limits", json=_wire(limits))).raise_for_status()
            yield url, control
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()


async def run(ws: Workspace, engine: str, sizes: SenderSizes) -> list[Result]:
    db = await ws.fresh(engine, "sender")
    async with double_process(Limits().scaled(SCALE)) as (url, control):
        ceiling = await _client_ceiling(url, control)
        scale = scale_for(ceiling)
        limits = Limits().scaled(scale)
        (await control.post("/_control/limits", json=_wire(limits))).raise_for_status()
        settings = bench_settings(db.url, telegram_base_url=f"{url}/bot")
        clock = SystemClock()
        services = build_services(settings, clock=clock, limits=limits)
        app = build_application(settings, clock=clock, services=services, token=TOKEN)
        try:
            await app.initialize()
            per_chat = await _queue(services.engine, chats(sizes.chats), sizes.messages)
            started = time.time()
            task = asyncio.create_task(services.sender.run(app.bot, idle=0.05))
            # the calibration's messages, and the one that opened its connection, come first
            stats = await _until_sent(control, sizes.messages + CALIBRATION + 1)
            services.sender.stop()
            await asyncio.wait_for(task, timeout=30)
            pending = await _not_sent(services.engine)
        finally:
            await app.shutdown()
            await services.close()
        ledger = [r for r in (await control.get("/_control/sent")).json() if r["text"][0] == "第"]
    texts = Counter(r["text"] for r in ledger)
    last = max((datetime.fromisoformat(r["at"]).timestamp() for r in ledger), default=started)
    elapsed = max(last - started, 1e-9)
    delivered = len(texts)
    result = _result(engine, sizes, scale, limits, per_chat, delivered, elapsed, stats,
                     pending, texts, services.sender.stats.rate_limited)  # fmt: skip
    result.figures["bare_client_per_s"] = ceiling
    return [result]


def scale_for(ceiling: float) -> int:
    """The largest of `SCALES` whose overall limit the bare client clears with headroom."""
    base = Limits().global_per_s
    return next((s for s in SCALES if base * s * HEADROOM <= ceiling), SCALES[-1])


async def _client_ceiling(url: str, control: httpx.AsyncClient) -> float:
    """How many sendMessage a second PTB's client alone gets through to this double, one at a
    time and with no limits: what this machine allows any sender."""
    (await control.post("/_control/limits", json={"enabled": False})).raise_for_status()
    async with Bot(TOKEN, base_url=f"{url}/bot") as bot:
        await bot.send_message(9_000_000_000, "calibration")  # the connection, opened
        started = time.perf_counter()
        for k in range(CALIBRATION):
            await bot.send_message(9_000_000_000 + k % 50, f"calibration {k}")
        return CALIBRATION / (time.perf_counter() - started)


def _wire(limits: Limits) -> dict[str, float]:
    return {
        "per_chat_per_s": limits.per_chat_per_s,
        "per_group_per_min": limits.per_group_per_min,
        "global_per_s": limits.global_per_s,
    }


async def _until_sent(control: httpx.AsyncClient, n: int, timeout: float = 600) -> dict[str, Any]:
    deadline = time.time() + timeout
    while True:
        stats: dict[str, Any] = (await control.get("/_control/stats")).json()
        if stats["sent"] >= n or time.time() > deadline:
            return stats
        await asyncio.sleep(0.1)


async def _not_sent(engine: Any) -> int:
    async with engine.connect() as conn:
        query = sa.select(sa.func.count()).where(Outbox.state != OutboxState.SENT)
        return int((await conn.execute(query)).scalar_one())


def _result(engine: str, sizes: SenderSizes, scale: int, limits: Limits, per_chat: Counter[int],
            delivered: int, elapsed: float, stats: dict[str, Any], pending: int,
            texts: Counter[str], rate_limited: int) -> Result:  # fmt: skip
    rate = delivered / elapsed
    allowed = allowed_per_s(limits, per_chat)
    lost = sizes.messages - delivered
    figures = {
        "messages": sizes.messages,
        "chats": sizes.chats,
        "scale": scale,
        "limits": json.dumps(limits.__dict__),
        "sent_per_s": rate,
        "allowed_per_s": allowed,
        "seconds": elapsed,
        "violations": stats["violations"],
        "rate_limited_429": rate_limited,
        "lost": lost,
        "not_sent_rows": pending,
        "duplicates": sum(n - 1 for n in texts.values()),
    }
    violations = stats["violations"]
    return Result(
        name="sender",
        engine=engine,
        figures=figures,
        floor=allowed,
        ratio=rate / allowed,
        target=f"≥ {SHARE:.0%} of the allowed messages/s, 0 violations, 0 lost",
        passed=rate >= SHARE * allowed and violations == 0 and lost == 0 and pending == 0,
        unit="messages/s",
        value=rate,
        notes=[
            f"floor: what Telegram's limits ×{scale} allow for this queue (×{SCALE} unless "
            f"the bare client cannot send {HEADROOM}× as fast as that allows here)",
            "the Bot API double runs over HTTP in a process of its own; bare_client_per_s is "
            "PTB's client alone sending one message at a time to it, with no limits",
        ],
    )

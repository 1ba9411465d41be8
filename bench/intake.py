"""Case 1, intake: group updates through the receiver, the inbox, the Application, the services,
the outbox and the sender, against a bare Application that replies and writes one row each."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from bench.core import TOKEN, Result, Workspace, median
from bench.history import trouble
from bench.orgchart import Chart
from bench.pipeline import TimedDouble, floor, running, says
from bot.teledouble import JSON, TeleDouble

TOKEN_SHARE = 0.5  # of the floor's updates per second
P99_MS = 20.0
OFFERED_PER_S = 50


@dataclass(frozen=True)
class IntakeSizes:
    updates: int  # per timed run, for the reports and for the mix
    latency_seconds: float  # how long 50 updates/s are offered
    runs: int = 3  # timed runs of the reports and of the mix


def reports(double: TeleDouble, chart: Chart, n: int, start: int = 0) -> list[JSON]:
    """n `/report …` updates from enterprises across the city's groups, each naming a
    bureau's keyword so the routing rules assign it."""
    out = []
    for i in range(start, start + n):
        region = chart.regions[i % len(chart.regions)]
        firms = chart.enterprises[region]
        firm = firms[(i // len(chart.regions)) % len(firms)]
        bureaus = chart.bureaus_for(region)
        words = chart.keywords[bureaus[i % len(bureaus)]]
        text = trouble(i * 7919, words[i % len(words)])
        out.append(says(double, chart, chart.members[firm][0], region, f"/report {text}"))
    return out


async def _through(bot: Any, pushed: int) -> tuple[float, float]:
    """Seconds from now until the bot has processed `pushed` more updates (their effects and
    replies committed to the outbox), and until the sender has handed every reply over."""
    started, target = time.perf_counter(), bot.processed + pushed
    await bot.until_processed(target)
    processed = bot.processed_at - started
    return processed, await bot.until_sent() - started


async def _mix(bot: Any, chart: Chart, n: int, start: int) -> int:
    """Push n updates: per assigned ticket a claim, a progress note and a resolve by an official
    of its bureau, and one new report beside them. Returns how many were pushed."""
    async with bot.services.uows(readonly=True) as uow:
        rows = (
            await uow.session.exec(
                sa.text(
                    "SELECT id, department_id, region_id FROM ticket WHERE state = 'assigned' "
                    "ORDER BY id DESC LIMIT :n"
                ).bindparams(n=n // 4)
            )
        ).all()
    pushed = 0
    for k, (number, dept, region) in enumerate(rows):
        official = chart.officials[dept][0]
        for text in (
            f"/claim {number}",
            f"/progress {number} 正在协调",
            f"/resolve {number} 已办结",
        ):
            says(bot.double, chart, official, region, text)
        reports(bot.double, chart, 1, start + k)
        pushed += 4
    return pushed


async def _latency(bot: Any, chart: Chart, seconds: float, start: int) -> tuple[list[float], int]:
    """Offer reports at 50 a second; ms from each one stored to its reply reaching the API,
    and how many were offered."""
    offered: list[JSON] = []
    base = bot.processed
    began = next_at = time.perf_counter()
    while next_at - began < seconds:
        offered += reports(bot.double, chart, 1, start + len(offered))
        next_at += 1 / OFFERED_PER_S
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await bot.until_processed(base + len(offered))
    await bot.until_sent()
    out = []
    for update in offered:
        message = update["message"]
        replied = bot.double.replied.get((message["chat"]["id"], message["message_id"]))
        if replied is not None and update["update_id"] in bot.stored:
            out.append((replied - bot.stored[update["update_id"]]) * 1000)
    return out, len(offered)


async def run(ws: Workspace, engine: str, sizes: IntakeSizes) -> list[Result]:
    """Each timed run of the bot comes right after a run of the floor, so both meet the same
    load on a shared machine; the ratio is the median of those pairs."""
    n, runs = sizes.updates, sizes.runs
    floor_db = await ws.fresh(engine, "floor")
    floor_double = TeleDouble(token=TOKEN)

    async def floor_rate(inline: bool) -> float:
        updates = reports(floor_double, floor_db.chart, n)
        return n / await floor(floor_db.url, floor_double, updates, inline=inline)

    await floor(floor_db.url, floor_double, reports(floor_double, floor_db.chart, min(100, n)))
    floors: dict[bool, list[float]] = {False: [], True: []}
    db = await ws.fresh(engine, "intake")
    chart, made = db.chart, 0
    rates: dict[str, list[tuple[float, float]]] = {"intake.reports": [], "intake.mix": []}
    async with running(db.url, TimedDouble()) as bot:
        made += len(reports(bot.double, chart, min(100, n)))
        await _through(bot, made)  # warm-up
        for _ in range(runs):
            for inline in (False, True):
                floors[inline].append(await floor_rate(inline))
            made += len(reports(bot.double, chart, n, made))
            rates["intake.reports"].append(_rates(n, await _through(bot, n)))
            pushed = await _mix(bot, chart, n, made)
            made += pushed // 4
            rates["intake.mix"].append(_rates(pushed, await _through(bot, pushed)))
        sends_per_update = bot.double.recorded / max(bot.processed, 1)
        made += (await _latency(bot, chart, min(1.0, sizes.latency_seconds), made))[1]  # warm
        waits, _ = await _latency(bot, chart, sizes.latency_seconds, made)
    out = [
        _throughput(name, engine, n, (floors[False], floors[True]), r, sends_per_update)
        for name, r in rates.items()
    ]
    return [*out, _latency_result(engine, waits)]


def _rates(n: int, seconds: tuple[float, float]) -> tuple[float, float]:
    return n / seconds[0], n / seconds[1]


def _throughput(name: str, engine: str, n: int, floors: tuple[list[float], list[float]],
                runs: list[tuple[float, float]], sends: float) -> Result:  # fmt: skip
    plain, inline = floors
    floor_rate = median(plain)
    # the floor's update is done when its reply is handed over, and so is ours: counting the
    # updates whose replies were only committed to the outbox would let a sender falling
    # behind flatter the figure with work left for later
    rate = median([d for _, d in runs])
    ratio = median([d / f for (_, d), f in zip(runs, plain, strict=True)])
    committed = median([c for c, _ in runs])
    note = (
        "floor: a bare PTB Application decoding each update, replying, and making one SQLModel "
        "insert and commit (SQLite through aiosqlite; floor_inline_updates_per_s is the same "
        "Application on the driver Qunban runs SQLite with), run just before each timed run, in "
        "this process and so with the collector settings `qunban run` uses (under Python's "
        "defaults its full passes over this process's objects cost it a third of its rate); "
        "ratio: the median of those pairs. The figure counts updates done as the floor's are: "
        "effect committed and every reply handed to the Bot API; committed_updates_per_s "
        "counts those whose effect and replies were committed to the outbox meanwhile"
    )
    return Result(
        name=name,
        engine=engine,
        figures={
            "updates": n,
            "updates_per_s": rate,
            "committed_updates_per_s": committed,
            "bot_api_calls_per_update": sends,
            "floor_updates_per_s": floor_rate,
            "floor_inline_updates_per_s": median(inline),
        },
        floor=floor_rate,
        ratio=ratio,
        target=f"≥ {TOKEN_SHARE:.0%} of the floor's updates/s",
        passed=ratio >= TOKEN_SHARE,
        unit="updates/s",
        value=rate,
        notes=[note],
    )


def _latency_result(engine: str, waits: list[float]) -> Result:
    cuts = statistics.quantiles(waits, n=100) if len(waits) > 1 else [0.0] * 99
    p99 = cuts[98]
    return Result(
        name="intake.latency",
        engine=engine,
        figures={
            "offered_per_s": OFFERED_PER_S,
            "updates": len(waits),
            "p50_ms": cuts[49],
            "p90_ms": cuts[89],
            "p99_ms": p99,
            "max_ms": max(waits, default=0.0),
        },
        floor=None,
        ratio=None,
        target=f"p99 ≤ {P99_MS:g} ms from update stored to reply handed to the Bot API",
        passed=p99 <= P99_MS,
        unit="ms",
        value=p99,
    )

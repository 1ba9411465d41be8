"""Case 2, the idle sweep: one pass of the escalation ladder over years of history.

The same open backlog and the same due tickets sit on top of two histories ten times apart;
the sweep should cost the same on both. Each timed sweep sends its nudges for real, and the
rows it wrote are taken out again before the next one (untimed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bench.core import Result, Workspace, bench_settings, median, timed
from bench.history import Sizes
from bench.settings import NOW
from bot.app import build_services
from bot.clock import ManualClock
from bot.services.nudges import ScanReport
from storage.db import guard_statements, make_engine

WRITTEN = ("nudge", "outbox", "ticketevent")
TARGET_MS = 50.0
GROWTH = 1.5  # ten times the history may cost at most this much more
# PostgreSQL plans a prepared statement for any values from its sixth run on one connection,
# and a bot sweeps every minute: the timed sweeps come after that many, so they meet the plan
# production meets (it once walked the whole history)
SETTLE = 6


@dataclass(frozen=True)
class SweepFigures:
    sweep_ms: float
    quiet_ms: float
    candidates: int
    nudges: int
    sweep_cpu_ms: float  # this process's CPU time: steady on a machine others share
    quiet_cpu_ms: float


async def marks(engine: AsyncEngine) -> dict[str, int]:
    """The highest id in each table a sweep writes to."""
    async with engine.connect() as conn:
        return {
            t: (await conn.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {t}")).scalar_one()
            for t in WRITTEN
        }


async def undo(engine: AsyncEngine, before: dict[str, int]) -> None:
    """Take out what was written since `before` (ticket events too, past their guard)."""
    async with engine.begin() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            await conn.exec_driver_sql("DROP TRIGGER IF EXISTS ticketevent_no_delete")
        else:
            await conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        for table in WRITTEN:
            await conn.exec_driver_sql(f"DELETE FROM {table} WHERE id > {int(before[table])}")
        if sqlite:
            for statement in guard_statements("sqlite"):
                await conn.exec_driver_sql(statement)


async def measure(url: str, runs: int) -> SweepFigures:
    """Median sweeps at NOW: with the due tickets still owed their nudges, then quiet."""
    engine = make_engine(url)
    services = build_services(
        bench_settings(url), clock=ManualClock(NOW), engine=engine, limits=None
    )
    reports: list[ScanReport] = []
    cpu: list[float] = []
    try:
        before = await marks(engine)

        async def sweep() -> None:
            started = time.process_time()
            reports.append(await services.nudges.scan(NOW))
            cpu.append(time.process_time() - started)

        async def put_back() -> None:
            await undo(engine, before)

        owed = await timed(sweep, runs=runs, warmup=SETTLE, between=put_back)
        owed_cpu = cpu[-runs:]
        moved = [r for r in reports if r.supervised or r.closed]
        if moved:
            raise RuntimeError("the sweep moved tickets; the due set must only be nudged")
        await sweep()  # nudges sent: the next sweeps find nothing due
        quiet = await timed(sweep, runs=runs, warmup=SETTLE)
        quiet_cpu = cpu[-runs:]
        await undo(engine, before)
    finally:
        await services.close()
    last = reports[0]
    return SweepFigures(
        median(owed) * 1000,
        median(quiet) * 1000,
        last.candidates,
        len(last.nudges),
        median(owed_cpu) * 1000,
        median(quiet_cpu) * 1000,
    )


async def run(ws: Workspace, engine: str, sizes: tuple[Sizes, Sizes], runs: int) -> list[Result]:
    small_sizes, large_sizes = sizes
    small = await measure((await ws.dataset(engine, small_sizes)).url, runs)
    large = await measure((await ws.dataset(engine, large_sizes)).url, runs)
    ratio = large.sweep_ms / small.sweep_ms
    figures: dict[str, Any] = {
        "tickets": large_sizes.tickets,
        "open": large_sizes.open,
        "due": large_sizes.due,
        "sweep_ms": large.sweep_ms,
        "candidates": large.candidates,
        "nudges_sent": large.nudges,
        "quiet_sweep_ms": large.quiet_ms,
        # what each due ticket adds to a sweep that finds nothing to do
        "ms_per_due_ticket": (large.sweep_ms - large.quiet_ms) / max(large_sizes.due, 1),
        f"sweep_ms_at_{small_sizes.tickets}": small.sweep_ms,
        f"quiet_sweep_ms_at_{small_sizes.tickets}": small.quiet_ms,
        # the same in this process's CPU time, which waiting for a busy core does not inflate
        # (on PostgreSQL, the server's share is not in it)
        "sweep_cpu_ms": large.sweep_cpu_ms,
        "quiet_sweep_cpu_ms": large.quiet_cpu_ms,
        f"sweep_cpu_ms_at_{small_sizes.tickets}": small.sweep_cpu_ms,
    }
    return [
        Result(
            name="sweep",
            engine=engine,
            figures=figures,
            floor=small.sweep_ms,
            ratio=ratio,
            target=f"≤ {TARGET_MS:g} ms, and ≤ {GROWTH}× the sweep over "
            f"{small_sizes.tickets:,} tickets",
            passed=large.sweep_ms <= TARGET_MS and ratio <= GROWTH,
            unit="ms",
            value=large.sweep_ms,
            notes=[f"floor: the same sweep over {small_sizes.tickets:,} tickets of history"],
        )
    ]

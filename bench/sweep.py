"""Case 2, the idle sweep: one pass of the escalation ladder over years of history.

The same open backlog and the same due tickets sit on top of two histories ten times apart;
the sweep should cost the same on both. Each timed sweep sends its nudges for real, and the
rows it wrote are taken out again before the next one (untimed). The two databases are swept
in turns, so that both meet the same load.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bench.core import Result, Workspace, bench_settings, median
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


class _Subject:
    """One database under the sweep: the bot's services over it, and what its sweeps took."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.services = build_services(
            bench_settings(url), clock=ManualClock(NOW), engine=self.engine, limits=None
        )
        self.before: dict[str, int] = {}
        self.reports: list[ScanReport] = []

    async def sweep(self) -> tuple[float, float]:
        """One sweep: its wall and CPU seconds."""
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        self.reports.append(await self.services.nudges.scan(NOW))
        return time.perf_counter() - wall, time.process_time() - cpu


async def _in_turns(
    subjects: list[_Subject], runs: int, *, put_back: bool
) -> list[tuple[list[float], list[float]]]:
    """The wall and CPU seconds of `runs` sweeps of each subject, after SETTLE untimed ones,
    the subjects taking turns: a machine others share changes its pace by the minute, and
    in turns both histories meet the same pace."""
    taken: list[tuple[list[float], list[float]]] = [([], []) for _ in subjects]
    for i in range(SETTLE + runs):
        for subject, (walls, cpus) in zip(subjects, taken, strict=True):
            wall, cpu = await subject.sweep()
            if i >= SETTLE:
                walls.append(wall)
                cpus.append(cpu)
            if put_back:
                await undo(subject.engine, subject.before)
    return taken


async def measure(urls: list[str], runs: int) -> list[SweepFigures]:
    """Median sweeps at NOW over each database: with the due tickets still owed their
    nudges, then quiet."""
    subjects = [_Subject(url) for url in urls]
    try:
        for subject in subjects:
            subject.before = await marks(subject.engine)
        owed = await _in_turns(subjects, runs, put_back=True)
        for subject in subjects:
            if any(r.supervised or r.closed for r in subject.reports):
                raise RuntimeError("the sweep moved tickets; the due set must only be nudged")
            await subject.sweep()  # nudges sent: the next sweeps find nothing due
        quiet = await _in_turns(subjects, runs, put_back=False)
        for subject in subjects:
            await undo(subject.engine, subject.before)
    finally:
        for subject in subjects:
            await subject.services.close()
    return [
        SweepFigures(
            median(owed_wall) * 1000,
            median(quiet_wall) * 1000,
            subject.reports[0].candidates,
            len(subject.reports[0].nudges),
            median(owed_cpu) * 1000,
            median(quiet_cpu) * 1000,
        )
        for subject, (owed_wall, owed_cpu), (quiet_wall, quiet_cpu) in zip(
            subjects, owed, quiet, strict=True
        )
    ]


async def run(ws: Workspace, engine: str, sizes: tuple[Sizes, Sizes], runs: int) -> list[Result]:
    small_sizes, large_sizes = sizes
    urls = [(await ws.dataset(engine, sizes)).url for sizes in (small_sizes, large_sizes)]
    small, large = await measure(urls, runs)
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

"""Case 3, the digest: the city-wide digest (flow, open backlog, overdue, the three rates and
the ranking) over the whole history, against one covering-index GROUP BY of the same table."""

from __future__ import annotations

from typing import Any

from bench.core import Result, Workspace, bench_settings, median, timed
from bench.history import Sizes
from bench.settings import NOW, TZ
from bot.app import build_services
from bot.clock import ManualClock
from storage.db import make_engine

TARGET_MS = 300.0
TIMES_FLOOR = 3.0
# served by ix_ticket_dept_state (department_id, state) alone: an index-only scan
GROUP_BY = "SELECT department_id, state, count(*) FROM ticket GROUP BY department_id, state"


async def plan(engine: Any) -> str:
    """How the engine runs the floor's GROUP BY (it must not touch the table)."""
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql(explain + GROUP_BY)).all()
    return " | ".join(str(r[-1]).strip() for r in rows)


async def run(ws: Workspace, engine: str, sizes: Sizes, runs: int) -> list[Result]:
    loaded = await ws.dataset(engine, sizes)
    db = make_engine(loaded.url)
    services = build_services(
        bench_settings(loaded.url), clock=ManualClock(NOW), engine=db, limits=None
    )
    day = NOW.astimezone(TZ).date()
    built: list[Any] = []
    try:

        async def group_by() -> None:
            async with db.connect() as conn:
                (await conn.exec_driver_sql(GROUP_BY)).all()

        async def digest() -> None:
            built.append(await services.digests.build(loaded.chart.city, day, NOW))

        floor = median(await timed(group_by, runs=runs)) * 1000
        took = median(await timed(digest, runs=runs)) * 1000
        how = await plan(db)
    finally:
        await services.close()
    last = built[-1]
    ratio = took / floor
    figures = {
        "tickets": sizes.tickets,
        "open": sizes.open,
        "digest_ms": took,
        "group_by_ms": floor,
        "departments_ranked": len(last.departments),
        "new_yesterday": last.new,
        "closed_yesterday": last.closed,
        "open_total": sum(n for _, n in last.open_by_state),
        "overdue_total": last.overdue_total,
        "assigned_in_window": sum(d.assigned for d in last.departments),
        "clusters": len(last.clusters),
        "group_by_plan": how,
    }
    return [
        Result(
            name="digest",
            engine=engine,
            figures=figures,
            floor=floor,
            ratio=ratio,
            target=f"≤ {TARGET_MS:g} ms, and ≤ {TIMES_FLOOR:g}× the covering-index GROUP BY",
            passed=took <= TARGET_MS and ratio <= TIMES_FLOOR,
            unit="ms",
            value=took,
            notes=[
                "floor: " + GROUP_BY,
                f"the rates cover the last {last.window_days} days: the digest's cost follows"
                " them and the open tickets, the floor's the whole table (with --quick's few"
                " weeks of history, the window is all of it)",
            ],
        )
    ]

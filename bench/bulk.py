"""Bulk loading: the schema, the org chart, then history in chunks (executemany on SQLite,
COPY on PostgreSQL), with the secondary indexes built once at the end."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.history import EVENT_COLUMNS, NUDGE_COLUMNS, TICKET_COLUMNS, Chunk, Sizes, generate
from bench.orgchart import Chart, plan_chart, write_chart
from storage.db import create_schema, make_engine
from storage.tables import Nudge, Ticket, TicketEvent

log = logging.getLogger(__name__)
BULK_TABLES = (
    ("ticket", Ticket, TICKET_COLUMNS),
    ("ticketevent", TicketEvent, EVENT_COLUMNS),
    ("nudge", Nudge, NUDGE_COLUMNS),
)
ENTERPRISES_PER_REGION = 120


@dataclass(frozen=True)
class Loaded:
    url: str
    chart: Chart
    sizes: Sizes
    seconds: float
    rows: dict[str, int]


Prepared = list[tuple[str, Sequence[str], Any]]


def prepare(dialect: str, chunk: Chunk) -> Prepared:
    """A chunk as the loader sends it: rows for executemany, or CSV for COPY."""
    out: Prepared = []
    for name, _, columns in BULK_TABLES:
        values = [
            v.tolist() if isinstance(v, np.ndarray) else list(v)
            for v in getattr(chunk, _attr(name)).values()
        ]
        if not values[0]:
            continue
        rows = zip(*values, strict=True)
        if dialect == "postgresql":  # COPY … FROM STDIN in CSV: an empty field is NULL
            text = io.StringIO()
            csv.writer(text).writerows(rows)
            out.append((name, columns, text.getvalue().encode()))
        else:
            out.append((name, columns, list(rows)))
    return out


def _next(chunks: Iterator[Chunk], dialect: str) -> Prepared | None:
    chunk = next(chunks, None)
    return None if chunk is None else prepare(dialect, chunk)


async def build(url: str, sizes: Sizes, *, seed: int = 11) -> Loaded:
    """An empty database at `url` filled with a chart and `sizes` of history.

    The next chunk is drawn in a thread while the database takes the last one.
    """
    started = time.perf_counter()
    product = make_engine(url)
    try:
        await create_schema(product)
    finally:
        await product.dispose()
    chart, chart_rows = plan_chart(ENTERPRISES_PER_REGION)
    loader = create_async_engine(url, poolclass=sa.pool.NullPool)
    counts = dict.fromkeys((name for name, _, _ in BULK_TABLES), 0)
    try:
        async with loader.connect() as conn:
            dialect = conn.dialect.name
            await _prepare(conn, dialect)
            await write_chart(conn, chart_rows)
            await _drop_indexes(conn)
            chunks = generate(chart, sizes, seed=seed)
            ready = await asyncio.to_thread(_next, chunks, dialect)
            while ready is not None:
                writing = asyncio.create_task(_write(conn, dialect, ready, counts))
                ready = await asyncio.to_thread(_next, chunks, dialect)
                await writing
            loaded = time.perf_counter()
            await _create_indexes(conn)
            await conn.commit()
        await _finish(loader, dialect)
    finally:
        await loader.dispose()
    seconds = time.perf_counter() - started
    log.info(
        "built %s tickets in %.1fs (indexes %.1fs): %s",
        f"{sizes.tickets:,}",
        seconds,
        time.perf_counter() - loaded,
        counts,
    )
    return Loaded(url, chart, sizes, seconds, counts)


def _attr(table: str) -> str:
    return {"ticket": "tickets", "ticketevent": "events", "nudge": "nudges"}[table]


async def _prepare(conn: Any, dialect: str) -> None:
    if dialect == "sqlite":
        await conn.exec_driver_sql("PRAGMA synchronous=OFF")
        await conn.exec_driver_sql("PRAGMA cache_size=-400000")
        await conn.exec_driver_sql("PRAGMA temp_store=MEMORY")  # index builds sort in memory
    else:  # the bulk rows are consistent by construction: skip the per-row FK triggers
        await conn.exec_driver_sql("SET session_replication_role = replica")
        await conn.exec_driver_sql("SET TIME ZONE 'UTC'")  # the times are UTC text


async def _write(conn: Any, dialect: str, ready: Prepared, counts: dict[str, int]) -> None:
    for table, columns, payload in ready:
        if dialect == "postgresql":
            raw = await conn.get_raw_connection()
            await raw.driver_connection.copy_to_table(
                table, source=io.BytesIO(payload), columns=columns, format="csv"
            )
            counts[table] += payload.count(b"\n")
        else:
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
            await conn.exec_driver_sql(sql, payload)
            counts[table] += len(payload)


async def _drop_indexes(conn: Any) -> None:
    for _, model, _ in BULK_TABLES:
        for index in model.__table__.indexes:
            await conn.run_sync(index.drop)


async def _create_indexes(conn: Any) -> None:
    for _, model, _ in BULK_TABLES:
        for index in model.__table__.indexes:
            await conn.run_sync(index.create)


async def _finish(engine: AsyncEngine, dialect: str) -> None:
    """PostgreSQL: sequences past the explicit ids, statistics and the visibility map (as
    autovacuum would leave them). SQLite is left as the bot leaves it."""
    if dialect != "postgresql":
        return
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in ("ticket", "ticketevent", "nudge"):
            await conn.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT coalesce(max(id), 1) FROM {table}))"
            )
        await conn.exec_driver_sql("VACUUM ANALYZE")

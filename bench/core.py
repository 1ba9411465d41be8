"""What every case shares: results, medians, databases of its own, the bot's settings."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bench.bulk import Loaded, build
from bench.history import Sizes
from bench.settings import TOKEN, bench_settings

PG_ENV = "QUNBAN_TEST_PG_URL"
PG_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@dataclass
class Result:
    """One line of the report: a figure against its floor and its target."""

    name: str
    engine: str
    figures: dict[str, Any]
    floor: float | None  # the same quantity for the floor, in the figure's unit
    ratio: float | None  # figure / floor
    target: str
    passed: bool
    unit: str = ""
    value: float | None = None  # the headline figure
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        body = asdict(self)
        body["pass"] = body.pop("passed")
        return json.dumps(body, ensure_ascii=False, default=_plain)


def _plain(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else str(value)


def median(values: list[float]) -> float:
    return statistics.median(values)


async def timed(work: Callable[[], Awaitable[Any]], *, runs: int, warmup: int = 1,
                between: Callable[[], Awaitable[Any]] | None = None) -> list[float]:  # fmt: skip
    """Seconds each of `runs` calls took, after `warmup` untimed ones; `between` runs untimed
    after every call (to put the data back)."""
    out = []
    for i in range(warmup + runs):
        gc.collect()
        started = time.perf_counter()
        await work()
        elapsed = time.perf_counter() - started
        if i >= warmup:
            out.append(elapsed)
        if between is not None:
            await between()
    return out


class Workspace:
    """The databases of one run: SQLite files in a temporary directory, PostgreSQL databases
    named qunban_bench_* next to the test database (never the test database itself); all
    removed at the end."""

    def __init__(self, keep: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qunban-bench-"))
        self.keep = keep
        self._pg: list[str] = []
        self._built: dict[tuple[str, Sizes], Loaded] = {}

    @staticmethod
    def pg_server() -> sa.URL:
        return make_url(os.environ.get(PG_ENV) or PG_DEFAULT)

    async def empty(self, engine: str, name: str) -> str:
        """The URL of a new, empty database."""
        if engine == "sqlite":
            return f"sqlite+aiosqlite:///{self.dir / name}.db"
        server = self.pg_server()
        database = f"qunban_bench_{os.getpid()}_{name}"  # runs side by side never meet
        await _admin(server, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                     f'CREATE DATABASE "{database}"')  # fmt: skip
        self._pg.append(database)
        return server.set(database=database).render_as_string(hide_password=False)

    async def dataset(self, engine: str, sizes: Sizes) -> Loaded:
        """A database holding `sizes` of history, built once per run."""
        key = (engine, sizes)
        if key not in self._built:
            url = await self.empty(engine, f"t{sizes.tickets}")
            self._built[key] = await build(url, sizes)
        return self._built[key]

    async def fresh(self, engine: str, name: str) -> Loaded:
        """A new database holding the org chart and no tickets."""
        return await build(await self.empty(engine, name), Sizes(0, 0, 0))

    async def close(self) -> None:
        for database in self._pg:
            await _admin(self.pg_server(), f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


REPO = Path(__file__).resolve().parents[1]


def child_env(**settings: str) -> dict[str, str]:
    """The environment of a process we start: ours without any QUNBAN_ setting, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUNBAN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env | settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _admin(server: sa.URL, *statements: str) -> None:
    engine = create_async_engine(server, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


async def pg_reachable() -> str | None:
    """None when the PostgreSQL server answers, else why not."""
    try:
        await asyncio.wait_for(_admin(Workspace.pg_server(), "SELECT 1"), timeout=5)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


__all__ = [
    "REPO", "TOKEN", "Result", "Workspace", "bench_settings", "child_env", "free_port",
    "median", "timed",
]  # fmt: skip

"""Case 5, footprint: the peak memory of a bot process working a large database, and how long
`qunban run` takes from its start to its first getUpdates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.core import REPO, TOKEN, Result, Workspace, child_env, free_port, median
from bench.history import Sizes
from bench.pipeline import TimedDouble
from bench.sweep import marks, undo
from bot.teledouble_http import serve
from storage.db import make_engine

PEAK_MB = 150.0
COLD_S = 1.5
IMPORTS = "import bot.runner, bot.cli, handlers, storage.migrate"


async def _python(*args: str, cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=cwd, env=child_env(), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} exited with {proc.returncode}")
    return time.perf_counter() - started, out.decode()


async def memory(ws: Workspace, engine: str, sizes: Sizes) -> Result:
    loaded = await ws.dataset(engine, sizes)
    db = make_engine(loaded.url)
    try:
        before = await marks(db)
        _, out = await _python("-m", "bench.child", loaded.url, str(loaded.chart.city), cwd=REPO)
        await undo(db, before)
    finally:
        await db.dispose()
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    figures["tickets"] = sizes.tickets
    peak, floor = figures["peak_mb"], figures["wired_mb"]
    return Result(
        name="footprint.memory",
        engine=engine,
        figures=figures,
        floor=floor,
        ratio=peak / floor,
        target=f"peak RSS ≤ {PEAK_MB:g} MB while sweeping and building a digest",
        passed=peak <= PEAK_MB,
        unit="MB",
        value=peak,
        notes=["floor: the same process once it has imported and wired everything"],
    )


class FirstPoll(TimedDouble):
    """The double, noting when the first getUpdates arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.polled = asyncio.Event()
        self.polled_at = 0.0

    async def call(self, method: str, params: Any = None, **kw: Any) -> Any:
        if method.lower() == "getupdates" and not self.polled.is_set():
            self.polled_at = time.perf_counter()
            self.polled.set()
        return await super().call(method, params, **kw)


async def _cold_start(url: str, cwd: Path) -> tuple[float, float]:
    """Seconds to the first getUpdates, and from SIGTERM to a clean exit."""
    double = FirstPoll()
    server = await serve(double)
    port = free_port()
    env = child_env(
        QUNBAN_TELEGRAM_TOKEN=TOKEN,
        QUNBAN_TELEGRAM_BASE_URL=server.base_url,
        QUNBAN_DATABASE_URL=url,
        QUNBAN_LISTEN_PORT=str(port),
        QUNBAN_LOG_LEVEL="WARNING",
    )
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", cwd=cwd, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        waiter = asyncio.create_task(double.polled.wait())
        ended = asyncio.create_task(proc.wait())
        await asyncio.wait({waiter, ended}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if not double.polled.is_set():
            err = (await proc.stderr.read()).decode() if ended.done() and proc.stderr else ""
            raise RuntimeError(f"qunban run never polled: {err[-800:]}")
        polled = double.polled_at - started
    finally:
        stopping = time.perf_counter()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout=30)
        if proc.returncode is None:
            proc.kill()
        await server.stop()
    return polled, time.perf_counter() - stopping


async def cold_start(ws: Workspace, engine: str, sizes: Sizes, runs: int) -> Result:
    url = (await ws.dataset(engine, sizes)).url
    if runs > 1:
        await _cold_start(url, ws.dir)  # warm-up: the files are in the page cache
    starts = [await _cold_start(url, ws.dir) for _ in range(runs)]
    took, stop = median([s for s, _ in starts]), median([s for _, s in starts])
    imports = median([(await _python("-c", IMPORTS, cwd=ws.dir))[0] for _ in range(runs)])
    return Result(
        name="footprint.cold_start",
        engine=engine,
        figures={
            "tickets": sizes.tickets,
            "to_first_getupdates_s": took,
            "imports_s": imports,
            "sigterm_to_exit_s": stop,
        },
        floor=imports,
        ratio=took / imports,
        target=f"≤ {COLD_S:g} s from starting `qunban run` to its first getUpdates",
        passed=took <= COLD_S,
        unit="s",
        value=took,
        notes=[f"floor: a Python process that only runs `{IMPORTS}`"],
    )


async def run(ws: Workspace, engine: str, sizes: Sizes, runs: int) -> list[Result]:
    return [await memory(ws, engine, sizes), await cold_start(ws, engine, sizes, runs)]

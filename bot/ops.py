"""Operability: heartbeats, the health check and the metrics, served over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.clock import Clock
from bot.config import Settings
from bot.heartbeats import SENDER, Heartbeats, default_intervals
from bot.logs import redact_text
from bot.metrics import Metrics
from bot.outbox import OutboxSender
from storage.stats import ping, queue_figures, tickets_by_state
from storage.uow import UnitOfWorkFactory

if TYPE_CHECKING:
    from bot.app import Services

log = logging.getLogger(__name__)

DB_TIMEOUT = 5.0  # seconds the health check waits for the database


def version() -> str:
    try:
        return importlib.metadata.version("qunban")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class Ops:
    """One per process: when it started, the heartbeats, the metrics registry."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        uows: UnitOfWorkFactory,
        sender: OutboxSender,
        *,
        engine: str,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.uows = uows
        self.sender = sender
        self.engine = engine
        self.version = version()
        self.started_at = clock.now()
        self.heartbeats = Heartbeats(uows, clock, default_intervals(settings))
        self.metrics = Metrics(sender.stats, version=self.version, engine=engine)
        self.metrics.started.set(self.started_at.timestamp())
        self._sender_progress = 0

    async def beat(self, component: str) -> None:
        await self.heartbeats.beat(component)

    @contextlib.asynccontextmanager
    async def sweep(self, name: str) -> AsyncIterator[None]:
        """Time a sweep into the histogram; a sweep that finishes counts as a heartbeat."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.sweep_seconds.labels(name).observe(time.perf_counter() - start)
        await self.heartbeats.beat(name)

    async def swept(self, name: str, seconds: float) -> None:
        """A sweep finished: its duration into the histogram, and a heartbeat."""
        self.metrics.sweep_seconds.labels(name).observe(seconds)
        await self.heartbeats.beat(name)

    def observe(self) -> None:
        """The sender keeps its own record: a finished drain, or any message moved, is a beat."""
        stats = self.sender.stats
        if stats.last_run is not None:
            self.heartbeats.seen(SENDER, stats.last_run)
        progress = stats.sent + stats.failed + stats.retried + stats.rate_limited
        if progress != self._sender_progress:
            self._sender_progress = progress
            self.heartbeats.seen(SENDER, self.clock.now())

    async def refresh(self) -> None:
        """Bring the gauges up to date from the database (before a scrape)."""
        now = self.clock.now()
        self.observe()
        try:
            async with asyncio.timeout(DB_TIMEOUT), self.uows(readonly=True) as uow:
                figures = await queue_figures(uow)
                tickets = await tickets_by_state(uow)
                beats = await self.heartbeats.read(uow)
        except Exception as error:
            self.metrics.database_up.set(0)
            log.warning("metrics: the database did not answer: %s", _one_line(error))
            return
        self.metrics.show(now, figures, tickets, beats)


@dataclass(frozen=True)
class ComponentHealth:
    name: str
    last: datetime | None
    limit: timedelta
    late: bool


@dataclass(frozen=True)
class HealthReport:
    checked_at: datetime
    database: str | None  # None when it answered, else why not
    components: tuple[ComponentHealth, ...]

    @property
    def late(self) -> list[str]:
        return [c.name for c in self.components if c.late]

    @property
    def ok(self) -> bool:
        return self.database is None and not self.late

    @property
    def status(self) -> int:
        return 200 if self.ok else 503

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "unhealthy",
            "database": self.database or "ok",
            "late": self.late,
            "components": {c.name: self._component(c) for c in self.components},
        }

    def _component(self, c: ComponentHealth) -> dict[str, Any]:
        age = (self.checked_at - c.last).total_seconds() if c.last else None
        return {
            "last": c.last.isoformat() if c.last else None,
            "age_seconds": round(age, 1) if age is not None else None,
            "limit_seconds": c.limit.total_seconds(),
            "late": c.late,
        }


async def health(services: Services, now: datetime | None = None) -> HealthReport:
    """Healthy when the database answers and every expected part ran within its interval;
    a part that never ran is late once the process has been up longer than its interval."""
    ops = services.ops
    now = now or services.clock.now()
    ops.observe()
    database, beats = None, ops.heartbeats.merged()
    try:
        async with asyncio.timeout(DB_TIMEOUT), services.uows(readonly=True) as uow:
            await ping(uow)
            beats = await ops.heartbeats.read(uow)
    except Exception as error:
        database = redact_text(_one_line(error), services.settings)
    parts = []
    for name in ops.heartbeats.intervals:
        limit = ops.heartbeats.health_limit(name)
        last = beats.get(name)
        late = now - (last or ops.started_at) > limit
        parts.append(ComponentHealth(name, last, limit, late))
    return HealthReport(now, database, tuple(parts))


async def metrics_text(services: Services) -> bytes:
    await services.ops.refresh()
    return generate_latest(services.ops.metrics.registry)


def ops_routes(services: Services) -> list[Route]:
    """`/healthz` and `/metrics`, to mount in the webhook's Starlette app or serve alone."""

    async def healthz(request: Request) -> Response:
        report = await health(services)
        return JSONResponse(report.to_dict(), status_code=report.status)

    async def metrics(request: Request) -> Response:
        return Response(await metrics_text(services), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def ops_app(services: Services) -> Starlette:
    return Starlette(routes=ops_routes(services))


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds it owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def ops_server(services: Services, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        ops_app(services), host=host, port=port, log_level="warning", access_log=False
    )
    return _Server(config)


async def serve_ops(services: Services, host: str, port: int) -> None:
    """Serve `/healthz` and `/metrics` until cancelled (`qunban run --ops-port`)."""
    server = ops_server(services, host, port)
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        # let uvicorn close its socket and connections rather than dropping them mid-flight
        server.should_exit = True
        await task
        raise


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]

"""`qunban run` and `qunban webhook`: check, start everything, run until a signal, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import uvicorn
from sqlalchemy.engine import make_url
from telegram.error import InvalidToken, NetworkError, RetryAfter

from bot.app import Services, build_application, build_services, publish_menu
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.heap import Heap
from bot.heartbeats import RECEIVER, WORKER
from bot.inbox import InboxWorker
from bot.logs import setup_logging
from bot.ops import ops_app, ops_routes
from bot.receiver import ALLOWED_UPDATES, Receiver
from bot.webhook import webhook_app
from storage.db import make_engine

log = logging.getLogger(__name__)

App = Any  # telegram.ext.Application with our context types
STOP_GRACE = 30.0  # seconds the worker may take to finish the update in hand


class StartupError(Exception):
    """Something to fix before Qunban can run; the message is the one line to show."""


# --------------------------------------------------------------------------- preflight


async def preflight(settings: Settings) -> None:
    """Token present, database reachable, schema in place; raises StartupError otherwise."""
    if settings.telegram_token is None:
        raise StartupError("QUNBAN_TELEGRAM_TOKEN is not set (get a token from @BotFather)")
    url = make_url(settings.database_url)
    shown = url.render_as_string(hide_password=True)
    on_disk = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if on_disk and not Path(url.database).exists():  # noqa: ASYNC240 (once, before anything runs)
        raise StartupError(f"no database file {url.database}: run `qunban db upgrade` first")
    engine = make_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
            tables = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
            revision = None
            if "alembic_version" in tables:
                rows = await conn.exec_driver_sql("SELECT version_num FROM alembic_version")
                revision = rows.scalar()
    except (sa.exc.DBAPIError, OSError) as error:
        reason = str(getattr(error, "orig", error) or error).strip().splitlines()
        raise StartupError(
            f"cannot reach the database {shown}: {reason[0] if reason else error!r}"
        ) from None
    finally:
        await engine.dispose()
    if "inboxupdate" not in tables:
        raise StartupError(f"the database {shown} has no tables: run `qunban db upgrade` first")
    if "alembic_version" in tables:
        from storage.migrate import head

        expected = head()
        if revision != expected:
            raise StartupError(
                f"the database schema is at {revision}, this version needs {expected}: "
                "run `qunban db upgrade`"
            )


# --------------------------------------------------------------------------- the running bot


@dataclass
class Running:
    """The parts of a running Qunban, for the mode that started them."""

    services: Services
    app: App
    worker: InboxWorker
    tasks: dict[str, asyncio.Task[Any]] = field(default_factory=dict)

    def stored(self, added: int) -> None:
        """The receiver (or the webhook) put updates in the inbox."""
        self.services.ops.metrics.updates_received.inc(added)
        self.worker.wake()


@contextlib.asynccontextmanager
async def running(settings: Settings, clock: Clock, stop: asyncio.Event) -> AsyncIterator[Running]:
    """The Application, its job queue, the inbox worker and the outbox sender, started; on
    leaving, stopped in order: nothing new comes in, the update in hand is finished."""
    services = build_services(settings, clock=clock)
    app = build_application(settings, clock=clock, services=services)
    try:
        await _initialize(app, stop)
        await publish_menu(app)
        await app.start()  # the job queue
        metrics = services.ops.metrics
        heap = Heap()

        def handled() -> None:
            metrics.updates_handled.inc()
            services.sender.wake(look=False)

        worker = InboxWorker(
            services.uows,
            app,
            clock,
            on_processed=handled,
            on_pass=lambda: services.ops.beat(WORKER),
            on_idle=heap.idle,
            concurrency=settings.inbox_lanes,
        )
        parts = Running(services, app, worker)
        idle = max(settings.send_every.total_seconds(), 0.05)
        # what start-up built lives as long as the process: the collector need not walk it
        # again, which took a full collection from ~65 ms to ~8 ms (a reply held that long)
        heap.settle()
        parts.tasks["worker"] = asyncio.create_task(worker.run(), name="inbox worker")
        parts.tasks["sender"] = asyncio.create_task(
            services.sender.run(app.bot, idle=idle), name="outbox sender"
        )
        try:
            yield parts
        finally:
            await _stop_worker(parts)
            await _drain_outbox(parts)
            await _stop_sender(parts)
            if app.running:
                await app.stop()
    finally:
        with contextlib.suppress(Exception):
            await app.shutdown()
        await services.close()


async def _initialize(app: App, stop: asyncio.Event) -> None:
    """getMe and friends; a network failure is waited out, a refused token is fatal."""
    delay = 1.0
    while True:
        try:
            await app.initialize()
            return
        except InvalidToken:
            raise StartupError(
                "Telegram refused QUNBAN_TELEGRAM_TOKEN (revoked or mistyped?)"
            ) from None
        except (NetworkError, RetryAfter) as error:
            log.warning("cannot reach Telegram (%s); trying again in %.0fs", error, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        if stop.is_set():
            raise StartupError("stopped before Telegram could be reached")
        delay = min(delay * 2, 60.0)


async def _stop_worker(parts: Running) -> None:
    parts.worker.stop()
    task = parts.tasks["worker"]
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=STOP_GRACE)
    except TimeoutError:
        log.warning(
            "the update in hand took over %.0fs; abandoned (it will run again)", STOP_GRACE
        )
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _drain_outbox(parts: Running, grace: float = 5.0) -> None:
    """Give the sender a few seconds to empty the outbox: cut off between Telegram's answer
    and its record, a message would be sent again after the restart."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    parts.services.sender.wake()
    while loop.time() < deadline and not parts.tasks["sender"].done():
        try:
            async with parts.services.uows(readonly=True) as uow:
                if await uow.outbox.depth() == 0:
                    return
        except Exception:  # the database is away: nothing more can be sent anyway
            return
        await asyncio.sleep(0.1)


async def _stop_sender(parts: Running) -> None:
    task = parts.tasks["sender"]
    # a send cut off between Telegram's answer and its record may be repeated once on restart
    parts.services.sender.stop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), timeout=10)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _until_stopped(stop: asyncio.Event, parts: Running, *others: asyncio.Task[Any]) -> None:
    """Wait for a signal; a part that ends on its own is a failure that stops the rest."""
    waiter = asyncio.create_task(stop.wait())
    watched = {waiter, *parts.tasks.values(), *others}
    done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    for task in done - {waiter}:
        error = task.exception() if not task.cancelled() else None
        if isinstance(error, StartupError):
            raise error
        log.error("%s stopped unexpectedly: %r", task.get_name(), error, exc_info=error)
        raise StartupError(f"{task.get_name()} failed: {error!r}")


async def serve_polling(
    settings: Settings, clock: Clock = SystemClock(), *, stop: asyncio.Event | None = None
) -> None:
    """`qunban run`: long polling until SIGTERM/SIGINT (or `stop` is set)."""
    await preflight(settings)
    stop = stop or asyncio.Event()
    with _signals(stop):
        async with running(settings, clock, stop) as parts:
            ops = parts.services.ops
            receiver = Receiver(
                parts.app.bot,
                parts.services.uows,
                parts.stored,
                clock=clock,
                on_poll=lambda: ops.beat(RECEIVER),
            )
            polling = asyncio.create_task(receiver.run(), name="receiver")
            health = await _serve_health(parts, settings)
            log.info("Qunban is polling as @%s", parts.app.bot.username)
            try:
                await _until_stopped(stop, parts, polling)
            finally:
                receiver.stop()  # first: nothing new comes in; the stored batch is confirmed
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(polling, timeout=15)
                if health is not None:
                    await health.close()
    log.info("Qunban stopped")


async def serve_webhook(
    settings: Settings, clock: Clock = SystemClock(), *, stop: asyncio.Event | None = None
) -> None:
    """`qunban webhook`: an HTTP server for Telegram's posts until SIGTERM/SIGINT."""
    await preflight(settings)
    if settings.webhook_secret is None:
        raise StartupError("QUNBAN_WEBHOOK_SECRET is not set; Telegram's posts can't be checked")
    secret = settings.webhook_secret.get_secret_value()
    stop = stop or asyncio.Event()
    with _signals(stop):
        async with running(settings, clock, stop) as parts:
            # updates arrive when people write: a quiet hour is no sign of a dead receiver
            parts.services.ops.heartbeats.expect(RECEIVER, None)
            asgi = webhook_app(
                parts.services.uows,
                secret=secret,
                on_stored=parts.stored,
                clock=clock,
                routes=ops_routes(parts.services),
            )
            server = _Listener(asgi, _listen(settings.listen_host, settings.listen_port))
            try:
                await _set_webhook(parts.app, settings, secret, stop)
                log.info("Qunban takes webhooks on %s", server.address)
                await _until_stopped(stop, parts, server.task)
            finally:
                await server.close()
    log.info("Qunban stopped")


async def _set_webhook(app: App, settings: Settings, secret: str, stop: asyncio.Event) -> None:
    if not settings.webhook_url:
        log.info("QUNBAN_WEBHOOK_URL is not set: the webhook is left as it is")
        return
    delay = 1.0
    while not stop.is_set():
        try:
            await app.bot.set_webhook(
                settings.webhook_url,
                secret_token=secret,
                allowed_updates=list(ALLOWED_UPDATES),
                drop_pending_updates=False,
            )
            return
        except (NetworkError, RetryAfter) as error:
            log.warning("setWebhook failed (%s); trying again in %.0fs", error, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, 60.0)


class _Server(uvicorn.Server):
    """uvicorn, leaving the signals to the runner (its own would re-raise them on exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Listener:
    """An ASGI app served by uvicorn on a socket bound beforehand."""

    def __init__(self, asgi: Any, sock: socket.socket) -> None:
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.address = f"{host}:{port}"
        config = uvicorn.Config(asgi, log_config=None, access_log=False, lifespan="off")
        self.server = _Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]), name="http server")

    async def close(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self.task, timeout=15)
        self.sock.close()


async def _serve_health(parts: Running, settings: Settings) -> _Listener | None:
    """`/healthz` and `/metrics` beside long polling; the bot runs on without them when the
    port is taken."""
    try:
        sock = _listen(settings.listen_host, settings.listen_port)
    except StartupError as error:
        log.warning("no /healthz or /metrics: %s", error)
        return None
    listener = _Listener(ops_app(parts.services), sock)
    log.info("/healthz and /metrics on %s", listener.address)
    return listener


def _listen(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as error:
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def _signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM/SIGINT ask for a clean stop; a second one ends the process at once."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: stopping now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


# --------------------------------------------------------------------------- the commands


def _main(serve: Callable[[Settings], Coroutine[Any, Any, None]], settings: Settings) -> None:
    # every record is redacted (the bot token above all), and httpx, whose request URLs
    # carry the token, logs warnings only
    setup_logging(settings)
    try:
        asyncio.run(serve(settings))
    except StartupError as error:
        raise SystemExit(f"qunban: {error}") from None


def run_polling(settings: Settings) -> None:
    """The whole of `qunban run`."""
    _main(serve_polling, settings)


def run_webhook(settings: Settings) -> None:
    """The whole of `qunban webhook`."""
    _main(serve_webhook, settings)

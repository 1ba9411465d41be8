"""End-to-end fixtures: the Bot API double over HTTP, a real database, the real bot process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.teledouble import JSON, TeleDouble
from bot.teledouble_http import DoubleServer, serve
from storage.db import make_engine, make_session_factory
from storage.seeding import load_seed
from storage.uow import UnitOfWorkFactory
from tests.conftest import reset_postgres

TOKEN = "123456:ABCDEFGHIJKLMNOPQRSTUVWXYZabc"
REPO = Path(__file__).resolve().parents[2]
# The next process is started ahead of time: it imports everything, then waits for a line on
# its standard input before it enters `qunban run`, so a restart costs no import time.
PREWARMED = (
    "import sys, bot.runner, bot.cli, handlers, storage.migrate; storage.migrate.head(); "
    "sys.stdin.readline(); bot.cli.main(sys.argv[1:], prog_name='qunban')"
)


class LedgerDouble(TeleDouble):
    """The Bot API double, with hooks for the tests: `on_call` runs as each call arrives, and
    `until` waits for the ledger to show something (woken by each call, never by a timer)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.on_call: Callable[[str, JSON], None] | None = None
        self.process: BotProcess | None = None  # the bot under test: its death ends a wait
        self.arrivals: dict[str, int] = {}
        self.in_flight: dict[str, int] = {}  # calls received and not yet answered
        self._changed = asyncio.Event()

    async def call(self, method: str, params: Any = None, **kw: Any) -> Any:
        self.arrivals[method] = self.arrivals.get(method, 0) + 1
        self.in_flight[method] = self.in_flight.get(method, 0) + 1
        try:
            if self.on_call is not None:
                self.on_call(method, dict(params or {}))
            return await super().call(method, params, **kw)
        finally:
            self.in_flight[method] -= 1
            self._changed.set()

    def poke(self) -> None:
        """Something outside the double changed (a process ended): look again."""
        self._changed.set()

    async def until(self, predicate: Callable[[], Any], *, timeout: float = 30, what: str) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            found = predicate()
            if found:
                return found
            if self.process is not None and self.process.died:
                tail = "\n".join(self.process.output().splitlines()[-15:])
                raise AssertionError(f"the bot exited while waiting for {what}:\n{tail}")
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 1.0))

    # --- what a group shows

    def card(self, chat_id: int, number: int) -> JSON | None:
        """The ticket's live card in the group, as it reads now."""
        head = f"#{number} ·"
        found = [m for m in self.messages_in(chat_id, from_bot=True) if _text(m).startswith(head)]
        return found[-1] if found else None

    def cards_sent(self, chat_id: int | None = None) -> dict[int, int]:
        """How many times each ticket's card was sent (more than once only after a kill
        landed between Telegram's answer and its record)."""
        counts: dict[int, int] = {}
        for record in self.sent:
            if chat_id is not None and record.chat_id != chat_id:
                continue
            head = (record.text or "").split(" ·", 1)[0]
            if record.chat_id < 0 and head.startswith("#") and head[1:].isdigit():
                counts[int(head[1:])] = counts.get(int(head[1:]), 0) + 1
        return counts


def _text(message: JSON) -> str:
    return str(message.get("text") or message.get("caption") or "")


def button(message: JSON, label: str) -> str:
    """The callback data of the button with this label."""
    for row in (message.get("reply_markup") or {}).get("inline_keyboard", []):
        for key in row:
            if key.get("text") == label:
                return str(key["callback_data"])
    raise AssertionError(f"no button {label!r} on {_text(message)!r}")


@pytest.fixture
async def double() -> AsyncIterator[LedgerDouble]:
    return LedgerDouble(token=TOKEN)


@pytest.fixture
async def double_server(double: LedgerDouble) -> AsyncIterator[DoubleServer]:
    server = await serve(double, "127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database brought to the latest schema by `qunban db upgrade`."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'qunban.db'}"
    else:
        url = request.getfixturevalue("pg_url")
        await reset_postgres(url)
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "db",
        "upgrade",
        env=child_env(QUNBAN_DATABASE_URL=url),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await done.communicate()
    assert done.returncode == 0, output.decode()
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The test's own connection to the bot's database."""
    engine = make_engine(database_url)
    yield engine
    await engine.dispose()


async def seed(engine: AsyncEngine, path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")  # noqa: ASYNC240 (a small file, before the run)
    await load_seed(UnitOfWorkFactory(make_session_factory(engine)), path)


async def rows(engine: AsyncEngine, sql: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(sa.text(sql))).all()]


def child_env(**settings: str) -> dict[str, str]:
    """The environment of a bot process: ours without any QUNBAN_ setting, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUNBAN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(settings)
    return env


@pytest.fixture
def bot_env(double_server: DoubleServer, database_url: str) -> dict[str, str]:
    return child_env(
        QUNBAN_TELEGRAM_TOKEN=TOKEN,
        QUNBAN_TELEGRAM_BASE_URL=double_server.base_url,
        QUNBAN_DATABASE_URL=database_url,
        QUNBAN_CALENDAR="24x7",
        QUNBAN_REPORT_LIMIT_PER_HOUR="100000",
        QUNBAN_LOG_LEVEL="INFO",
        QUNBAN_LISTEN_PORT=str(free_port()),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BotProcess:
    """One run of the real `qunban` command in a process of its own; its output goes to a
    log file shared by every run of the test."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        *args: str,
        double: LedgerDouble | None = None,
    ) -> None:
        self.env, self.log, self.args = env, log, args or ("run",)
        self.double = double
        self.proc: asyncio.subprocess.Process | None = None
        self._prewarmed = False
        self._stopping = False

    async def start(self, *, prewarmed: bool = False) -> BotProcess:
        """`python -m bot ARGS`; prewarmed: imported and waiting until `release()`."""
        command = ["-c", PREWARMED] if prewarmed else ["-m", "bot"]
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *command,
                *self.args,
                env=self.env,
                cwd=self.log.parent,
                stdin=asyncio.subprocess.PIPE,
                stdout=out,
                stderr=out,
            )
        self._prewarmed = prewarmed
        self._stopping = False
        if self.double is not None:
            if not prewarmed:
                self.double.process = self
            asyncio.get_running_loop().create_task(self._poke_on_exit())
        return self

    @property
    def died(self) -> bool:
        """Ended without being told to."""
        return not self.running and not self._stopping

    async def _poke_on_exit(self) -> None:
        assert self.proc is not None
        assert self.double is not None
        await self.proc.wait()
        self.double.poke()

    async def release(self) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self._prewarmed
        if self.double is not None:
            self.double.process = self
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def kill_now(self) -> None:
        """SIGKILL, from inside a callback (the double's on_call hook)."""
        self._stopping = True
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def kill(self) -> int:
        self.kill_now()
        return await self.wait()

    async def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self._stopping = True
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self._stopping = True
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

"""Logs: JSON lines or text, the update/ticket/person on each line, and never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import quote

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import logs
from bot.config import Settings
from tests.opskit import TOKEN, make_settings, open_env

WEBHOOK_SECRET = "wh-secret-Zq81xx"
DB_PASSWORD = "db-pass-9Kq#2"
DB_URL = f"postgresql+asyncpg://qunban:{quote(DB_PASSWORD, safe='')}@db.internal:5432/qunban"
SECRETS = (TOKEN, TOKEN.partition(":")[2], WEBHOOK_SECRET, DB_PASSWORD)


@pytest.fixture
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """setup_logging changes the process's logging: put everything back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    factory = logging.getLogRecordFactory()
    quiet = {name: logging.getLogger(name).level for name in logs.QUIET}
    monkeypatch.setattr(logs, "_factory_installed", False)
    monkeypatch.setattr(logs, "_active", logs.Redactor())
    yield
    logging.setLogRecordFactory(factory)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


def secret_settings(log_format: str = "json") -> Settings:
    return make_settings(
        DB_URL, webhook_secret=WEBHOOK_SECRET, log_format=log_format, log_level="DEBUG"
    )


def assert_clean(text: str) -> None:
    for secret in (*SECRETS, quote(TOKEN, safe="")):
        assert secret not in text, f"{secret!r} leaked into: {text}"


@pytest.mark.usefixtures("clean_logging")
def test_json_lines_carry_the_update_ticket_and_person() -> None:
    out = io.StringIO()
    logs.setup_logging(secret_settings("json"), stream=out)
    log = logging.getLogger("bot.test")
    with logs.log_context(update_id=101, person=5000000004):
        log.info("claimed %s", "#12")
        logs.bind(ticket=12)
        log.warning("nudged")
    log.info("outside")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["claimed #12", "nudged", "outside"]
    assert lines[0]["update_id"] == 101
    assert lines[0]["person"] == 5000000004
    assert "ticket" not in lines[0]
    assert lines[1]["ticket"] == 12
    assert lines[1]["level"] == "WARNING"
    assert lines[1]["logger"] == "bot.test"
    assert "update_id" not in lines[2]
    assert lines[2]["time"].endswith("+00:00")


@pytest.mark.usefixtures("clean_logging")
def test_text_lines_are_readable_with_the_context_in_brackets() -> None:
    out = io.StringIO()
    logs.setup_logging(secret_settings("text"), stream=out)
    update = {"update_id": 7, "message": {"from": {"id": 42}, "text": "/claim 3"}}
    with logs.update_context(update):
        logs.bind(ticket=3)
        logging.getLogger("handlers.tickets").info("claim refused")
    line = out.getvalue().strip()
    assert line.endswith("INFO handlers.tickets [update_id=7 ticket=3 person=42]: claim refused")


@pytest.mark.usefixtures("clean_logging")
def test_no_secret_reaches_any_handler_from_message_arguments_or_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = io.StringIO()
    logs.setup_logging(secret_settings("json"), stream=out)
    log = logging.getLogger("bot.leaky")
    url = f"https://api.telegram.org/bot{TOKEN}/sendMessage"
    with caplog.at_level(logging.DEBUG):
        log.info(f"token in the message {TOKEN}")
        log.info("token in the arguments %s and %r", TOKEN, {"secret": WEBHOOK_SECRET})
        log.debug("a URL as PTB percent-encodes it: %s", quote(url, safe="/:"))
        log.warning("connecting to %s", DB_URL)
        try:
            raise RuntimeError(f"Unauthorized for {url} with password {DB_PASSWORD}")
        except RuntimeError:
            log.exception("the call failed")
        log.error("with extra", extra={"ticket": TOKEN})
        log.info("stack", stack_info=True)
    assert_clean(out.getvalue())
    assert_clean(caplog.text)  # a handler that setup_logging never saw
    for record in caplog.records:
        assert_clean(record.getMessage())
        assert_clean(str(record.exc_text or ""))
    assert out.getvalue().count(logs.MASK) >= 7
    exception = json.loads(out.getvalue().splitlines()[4])["exception"]
    assert "RuntimeError: Unauthorized for https://api.telegram.org/bot***/sendMessage" in (
        exception
    )


@pytest.mark.usefixtures("clean_logging")
async def test_a_busy_run_logs_no_secret(engine: AsyncEngine) -> None:
    out = io.StringIO()
    settings = secret_settings("text")
    logs.setup_logging(settings, stream=out)
    async with open_env(engine, webhook_secret=WEBHOOK_SECRET, log_level="DEBUG") as env:
        for n in range(3):
            with logs.log_context(update_id=n + 1, person=env.org["acme_boss"]):
                ticket = await env.report(f"问题 {n}: 发票 invoice")
                logs.bind(ticket=ticket)
                logging.getLogger("bot.test").info("filed")
        env.double.fail_next(2, "500", methods=["sendMessage"])
        await env.drain()
        env.clock.advance(timedelta(minutes=5))
        await env.drain()
        logging.getLogger("bot.test").error("settings in full: %r", settings)
    text = out.getvalue()
    assert "[update_id=1 ticket=1 person=" in text
    assert_clean(text)


def test_the_secrets_come_from_the_settings() -> None:
    found = logs.secrets_of(secret_settings())
    assert set(found) == {TOKEN, TOKEN.partition(":")[2], WEBHOOK_SECRET, DB_PASSWORD}
    assert logs.secrets_of(make_settings(telegram_token=None)) == []


def test_short_values_are_not_treated_as_secrets() -> None:
    redact = logs.Redactor(["pw", TOKEN])
    assert redact(f"pw is fine, {TOKEN} is not") == "pw is fine, *** is not"


def test_only_known_context_fields_are_accepted() -> None:
    with pytest.raises(TypeError), logs.log_context(chat=1):
        pass

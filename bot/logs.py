"""Logging: JSON lines or readable text, the update/ticket/person on each line, no secrets."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import make_url

from bot.config import Settings

CONTEXT_FIELDS = ("update_id", "ticket", "person")
MASK = "***"
MIN_SECRET = 4  # shorter "secrets" would blank out ordinary words
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"
QUIET = {"httpx": logging.WARNING, "apscheduler": logging.WARNING}  # httpx logs URLs

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("qunban_log_context", default=_EMPTY)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add update_id, ticket, person to every line logged inside the block."""
    token = _context.set(MappingProxyType({**_context.get(), **_clean(fields)}))
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add fields for the rest of the current context (a handler that learnt the ticket)."""
    _context.set(MappingProxyType({**_context.get(), **_clean(fields)}))


def update_context(update: Mapping[str, Any]) -> contextlib.AbstractContextManager[None]:
    """The context of a raw update: its id and the Telegram id of who sent it."""
    person = None
    for body in update.values():
        if isinstance(body, Mapping) and isinstance(body.get("from"), Mapping):
            person = body["from"].get("id")
            break
    return log_context(update_id=update.get("update_id"), person=person)


def _clean(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise TypeError(f"unknown log context fields: {sorted(unknown)}")
    return {k: v for k, v in fields.items() if v is not None}


def secrets_of(settings: Settings) -> list[str]:
    """The bot token (and its secret half), the webhook secret, the database password,
    also as they look percent-encoded inside a URL."""
    found: list[str] = []
    if settings.telegram_token is not None:
        token = settings.telegram_token.get_secret_value()
        found += [token, token.partition(":")[2]]
    if settings.webhook_secret is not None:
        found.append(settings.webhook_secret.get_secret_value())
    with contextlib.suppress(Exception):
        password = make_url(settings.database_url).password
        if password:
            found.append(str(password))
    return found


class Redactor:
    """Replaces each secret with *** in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        variants = {v for s in secrets if s for v in (s, quote(s, safe=""), quote_plus(s))}
        self.secrets = sorted((v for v in variants if len(v) >= MIN_SECRET), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def scrub(self, record: logging.LogRecord) -> None:
        """Redact a record in place: its message with the arguments merged in, its exception
        and stack text. Its arguments are dropped, so no later handler sees them raw."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the pieces, as text
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = self(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_info:
            record.exc_info = None  # the traceback lives on only as redacted text
        if record.exc_text:
            record.exc_text = self(record.exc_text)
        if record.stack_info:
            record.stack_info = self(record.stack_info)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts every record it passes (and adds the context fields)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        add_context(record)
        self.redactor.scrub(record)
        return True


def add_context(record: logging.LogRecord) -> None:
    fields = _context.get()
    for name in CONTEXT_FIELDS:
        if not hasattr(record, name):
            setattr(record, name, fields.get(name))
    if not hasattr(record, "context"):
        shown = " ".join(
            f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if getattr(record, n) is not None
        )
        record.context = f" [{shown}]" if shown else ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the final text is redacted once more (extras included)."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        add_context(record)
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({n: getattr(record, n) for n in CONTEXT_FIELDS if getattr(record, n)})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return self.redactor(json.dumps(entry, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__(TEXT_FORMAT)
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        add_context(record)
        return self.redactor(super().format(record))


_factory_installed = False
_active = Redactor()


def _install_factory() -> None:
    """Every record made anywhere in the process is redacted when made, so that handlers
    we did not set up (a test's capture, a library's) never see a secret either."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _active.scrub(record)  # the context fields are added later: `extra=` may name them
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


def install_redaction(secrets: Iterable[str]) -> Redactor:
    """Redact these secrets from every record from now on (setup_logging calls this)."""
    global _active
    _active = Redactor([*_active.secrets, *secrets])
    _install_factory()
    return _active


def setup_logging(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one that writes JSON lines or text."""
    redactor = install_redaction(secrets_of(settings))
    handler = logging.StreamHandler(stream or sys.stderr)
    json_lines = settings.log_format.strip().lower() == "json"
    handler.setFormatter(JsonFormatter(redactor) if json_lines else TextFormatter(redactor))
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(max(level, root.level))
    return handler


def redact_text(text: str, settings: Settings) -> str:
    """Text for a log line or an HTTP answer with the settings' secrets blanked out."""
    return Redactor([*secrets_of(settings), *_active.secrets])(text)

"""Settings from QUNBAN_* environment variables (and a .env file)."""

from __future__ import annotations

import re
from datetime import time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """'30s', '15m', '2h', '1d', '1w' (or seconds as a number) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 2h, 1d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


class Settings(BaseSettings):
    """Everything Qunban can be told from outside; built once and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="QUNBAN_", env_file=".env", extra="ignore", validate_default=True
    )

    telegram_token: SecretStr | None = Field(None, description="Bot token from BotFather.")
    telegram_base_url: str = Field(
        "https://api.telegram.org/bot", description="Bot API base; the token is appended."
    )
    telegram_base_file_url: str | None = Field(
        None, description="Bot API file base; derived from the base URL when unset."
    )
    database_url: str = Field(
        "sqlite+aiosqlite:///qunban.db", description="SQLAlchemy async URL of the database."
    )
    timezone: str = Field("Asia/Shanghai", description="Local time zone of the groups.")
    calendar: str = Field(
        "cn", description="Working calendar: a file in seeds/calendar, a path, or 24x7."
    )
    digest_at: time = Field(time(8, 30), description="Local time of the leaders' daily digest.")
    nudge_unassigned_after: timedelta = Field(
        timedelta(hours=1), description="Working time a reported ticket may wait for assignment."
    )
    nudge_unclaimed_after: timedelta = Field(
        timedelta(hours=2), description="Working time an assigned ticket may wait for a claim."
    )
    nudge_idle_after: timedelta = Field(
        timedelta(days=1), description="Working time a claimed ticket may sit without activity."
    )
    supervise_after: timedelta = Field(
        timedelta(days=5), description="Working time from assignment to the due time."
    )
    escalate_after: timedelta = Field(
        timedelta(days=1), description="Working time after supervision before the city is told."
    )
    nudge_repeat_every: timedelta = Field(
        timedelta(hours=4), description="A nudge is not repeated to one person sooner than this."
    )
    rate_invite_after: timedelta = Field(
        timedelta(days=3), description="Working time after resolution before the rating reminder."
    )
    autoclose_after: timedelta = Field(
        timedelta(days=7), description="Working time after resolution before closing unrated."
    )
    scan_every: timedelta = Field(
        timedelta(minutes=1), description="How often the idle scan runs."
    )
    send_every: timedelta = Field(
        timedelta(seconds=1), description="How often the outbox sender wakes when idle."
    )
    report_limit_per_hour: int = Field(20, description="Reports one person may file per hour.")
    inbox_concurrency: int | None = Field(
        None,
        ge=1,
        le=16,
        description=(
            "Updates of different chats handled at once (one chat's always in order); "
            "unset: 1 on SQLite, 4 on PostgreSQL."
        ),
    )
    webhook_url: str | None = Field(None, description="Public URL Telegram posts updates to.")
    webhook_secret: SecretStr | None = Field(None, description="Webhook secret_token.")
    listen_host: str = Field("127.0.0.1", description="Address the HTTP listener binds.")
    listen_port: int = Field(8080, description="Port of the webhook / health listener.")
    ops_chat_id: int | None = Field(None, description="Chat the admins' alerts go to.")
    outbox_alert_after: timedelta = Field(
        timedelta(minutes=15),
        description="Tell the ops chat when a message has waited this long to be sent.",
    )
    instance_name: str | None = Field(
        None,
        description="This process's name for the work it leases (default: the host name); "
        "give each process on one host its own.",
    )
    log_format: str = Field("text", description="text or json.")
    log_level: str = Field("INFO", description="Logging level.")

    @field_validator(
        "nudge_unassigned_after",
        "nudge_unclaimed_after",
        "nudge_idle_after",
        "supervise_after",
        "escalate_after",
        "nudge_repeat_every",
        "rate_invite_after",
        "autoclose_after",
        "scan_every",
        "send_every",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        return parse_duration(value)

    @field_validator("outbox_alert_after", mode="before")
    @classmethod
    def _alert_after(cls, value: object) -> timedelta:
        return parse_duration(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("telegram_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if not re.fullmatch(r"\d+:[\w-]{20,}", value.get_secret_value().strip()):
            raise ValueError("QUNBAN_TELEGRAM_TOKEN does not look like a BotFather token")
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def file_base_url(self) -> str:
        if self.telegram_base_file_url:
            return self.telegram_base_file_url
        base = self.telegram_base_url.rstrip("/")
        head, _, tail = base.rpartition("/")
        return f"{head}/file/{tail}"

    @property
    def inbox_lanes(self) -> int:
        """How many updates the inbox worker has in hand at once. SQLite runs each statement
        on the worker's own thread and one writer at a time, so a second lane only waits."""
        if self.inbox_concurrency is not None:
            return self.inbox_concurrency
        return 1 if make_url(self.database_url).get_backend_name() == "sqlite" else 4


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]

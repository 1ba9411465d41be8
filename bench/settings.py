"""The bot's settings and the moment the benchmarks run at: light to import (no numpy), so the
measured bot process carries nothing of the benchmark's own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.config import Settings

TOKEN = "123456:ABCDEFGHIJKLMNOPQRSTUVWXYZabc"
TZ = ZoneInfo("Asia/Shanghai")
# Wednesday 25 November 2026, 10:00 in Baotou: a working morning
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=TZ).astimezone(UTC)


def bench_settings(url: str, **overrides: Any) -> Settings:
    """The bot's settings for a benchmark database: no .env, the China calendar."""
    values: dict[str, Any] = {
        "_env_file": None,
        "database_url": url,
        "calendar": "cn",
        "report_limit_per_hour": 1_000_000,
        "log_level": "WARNING",
    }
    return Settings(**(values | overrides))

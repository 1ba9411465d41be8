"""What the operability tests share: services over a test engine, a hand-moved clock, and a
Bot API double for the outbox sender to talk to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from telegram import Bot

from bot.app import Services, build_services
from bot.clock import ManualClock
from bot.config import Settings
from bot.outbox import DrainReport
from bot.teledouble import DoubleRequest, TeleDouble
from tests.factories import GROUP, Org, build_org

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # a Monday, 09:00 in Shanghai
OPS_CHAT = -1005550000001
TOKEN = "123456789:AAH-qunban-secret-token-for-the-tests"


def make_settings(url: str = "sqlite+aiosqlite://", **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "calendar": "24x7",
        "ops_chat_id": OPS_CHAT,
        "telegram_token": TOKEN,
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


@dataclass
class OpsEnv:
    services: Services
    clock: ManualClock
    double: TeleDouble
    bot: Bot
    org: Org

    async def drain(self) -> DrainReport:
        return await self.services.sender.drain(self.bot)

    async def report(self, text: str = "发票开不出来 invoice trouble") -> int:
        """Acme files a report in the city group, as the intake handler would."""
        message = self.double.user_says(GROUP, self.org["acme_boss"], text)["message"]
        outcome = await self.services.tickets.report(
            self.org["acme_boss"], text, chat_id=GROUP, message_id=message["message_id"]
        )
        return outcome.ticket.number

    def sent_to(self, chat_id: int) -> list[str]:
        return [r.text or "" for r in self.double.sent_to(chat_id)]


@asynccontextmanager
async def open_env(
    engine: AsyncEngine,
    *,
    clock: ManualClock | None = None,
    org: Org | None = None,
    **settings: Any,
) -> AsyncIterator[OpsEnv]:
    """Services over this engine; the org chart is built unless one is given (a second
    process over the same database)."""
    clock = clock or ManualClock(START)
    services = build_services(make_settings(**settings), clock=clock, engine=engine, limits=None)
    org = org or await build_org(services.uows)
    double = TeleDouble(token=TOKEN, clock=clock)
    for key, telegram_id in org.ids.items():
        double.add_user(telegram_id, key, username=key, language_code="en")
    double.add_chat(GROUP, type="supergroup", title="Metro 1+10+N")
    double.add_chat(OPS_CHAT, type="supergroup", title="Qunban ops")
    request = DoubleRequest(double)
    async with Bot(TOKEN, request=request, get_updates_request=request) as bot:
        yield OpsEnv(services, clock, double, bot, org)

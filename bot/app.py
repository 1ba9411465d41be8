"""The composition root: the one place that builds the services and the PTB Application."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from socket import gethostname
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from telegram.ext import Application, ApplicationBuilder, ContextTypes
from telegram.request import BaseRequest

from bot.calendar import WorkCalendar, load_calendar
from bot.clock import Clock
from bot.config import Settings
from bot.context import BotContext
from bot.inbox import record_failure
from bot.jobs import schedule_jobs
from bot.notify import Notifier
from bot.ops import Ops
from bot.outbox import OutboxSender
from bot.persistence import DbPersistence
from bot.ratelimit import Limits, RateLimiter
from bot.services.admin import AdminService
from bot.services.digests import DigestService
from bot.services.nudges import NudgeService
from bot.services.people import PeopleService
from bot.services.queries import QueryService
from bot.services.records import RecordService
from bot.services.tickets import TicketService
from storage.db import make_engine, make_session_factory
from storage.uow import UnitOfWorkFactory


@dataclass
class Services:
    """Everything the handlers and jobs call, built once per process."""

    settings: Settings
    clock: Clock
    calendar: WorkCalendar
    engine: AsyncEngine
    uows: UnitOfWorkFactory
    notifier: Notifier
    tickets: TicketService
    queries: QueryService
    sender: OutboxSender
    people: PeopleService
    # --- further services are added below by build_services ---
    ops: Ops = field(init=False)  # heartbeats, health and metrics
    admin: AdminService = field(init=False)
    nudges: NudgeService = field(init=False)  # the idle scan: the escalation ladder
    digests: DigestService = field(init=False)  # the leaders' daily digest
    records: RecordService = field(init=False)  # /stats and /record

    async def close(self) -> None:
        await self.engine.dispose()


def build_services(
    settings: Settings,
    *,
    clock: Clock,
    engine: AsyncEngine | None = None,
    limits: Limits | None = Limits(),
) -> Services:
    """Wire the services over one engine (made from the settings unless given).

    `limits=None` turns off the sending limits (tests and the offline simulation).
    """
    engine = engine or make_engine(settings.database_url)
    uows = UnitOfWorkFactory(make_session_factory(engine))
    calendar = load_calendar(settings.calendar, settings.timezone)
    notifier = Notifier(settings, clock)
    services = Services(
        settings=settings,
        clock=clock,
        calendar=calendar,
        engine=engine,
        uows=uows,
        notifier=notifier,
        tickets=TicketService(uows, clock, calendar, settings, notifier),
        queries=QueryService(uows, clock),
        sender=OutboxSender(
            uows, clock, RateLimiter(limits), instance=settings.instance_name or gethostname()
        ),
        people=PeopleService(uows, clock),
    )
    uows.handoff = services.sender  # what the units of work queue goes to it by hand
    services.ops = Ops(settings, clock, uows, services.sender, engine=engine.dialect.name)
    services.admin = AdminService(services)
    services.nudges = NudgeService(uows, clock, calendar, settings, notifier, services.tickets)
    services.digests = DigestService(uows, clock, calendar, settings, notifier)
    services.records = RecordService(uows, clock, calendar, settings)
    return services


def build_application(
    settings: Settings,
    *,
    clock: Clock,
    request: BaseRequest | None = None,
    services: Services | None = None,
    token: str | None = None,
) -> Application[Any, Any, Any, Any, Any, Any]:
    """The PTB Application with Qunban's handlers and jobs; updates come from our own inbox."""
    from handlers import register

    services = services or build_services(settings, clock=clock)
    secret = token or (
        settings.telegram_token.get_secret_value() if settings.telegram_token else "0:offline"
    )
    builder = (
        ApplicationBuilder()
        .token(secret)
        .base_url(settings.telegram_base_url)
        .base_file_url(settings.file_base_url)
        .updater(None)
        .context_types(ContextTypes(context=BotContext))
        # the private /report conversation and its draft survive a restart
        .persistence(DbPersistence(services.uows, clock))
    )
    if request is not None:
        builder = builder.request(request)
    app = builder.build()
    app.bot_data["services"] = services
    # first of the error handlers: a failure of an update the inbox will retry stops here
    app.add_error_handler(record_failure)
    register(app)
    if app.job_queue is not None:
        schedule_jobs(app.job_queue, services)
    return app


async def publish_menu(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    """Set the command menu clients show; a refusal is logged, never fatal."""
    from telegram.error import TelegramError

    from handlers.menu import publish_menu as publish

    try:
        await publish(app.bot)
    except TelegramError as error:
        logging.getLogger(__name__).warning("could not set the command menu: %s", error)

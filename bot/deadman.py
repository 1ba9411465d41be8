"""The dead man's switch: tell the admins, once per incident, when the bot falls behind."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot.heartbeats import DIGEST, RECEIVER, SCAN, SENDER, WORKER
from bot.i18n import DEFAULT_LANGUAGE, gettext
from bot.markup import escape
from storage.stats import queue_figures
from storage.tables import KeyValue
from storage.uow import UnitOfWork

if TYPE_CHECKING:
    from telegram.ext import Job, JobQueue

    from bot.app import Services
    from bot.context import BotContext

log = logging.getLogger(__name__)

DEADMAN_JOB = "deadman"
INCIDENT_KEY = "deadman:incident"
CHECK_EVERY = timedelta(seconds=30)
OUTBOX = "outbox"


@dataclass(frozen=True)
class Problem:
    """A part that has not run since `since`, or the outbox's oldest message, queued `since`."""

    part: str
    since: datetime
    limit: timedelta


@dataclass(frozen=True)
class SwitchResult:
    problems: tuple[Problem, ...]
    alerted: bool = False
    recovered: bool = False


async def check(services: Services, now: datetime | None = None) -> SwitchResult:
    """Look for late parts and a stuck outbox; open or close the incident accordingly.

    The incident lives in the database, locked while it changes, so several instances
    alert once between them; the messages go through the outbox with a dedupe key."""
    ops = services.ops
    now = now or services.clock.now()
    ops.observe()
    await ops.heartbeats.store()  # this process's beats, for the other instances to see
    async with services.uows(marks_update=False) as uow:
        beats = await ops.heartbeats.read(uow)
        figures = await queue_figures(uow)
        problems = [
            Problem(part, beats.get(part) or ops.started_at, ops.heartbeats.alarm_limit(part))
            for part in ops.heartbeats.intervals
            if now - (beats.get(part) or ops.started_at) > ops.heartbeats.alarm_limit(part)
        ]
        limit = services.settings.outbox_alert_after
        if figures.outbox_oldest is not None and now - figures.outbox_oldest > limit:
            problems.append(Problem(OUTBOX, figures.outbox_oldest, limit))
        result = await _record(uow, services, tuple(problems), now)
        await uow.commit()
    if result.alerted or result.recovered:
        services.sender.wake()
    return result


async def _record(
    uow: UnitOfWork, services: Services, problems: tuple[Problem, ...], now: datetime
) -> SwitchResult:
    row = await _locked_incident(uow, now)
    incident = dict(row.value)
    if problems and not incident.get("open"):
        since = now.isoformat()
        row.value = {"open": True, "since": since, "parts": [p.part for p in problems]}
        row.updated_at = now
        html = alert_text(DEFAULT_LANGUAGE, problems, now)
        log.error("dead man's switch: %s", "; ".join(_plain(problems, now)))
        _tell(uow, services, html, f"deadman:{since}:alert")
        return SwitchResult(problems, alerted=True)
    if not problems and incident.get("open"):
        since = str(incident.get("since"))
        row.value = {"open": False, "since": since, "closed": now.isoformat()}
        row.updated_at = now
        lasted = now - datetime.fromisoformat(since)
        log.warning("dead man's switch: recovered after %s", span(lasted))
        _tell(uow, services, recovery_text(DEFAULT_LANGUAGE, lasted), f"deadman:{since}:recovered")
        return SwitchResult(problems, recovered=True)
    return SwitchResult(problems)


async def _locked_incident(uow: UnitOfWork, now: datetime) -> KeyValue:
    await uow.schedule.insert_ignoring_duplicate(
        KeyValue(key=INCIDENT_KEY, value={"open": False}, updated_at=now)
    )
    row = await uow.session.get(
        KeyValue, INCIDENT_KEY, with_for_update=True, populate_existing=True
    )
    assert row is not None
    return row


def _tell(uow: UnitOfWork, services: Services, html: str, key: str) -> None:
    chat = services.settings.ops_chat_id
    if chat is None:
        log.error("QUNBAN_OPS_CHAT_ID is not set: the admins are not told")
        return
    services.notifier.message(uow, chat, html, dedupe_key=key)


def schedule_deadman(job_queue: JobQueue[Any], every: timedelta = CHECK_EVERY) -> Job[Any]:
    """Run the switch on the application's job queue."""
    return job_queue.run_repeating(
        deadman_job,
        interval=every,
        first=every,
        name=DEADMAN_JOB,
        # a late check is still worth running, once, and never two at a time
        job_kwargs={"misfire_grace_time": 600, "coalesce": True, "max_instances": 1},
    )


async def deadman_job(context: BotContext) -> None:
    await check(context.services)


# ---- what the admins read ------------------------------------------------------------------

_PARTS = {
    RECEIVER: "receiving updates from Telegram",
    WORKER: "handling received updates",
    SENDER: "the outbox sender",
    SCAN: "the idle-ticket scan",
    DIGEST: "the digest check",
}


def _(lang: str, message: str, **params: Any) -> str:
    text = gettext(lang, message)
    return text.format(**params) if params else text


def _line(lang: str, problem: Problem, now: datetime) -> str:
    waited = span(now - problem.since)
    if problem.part == OUTBOX:
        return _(
            lang,
            "the oldest unsent message has waited {waited} (limit {limit})",
            waited=waited,
            limit=span(problem.limit),
        )
    return _(
        lang,
        "{part} has not run for {waited} (limit {limit})",
        part=gettext(lang, _PARTS.get(problem.part, problem.part)),
        waited=waited,
        limit=span(problem.limit),
    )


def _plain(problems: tuple[Problem, ...], now: datetime) -> list[str]:
    return [_line("en", p, now) for p in problems]


def alert_text(lang: str, problems: tuple[Problem, ...], now: datetime) -> str:
    lines = [f"⚠️ <b>{escape(_(lang, 'Qunban is falling behind'))}</b>"]
    lines += [f"• {escape(_line(lang, p, now))}" for p in problems]
    lines.append(escape(_(lang, "I will tell you here when it has recovered.")))
    return "\n".join(lines)


def recovery_text(lang: str, lasted: timedelta) -> str:
    head = escape(_(lang, "Qunban has recovered"))
    body = escape(_(lang, "Everything runs on time again, after {lasted}.", lasted=span(lasted)))
    return f"✅ <b>{head}</b>\n{body}"


def span(delta: timedelta) -> str:
    """A duration the way people say it: 45 s, 1 min 30 s, 12 min, 3 h 5 min, 2 d 4 h."""
    seconds = max(int(delta.total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs and minutes < 10 else f"{minutes} min"
    return f"{secs} s"

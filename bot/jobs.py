"""The scheduler's repeating sweeps; each asks its service what is due, from the database."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from telegram.ext import JobQueue

from bot.context import BotContext
from bot.deadman import schedule_deadman
from bot.heartbeats import DIGEST, SCAN
from storage.sqlite_inline import offloaded

if TYPE_CHECKING:
    from bot.app import Services

log = logging.getLogger(__name__)

SCAN_JOB = "idle_scan"
DIGEST_JOB = "digest_check"
DIGEST_EVERY = timedelta(minutes=1)
# APScheduler drops a run that starts more than misfire_grace_time late (1 s by default); a
# busy event loop must only delay a sweep. Missed runs collapse into one, never overlap.
JOB_KWARGS: dict[str, Any] = {"misfire_grace_time": 3600, "coalesce": True, "max_instances": 1}


def schedule_jobs(job_queue: JobQueue[Any], services: Services) -> None:
    """Register the idle scan (every settings.scan_every) and the digest check (every minute).

    Only repeating sweeps: what is due is worked out from the database on every run, so a late
    start, a restart or a second instance skips and doubles nothing.
    """
    job_queue.run_repeating(
        scan_job,
        interval=services.settings.scan_every,
        first=timedelta(seconds=5),
        name=SCAN_JOB,
        job_kwargs=dict(JOB_KWARGS),
    )
    job_queue.run_repeating(
        digest_job,
        interval=DIGEST_EVERY,
        first=timedelta(seconds=10),
        name=DIGEST_JOB,
        job_kwargs=dict(JOB_KWARGS),
    )
    schedule_deadman(job_queue)  # tells the ops chat when these stall or the outbox backs up


async def scan_job(context: BotContext) -> None:
    """Nudge, supervise and close what the ladder says is due; a failure waits for the next run."""
    started = time.perf_counter()
    try:
        report = await context.services.nudges.scan()
    except Exception:
        log.exception("idle scan failed; the next run retries")
        return
    await context.services.ops.swept(SCAN, time.perf_counter() - started)
    context.services.ops.metrics.nudges_sent.inc(len(report.nudges))
    if report.queued:
        log.info("idle scan: %d nudges", len(report.nudges))
        context.services.sender.wake()


async def digest_job(context: BotContext) -> None:
    """Queue the leaders' digests that are due; a failure waits for the next run."""
    started = time.perf_counter()
    try:
        # a digest reads the whole city's figures: on SQLite, off the loop's thread, so
        # replies to the groups go on meanwhile
        with offloaded():
            sent = await context.services.digests.send_due()
    except Exception:
        log.exception("digest check failed; the next run retries")
        return
    await context.services.ops.swept(DIGEST, time.perf_counter() - started)
    context.services.ops.metrics.digests_sent.inc(len(sent))
    if sent:
        log.info("digests queued for %d leaders", len(sent))
        context.services.sender.wake()

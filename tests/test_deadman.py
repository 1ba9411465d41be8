"""The dead man's switch: the admins hear once when the bot falls behind, once when it is back."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from bot import deadman
from bot.app import build_application
from bot.heartbeats import COMPONENTS, SCAN, SENDER
from bot.jobs import SCAN_JOB
from bot.teledouble import DoubleRequest
from storage.tables import Outbox
from tests.opskit import OPS_CHAT, TOKEN, OpsEnv, open_env


async def beat_all(env: OpsEnv, *, but: str | None = None) -> None:
    for part in COMPONENTS:
        if part != but:
            await env.services.ops.beat(part)


async def ops_messages(env: OpsEnv) -> list[str]:
    async with env.services.uows(readonly=True) as uow:
        query = select(Outbox).where(Outbox.chat_id == OPS_CHAT).order_by(col(Outbox.id))
        return [row.payload["text"] for row in (await uow.session.exec(query)).all()]


async def test_a_stalled_sweep_alerts_once_and_recovers_once(engine: AsyncEngine) -> None:
    async with open_env(engine) as env:
        await beat_all(env)
        for _ in range(4):  # everything but the scan keeps running for four minutes
            env.clock.advance(timedelta(minutes=1))
            await beat_all(env, but=SCAN)
            await deadman.check(env.services)
        messages = await ops_messages(env)
        assert len(messages) == 1
        assert (
            "滞留工单巡检已 4 min 未运行（上限 3 min）" in messages[0]
        )  # the ops chat reads Chinese

        for _ in range(3):  # still stalled: nobody is told again
            env.clock.advance(timedelta(minutes=1))
            await beat_all(env, but=SCAN)
            assert not (await deadman.check(env.services)).alerted
        assert len(await ops_messages(env)) == 1

        await beat_all(env)  # the scan runs again
        recovered = await deadman.check(env.services)
        assert recovered.recovered
        for _ in range(3):
            env.clock.advance(timedelta(minutes=1))
            await beat_all(env)
            result = await deadman.check(env.services)
            assert (result.alerted, result.recovered, result.problems) == (False, False, ())
        messages = await ops_messages(env)
        assert len(messages) == 2
        assert "群办已恢复正常" in messages[1]
        assert "异常持续 3 min" in messages[1]


async def test_the_alert_and_the_recovery_reach_the_ops_chat(engine: AsyncEngine) -> None:
    async with open_env(engine) as env:
        await beat_all(env)
        env.clock.advance(timedelta(minutes=4))
        await beat_all(env, but=SCAN)
        assert (await deadman.check(env.services)).alerted
        await env.drain()
        await beat_all(env)
        assert (await deadman.check(env.services)).recovered
        await env.drain()
        seen = env.sent_to(OPS_CHAT)
        assert len(seen) == 2
        assert seen[0].startswith("⚠️ 群办运行滞后")
        assert seen[1].startswith("✅ 群办已恢复正常")


async def test_a_message_stuck_in_the_outbox_alerts_even_while_every_sweep_runs(
    engine: AsyncEngine,
) -> None:
    async with open_env(engine, outbox_alert_after="15m") as env:
        await env.report()  # queues the card; nobody sends it
        for _ in range(16):
            env.clock.advance(timedelta(minutes=1))
            await beat_all(env)
            await deadman.check(env.services)
        messages = await ops_messages(env)
        assert len(messages) == 1
        assert "最早一条未发出的消息已等待 16 min（上限 15 min）" in messages[0]

        await env.drain()  # the queue moves again: the alert itself goes out with it
        assert (await deadman.check(env.services)).recovered
        assert len(await ops_messages(env)) == 2


async def test_a_second_incident_is_told_again(engine: AsyncEngine) -> None:
    async with open_env(engine) as env:
        for stalled in (SCAN, SENDER):
            await beat_all(env)
            env.clock.advance(timedelta(minutes=4))
            await beat_all(env, but=stalled)
            assert (await deadman.check(env.services)).alerted
            await beat_all(env)
            assert (await deadman.check(env.services)).recovered
        assert len(await ops_messages(env)) == 4


async def test_two_instances_alert_once_between_them(engine: AsyncEngine) -> None:
    async with (
        open_env(engine) as first,
        open_env(engine, clock=first.clock, org=first.org) as second,
    ):
        await beat_all(first)
        await beat_all(second)
        first.clock.advance(timedelta(minutes=4))
        await beat_all(first, but=SCAN)
        await beat_all(second, but=SCAN)
        results = [await deadman.check(first.services), await deadman.check(second.services)]
        assert [r.alerted for r in results] == [True, False]
        assert len(await ops_messages(first)) == 1


async def test_without_an_ops_chat_the_alert_goes_to_the_log(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_env(engine, ops_chat_id=None) as env:
        await beat_all(env)
        env.clock.advance(timedelta(minutes=4))
        await beat_all(env, but=SCAN)
        with caplog.at_level(logging.ERROR, logger="bot.deadman"):
            assert (await deadman.check(env.services)).alerted
        assert await ops_messages(env) == []
        assert "idle-ticket scan has not run" in caplog.text
        assert "QUNBAN_OPS_CHAT_ID is not set" in caplog.text


def test_durations_read_the_way_people_say_them() -> None:
    assert deadman.span(timedelta(seconds=45)) == "45 s"
    assert deadman.span(timedelta(seconds=90)) == "1 min 30 s"
    assert deadman.span(timedelta(minutes=12, seconds=5)) == "12 min"
    assert deadman.span(timedelta(hours=3, minutes=5)) == "3 h 5 min"
    assert deadman.span(timedelta(days=2, hours=4)) == "2 d 4 h"


async def test_the_switch_runs_as_a_job_beside_the_sweeps(engine: AsyncEngine) -> None:
    async with open_env(engine) as env:
        app = build_application(
            env.services.settings,
            clock=env.clock,
            request=DoubleRequest(env.double),
            services=env.services,
            token=TOKEN,
        )
        async with app:
            assert app.job_queue is not None
            [job] = app.job_queue.get_jobs_by_name(deadman.DEADMAN_JOB)
            await beat_all(env)
            env.clock.advance(timedelta(minutes=4))
            await beat_all(env, but=SCAN)
            await job.run(app)
            [scan] = app.job_queue.get_jobs_by_name(SCAN_JOB)
            await scan.run(app)  # the scan runs again, and says so
            await job.run(app)
        assert len(await ops_messages(env)) == 2

"""/healthz and /metrics: what an operations team's monitoring sees."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.heartbeats import COMPONENTS, SCAN, SENDER
from bot.ops import health, ops_app, serve_ops
from storage.db import make_engine
from tests.factories import GROUP, Org
from tests.opskit import OpsEnv, open_env


def client_of(env: OpsEnv) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=ops_app(env.services))
    return httpx.AsyncClient(transport=transport, base_url="http://ops")


async def beat_all(env: OpsEnv, *, but: str | None = None) -> None:
    for part in COMPONENTS:
        if part != but:
            await env.services.ops.beat(part)


def samples(text: str) -> dict[str, float]:
    """Every sample of a scrape, keyed `name{label=value,…}`."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


async def test_healthz_turns_503_while_the_sender_is_stopped_and_200_after_it_runs(
    engine: AsyncEngine,
) -> None:
    async with open_env(engine) as env, client_of(env) as client:
        await beat_all(env)
        assert (await client.get("/healthz")).status_code == 200

        env.clock.advance(timedelta(minutes=2))
        await beat_all(env, but=SENDER)  # everything runs but the sender
        late = await client.get("/healthz")
        assert late.status_code == 503
        assert late.json()["late"] == [SENDER]
        assert late.json()["components"][SENDER]["late"] is True

        await env.drain()  # the sender runs once
        again = await client.get("/healthz")
        assert again.status_code == 200, again.json()
        assert again.json()["status"] == "ok"


async def test_a_part_that_never_ran_is_late_once_its_interval_has_passed(
    engine: AsyncEngine,
) -> None:
    async with open_env(engine) as env:
        assert (await health(env.services)).ok  # just started: nobody is late yet
        env.clock.advance(timedelta(minutes=3))
        await beat_all(env, but=SCAN)
        report = await health(env.services)
        assert report.status == 503
        assert report.late == [SCAN]
        assert report.to_dict()["components"][SCAN]["last"] is None


async def test_another_process_sees_the_heartbeats_through_the_database(
    engine: AsyncEngine,
) -> None:
    async with open_env(engine) as first:
        await beat_all(first)
        async with open_env(engine, clock=first.clock, org=first.org) as second:
            first.clock.advance(timedelta(minutes=1))
            report = await health(second.services)
            assert report.ok, report.to_dict()
            beats = {c.name: c.last for c in report.components}
            assert beats[SCAN] == first.clock.now() - timedelta(minutes=1)


async def test_a_runner_can_leave_out_a_part_it_does_not_run(engine: AsyncEngine) -> None:
    async with open_env(engine) as env:
        env.services.ops.heartbeats.expect("receiver", None)  # webhook mode: no poller
        env.clock.advance(timedelta(minutes=5))
        await beat_all(env, but="receiver")
        report = await health(env.services)
        assert report.ok
        assert "receiver" not in report.to_dict()["components"]


async def test_healthz_is_503_with_the_reason_when_the_database_does_not_answer() -> None:
    url = "postgresql+asyncpg://qunban:pg-password-never-shown@127.0.0.1:1/qunban"
    broken = make_engine(url)
    try:
        # a database that cannot be reached has no org chart to build
        async with open_env(broken, org=Org(), database_url=url) as env, client_of(env) as client:
            await beat_all(env)
            answer = await client.get("/healthz")
        assert answer.status_code == 503
        assert answer.json()["status"] == "unhealthy"
        assert answer.json()["database"] != "ok"
        assert "pg-password-never-shown" not in answer.text
    finally:
        await broken.dispose()


async def test_metrics_parse_and_move_with_real_traffic(engine: AsyncEngine) -> None:
    async with open_env(engine) as env, client_of(env) as client:
        before = samples((await client.get("/metrics")).text)
        assert before["qunban_messages_sent_total"] == 0
        assert before["qunban_outbox_depth"] == 0
        assert before["qunban_tickets{state=reported}"] == 0

        await env.report()
        await env.report("营业执照 license renewal")
        queued = samples((await client.get("/metrics")).text)
        assert queued["qunban_outbox_depth"] > 0
        assert sum(v for k, v in queued.items() if k.startswith("qunban_tickets{")) == 2

        env.clock.advance(timedelta(seconds=30))
        stuck = samples((await client.get("/metrics")).text)
        assert stuck["qunban_outbox_oldest_pending_seconds"] == 30

        drained = await env.drain()
        after = samples((await client.get("/metrics")).text)
        assert drained.sent > 0
        assert after["qunban_messages_sent_total"] == drained.sent
        assert after["qunban_outbox_depth"] == 0
        assert after["qunban_outbox_oldest_pending_seconds"] == 0
        assert after["qunban_database_up"] == 1
        assert env.sent_to(GROUP), "the group saw the cards"


async def test_metrics_expose_every_family_the_operators_watch(engine: AsyncEngine) -> None:
    async with open_env(engine) as env, client_of(env) as client:
        ops = env.services.ops
        ops.metrics.updates_received.inc(3)
        ops.metrics.updates_handled.inc(2)
        ops.metrics.nudges_sent.inc()
        ops.metrics.digests_sent.inc()
        async with ops.sweep(SCAN):
            pass
        answer = await client.get("/metrics")
        assert answer.headers["content-type"].startswith("text/plain")
        names = {family.name for family in text_string_to_metric_families(answer.text)}
        found = samples(answer.text)
    assert {
        "qunban_updates_received",
        "qunban_updates_handled",
        "qunban_inbox_lag_seconds",
        "qunban_inbox_parked",
        "qunban_outbox_depth",
        "qunban_outbox_oldest_pending_seconds",
        "qunban_messages_sent",
        "qunban_messages_retried",
        "qunban_messages_given_up",
        "qunban_telegram_429",
        "qunban_ambiguous_sends",
        "qunban_nudges_sent",
        "qunban_digests_sent",
        "qunban_sweep_duration_seconds",
        "qunban_tickets",
        "qunban_heartbeat_age_seconds",
    } <= names
    assert found["qunban_updates_received_total"] == 3
    assert found["qunban_sweep_duration_seconds_count{sweep=scan}"] == 1
    assert found["qunban_heartbeat_age_seconds{component=scan}"] == 0


async def test_a_sweep_that_fails_is_timed_but_is_no_heartbeat(engine: AsyncEngine) -> None:
    async with open_env(engine) as env:
        ops = env.services.ops
        with pytest.raises(RuntimeError):
            async with ops.sweep(SCAN):
                raise RuntimeError("boom")
        assert SCAN not in ops.heartbeats.merged()
        scans = ops.metrics.registry.get_sample_value(
            "qunban_sweep_duration_seconds_count", {"sweep": SCAN}
        )
        assert scans == 1


async def test_two_services_keep_separate_registries(engine: AsyncEngine) -> None:
    async with (
        open_env(engine) as first,
        open_env(engine, clock=first.clock, org=first.org) as second,
    ):
        first.services.ops.metrics.updates_received.inc()
        value = second.services.ops.metrics.registry.get_sample_value(
            "qunban_updates_received_total"
        )
        assert value == 0


async def test_serve_ops_answers_on_its_own_port_and_stops_when_cancelled(
    engine: AsyncEngine,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with open_env(engine) as env:
        await beat_all(env)
        task = asyncio.create_task(serve_ops(env.services, "127.0.0.1", port))
        try:
            answer = await _get_when_up(f"http://127.0.0.1:{port}/healthz")
            assert answer.status_code == 200
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        with pytest.raises(httpx.ConnectError):
            await httpx.AsyncClient().get(f"http://127.0.0.1:{port}/healthz")


async def _get_when_up(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        for _ in range(200):  # the listener is starting in the same loop
            try:
                return await client.get(url)
            except httpx.ConnectError:
                await asyncio.sleep(0.01)
    raise AssertionError(f"{url} never answered")

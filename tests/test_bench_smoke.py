"""The benchmarks keep working: every case runs end to end at toy sizes (no timing is judged)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bench import intake, sender
from bench.__main__ import CASES, Plan, main
from bench.history import Sizes
from bot.ratelimit import Limits

TINY = Plan(
    history=Sizes(400, 60, 10),
    smaller=Sizes(200, 60, 10),
    intake=intake.IntakeSizes(updates=12, latency_seconds=0.3, runs=1),
    sender=sender.SenderSizes(messages=40, chats=8),
    runs=1,
)


@pytest.mark.parametrize(
    "engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_every_case_runs_and_reports_itself(
    engine: str, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    if engine == "postgres":
        request.getfixturevalue("pg_url")  # skips without a server, as the suite does
    results = await main(["--engine", engine], plan=TINY)
    printed = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"
    ]
    names = {r["name"].split(".")[0] for r in printed}
    assert names == set(CASES)
    assert len(printed) == len(results)
    for line in printed:
        assert {"name", "engine", "figures", "floor", "ratio", "target", "pass"} <= line.keys()
        assert line["engine"] == engine
    sweep = next(r for r in results if r.name == "sweep")
    assert sweep.figures["nudges_sent"] > 0  # the due tickets were found and nudged
    sent = next(r for r in results if r.name == "sender")
    assert sent.figures["lost"] == 0
    assert sent.figures["violations"] == 0


def test_the_sender_case_scales_the_limits_down_to_what_the_machine_can_send() -> None:
    assert sender.scale_for(10_000) == sender.SCALE  # a fast machine: Telegram's ×20
    assert sender.scale_for(30 * 20 * sender.HEADROOM) == 20
    assert sender.scale_for(30 * 20 * sender.HEADROOM - 1) == 10  # just short of ×20
    assert sender.scale_for(700) == 10
    assert sender.scale_for(10) == 1  # never looser than nothing, never below Telegram's own


def test_the_allowed_rate_is_the_overall_limit_unless_one_chat_holds_the_queue_up() -> None:
    limits = Limits()
    assert sender.allowed_per_s(limits, Counter(range(300))) == 30
    # one private chat with 11 messages needs 10 s between its first and last
    assert sender.allowed_per_s(limits, Counter({1: 11})) == 11 / 10
    # a group's 41 messages need two more minutes after the first window
    assert sender.allowed_per_s(limits, Counter({-1: 41})) == 41 / 120

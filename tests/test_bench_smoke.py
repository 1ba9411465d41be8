"""The benchmarks keep working: every case runs end to end at toy sizes (no timing is judged)."""

from __future__ import annotations

import json

import pytest

from bench import intake, sender
from bench.__main__ import CASES, Plan, main
from bench.history import Sizes

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

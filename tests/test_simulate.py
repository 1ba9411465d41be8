"""The offline week: the README's first command plays a whole week through the product."""

import io

import pytest

from bot.simulate import ScenarioError, run_scenario


async def test_the_baotou_week_plays_through_the_whole_product(tmp_path):
    out = io.StringIO()
    await run_scenario(None, language="en", out=out, charts=tmp_path)
    week = out.getvalue()
    # routing, claims, a return approved, a merge, a redo, supervision, a holiday, the ladder
    assert "#1 · assigned" in week
    assert "#2 return approved by 马晓燕" in week
    assert "#4 merged into #2 by 马晓燕" in week
    assert "sent back for redo" in week
    assert "#3 is under supervision by 王海峰" in week
    assert "2026-06-19" not in week  # the Dragon Boat Festival: nothing happens, nobody nudged
    assert "⏰ #3" in week
    assert "Daily digest" in week
    assert "#2 is under supervision by the system" in week  # overdue: supervised automatically
    assert "end of simulation: 5 tickets" in week
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".png"] * len(list(tmp_path.iterdir()))


async def test_an_unknown_scenario_is_one_clear_error():
    with pytest.raises(ScenarioError, match="no scenario 'nowhere'; known: baotou-week"):
        await run_scenario("nowhere", out=io.StringIO())

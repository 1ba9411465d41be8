"""The department ranking and the accountability record, on the hand-checked data set."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.app import Services, build_services
from bot.clock import ManualClock
from bot.config import Settings
from bot.errors import InvalidTransitionError, LeadersOnlyError, NotRegisteredError
from bot.markup import visible_text
from tests.bot.services.test_digests import build_dataset
from tests.factories import Org


@pytest.fixture
async def region(engine: AsyncEngine, clock: ManualClock, org: Org) -> Services:
    """The data set of the digest tests, read on 10 March 2026 at 08:30."""
    settings = Settings(_env_file=None, calendar="24x7")  # type: ignore[call-arg]
    services = build_services(settings, clock=clock, engine=engine, limits=None)
    await build_dataset(services, clock, org)
    return services


async def test_the_ranking_lists_the_departments_best_first(region: Services, org: Org) -> None:
    text = visible_text(await region.records.ranking(org["mayor"], 30))
    lines = [line for line in text.splitlines() if line[:2] in ("1.", "2.", "3.")]
    assert lines == ["1. East Environment · A", "2. Tax Bureau · B", "3. Market Regulation · C"]
    assert "Department ranking · Metro City" in text


async def test_over_a_week_older_tickets_still_sitting_count_against_the_department(
    region: Services, org: Org
) -> None:
    text = visible_text(await region.records.ranking(org["mayor"], 7))
    market = text[text.index("Market Regulation") :]
    # #1 (assigned 1 March, never claimed) and #3 (overdue) weigh on the week
    assert "Market Regulation · C" in market
    assert "response 50% (1/2) · resolution 0% (0/2)" in market
    chart = await region.records.ranking_chart(org["mayor"], 7)
    assert chart is not None
    assert chart[:4] == b"\x89PNG"


async def test_only_leaders_see_rankings_and_records(region: Services, org: Org) -> None:
    for who in ("tax_clerk", "acme_boss", "city_coord"):
        with pytest.raises(LeadersOnlyError):
            await region.records.ranking(org[who], 30)
        with pytest.raises(LeadersOnlyError):
            await region.records.record(org[who], "tax", 30)
    with pytest.raises(NotRegisteredError):
        await region.records.ranking(1, 30)
    assert "Metro City" in await region.records.ranking(org["admin"], 30)


async def test_the_record_of_a_department(region: Services, org: Org) -> None:
    r = await region.records.record_of(org["mayor"], "market", 30)
    assert (r.subject, r.is_person) == ("Market Regulation", False)
    assert (r.assigned, r.claimed, r.returned, r.resolved, r.closed) == (3, 2, 0, 0, 0)
    assert (r.escalations, r.nudges, r.nudges_ignored, r.overdue_total) == (1, 3, 2, 2)
    assert [o.number for o in r.overdue] == [1, 3]
    assert r.figures is not None
    assert r.figures.tier == "C"
    env = await region.records.record_of(org["mayor"], "East Environment", 30)
    assert (env.assigned, env.claimed, env.returned, env.returns_rejected) == (2, 2, 1, 1)
    assert (env.resolved, env.closed, env.ratings) == (1, 1, (("satisfied", 1),))


async def test_the_record_of_an_official(region: Services, org: Org) -> None:
    r = await region.records.record_of(org["mayor"], "@tax_clerk", 30)
    assert (r.subject, r.is_person, r.department) == ("税务小王", True, "Tax Bureau")
    assert (r.claimed, r.resolved, r.closed, r.redo) == (2, 3, 2, 1)
    assert r.ratings == (("satisfied", 1), ("basic", 1), ("unsatisfied", 1))
    assert r.figures is None
    head = await region.records.record_of(org["mayor"], "env_head", 30)
    assert (head.claimed, head.returned, head.returns_rejected, head.resolved) == (2, 1, 1, 1)
    text = visible_text(await region.records.record(org["mayor"], "@tax_clerk", 30))
    assert "Record of 税务小王 (Tax Bureau), last 30 days" in text
    assert "sent back for redo: 1" in text


async def test_a_county_leader_sees_the_county_only(region: Services, org: Org) -> None:
    r = await region.records.record_of(org["east_leader"], "market", 30)
    assert (r.assigned, r.claimed, r.overdue_total) == (1, 0, 1)
    assert (r.nudges, r.nudges_ignored) == (1, 1)


async def test_a_target_nobody_in_scope_answers_to_is_refused(region: Services, org: Org) -> None:
    for target in ("nobody", "@acme_boss", "@mayor"):
        with pytest.raises(InvalidTransitionError) as refused:
            await region.records.record(org["mayor"], target, 30)
        assert refused.value.code == "unknown_department"
    # no target: the ranking
    assert "Department ranking" in await region.records.record(org["mayor"], None, 30)

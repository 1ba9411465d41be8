"""The leaders' daily digest: figures checked by hand, sent once per leader per working day."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from bot.app import Services, build_services
from bot.clock import ManualClock
from bot.config import Settings
from bot.errors import LeadersOnlyError, UsageError
from bot.markup import visible_text
from bot.services.digests import Rate, similar, tier_of, tokens
from storage.db import create_schema, make_engine
from storage.tables import DigestRun, Nudge, Outbox, TicketEvent
from storage.uow import UnitOfWorkFactory
from tests.bot.services.conftest import Flow
from tests.conftest import reset_postgres
from tests.factories import COUNTY_GROUP, GROUP, Org, build_org

TZ = ZoneInfo("Asia/Shanghai")
DIGEST_DAY = date(2026, 3, 10)


def at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=TZ)


@pytest.fixture
def services(engine: AsyncEngine, settings: Settings, clock: ManualClock) -> Services:
    return build_services(settings, clock=clock, engine=engine, limits=None)


@pytest.fixture
def always_open(engine: AsyncEngine, clock: ManualClock) -> Services:
    settings = Settings(_env_file=None, calendar="24x7")  # type: ignore[call-arg]
    return build_services(settings, clock=clock, engine=engine, limits=None)


# ---- a small region's fortnight, every figure worked out by hand ----------------------------


@dataclass
class Dataset:
    """Ticket numbers by the story they tell (created in this order: #1 … #8)."""

    road: int = 1  # acme (east) → market, never claimed: overdue since 6 Mar 09:00
    refund: int = 2  # beta (city) → tax, claimed in 1 h, promise kept, satisfied
    licence_west: int = 3  # gamma (west) → market, claimed, overdue since 7 Mar 09:30
    printer: int = 4  # gamma (west) → tax, claimed late, redone once, promise broken
    quota: int = 5  # acme (east) → tax, resolved and rated satisfied on 9 Mar
    licence_city: int = 6  # beta (city) → market, claimed on 9 Mar
    check: int = 7  # acme (east) → east_env, resolved and satisfied on 9 Mar
    permit: int = 8  # acme (east) → east_env, returned, return rejected, then claimed


async def build_dataset(services: Services, clock: ManualClock, org: Org) -> Dataset:
    """Plain clock time (24x7): the response limit is 2 h, the due time 5 days."""
    t = services.tickets
    counter = iter(range(100, 200))

    async def report(who: str, text: str, chat: int | None = None) -> None:
        private = chat is None
        await t.report(
            org[who], text, chat_id=chat or org[who], message_id=next(counter), private=private
        )

    steps = [
        (at(3, 1, 9), lambda: report("acme_boss", ROAD, COUNTY_GROUP)),
        (at(3, 1, 9), lambda: t.assign(org["east_coord"], 1, "market")),
        (at(3, 2, 9), lambda: report("beta_boss", "Our invoice refund is late", GROUP)),
        (at(3, 2, 9, 30), lambda: report("gamma_boss", "营业执照变更审批两个月没有办理")),
        (at(3, 2, 10), lambda: t.claim(org["tax_clerk"], 2, date(2026, 3, 5))),
        (at(3, 2, 10), lambda: t.claim(org["market_head"], 3)),
        (
            at(3, 3, 9),
            lambda: report("gamma_boss", "The invoice printer registration was refused"),
        ),
        (at(3, 3, 12), lambda: t.claim(org["tax_clerk"], 4, date(2026, 3, 4))),
        (at(3, 4, 10), lambda: t.resolve(org["tax_clerk"], 2, "refund paid")),
        (at(3, 4, 11), lambda: t.rate(org["beta_boss"], 2, "satisfied")),
        (at(3, 5, 9), lambda: t.resolve(org["tax_clerk"], 4, "registered")),
        (at(3, 5, 10), lambda: t.rate(org["gamma_boss"], 4, "unsatisfied", "still refused")),
        (at(3, 6, 9), lambda: t.resolve(org["tax_clerk"], 4, "registered again")),
        (at(3, 6, 10), lambda: t.rate(org["gamma_boss"], 4, "basic")),
        (at(3, 8, 9), lambda: report("acme_boss", "Our invoice quota is too small", COUNTY_GROUP)),
        (at(3, 8, 9, 30), lambda: t.claim(org["tax_head"], 5)),
        (at(3, 9, 9), lambda: t.resolve(org["tax_head"], 5, "quota raised")),
        (at(3, 9, 9), lambda: report("beta_boss", "营业执照变更审批一直没有办理", GROUP)),
        (at(3, 9, 10), lambda: t.rate(org["acme_boss"], 5, "satisfied")),
        (at(3, 9, 10), lambda: t.claim(org["market_head"], 6)),
        (at(3, 9, 10), lambda: report("acme_boss", "A pollution check at the gate", COUNTY_GROUP)),
        (at(3, 9, 10, 30), lambda: t.claim(org["env_head"], 7)),
        (
            at(3, 9, 11),
            lambda: report("acme_boss", "Our pollution permit renewal is stuck", COUNTY_GROUP),
        ),
        (at(3, 9, 11, 30), lambda: t.return_(org["env_head"], 8, "the city's bureau issues it")),
        (at(3, 9, 12), lambda: t.reject_return(org["east_coord"], 8)),
        (at(3, 9, 12, 30), lambda: t.claim(org["env_head"], 8)),
        (at(3, 9, 15), lambda: t.resolve(org["env_head"], 7, "checked")),
        (at(3, 9, 16), lambda: t.rate(org["acme_boss"], 7, "satisfied")),
    ]
    for when, step in steps:
        clock.set(when)
        await step()
    async with services.uows() as uow:
        head = await uow.org.person_by_telegram(org["market_head"])
        assert head is not None
        for ticket, rung, slot, when, acted in (
            (3, "idle", 1, at(3, 9, 12), False),
            (1, "unclaimed", 2, at(3, 9, 12), False),
            (3, "unclaimed", 3, at(3, 2, 9, 45), True),
        ):
            uow.schedule.add(
                Nudge(
                    ticket_id=ticket, rung=rung, person_id=head.id, slot=slot, at=when, acted=acted
                )
            )
        uow.events.add(
            TicketEvent(
                ticket_id=3,
                kind="escalate",
                from_state="claimed",
                to_state="claimed",
                note="Mia Mayor",
                data={"rung": "escalate"},
                at=at(3, 9, 12),
            )
        )
        await uow.commit()
    clock.set(at(3, 10, 8, 30))
    return Dataset()


ROAD = "Warehouse road blocked by construction trucks"


async def region_id(uows: UnitOfWorkFactory, code: str) -> int:
    async with uows(readonly=True) as uow:
        region = await uow.org.region_by_code(code)
        assert region is not None
        return region.id  # type: ignore[return-value]


def figures(digest, code):  # type: ignore[no-untyped-def]
    return next(d for d in digest.departments if d.code == code)


async def test_the_city_digest_matches_the_figures_worked_out_by_hand(
    always_open: Services, clock: ManualClock, org: Org
) -> None:
    data = await build_dataset(always_open, clock, org)
    digest = await always_open.digests.build(
        await region_id(always_open.uows, "metro"), DIGEST_DAY
    )

    assert (digest.start, digest.end) == (at(3, 9, 8, 30), at(3, 10, 8, 30))
    assert (digest.new, digest.claimed, digest.resolved, digest.closed) == (3, 3, 2, 2)
    assert digest.escalations == 1
    assert dict(digest.open_by_state) == {"assigned": 1, "claimed": 3}
    # the overdue list, the longest overdue first
    assert [(o.number, o.department, o.claimant) for o in digest.overdue] == [
        (data.road, "Market Regulation", None),
        (data.licence_west, "Market Regulation", "Max Market"),
    ]
    assert [o.idle for o in digest.overdue] == [
        timedelta(days=8, hours=23, minutes=30),
        timedelta(days=7, hours=22, minutes=30),
    ]
    assert digest.overdue_total == 2
    # the ranking: east_env A, tax B, market C
    assert [(d.rank, d.code, d.tier) for d in digest.departments] == [
        (1, "east_env", "A"),
        (2, "tax", "B"),
        (3, "market", "C"),
    ]
    env, tax, market = (figures(digest, c) for c in ("east_env", "tax", "market"))
    assert (env.assigned, env.response, env.resolution, env.satisfaction) == (
        2,
        Rate(2, 2),
        Rate(1, 1),
        Rate(1, 1),
    )
    assert env.returns_disputed == 1
    assert (tax.assigned, tax.response, tax.resolution, tax.satisfaction) == (
        3,
        Rate(2, 3),  # the printer was claimed 3 h after assignment
        Rate(3, 3),
        Rate(3, 4),  # satisfied, unsatisfied, basic, satisfied
    )
    assert (tax.promises, tax.redo) == (Rate(1, 2), 1)
    assert tax.score == pytest.approx((2 / 3 + 1 + 3 / 4) / 3)
    assert (market.response, market.resolution, market.satisfaction) == (
        Rate(2, 3),
        Rate(0, 2),  # the licence of 9 Mar is not due yet and counts neither way
        Rate(0, 0),
    )
    assert (market.nudges_ignored, market.escalations, market.overdue) == (2, 1, 2)
    assert market.score == pytest.approx(1 / 3)
    # only the exceptions by name
    assert [(i.name, i.department, i.count) for i in digest.ignored] == [
        ("Max Market", "Market Regulation", 2)
    ]
    assert digest.nudges_ignored == 2
    assert [(c.numbers, c.department, c.enterprises) for c in digest.clusters] == [
        ((data.licence_west, data.licence_city), "Market Regulation", 2)
    ]


async def test_a_county_leader_sees_the_county_only(
    always_open: Services, clock: ManualClock, org: Org
) -> None:
    data = await build_dataset(always_open, clock, org)
    digest = await always_open.digests.build(await region_id(always_open.uows, "east"), DIGEST_DAY)
    assert (digest.new, digest.claimed, digest.resolved, digest.closed) == (2, 2, 2, 2)
    assert digest.escalations == 0
    assert [o.number for o in digest.overdue] == [data.road]
    assert [(d.code, d.tier, d.assigned) for d in digest.departments] == [
        ("east_env", "A", 2),
        ("tax", "A", 1),
        ("market", "C", 1),
    ]
    assert figures(digest, "market").nudges_ignored == 1
    assert digest.clusters == ()


async def test_the_digest_reads_as_the_leader_needs_it(
    always_open: Services, clock: ManualClock, org: Org
) -> None:
    await build_dataset(always_open, clock, org)
    html = await always_open.digests.text_for("metro", DIGEST_DAY, "en")
    text = visible_text(html)  # valid Telegram HTML
    assert "Daily digest · Metro City · 2026-03-10" in text
    assert "3 new · 3 claimed · 2 resolved · 2 closed" in text
    overdue = text.index("Overdue (2)")
    assert overdue < text.index("#1 Market Regulation") < text.index("#3 Market Regulation")
    assert "1. East Environment · A" in text
    assert "2. Tax Bureau · B" in text
    assert "response 67% (2/3)" in text
    assert "3. Market Regulation · C" in text
    assert "Max Market (Market Regulation): 2" in text
    assert "#3, #6 · Market Regulation · 2 enterprises" in text
    # `qunban digest` without a region prints the top region's
    assert await always_open.digests.text_for(None, DIGEST_DAY, "en") == html
    with pytest.raises(UsageError):
        await always_open.digests.text_for("atlantis", DIGEST_DAY, "en")


async def test_digest_on_demand_is_for_leaders_only(
    always_open: Services, clock: ManualClock, org: Org
) -> None:
    await build_dataset(always_open, clock, org)
    mine = await always_open.digests.text_for(org["east_leader"])
    assert "East County" in visible_text(mine)
    with pytest.raises(LeadersOnlyError):
        await always_open.digests.text_for(org["tax_clerk"])
    with_chart = await always_open.digests.for_leader(org["mayor"])
    assert with_chart.chart_png is not None
    assert with_chart.chart_png[:4] == b"\x89PNG"


def test_similar_reports_share_words_or_character_pairs() -> None:
    assert similar(tokens("出口退税三个月还没到账"), tokens("退税进度慢，三个月未到账"))
    assert not similar(tokens("出口退税三个月还没到账"), tokens("厂区道路施工被堵"))
    assert similar(tokens("Export tax refund delayed"), tokens("tax refund delayed again"))
    assert not similar(tokens("our company has a problem"), tokens("the company has a question"))


def test_tiers() -> None:
    assert [tier_of(x) for x in (1.0, 0.9, 0.899, 0.75, 0.74, 0.0, None)] == list("AABBCC—")


# ---- sending: once per leader per working day ----------------------------------------------


async def digests_sent(uows: UnitOfWorkFactory) -> list[tuple[int, date, bool]]:
    async with uows(readonly=True) as uow:
        rows = (await uow.session.exec(select(DigestRun).order_by(col(DigestRun.id)))).all()
        return [(r.leader_id, r.day, r.late) for r in rows]


async def outbox_to(uows: UnitOfWorkFactory, chat_id: int) -> list[Outbox]:
    async with uows(readonly=True) as uow:
        query = select(Outbox).where(Outbox.chat_id == chat_id).order_by(col(Outbox.id))
        rows = list((await uow.session.exec(query)).all())
        uow.session.expunge_all()
    return rows


LEADERS = ("mayor", "east_leader", "west_leader")


async def test_each_leader_gets_one_digest_per_working_day(
    services: Services, clock: ManualClock, org: Org
) -> None:
    clock.set(at(3, 2, 8, 29))  # Monday
    assert await services.digests.send_due() == ()
    clock.set(at(3, 2, 8, 30))
    sent = await services.digests.send_due()
    assert sorted(s.telegram_id for s in sent) == sorted(org[k] for k in LEADERS)
    assert not any(s.late for s in sent)
    clock.set(at(3, 2, 8, 31))
    assert await services.digests.send_due() == ()
    clock.set(at(3, 3, 8, 30))
    assert len(await services.digests.send_due()) == 3
    runs = await digests_sent(services.uows)
    assert [(day, late) for _, day, late in runs] == [(date(2026, 3, 2), False)] * 3 + [
        (date(2026, 3, 3), False)
    ] * 3
    for leader in LEADERS:
        texts = [r.payload["text"] for r in await outbox_to(services.uows, org[leader])]
        assert len(texts) == 2
        assert all("igest" in t or "日报" in t for t in texts)


async def test_no_digest_on_a_holiday_but_one_on_a_make_up_working_day(
    services: Services, clock: ManualClock, org: Org
) -> None:
    for day in (1, 3, 4, 7):  # National Day week: holidays and a weekend
        clock.set(at(10, day, 9))
        assert await services.digests.send_due() == (), day
    clock.set(at(10, 10, 9))  # Saturday 10 October is a working day
    assert len(await services.digests.send_due()) == 3
    assert {day for _, day, _ in await digests_sent(services.uows)} == {date(2026, 10, 10)}


async def test_a_restart_across_the_digest_time_sends_it_once_late(
    engine: AsyncEngine, services: Services, clock: ManualClock, settings: Settings, org: Org
) -> None:
    clock.set(at(3, 4, 8, 20))
    assert await services.digests.send_due() == ()
    # down from 08:20 to 09:40; a new process starts
    clock.set(at(3, 4, 9, 40))
    restarted = build_services(settings, clock=clock, engine=engine, limits=None)
    sent = await restarted.digests.send_due()
    assert len(sent) == 3
    assert all(s.late for s in sent)
    assert await services.digests.send_due() == ()
    assert await restarted.digests.send_due() == ()
    [row] = await outbox_to(services.uows, org["mayor"])
    assert "08:30" in row.payload["text"]
    assert all(late for _, _, late in await digests_sent(services.uows))


async def test_the_digest_covers_the_time_since_the_previous_working_days_digest(
    services: Services, clock: ManualClock, org: Org
) -> None:
    metro = await region_id(services.uows, "metro")
    clock.set(at(2, 24, 9))  # the first working day after the Spring Festival
    digest = await services.digests.build(metro, date(2026, 2, 24))
    assert (digest.start, digest.end) == (at(2, 14, 8, 30), at(2, 24, 8, 30))


async def test_the_digest_comes_with_its_ranking_chart(
    services: Services, clock: ManualClock, flow: Flow, org: Org
) -> None:
    await flow.claimed()  # Monday 2 March: assigned and claimed at once
    clock.set(at(3, 3, 8, 30))
    await services.digests.send_due()
    rows = await outbox_to(services.uows, org["mayor"])
    assert [r.method for r in rows] == ["sendMessage", "sendPhoto"]
    photo = rows[1].payload
    assert base64.b64decode(photo["photo_b64"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert photo["parse_mode"] == "HTML"
    assert 0 < len(photo["caption"]) <= 1024
    visible_text(photo["caption"])


@pytest.mark.postgres
async def test_two_instances_send_each_digest_once(pg_url: str) -> None:
    await reset_postgres(pg_url)
    clock = ManualClock(at(3, 2, 8, 45))
    settings = Settings(_env_file=None, calendar="cn")  # type: ignore[call-arg]
    engines = [make_engine(pg_url), make_engine(pg_url)]
    try:
        await create_schema(engines[0])
        one, two = (build_services(settings, clock=clock, engine=e, limits=None) for e in engines)
        org = await build_org(one.uows)
        results = await asyncio.gather(one.digests.send_due(), two.digests.send_due())
        assert sum(len(r) for r in results) == 3
        for leader in LEADERS:
            assert len(await outbox_to(one.uows, org[leader])) == 1
        async with one.uows(readonly=True) as uow:
            runs = (await uow.session.exec(select(sa.func.count()).select_from(DigestRun))).one()
        assert runs == 3
    finally:
        for engine in engines:
            await engine.dispose()

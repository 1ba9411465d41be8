"""The escalation ladder against a real database, with the clock moved by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from bot.app import Services, build_services
from bot.clock import ManualClock
from bot.config import Settings
from bot.services.nudges import Ladder, Rung
from storage.db import create_schema, make_engine
from storage.tables import Nudge, Outbox, Person, Ticket, TicketEvent, TicketState
from storage.uow import UnitOfWorkFactory
from tests.bot.services.conftest import Flow
from tests.conftest import reset_postgres
from tests.factories import COUNTY_GROUP, GROUP, Org

TZ = ZoneInfo("Asia/Shanghai")
ROAD = "Our warehouse access road has been blocked for a week"


def at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=TZ)


@pytest.fixture
def services(engine: AsyncEngine, settings: Settings, clock: ManualClock) -> Services:
    return build_services(settings, clock=clock, engine=engine, limits=None)


@pytest.fixture
def always_open(engine: AsyncEngine, clock: ManualClock) -> Services:
    """Every hour a working hour, so durations are plain clock time."""
    settings = Settings(_env_file=None, calendar="24x7")  # type: ignore[call-arg]
    return build_services(settings, clock=clock, engine=engine, limits=None)


async def nudges(uows: UnitOfWorkFactory) -> list[tuple[str, str, str, bool]]:
    """(local time, rung, username, acted) of every nudge, in the order they were sent."""
    async with uows(readonly=True) as uow:
        query = (
            select(Nudge.at, Nudge.rung, Person.username, Nudge.acted)
            .join(Person, col(Person.id) == Nudge.person_id)
            .order_by(col(Nudge.id))
        )
        rows = (await uow.session.exec(query)).all()
    return [(t.astimezone(TZ).strftime("%m-%d %H:%M"), r, u, a) for t, r, u, a in rows]


async def outbox_since(uows: UnitOfWorkFactory, after_id: int) -> list[Outbox]:
    async with uows(readonly=True) as uow:
        query = select(Outbox).where(col(Outbox.id) > after_id).order_by(col(Outbox.id))
        rows = list((await uow.session.exec(query)).all())
        uow.session.expunge_all()
    return rows


async def last_outbox_id(uows: UnitOfWorkFactory) -> int:
    async with uows(readonly=True) as uow:
        return (await uow.session.exec(select(sa.func.max(Outbox.id)))).one() or 0


async def person_id(uows: UnitOfWorkFactory, username: str) -> int:
    async with uows(readonly=True) as uow:
        person = await uow.org.person_by_username(username)
        assert person is not None
        return person.id  # type: ignore[return-value]


# ---- the whole ladder, on the real calendar ------------------------------------------------


async def test_a_ticket_left_alone_climbs_every_rung_at_working_times(
    services: Services, clock: ManualClock, flow: Flow, org: Org
) -> None:
    # Friday 13 February 2026, the afternoon before the Spring Festival (15-23 February off,
    # Saturdays 14 and 28 February made working days); every half hour the scan runs
    tickets = services.tickets
    acts: dict[datetime, Callable[[int], Awaitable[object]]] = {
        at(2, 14, 11, 30): lambda n: tickets.assign(org["east_coord"], n, "tax"),
        at(2, 14, 16): lambda n: tickets.claim(org["tax_clerk"], n),
        at(3, 2, 14, 30): lambda n: tickets.resolve(org["tax_clerk"], n, "road cleared"),
    }
    clock.set(at(2, 13, 15))
    number = await flow.reported(text=ROAD, chat=COUNTY_GROUP)
    moment = clock.now()
    overdue_acted: list[tuple[str, str, str, bool]] = []
    while moment <= at(3, 11, 16):
        clock.set(moment)
        if moment in acts:
            await acts[moment](number)
        await services.nudges.scan()
        if moment == at(2, 28, 11, 30):
            overdue_acted = await nudges(services.uows)
        moment += timedelta(minutes=30)

    assert [n[:3] for n in await nudges(services.uows)] == [
        ("02-13 16:00", "unassigned", "east_coord"),
        ("02-14 11:00", "unassigned", "east_coord"),  # 4 working hours later, on the Saturday
        ("02-14 15:00", "unclaimed", "tax_head"),
        ("02-14 15:00", "unclaimed", "tax_clerk"),
        # claimed 14 Feb 16:00; one working day idle ends after the holiday
        ("02-24 16:00", "idle", "tax_clerk"),
        ("02-25 11:00", "idle", "tax_clerk"),
        ("02-25 16:00", "idle_head", "tax_head"),
        ("02-25 16:30", "idle", "tax_clerk"),
        ("02-26 11:00", "idle_head", "tax_head"),
        ("02-26 11:30", "idle", "tax_clerk"),
        ("02-26 16:30", "idle_head", "tax_head"),
        ("02-26 17:00", "idle", "tax_clerk"),
        ("02-27 11:30", "idle_head", "tax_head"),
        ("02-27 13:30", "idle", "tax_clerk"),  # fell due at 12:00, sent after lunch
        ("02-27 17:00", "idle_head", "tax_head"),
        ("02-28 08:30", "idle", "tax_clerk"),  # fell due at 17:30 on Friday
        ("02-28 11:30", "overdue", "east_leader"),  # five working days after assignment
        ("03-02 11:30", "idle", "tax_clerk"),  # supervision counted as activity
        ("03-02 11:30", "escalate", "mayor"),  # a working day after supervision: the city
        ("03-05 14:30", "rate_invite", "acme_boss"),  # three working days after 2 Mar 14:30
    ]
    # the auto-supervision did not count as an answer to the reminders the officials ignored
    ignored = {(r, u) for _, r, u, acted in overdue_acted if not acted}
    assert ignored == {
        ("idle", "tax_clerk"),
        ("idle_head", "tax_head"),
        ("overdue", "east_leader"),
    }
    ticket = await flow.ticket(number)
    assert ticket.state == TicketState.CLOSED
    assert ticket.closed_at == at(3, 11, 14, 30)  # seven working days after resolution
    kinds = [
        (e.kind, e.at.astimezone(TZ).strftime("%m-%d %H:%M"), e.actor_id)
        for e in await flow.events(number)
    ]
    assert ("supervise", "02-28 11:30", None) in kinds
    assert ("autoclose", "03-11 14:30", None) in kinds


async def test_no_nudge_is_sent_at_night(
    services: Services, clock: ManualClock, flow: Flow
) -> None:
    clock.set(at(3, 2, 17))
    await flow.reported(text=ROAD)
    moment = clock.now()
    reports = []
    while moment < at(3, 3, 9):
        moment += timedelta(minutes=15)
        clock.set(moment)
        reports.append(await services.nudges.scan())
    # an hour of working time from 17:00 is 17:30 plus the first half hour of Tuesday
    assert [n[:3] for n in await nudges(services.uows)] == [
        ("03-03 09:00", "unassigned", "city_coord")
    ]
    assert not any(r.working for r in reports if r.at.astimezone(TZ).hour in (20, 0, 3, 7))


# ---- one rung at a time, with plain clock time ---------------------------------------------


async def test_a_rerun_of_the_scan_at_the_same_moment_adds_nothing(
    always_open: Services, clock: ManualClock, flow: Flow
) -> None:
    await flow.reported(text=ROAD)
    clock.advance(timedelta(hours=1))
    first = await always_open.nudges.scan()
    outbox = await last_outbox_id(always_open.uows)
    again = await always_open.nudges.scan()
    assert [(n.rung, n.slot) for n in first.nudges] == [("unassigned", first.nudges[0].slot)]
    assert again.nudges == ()
    assert await outbox_since(always_open.uows, outbox) == []
    assert await flow.count(Nudge) == 1


async def test_a_nudge_is_not_repeated_inside_the_repeat_interval(
    always_open: Services, clock: ManualClock, flow: Flow
) -> None:
    start = clock.now()
    await flow.reported(text=ROAD)
    for offset in ("1:00", "2:00", "4:59", "5:00", "8:59", "9:00"):
        hours, minutes = map(int, offset.split(":"))
        clock.set(start + timedelta(hours=hours, minutes=minutes))
        await always_open.nudges.scan()
    # due after 1 h, then every 4 h: at 1:00, 5:00 and 9:00
    assert [n[:2] for n in await nudges(always_open.uows)] == [
        ("03-02 11:00", "unassigned"),
        ("03-02 15:00", "unassigned"),
        ("03-02 19:00", "unassigned"),
    ]


async def test_a_claim_just_before_the_scan_cancels_the_unclaimed_nudge(
    always_open: Services, clock: ManualClock, flow: Flow, org: Org
) -> None:
    number = await flow.assigned()
    clock.advance(timedelta(hours=2))
    await always_open.tickets.claim(org["tax_clerk"], number)
    assert (await always_open.nudges.scan()).nudges == ()
    assert await flow.count(Nudge) == 0


async def test_a_claim_between_the_sweep_and_the_nudge_cancels_it(
    always_open: Services, clock: ManualClock, flow: Flow, org: Org
) -> None:
    number = await flow.assigned()
    clock.advance(timedelta(hours=2))
    service = always_open.nudges
    due = service.ladder.due(await flow.ticket(number), clock.now())
    assert [d.rung for d in due] == [Rung.UNCLAIMED]
    # the sweep has read the ticket; the claim commits before the nudge's transaction
    await always_open.tickets.claim(org["tax_clerk"], number)
    sent = await service._nudge(number, {(d.rung, d.slot) for d in due}, clock.now())
    assert sent == []
    assert await flow.count(Nudge) == 0


async def test_officials_are_mentioned_in_the_group_and_told_privately_to_claim(
    always_open: Services, clock: ManualClock, flow: Flow, org: Org
) -> None:
    number = await flow.assigned()
    before = await flow.ticket(number)
    outbox = await last_outbox_id(always_open.uows)
    clock.advance(timedelta(hours=2))
    report = await always_open.nudges.scan()
    assert sorted(n.rung for n in report.nudges) == ["unclaimed", "unclaimed"]
    rows = await outbox_since(always_open.uows, outbox)
    [group] = [r for r in rows if r.chat_id == GROUP]
    for who in ("tax_head", "tax_clerk"):
        assert f'href="tg://user?id={org[who]}"' in group.payload["text"]
        [dm] = [r for r in rows if r.chat_id == org[who]]
        assert f"#{number}" in dm.payload["text"]
        buttons = dm.payload["reply_markup"]["inline_keyboard"]
        assert buttons[0][0]["callback_data"] == f"t1:claim:{number}"
    assert len(rows) == 3
    [event] = [e for e in await flow.events(number) if e.kind == "nudge"]
    assert (event.from_state, event.to_state, event.actor_id) == ("assigned", "assigned", None)
    assert event.data["rung"] == "unclaimed"
    # a reminder is not activity: the idle clock keeps running
    assert (await flow.ticket(number)).last_activity_at == before.last_activity_at


async def test_people_who_cannot_get_private_messages_are_mentioned_in_the_group(
    always_open: Services, clock: ManualClock, flow: Flow, org: Org
) -> None:
    number = await flow.claimed()
    async with always_open.uows() as uow:
        clerk = await uow.org.person_by_telegram(org["tax_clerk"])
        assert clerk is not None
        clerk.dm_blocked = True
        await uow.commit()
    outbox = await last_outbox_id(always_open.uows)
    clock.advance(timedelta(days=1))
    report = await always_open.nudges.scan()
    assert [n.rung for n in report.nudges] == ["idle"]
    rows = await outbox_since(always_open.uows, outbox)
    assert [r.chat_id for r in rows] == [GROUP]
    assert f'href="tg://user?id={org["tax_clerk"]}"' in rows[0].payload["text"]
    assert f"#{number}" in rows[0].payload["text"]


async def test_a_resolved_ticket_nobody_rates_is_invited_once_then_closed(
    always_open: Services, clock: ManualClock, flow: Flow, org: Org
) -> None:
    number = await flow.resolved()
    resolved = clock.now()
    clock.set(resolved + timedelta(days=3) - timedelta(minutes=1))
    assert (await always_open.nudges.scan()).nudges == ()
    outbox = await last_outbox_id(always_open.uows)
    clock.set(resolved + timedelta(days=3))
    assert [n.rung for n in (await always_open.nudges.scan()).nudges] == ["rate_invite"]
    [invite] = await outbox_since(always_open.uows, outbox)
    assert invite.chat_id == org["acme_boss"]
    rates = [
        b["callback_data"]
        for row in invite.payload["reply_markup"]["inline_keyboard"]
        for b in row
    ]
    assert rates == [f"t1:rate:{number}:{c}" for c in "sbun"]
    clock.set(resolved + timedelta(days=6))
    assert (await always_open.nudges.scan()).nudges == ()  # one invitation only
    clock.set(resolved + timedelta(days=7))
    report = await always_open.nudges.scan()
    assert report.closed == (number,)
    ticket = await flow.ticket(number)
    assert (ticket.state, ticket.rating) == (TicketState.CLOSED, None)
    assert (await always_open.nudges.scan()).closed == ()
    assert [e.kind for e in await flow.events(number)][-2:] == ["remind_rate", "autoclose"]


async def test_the_ladder_reads_whole_day_settings_as_working_days(
    settings: Settings, services: Services
) -> None:
    ladder = Ladder(services.calendar, settings)
    assert ladder.idle == timedelta(hours=7, minutes=30)
    assert ladder.autoclose == 7 * timedelta(hours=7, minutes=30)
    assert ladder.unclaimed == timedelta(hours=2)


# ---- several instances on PostgreSQL -------------------------------------------------------


@pytest.mark.postgres
async def test_two_scans_at_once_send_each_nudge_exactly_once(pg_url: str) -> None:
    from tests.factories import build_org

    await reset_postgres(pg_url)
    clock = ManualClock(at(3, 2, 9))
    settings = Settings(_env_file=None, calendar="24x7", report_limit_per_hour=100)  # type: ignore[call-arg]
    engines = [make_engine(pg_url), make_engine(pg_url)]
    try:
        await create_schema(engines[0])
        one, two = (build_services(settings, clock=clock, engine=e, limits=None) for e in engines)
        org = await build_org(one.uows)
        flow = Flow(one.tickets, one.uows, org)
        numbers = []
        for i in range(12):
            numbers.append(await flow.reported(text=f"{ROAD} ({i})"))
            numbers.append(await flow.assigned(text=f"{ROAD} [{i}]"))
            numbers.append(await flow.claimed(text=f"{ROAD} <{i}>"))
        clock.advance(timedelta(days=6))  # every rung due, and every assigned one overdue
        reports = await asyncio.gather(one.nudges.scan(), two.nudges.scan())
        sent = [n for r in reports for n in r.nudges]
        supervised = [t for r in reports for t in r.supervised]
        async with one.uows(readonly=True) as uow:
            keys = (
                await uow.session.exec(select(Nudge.ticket_id, Nudge.rung, Nudge.person_id))
            ).all()
            events = (
                await uow.session.exec(
                    select(TicketEvent.kind, sa.func.count())
                    .where(col(TicketEvent.kind).in_(["nudge", "escalate", "supervise"]))
                    .group_by(TicketEvent.kind)
                )
            ).all()
            dms = (
                await uow.session.exec(
                    select(sa.func.count()).select_from(Outbox).where(col(Outbox.chat_id) > 0)
                )
            ).one()
            states = (await uow.session.exec(select(Ticket.state))).all()
        assert len(sent) == len(keys) == len(set(keys))
        assert sorted(supervised) == sorted(set(supervised))
        assert len(supervised) == 24
        assert dict(events)["supervise"] == 24
        assert states.count(TicketState.SUPERVISED) == 24
        assert len(keys) > 24
        # a second pair of scans finds nothing new
        again = await asyncio.gather(one.nudges.scan(), two.nudges.scan())
        assert [n for r in again for n in r.nudges] == []
        assert dms > 0
    finally:
        for engine in engines:
            await engine.dispose()

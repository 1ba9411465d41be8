"""The idle sweep nudges a page of tickets together: it must do what nudging each alone does."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from bot.app import Services, build_services
from bot.clock import ManualClock
from bot.config import Settings
from bot.services import nudges as nudging
from storage.db import create_schema, make_engine
from storage.repositories import ScheduleRepository
from storage.tables import Nudge, Outbox, Person, TicketEvent
from storage.uow import UnitOfWorkFactory
from tests.bot.services.conftest import START, Flow
from tests.factories import COUNTY_GROUP, GROUP, Org, build_org

ROAD = "Our warehouse access road has been blocked for a week"
SCAN_EVERY = timedelta(hours=4)
DAYS = 8


def open_all_hours(clock: ManualClock, engine: AsyncEngine) -> Services:
    settings = Settings(_env_file=None, calendar="24x7", report_limit_per_hour=1000)  # type: ignore[call-arg]
    return build_services(settings, clock=clock, engine=engine, limits=None)


async def backlog(services: Services, flow: Flow, org: Org) -> dict[str, int]:
    """Tickets on every rung of the ladder, in both groups and in private, for several
    departments and regions, and people who cannot be reached in some of the ways."""
    async with services.uows() as uow:
        for who, change in (
            ("tax_clerk", {"dm_blocked": True}),  # mentioned in the group instead
            ("market_head", {"active": False}),  # nobody left to nudge for the market
            ("beta_boss", {"dm_blocked": True}),
        ):
            person = await uow.org.person_by_telegram(org[who])
            assert person is not None
            for name, value in change.items():
                setattr(person, name, value)
        await uow.commit()
    made: dict[str, int] = {}
    for i in range(2):
        made[f"reported_county_{i}"] = await flow.reported(text=f"{ROAD} {i}", chat=COUNTY_GROUP)
        made[f"reported_city_{i}"] = await flow.reported(
            text=f"{ROAD} city {i}", who="beta_boss", chat=GROUP
        )
        made[f"reported_west_{i}"] = await flow.reported(
            text=f"{ROAD} west {i}", who="gamma_boss", chat=GROUP
        )
        made[f"assigned_tax_{i}"] = await flow.assigned(text=f"{ROAD} tax {i}")
        made[f"assigned_market_{i}"] = await flow.assigned("market", text=f"{ROAD} mkt {i}")
        made[f"assigned_env_{i}"] = await flow.assigned("east_env", text=f"{ROAD} env {i}")
        made[f"claimed_clerk_{i}"] = await flow.claimed(text=f"{ROAD} clerk {i}")
        made[f"claimed_head_{i}"] = await flow.claimed("tax_head", text=f"{ROAD} head {i}")
        made[f"resolved_{i}"] = await flow.resolved(text=f"{ROAD} done {i}")
        beta = await services.tickets.report(
            org["beta_boss"], f"{ROAD} quietly {i}", chat_id=org["beta_boss"],
            message_id=None, private=True, anonymous=True,
        )  # fmt: skip
        number = beta.ticket.number
        await services.tickets.assign(org["city_coord"], number, "tax")
        await services.tickets.claim(org["tax_head"], number)
        await services.tickets.resolve(org["tax_head"], number, "done")
        made[f"resolved_anonymous_{i}"] = number
    return made


async def walk(services: Services, clock: ManualClock, flow: Flow, made: dict[str, int]) -> None:
    """Sweep every SCAN_EVERY for DAYS days; people act on a few tickets on the way."""
    org = flow.org
    acts = {
        5: lambda: services.tickets.claim(org["env_head"], made["assigned_env_0"]),
        8: lambda: services.tickets.assign(org["east_coord"], made["reported_county_1"], "tax"),
        13: lambda: services.tickets.progress(org["tax_clerk"], made["claimed_clerk_1"], "on it"),
        19: lambda: services.tickets.rate(org["acme_boss"], made["resolved_1"], "satisfied"),
    }
    for step in range(int(timedelta(days=DAYS) / SCAN_EVERY)):
        clock.advance(SCAN_EVERY)
        if step in acts:
            await acts[step]()
        await services.nudges.scan()


async def record(uows: UnitOfWorkFactory) -> dict[str, list[Any]]:
    """Every nudge, event and queued message, in the order they were written, without ids."""

    def plain(row: Any, *leave: str) -> dict[str, Any]:
        return {
            c.name: getattr(row, c.name)
            for c in type(row).__table__.columns
            if c.name not in ("id", *leave)
        }

    async with uows(readonly=True) as uow:
        got = {
            name: [plain(r) for r in (await uow.session.exec(select(t).order_by(t.id))).all()]
            for name, t in (("nudges", Nudge), ("events", TicketEvent), ("outbox", Outbox))
        }
    return got


def per_ticket(got: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Each ticket's rows in the order they were written. A page moves its tickets (supervise,
    close) before it nudges them, so rows of different tickets interleave differently when
    each ticket is a page of its own."""
    return {name: sorted(rows, key=lambda r: r["ticket_id"]) for name, rows in got.items()}


async def history(engine: AsyncEngine) -> dict[str, list[Any]]:
    await create_schema(engine)
    clock = ManualClock(START)
    services = open_all_hours(clock, engine)
    org = await build_org(services.uows)
    flow = Flow(services.tickets, services.uows, org)
    made = await backlog(services, flow, org)
    await walk(services, clock, flow, made)
    return await record(services.uows)


_ALONE: list[dict[str, list[Any]]] = []  # built once: it is the slow one


@pytest.fixture
async def alone(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """The same history with one ticket to a page: every ticket nudged alone (on SQLite)."""
    if not _ALONE:
        engine = make_engine("sqlite+aiosqlite://")
        try:
            with monkeypatch.context() as patch:
                patch.setattr(nudging, "PAGE", 1)
                _ALONE.append(await history(engine))
        finally:
            await engine.dispose()
    return _ALONE[0]


async def test_a_page_of_tickets_gets_the_nudges_events_and_messages_each_would_alone(
    engine: AsyncEngine, alone: dict[str, list[Any]]
) -> None:
    together = await history(engine)
    assert per_ticket(together) == per_ticket(alone)
    # the history is rich enough to mean something
    rungs = {n["rung"] for n in together["nudges"]}
    assert rungs == {r.value for r in nudging.Rung}
    kinds = {e["kind"] for e in together["events"]}
    assert {"nudge", "escalate", "remind_rate", "supervise", "autoclose"} <= kinds
    assert len(together["nudges"]) > 100


async def test_a_page_that_fails_is_sent_ticket_by_ticket_with_the_same_outcome(
    engine: AsyncEngine, alone: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = nudging.NudgeService._nudge_together

    async def refuse_pages(self: Any, wanted: dict[int, Any], *args: Any, **kw: Any) -> Any:
        if len(wanted) > 1:
            raise RuntimeError("a page that cannot be written")
        return await real(self, wanted, *args, **kw)

    monkeypatch.setattr(nudging.NudgeService, "_nudge_together", refuse_pages)
    assert per_ticket(await history(engine)) == per_ticket(alone)


async def test_a_sweep_that_fails_while_writing_leaves_nothing_and_a_rerun_sends_each_once(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_schema(engine)
    clock = ManualClock(START)
    services = open_all_hours(clock, engine)
    org = await build_org(services.uows)
    flow = Flow(services.tickets, services.uows, org)
    await backlog(services, flow, org)
    clock.advance(timedelta(days=1))
    before = await record(services.uows)
    real = ScheduleRepository.add_nudges

    async def crash(self: Any, *args: Any, **kw: Any) -> Any:
        await real(self, *args, **kw)  # the keys are written, then the transaction dies
        raise ConnectionError("the database went away")

    with monkeypatch.context() as patch:
        patch.setattr(ScheduleRepository, "add_nudges", crash)
        failed = await services.nudges.scan()
    assert failed.nudges == ()
    assert await record(services.uows) == before
    first = await services.nudges.scan()
    again = await services.nudges.scan()
    after = await record(services.uows)
    assert first.nudges
    assert again.nudges == ()
    keys = [(n["ticket_id"], n["rung"], n["person_id"], n["slot"]) for n in after["nudges"]]
    assert len(keys) == len(set(keys)) == len(first.nudges)
    nudged = [e for e in after["events"][len(before["events"]) :] if e["kind"] == "nudge"]
    assert sum(len(e["data"]["people"]) for e in nudged) == sum(
        1 for n in first.nudges if n.rung not in ("overdue", "escalate", "rate_invite")
    )


async def test_sweeps_racing_on_one_database_send_each_nudge_once(engine: AsyncEngine) -> None:
    await create_schema(engine)
    clock = ManualClock(START)
    one = open_all_hours(clock, engine)
    # on PostgreSQL a second instance with units of work of its own; SQLite in memory is one
    # connection, so there the sweeps race inside one instance
    other = one
    if engine.dialect.name == "postgresql":
        other = build_services(one.settings, clock=clock, engine=engine, limits=None)
    org = await build_org(one.uows)
    flow = Flow(one.tickets, one.uows, org)
    await backlog(one, flow, org)
    before = await record(one.uows)
    for _ in range(4):
        clock.advance(timedelta(hours=7))
        reports = await asyncio.gather(*(s.nudges.scan() for s in (one, other, one, other)))
        sent = [(n.ticket, n.rung, n.person_id, n.slot) for r in reports for n in r.nudges]
        assert len(sent) == len(set(sent))
    got = await record(one.uows)
    keys = [(n["ticket_id"], n["rung"], n["person_id"], n["slot"]) for n in got["nudges"]]
    assert len(keys) == len(set(keys)) > 20
    # one event per nudged rung and round, naming exactly the people its nudges went to
    told: dict[tuple[int, str, int], set[int]] = {}
    for ticket, rung, person, slot in keys:
        told.setdefault((ticket, rung, slot), set()).add(person)
    events = {
        (e["ticket_id"], e["data"]["rung"], e["data"]["slot"]): set(e["data"]["people"])
        for e in got["events"]
        if "rung" in e["data"]
    }
    assert events == told
    # and one private message for each nudge to someone who can get one
    async with one.uows(readonly=True) as uow:
        reachable = set(
            (
                await uow.session.exec(
                    select(Person.id).where(~col(Person.dm_blocked), col(Person.active))
                )
            ).all()
        )
    dms = [m for m in got["outbox"][len(before["outbox"]) :] if m["chat_id"] > 0]
    assert len(dms) == sum(1 for k in keys if k[2] in reachable)
    assert {(m["ticket_id"], m["person_id"]) for m in dms} == {
        (k[0], k[2]) for k in keys if k[2] in reachable
    }

"""Random histories of a ticket: the pure table, then the real service on SQLite, stay coherent."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from bot.calendar import load_calendar
from bot.clock import ManualClock
from bot.config import Settings
from bot.errors import (
    InvalidTransitionError,
    NotRegisteredError,
    TicketNotFoundError,
)
from bot.notify import Notifier
from bot.services.org import facts_of
from bot.services.tickets import TicketService
from bot.tickets import SYSTEM, Action, Actor, Rating, TicketFacts, decide, fold
from storage.db import create_schema, make_engine, make_session_factory
from storage.tables import Role, Ticket, TicketState
from storage.uow import UnitOfWorkFactory
from tests.factories import GROUP, Org, build_org

S = TicketState
FINAL = {S.CLOSED, S.WITHDRAWN, S.MERGED}

# ---- the pure table ------------------------------------------------------------------------

CITY, EAST, WEST = 1, 2, 3
DEPT, OTHER_DEPT, THIRD_DEPT = 10, 20, 30
ENTERPRISE = 100
REPORTER = 301

POOL: list[Actor] = [
    SYSTEM,
    Actor(1, Role.COORDINATOR, region_ids=frozenset({EAST})),
    Actor(2, Role.LEADER, region_ids=frozenset({EAST})),
    Actor(3, Role.LEADER, region_ids=frozenset({CITY, EAST, WEST})),
    Actor(4, Role.COORDINATOR, region_ids=frozenset({WEST})),
    Actor(5, Role.ADMIN, region_ids=frozenset({CITY, EAST, WEST})),
    Actor(11, Role.OFFICIAL, department_id=DEPT, is_head=True),
    Actor(12, Role.OFFICIAL, department_id=DEPT),
    Actor(13, Role.OFFICIAL, department_id=DEPT),
    Actor(21, Role.OFFICIAL, department_id=OTHER_DEPT, is_head=True),
    Actor(22, Role.OFFICIAL, department_id=OTHER_DEPT),
    Actor(31, Role.OFFICIAL, department_id=THIRD_DEPT),
    Actor(REPORTER, Role.ENTERPRISE, enterprise_id=ENTERPRISE),
    Actor(302, Role.ENTERPRISE, enterprise_id=ENTERPRISE),
    Actor(303, Role.ENTERPRISE, enterprise_id=200),
]
DEPARTMENT_OF = {a.person_id: a.department_id for a in POOL if a.role is Role.OFFICIAL}

# Well-formed arguments for each action: a guided step picks one the table accepts.
GOOD_ARGS: dict[Action, list[dict[str, Any]]] = {
    Action.REPORT: [{}],
    Action.ASSIGN: [{"department_id": d} for d in (DEPT, OTHER_DEPT)],
    Action.CLAIM: [{}, {"promised_date": date(2030, 1, 1)}],
    Action.RETURN: [
        {"note": "not ours"},
        {"note": "not ours", "suggested_department_id": OTHER_DEPT},
        {"note": "theirs", "suggested_department_id": THIRD_DEPT},
    ],
    Action.APPROVE_RETURN: [{}, {"department_id": THIRD_DEPT}],
    Action.REJECT_RETURN: [{}],
    Action.SUPERVISE: [{"note": "faster"}],
    Action.PROGRESS: [{"note": "halfway"}],
    Action.RESOLVE: [{"note": "done"}],
    Action.RATE: [{"rating": r.value} for r in Rating],
    Action.AUTOCLOSE: [{}],
    Action.WITHDRAW: [{}],
    Action.MERGE: [{"into_id": 99, "ticket_id": 7}],
    Action.TRANSFER: [{"department_id": d} for d in (DEPT, OTHER_DEPT, THIRD_DEPT)],
}
CANDIDATES = [
    (action, actor, args) for action, options in GOOD_ARGS.items() for args in options
    for actor in POOL
]  # fmt: skip

any_args = st.fixed_dictionaries(
    {},
    optional={
        "department_id": st.sampled_from([None, DEPT, OTHER_DEPT, THIRD_DEPT]),
        "suggested_department_id": st.sampled_from([None, DEPT, OTHER_DEPT]),
        "note": st.sampled_from([None, "", "  ", "why"]),
        "rating": st.sampled_from([None, "bogus", *Rating]),
        "into_id": st.sampled_from([None, 7, 99]),
        "ticket_id": st.just(7),
        "promised_date": st.sampled_from([None, date(2030, 1, 1)]),
    },
)


def initial_facts() -> TicketFacts:
    return TicketFacts(
        state=S.REPORTED, region_id=EAST, enterprise_id=ENTERPRISE, reporter_id=REPORTER
    )


@dataclass
class History:
    """What the test itself counts, independently of the facts."""

    facts: TicketFacts = field(default_factory=initial_facts)
    events: list[tuple[str, int | None, dict[str, Any]]] = field(default_factory=list)
    claimed_by: int | None = None  # who claimed since the last (re)assignment
    bad_ratings: int = 0
    returns: int = 0

    def accept(self, action: Action, actor: Actor, after: TicketFacts, data: dict) -> None:
        self.facts = after
        self.events.append((action.value, actor.person_id, data))
        if action is Action.CLAIM:
            self.claimed_by = actor.person_id
        if action in (Action.ASSIGN, Action.APPROVE_RETURN, Action.TRANSFER):
            self.claimed_by = None
        if action is Action.RATE and data["rating"] not in ("satisfied", "basic"):
            self.bad_ratings += 1
        self.returns += action is Action.RETURN


def check_invariants(history: History) -> None:
    facts = history.facts
    assert fold(initial_facts(), history.events) == facts
    if facts.state is S.CLAIMED:
        assert facts.claimant_id is not None
    if history.claimed_by is not None and facts.state in (S.CLAIMED, S.SUPERVISED, S.RESOLVED):
        assert facts.claimant_id == history.claimed_by
    if facts.state is not S.REPORTED and facts.state is not S.WITHDRAWN:
        assert facts.department_id is not None or facts.state is S.MERGED
    if facts.state is S.RESOLVED:
        assert facts.department_id is not None
    if facts.claimant_id is not None:
        assert DEPARTMENT_OF[facts.claimant_id] == facts.department_id
    assert facts.redo_count == history.bad_ratings
    assert facts.return_count == history.returns


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_histories_keep_the_facts_equal_to_the_fold_of_their_events(data):
    history = History()
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        if history.facts.state in FINAL:
            assert _accepted(history.facts) == []
            return
        guided = data.draw(st.booleans(), label="guided")
        accepted = _accepted(history.facts) if guided else []
        if accepted:
            action, actor, args = data.draw(st.sampled_from(accepted), label="move")
        else:
            action = data.draw(st.sampled_from(list(Action)), label="action")
            actor = data.draw(st.sampled_from(POOL), label="actor")
            args = data.draw(any_args, label="args")
        before = history.facts
        try:
            move = decide(before, action, actor, **args)
        except InvalidTransitionError:
            assert history.facts is before
            continue
        assert move.before == before
        history.accept(action, actor, move.after, move.data)
        check_invariants(history)


def _accepted(facts: TicketFacts) -> list[tuple[Action, Actor, dict[str, Any]]]:
    """Every well-formed move the table accepts now."""
    out = []
    for action, actor, args in CANDIDATES:
        try:
            decide(facts, action, actor, **args)
        except InvalidTransitionError:
            continue
        out.append((action, actor, args))
    return out


@settings(max_examples=200, deadline=None)
@given(
    state=st.sampled_from(sorted(FINAL)),
    action=st.sampled_from(list(Action)),
    actor=st.sampled_from(POOL),
    args=any_args,
)
def test_closed_withdrawn_and_merged_tickets_accept_nothing(state, action, actor, args):
    final = TicketFacts(
        state=state,
        region_id=EAST,
        enterprise_id=ENTERPRISE,
        reporter_id=REPORTER,
        department_id=DEPT,
        claimant_id=12,
    )
    with pytest.raises(InvalidTransitionError) as refused:
        decide(final, action, actor, **args)
    assert refused.value.code in ("wrong_state", "already_claimed")


# ---- the real service on SQLite ------------------------------------------------------------

EVERYONE = [
    "acme_boss",
    "acme_clerk",
    "beta_boss",
    "gamma_boss",
    "tax_head",
    "tax_clerk",
    "market_head",
    "env_head",
    "mayor",
    "east_leader",
    "west_leader",
    "city_coord",
    "east_coord",
    "admin",
    "nobody",
]
ORG = ["city_coord", "mayor", "admin"]  # the tickets are filed in the city group
OFFICIALS_OF = {
    "tax": ["tax_head", "tax_clerk"],
    "market": ["market_head"],
    "east_env": ["env_head"],
}
REPORTERS = ["acme_boss", "acme_clerk", "beta_boss"]
DEPARTMENTS = ["tax", "market", "east_env", "no-such-department"]
START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # a Monday morning in Beijing
BEIJING = ZoneInfo("Asia/Shanghai")
REFUSALS = (InvalidTransitionError, TicketNotFoundError, NotRegisteredError)
Snapshot = tuple[dict[str, Any], list[tuple[str, int | None, dict[str, Any]]]]


@dataclass
class Shared:
    """One database and org chart for every run; each run files tickets of its own."""

    runner: asyncio.Runner
    uows: UnitOfWorkFactory
    org: Org
    clock: ManualClock
    service: TicketService
    messages: itertools.count


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    runner = asyncio.Runner()
    engine = make_engine("sqlite+aiosqlite://")
    try:
        runner.run(create_schema(engine))
        uows = UnitOfWorkFactory(make_session_factory(engine))
        org = runner.run(build_org(uows))
        clock = ManualClock(START)
        config = Settings(_env_file=None, calendar="24x7", report_limit_per_hour=10**6)  # type: ignore[call-arg]
        calendar = load_calendar(config.calendar, config.timezone)
        service = TicketService(uows, clock, calendar, config, Notifier(config, clock))
        yield Shared(runner, uows, org, clock, service, itertools.count(1))
    finally:
        runner.run(engine.dispose())
        runner.close()


class TicketServiceMachine(RuleBasedStateMachine):
    """Drives TicketService with random people and arguments, one fresh ticket per run."""

    shared: Shared

    def __init__(self) -> None:
        super().__init__()
        self.env = self.shared
        self.accepted = 0
        self.refused = False
        self.snapshot: Snapshot | None = None

    def run(self, coroutine: Any) -> Any:
        return self.env.runner.run(coroutine)

    def tg(self, name: str) -> int:
        return self.env.org.ids.get(name, 1)  # 1 is nobody registered

    def pick(self, data: st.DataObject, plausible: list[str]) -> int:
        """Mostly someone who might be allowed, sometimes anyone at all."""
        pool = plausible if plausible and data.draw(st.integers(0, 3)) else EVERYONE
        return self.tg(data.draw(st.sampled_from(pool)))

    @initialize()
    def file_two_reports(self) -> None:
        self.number = self.run(self._report("acme_boss", "The roof leaks"))
        self.other = self.run(self._report("beta_boss", "The gate is broken"))
        self.department: str | None = None

    async def _report(self, name: str, text: str) -> int:
        outcome = await self.env.service.report(
            self.tg(name), text, chat_id=GROUP, message_id=next(self.env.messages)
        )
        return outcome.ticket.number

    def attempt(self, call: Any) -> None:
        """Run one service call; the invariant checks a refusal changed nothing."""
        self.env.clock.advance(timedelta(minutes=7))
        try:
            outcome = self.run(call)
        except REFUSALS:
            self.refused = True
        else:
            self.accepted += 1
            self.refused = False
            self.department = outcome.ticket.department_code

    def holders(self) -> list[str]:
        return OFFICIALS_OF.get(self.department or "", [])

    @rule(data=st.data())
    def anything(self, data: st.DataObject) -> None:
        """Any action by anyone, with any arguments: mostly refused."""
        who = self.tg(data.draw(st.sampled_from(EVERYONE)))
        department = data.draw(st.sampled_from(DEPARTMENTS))
        maybe = data.draw(st.sampled_from([None, "market", "east_env"]))
        today = self.env.clock.now().astimezone(BEIJING).date()
        promised = today + timedelta(days=data.draw(st.sampled_from([3, 0, -1])))
        reason = data.draw(st.sampled_from(["", "not ours"]))
        rating = data.draw(st.sampled_from([*Rating, "bogus"]))
        into = data.draw(st.sampled_from([self.other, self.number, 10**9]))
        system = data.draw(st.sampled_from([Action.SUPERVISE, Action.AUTOCLOSE, Action.CLAIM]))
        service, n = self.env.service, self.number
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "assign": lambda: service.assign(who, n, department),
            "claim": lambda: service.claim(who, n, promised),
            "return": lambda: service.return_(who, n, reason, maybe),
            "approve_return": lambda: service.approve_return(who, n, maybe),
            "reject_return": lambda: service.reject_return(who, n, "it is yours"),
            "supervise": lambda: service.supervise(who, n, "hurry"),
            "progress": lambda: service.progress(who, n, "halfway"),
            "resolve": lambda: service.resolve(who, n, "done"),
            "rate": lambda: service.rate(who, n, rating, "why"),
            "withdraw": lambda: service.withdraw(who, n),
            "merge": lambda: service.merge(who, n, into),
            "transfer": lambda: service.transfer(who, n, department),
            "system": lambda: service.system(n, system, "scheduler"),
        }
        self.attempt(calls[data.draw(st.sampled_from(sorted(calls)))]())

    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """A move that fits the state, so that runs also reach the far end of the workflow."""
        assert self.snapshot is not None
        state = self.snapshot[0]["state"]
        holder = self.pick(data, self.holders())
        org = self.tg(data.draw(st.sampled_from(ORG)))
        department = data.draw(st.sampled_from(DEPARTMENTS[:3]))
        service, n = self.env.service, self.number
        rating = data.draw(st.sampled_from(list(Rating)))
        moves: dict[str, list[Callable[[], Awaitable[Any]]]] = {
            S.REPORTED: [lambda: service.assign(org, n, department)],
            S.ASSIGNED: [
                lambda: service.claim(holder, n),
                lambda: service.return_(holder, n, "not ours", department),
                lambda: service.supervise(self.tg("mayor"), n, "hurry"),
            ],
            S.RETURNED: [
                lambda: service.approve_return(org, n, department),
                lambda: service.reject_return(org, n),
            ],
            S.CLAIMED: [
                lambda: service.progress(holder, n, "on it"),
                lambda: service.resolve(holder, n, "ok"),
            ],
            S.SUPERVISED: [
                lambda: service.claim(holder, n),
                lambda: service.resolve(holder, n, "ok"),
                lambda: service.transfer(org, n, department),
            ],
            S.RESOLVED: [lambda: service.rate(self.tg("acme_boss"), n, rating)],
        }
        options = moves.get(state, [lambda: service.transfer(org, n, department)])
        self.attempt(data.draw(st.sampled_from(options))())

    @invariant()
    def stored_state_is_the_fold_of_stored_events(self) -> None:
        now = self.run(self._stored())
        if self.refused:
            assert now == self.snapshot, "a refused action changed the ticket or its events"
        self.snapshot = now
        row, events = now
        start = TicketFacts(
            state=S.REPORTED,
            region_id=row["region_id"],
            enterprise_id=row["enterprise_id"],
            reporter_id=row["reporter_id"],
        )
        assert facts_of(Ticket(**row)) == fold(start, events)
        assert len(events) == self.accepted + 1
        assert events[0][0] == "report"

    async def _stored(self) -> Snapshot:
        async with self.env.uows(readonly=True) as uow:
            ticket = await uow.tickets.get(self.number)
            assert ticket is not None
            rows = await uow.events.of_ticket(self.number)
            for before, after in itertools.pairwise(rows):
                assert after.from_state == before.to_state
            events = [(e.kind, e.actor_id, dict(e.data or {})) for e in rows]
            return {c.name: getattr(ticket, c.name) for c in Ticket.__table__.columns}, events


@pytest.fixture
def machine(shared: Shared) -> type[RuleBasedStateMachine]:
    TicketServiceMachine.shared = shared
    return TicketServiceMachine


def test_the_ticket_service_keeps_each_ticket_equal_to_the_fold_of_its_events(machine):
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=50,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

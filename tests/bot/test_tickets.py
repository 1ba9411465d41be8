"""The pure workflow table, cell by cell: every state x action x kind of person."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date

import pytest

from bot.errors import InvalidTransitionError
from bot.tickets import SYSTEM, Action, Actor, TicketFacts, can_see, decide, fold
from storage.tables import Role, TicketState

S = TicketState

# The org chart of these tests: a city with two counties; the ticket sits in the east county.
CITY, EAST, WEST = 1, 2, 3
ALL_REGIONS = frozenset({CITY, EAST, WEST})
DEPT, OTHER_DEPT, THIRD_DEPT = 10, 20, 30
ENTERPRISE, OTHER_ENTERPRISE = 100, 200
REPORTER, COLLEAGUE_OF_REPORTER, STRANGER = 301, 302, 303
OTHER_HOLDER = 299  # a colleague in the department who holds the ticket when the actor does not

ACTORS: dict[str, Actor] = {
    "system": SYSTEM,
    "coordinator_here": Actor(1, Role.COORDINATOR, region_ids=frozenset({EAST})),
    "leader_here": Actor(2, Role.LEADER, region_ids=frozenset({EAST})),
    "admin": Actor(3, Role.ADMIN, region_ids=ALL_REGIONS),
    "coordinator_elsewhere": Actor(4, Role.COORDINATOR, region_ids=frozenset({WEST})),
    "leader_elsewhere": Actor(5, Role.LEADER, region_ids=frozenset({WEST})),
    "city_leader": Actor(6, Role.LEADER, region_ids=ALL_REGIONS),
    "city_coordinator": Actor(7, Role.COORDINATOR, region_ids=ALL_REGIONS),
    "head_holding": Actor(
        201, Role.OFFICIAL, department_id=DEPT, region_ids=frozenset({CITY}), is_head=True
    ),
    "head_not_holding": Actor(
        202, Role.OFFICIAL, department_id=DEPT, region_ids=frozenset({CITY}), is_head=True
    ),
    "official_holding": Actor(
        203, Role.OFFICIAL, department_id=DEPT, region_ids=frozenset({CITY})
    ),
    "official_not_holding": Actor(
        204, Role.OFFICIAL, department_id=DEPT, region_ids=frozenset({CITY})
    ),
    "official_elsewhere": Actor(
        205, Role.OFFICIAL, department_id=OTHER_DEPT, region_ids=frozenset({CITY}), is_head=True
    ),
    "reporter": Actor(REPORTER, Role.ENTERPRISE, enterprise_id=ENTERPRISE),
    "reporter_colleague": Actor(COLLEAGUE_OF_REPORTER, Role.ENTERPRISE, enterprise_id=ENTERPRISE),
    "other_enterprise": Actor(STRANGER, Role.ENTERPRISE, enterprise_id=OTHER_ENTERPRISE),
}
HOLDING_KINDS = {"head_holding", "official_holding"}


@dataclass(frozen=True)
class Situation:
    state: TicketState
    held: bool = False
    supervised: bool = False

    def facts(self, kind: str) -> TicketFacts:
        """The ticket as `kind` finds it: when it is held, held by them if they are a holder."""
        claimant = None
        if self.held:
            claimant = ACTORS[kind].person_id if kind in HOLDING_KINDS else OTHER_HOLDER
        return TicketFacts(
            state=self.state,
            region_id=EAST,
            enterprise_id=ENTERPRISE,
            reporter_id=REPORTER,
            department_id=None if self.state is S.REPORTED else DEPT,
            claimant_id=claimant,
            suggested_department_id=OTHER_DEPT if self.state is S.RETURNED else None,
            supervised=self.supervised,
            return_count=1 if self.state is S.RETURNED else 0,
        )


SITUATIONS = {
    "reported": Situation(S.REPORTED),
    "assigned": Situation(S.ASSIGNED),
    "claimed": Situation(S.CLAIMED, held=True),
    "returned": Situation(S.RETURNED),
    "supervised_unheld": Situation(S.SUPERVISED, supervised=True),
    "supervised_held": Situation(S.SUPERVISED, held=True, supervised=True),
    "resolved": Situation(S.RESOLVED, held=True),
    "resolved_supervised": Situation(S.RESOLVED, held=True, supervised=True),
    "closed": Situation(S.CLOSED, held=True),
    "withdrawn": Situation(S.WITHDRAWN),
    "merged": Situation(S.MERGED),
}

# The arguments each action is tried with; "rate" is tried good and bad.
MOVES: dict[str, tuple[Action, dict[str, object]]] = {
    "report": (Action.REPORT, {}),
    "assign": (Action.ASSIGN, {"department_id": DEPT}),
    "claim": (Action.CLAIM, {}),
    "return": (Action.RETURN, {"note": "not ours", "suggested_department_id": OTHER_DEPT}),
    "approve_return": (Action.APPROVE_RETURN, {}),
    "reject_return": (Action.REJECT_RETURN, {"note": "it is yours"}),
    "supervise": (Action.SUPERVISE, {"note": "hurry up"}),
    "progress": (Action.PROGRESS, {"note": "working on it"}),
    "resolve": (Action.RESOLVE, {"note": "done"}),
    "rate_good": (Action.RATE, {"rating": "satisfied"}),
    "rate_bad": (Action.RATE, {"rating": "unsolved", "note": "still broken"}),
    "autoclose": (Action.AUTOCLOSE, {}),
    "withdraw": (Action.WITHDRAW, {}),
    "merge": (Action.MERGE, {"into_id": 99, "ticket_id": 7}),
    "transfer": (Action.TRANSFER, {"department_id": THIRD_DEPT}),
}

# ---- the expected table, transcribed from DESIGN.md "The ticket" ---------------------------

ORG = {"coordinator_here", "leader_here", "admin", "city_leader", "city_coordinator"}
LEADERS = {"leader_here", "city_leader"}
DEPARTMENT = {"head_holding", "head_not_holding", "official_holding", "official_not_holding"}
HEADS = {"head_holding", "head_not_holding"}
REPORTING_ENTERPRISE = {"reporter", "reporter_colleague"}
OPEN_BUT_RESOLVED = ["reported", "assigned", "claimed", "returned"]
OPEN_BUT_RESOLVED += ["supervised_unheld", "supervised_held"]

# move -> (situations it is allowed in, who may, which group the refusal speaks of)
WHO: dict[str, tuple[list[str], set[str], str]] = {
    "report": ([], set(), "nobody"),
    "assign": (["reported"], ORG | {"system"}, "org"),
    "claim": (["assigned", "supervised_unheld"], DEPARTMENT, "department"),
    "return": (["assigned"], DEPARTMENT, "department"),
    "approve_return": (["returned"], ORG, "org"),
    "reject_return": (["returned"], ORG, "org"),
    "supervise": (["assigned", "claimed"], LEADERS | {"system"}, "leader"),
    "progress": (["claimed", "supervised_unheld", "supervised_held"], set(), "holder"),
    "resolve": (["claimed", "supervised_unheld", "supervised_held"], set(), "holder"),
    "rate_good": (["resolved", "resolved_supervised"], REPORTING_ENTERPRISE, "enterprise"),
    "rate_bad": (["resolved", "resolved_supervised"], REPORTING_ENTERPRISE, "enterprise"),
    "autoclose": (["resolved", "resolved_supervised"], {"system"}, "system"),
    "withdraw": (["reported", "assigned"], {"reporter"}, "reporter"),
    "merge": (["reported", "assigned"], ORG, "org"),
    "transfer": (OPEN_BUT_RESOLVED, ORG, "org"),
}


def may(move: str, situation: str, kind: str) -> bool:
    states, who, group = WHO[move]
    if situation not in states:
        return False
    if group == "holder":  # the claimant or the department's head
        held_by_them = SITUATIONS[situation].held and kind in HOLDING_KINDS
        return kind in HEADS or held_by_them
    return kind in who


def refusal_code(move: str, situation: str, kind: str) -> str:
    states, _, group = WHO[move]
    if situation not in states:
        held = SITUATIONS[situation].held
        if move == "claim" and held and situation in ("claimed", "supervised_held"):
            return "already_claimed"
        return "wrong_state"
    actor = ACTORS[kind]
    if group in ("department", "holder") and actor.role is Role.OFFICIAL:
        return "not_claimant" if kind in DEPARTMENT else "not_your_department"
    if group == "reporter" and actor.role is Role.ENTERPRISE:
        return "not_reporter"
    if group == "enterprise" and actor.role is Role.ENTERPRISE:
        return "not_your_ticket"
    if group in ("org", "leader") and actor.role in (Role.COORDINATOR, Role.LEADER):
        return "role" if EAST in actor.region_ids else "not_your_region"
    return "role"


def expected_after(move: str, before: TicketFacts, actor: Actor) -> TicketFacts:
    match move:
        case "assign":
            return replace(before, state=S.ASSIGNED, department_id=DEPT)
        case "claim":  # claiming a supervised ticket nobody held keeps it supervised
            to = S.SUPERVISED if before.state is S.SUPERVISED else S.CLAIMED
            return replace(before, state=to, claimant_id=actor.person_id)
        case "return":
            return replace(
                before,
                state=S.RETURNED,
                suggested_department_id=OTHER_DEPT,
                return_count=before.return_count + 1,
            )
        case "approve_return":  # to the suggested department, nobody holding it
            return replace(
                before,
                state=S.ASSIGNED,
                department_id=OTHER_DEPT,
                suggested_department_id=None,
                claimant_id=None,
            )
        case "reject_return":
            return replace(before, state=S.ASSIGNED, suggested_department_id=None)
        case "supervise":
            return replace(before, state=S.SUPERVISED, supervised=True)
        case "progress":
            return before
        case "resolve":
            return replace(before, state=S.RESOLVED)
        case "rate_good":
            return replace(before, state=S.CLOSED, rating="satisfied")
        case "rate_bad":  # 重办: back to whoever held it, under supervision if it was
            back = S.SUPERVISED if before.supervised else S.CLAIMED
            return replace(before, state=back, rating="unsolved", redo_count=before.redo_count + 1)
        case "autoclose":
            return replace(before, state=S.CLOSED)
        case "withdraw":
            return replace(before, state=S.WITHDRAWN)
        case "merge":
            return replace(before, state=S.MERGED, merged_into_id=99)
        case "transfer":
            return replace(
                before,
                state=S.ASSIGNED,
                department_id=THIRD_DEPT,
                claimant_id=None,
                suggested_department_id=None,
                supervised=False,
            )
    raise AssertionError(move)


CELLS = [
    pytest.param(situation, move, kind, id=f"{situation}-{move}-{kind}")
    for situation in SITUATIONS
    for move in MOVES
    for kind in ACTORS
]


@pytest.mark.parametrize(("situation", "move", "kind"), CELLS)
def test_each_cell_of_the_table_allows_exactly_what_the_design_says(situation, move, kind):
    before = SITUATIONS[situation].facts(kind)
    action, args = MOVES[move]
    actor = ACTORS[kind]
    if may(move, situation, kind):
        result = decide(before, action, actor, **args)
        assert result.action is action
        assert result.before == before
        assert result.after == expected_after(move, before, actor)
    else:
        with pytest.raises(InvalidTransitionError) as refused:
            decide(before, action, actor, **args)
        assert refused.value.code == refusal_code(move, situation, kind)
        assert refused.value.params["state"] == before.state.value
        assert refused.value.params["action"] == action.value


def test_the_table_allows_a_sensible_number_of_cells():
    allowed = sum(may(m, s, k) for s in SITUATIONS for m in MOVES for k in ACTORS)
    assert 0 < allowed < len(CELLS) // 5


# ---- the details behind particular cells ---------------------------------------------------


def facts(state: TicketState, **changes: object) -> TicketFacts:
    base = TicketFacts(
        state=state,
        region_id=EAST,
        enterprise_id=ENTERPRISE,
        reporter_id=REPORTER,
        department_id=None if state is S.REPORTED else DEPT,
    )
    return replace(base, **changes)


CLERK = ACTORS["official_not_holding"]
HEAD = ACTORS["head_not_holding"]
COORDINATOR = ACTORS["coordinator_here"]


def test_claim_of_a_supervised_ticket_nobody_holds_keeps_it_supervised():
    move = decide(facts(S.SUPERVISED, supervised=True), Action.CLAIM, CLERK)
    assert move.after.state is S.SUPERVISED
    assert move.after.claimant_id == CLERK.person_id


def test_claim_of_a_supervised_ticket_someone_holds_is_refused_with_the_holder():
    held = facts(S.SUPERVISED, supervised=True, claimant_id=OTHER_HOLDER)
    with pytest.raises(InvalidTransitionError) as refused:
        decide(held, Action.CLAIM, CLERK)
    assert refused.value.code == "already_claimed"
    assert refused.value.params["claimant_id"] == OTHER_HOLDER


def test_claim_records_the_promise_date_as_text():
    move = decide(facts(S.ASSIGNED), Action.CLAIM, CLERK, promised_date=date(2026, 5, 6))
    assert move.data == {"promised_date": "2026-05-06"}


@pytest.mark.parametrize("rating", ["satisfied", "basic"])
def test_a_good_rating_closes_the_ticket(rating):
    before = facts(S.RESOLVED, claimant_id=OTHER_HOLDER)
    move = decide(before, Action.RATE, ACTORS["reporter"], rating=rating)
    assert move.after.state is S.CLOSED
    assert move.after.rating == rating
    assert move.after.redo_count == 0


@pytest.mark.parametrize("rating", ["unsatisfied", "unsolved"])
@pytest.mark.parametrize(("supervised", "back"), [(False, S.CLAIMED), (True, S.SUPERVISED)])
def test_a_bad_rating_sends_it_back_to_the_holder_and_counts_a_redo(rating, supervised, back):
    before = facts(S.RESOLVED, claimant_id=OTHER_HOLDER, supervised=supervised, redo_count=2)
    move = decide(before, Action.RATE, ACTORS["reporter_colleague"], rating=rating)
    assert move.after.state is back
    assert move.after.claimant_id == OTHER_HOLDER
    assert move.after.redo_count == 3


@pytest.mark.parametrize("rating", [None, "", "great", "SATISFIED"])
def test_a_rating_outside_the_scale_is_refused(rating):
    with pytest.raises(InvalidTransitionError) as refused:
        decide(facts(S.RESOLVED), Action.RATE, ACTORS["reporter"], rating=rating)
    assert refused.value.code == "bad_rating"


@pytest.mark.parametrize("note", [None, "", "   \n\t"])
def test_a_return_without_a_reason_is_refused(note):
    with pytest.raises(InvalidTransitionError) as refused:
        decide(facts(S.ASSIGNED), Action.RETURN, CLERK, note=note)
    assert refused.value.code == "need_reason"


def test_a_return_without_a_suggestion_leaves_the_choice_to_the_coordinator():
    move = decide(facts(S.ASSIGNED), Action.RETURN, CLERK, note="not ours")
    assert move.after.state is S.RETURNED
    assert move.after.suggested_department_id is None
    with pytest.raises(InvalidTransitionError) as refused:
        decide(move.after, Action.APPROVE_RETURN, COORDINATOR)
    assert refused.value.code == "need_department"


def test_approving_a_return_uses_the_given_department_over_the_suggested_one():
    returned = facts(S.RETURNED, suggested_department_id=OTHER_DEPT)
    move = decide(returned, Action.APPROVE_RETURN, COORDINATOR, department_id=THIRD_DEPT)
    assert move.after.department_id == THIRD_DEPT
    assert move.after.suggested_department_id is None


def test_approving_a_return_uses_the_suggested_department_when_none_is_given():
    returned = facts(S.RETURNED, suggested_department_id=OTHER_DEPT)
    move = decide(returned, Action.APPROVE_RETURN, COORDINATOR)
    assert (move.after.state, move.after.department_id) == (S.ASSIGNED, OTHER_DEPT)


def test_approving_a_return_to_the_same_department_is_refused():
    returned = facts(S.RETURNED, suggested_department_id=DEPT)
    with pytest.raises(InvalidTransitionError) as refused:
        decide(returned, Action.APPROVE_RETURN, COORDINATOR)
    assert refused.value.code == "same_department"


def test_rejecting_a_return_keeps_the_department_and_the_count_of_returns():
    returned = facts(S.RETURNED, suggested_department_id=OTHER_DEPT, return_count=1)
    move = decide(returned, Action.REJECT_RETURN, COORDINATOR)
    assert move.after.department_id == DEPT
    assert move.after.return_count == 1


@pytest.mark.parametrize("action", [Action.ASSIGN, Action.TRANSFER])
def test_assign_and_transfer_need_a_department(action):
    state = S.REPORTED if action is Action.ASSIGN else S.ASSIGNED
    with pytest.raises(InvalidTransitionError) as refused:
        decide(facts(state), action, COORDINATOR)
    assert refused.value.code == "need_department"


def test_a_transfer_to_the_department_that_has_it_is_refused():
    with pytest.raises(InvalidTransitionError) as refused:
        decide(facts(S.CLAIMED, claimant_id=9), Action.TRANSFER, COORDINATOR, department_id=DEPT)
    assert refused.value.code == "same_department"


@pytest.mark.parametrize("state", [S.ASSIGNED, S.CLAIMED, S.SUPERVISED, S.RETURNED])
def test_a_transfer_starts_over_with_nobody_holding_it(state):
    before = facts(state, claimant_id=9, supervised=state is S.SUPERVISED)
    move = decide(before, Action.TRANSFER, COORDINATOR, department_id=OTHER_DEPT)
    assert move.after.state is S.ASSIGNED
    assert move.after.claimant_id is None
    assert not move.after.supervised


@pytest.mark.parametrize(
    "args", [{}, {"into_id": None, "ticket_id": 7}, {"into_id": 7, "ticket_id": 7}]
)
def test_a_merge_needs_another_ticket(args):
    with pytest.raises(InvalidTransitionError) as refused:
        decide(facts(S.REPORTED), Action.MERGE, COORDINATOR, **args)
    assert refused.value.code == "bad_merge"


def test_a_stranger_with_bad_arguments_hears_about_the_role_first():
    with pytest.raises(InvalidTransitionError) as refused:
        decide(facts(S.REPORTED), Action.ASSIGN, ACTORS["reporter"])
    assert refused.value.code == "role"


def test_fold_replays_the_recorded_events_to_the_same_facts():
    start = facts(S.REPORTED)
    steps = [
        (Action.ASSIGN, COORDINATOR, {"department_id": DEPT}),
        (Action.RETURN, CLERK, {"note": "no", "suggested_department_id": OTHER_DEPT}),
        (Action.REJECT_RETURN, COORDINATOR, {}),
        (Action.CLAIM, CLERK, {"promised_date": date(2030, 1, 1)}),
        (Action.SUPERVISE, ACTORS["leader_here"], {"note": "faster"}),
        (Action.RESOLVE, HEAD, {"note": "done"}),
        (Action.RATE, ACTORS["reporter"], {"rating": "unsatisfied"}),
        (Action.RESOLVE, CLERK, {"note": "really done"}),
        (Action.RATE, ACTORS["reporter"], {"rating": "basic"}),
    ]
    current, events = start, [("report", REPORTER, {})]
    for action, actor, args in steps:
        move = decide(current, action, actor, **args)
        current = move.after
        events.append((action.value, actor.person_id, move.data))
        events.append(("note", actor.person_id, {}))  # kinds outside the table are ignored
    assert fold(start, events) == current
    assert (current.state, current.redo_count, current.return_count) == (S.CLOSED, 1, 1)


# ---- who may see a ticket ------------------------------------------------------------------

SEEN_BY = {
    "system": True,
    "admin": True,
    "coordinator_here": True,
    "leader_here": True,
    "city_leader": True,
    "city_coordinator": True,
    "coordinator_elsewhere": False,
    "leader_elsewhere": False,
    "head_holding": True,
    "head_not_holding": True,
    "official_holding": True,
    "official_not_holding": True,
    "official_elsewhere": False,
    "reporter": True,
    "reporter_colleague": True,
    "other_enterprise": False,
}


@pytest.mark.parametrize(("kind", "sees"), SEEN_BY.items())
def test_each_kind_of_person_sees_a_claimed_ticket_only_within_their_scope(kind, sees):
    assert can_see(SITUATIONS["claimed"].facts(kind), ACTORS[kind]) is sees


def test_officials_do_not_see_a_ticket_before_it_reaches_their_department():
    reported = SITUATIONS["reported"].facts("head_not_holding")
    assert not can_see(reported, HEAD)
    assert can_see(reported, COORDINATOR)
    assert can_see(reported, ACTORS["reporter_colleague"])


def test_an_official_without_a_department_sees_no_unassigned_ticket():
    homeless = Actor(206, Role.OFFICIAL, department_id=None)
    assert not can_see(facts(S.REPORTED), homeless)
    assert not can_see(facts(S.RETURNED), homeless)


def test_the_claimant_keeps_seeing_a_ticket_the_department_lost():
    moved = facts(S.ASSIGNED, department_id=OTHER_DEPT, claimant_id=CLERK.person_id)
    assert can_see(moved, CLERK)
    assert not can_see(moved, HEAD)


@pytest.mark.parametrize("enterprise_id", [1, 2, 12, 21, 112])
def test_enterprise_ids_that_share_digits_do_not_see_each_other(enterprise_id):
    ticket = facts(S.ASSIGNED, enterprise_id=12)
    member = Actor(400, Role.ENTERPRISE, enterprise_id=enterprise_id)
    assert can_see(ticket, member) is (enterprise_id == 12)

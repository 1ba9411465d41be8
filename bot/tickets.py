"""The ticket workflow as a pure table: who may do what in which state, and what it becomes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from bot.errors import InvalidTransitionError
from storage.tables import OPEN_STATES, Role, TicketState

S = TicketState


class Action(StrEnum):
    REPORT = "report"
    ASSIGN = "assign"
    CLAIM = "claim"
    RETURN = "return"
    APPROVE_RETURN = "approve_return"
    REJECT_RETURN = "reject_return"
    SUPERVISE = "supervise"
    PROGRESS = "progress"
    RESOLVE = "resolve"
    RATE = "rate"
    AUTOCLOSE = "autoclose"
    WITHDRAW = "withdraw"
    MERGE = "merge"
    TRANSFER = "transfer"


class Rating(StrEnum):
    SATISFIED = "satisfied"
    BASIC = "basic"
    UNSATISFIED = "unsatisfied"
    UNSOLVED = "unsolved"


GOOD_RATINGS = frozenset({Rating.SATISFIED, Rating.BASIC})

# Who may: "org" = coordinator, leader or admin of the ticket's region (or above);
# "system" = the routing rules and the scheduler; "dept" = an official of the assigned
# department; "holder" = the claimant or the department's head; "enterprise" = a member of
# the reporting enterprise; "reporter" = the person who filed it.
ALLOWED_TRANSITIONS: Mapping[Action, Mapping[TicketState, frozenset[str]]] = {
    Action.ASSIGN: {S.REPORTED: frozenset({"org", "system"})},
    Action.CLAIM: {S.ASSIGNED: frozenset({"dept"}), S.SUPERVISED: frozenset({"dept"})},
    Action.RETURN: {S.ASSIGNED: frozenset({"dept"})},
    Action.APPROVE_RETURN: {S.RETURNED: frozenset({"org"})},
    Action.REJECT_RETURN: {S.RETURNED: frozenset({"org"})},
    Action.SUPERVISE: {
        S.ASSIGNED: frozenset({"leader", "system"}),
        S.CLAIMED: frozenset({"leader", "system"}),
    },
    Action.PROGRESS: {S.CLAIMED: frozenset({"holder"}), S.SUPERVISED: frozenset({"holder"})},
    Action.RESOLVE: {S.CLAIMED: frozenset({"holder"}), S.SUPERVISED: frozenset({"holder"})},
    Action.RATE: {S.RESOLVED: frozenset({"enterprise"})},
    Action.AUTOCLOSE: {S.RESOLVED: frozenset({"system"})},
    Action.WITHDRAW: {S.REPORTED: frozenset({"reporter"}), S.ASSIGNED: frozenset({"reporter"})},
    # a duplicate is often routed before anyone spots it: it may follow while nobody holds it
    Action.MERGE: {S.REPORTED: frozenset({"org"}), S.ASSIGNED: frozenset({"org"})},
    Action.TRANSFER: {
        state: frozenset({"org"}) for state in OPEN_STATES if state is not S.RESOLVED
    },
}


@dataclass(frozen=True)
class Actor:
    """The person acting, with the scope the org chart gives them (None id = the system)."""

    person_id: int | None
    role: Role | None
    enterprise_id: int | None = None
    department_id: int | None = None
    region_ids: frozenset[int] = frozenset()  # own region and the regions below it
    is_head: bool = False

    @property
    def is_system(self) -> bool:
        return self.person_id is None


SYSTEM = Actor(person_id=None, role=None)


@dataclass(frozen=True)
class TicketFacts:
    """What the workflow needs to know of a ticket; also what its events fold into."""

    state: TicketState
    region_id: int
    enterprise_id: int
    reporter_id: int
    department_id: int | None = None
    claimant_id: int | None = None
    suggested_department_id: int | None = None
    supervised: bool = False
    redo_count: int = 0
    return_count: int = 0
    merged_into_id: int | None = None
    rating: str | None = None


@dataclass(frozen=True)
class Move:
    """An accepted event: the facts before and after, and what to record."""

    action: Action
    before: TicketFacts
    after: TicketFacts
    data: dict[str, Any] = field(default_factory=dict)


def can_see(facts: TicketFacts, actor: Actor) -> bool:
    """Scope: an enterprise sees its own, an official its department's, a leader its regions."""
    if actor.is_system or actor.role is Role.ADMIN:
        return True
    if actor.role is Role.ENTERPRISE:
        return facts.enterprise_id == actor.enterprise_id
    if actor.role is Role.OFFICIAL:
        # an official with no department must not match the unassigned tickets (None == None)
        own = facts.department_id is not None and facts.department_id == actor.department_id
        return own or facts.claimant_id == actor.person_id
    return facts.region_id in actor.region_ids


def _plays(part: str, facts: TicketFacts, actor: Actor) -> bool:
    if part == "system":
        return actor.is_system
    if actor.is_system:
        return False
    in_region = facts.region_id in actor.region_ids or actor.role is Role.ADMIN
    dept = (
        actor.role is Role.OFFICIAL
        and facts.department_id is not None
        and actor.department_id == facts.department_id
    )
    match part:
        case "org":
            return actor.role in (Role.COORDINATOR, Role.LEADER, Role.ADMIN) and in_region
        case "leader":
            return actor.role is Role.LEADER and facts.region_id in actor.region_ids
        case "dept":
            return dept
        case "holder":
            return (dept and actor.is_head) or (
                facts.claimant_id is not None and facts.claimant_id == actor.person_id
            )
        case "enterprise":
            return actor.role is Role.ENTERPRISE and actor.enterprise_id == facts.enterprise_id
        case "reporter":
            return actor.person_id == facts.reporter_id
    return False


def _refuse(
    code: str, facts: TicketFacts, action: Action, **params: Any
) -> InvalidTransitionError:
    return InvalidTransitionError(code, state=facts.state.value, action=action.value, **params)


def authorize(facts: TicketFacts, action: Action, actor: Actor) -> None:
    """Raise InvalidTransitionError unless this actor may take this action now."""
    # a supervised ticket is claimable only while nobody holds it; checked before the table,
    # which lists SUPERVISED for claim, so that a colleague cannot take it over
    if (
        action is Action.CLAIM
        and facts.claimant_id is not None
        and facts.state in (S.CLAIMED, S.SUPERVISED)
    ):
        raise _refuse("already_claimed", facts, action, claimant_id=facts.claimant_id)
    parts = ALLOWED_TRANSITIONS.get(action, {}).get(facts.state)
    if parts is None:
        raise _refuse("wrong_state", facts, action)
    if any(_plays(part, facts, actor) for part in parts):
        return
    raise _refuse(_why_not(parts, facts, actor), facts, action)


def _why_not(parts: frozenset[str], facts: TicketFacts, actor: Actor) -> str:
    if "dept" in parts or "holder" in parts:
        if actor.role is Role.OFFICIAL and actor.department_id == facts.department_id:
            return "not_claimant"
        if actor.role is Role.OFFICIAL:
            return "not_your_department"
    if "reporter" in parts and actor.role is Role.ENTERPRISE:
        return "not_reporter"
    if "enterprise" in parts and actor.role is Role.ENTERPRISE:
        return "not_your_ticket"
    if ({"org", "leader"} & parts) and actor.role in (Role.COORDINATOR, Role.LEADER):
        return "not_your_region" if facts.region_id not in actor.region_ids else "role"
    return "role"


def decide(facts: TicketFacts, action: Action, actor: Actor, **args: Any) -> Move:
    """Check the table and the scope, then apply: the one gate every change passes."""
    authorize(facts, action, actor)
    _check_args(facts, action, actor, args)
    after = apply(facts, action, args | {"actor_id": actor.person_id})
    return Move(action=action, before=facts, after=after, data=_recorded(args))


def _check_args(facts: TicketFacts, action: Action, actor: Actor, args: dict[str, Any]) -> None:
    if action in (Action.ASSIGN, Action.TRANSFER) and args.get("department_id") is None:
        raise _refuse("need_department", facts, action)
    if action is Action.TRANSFER and args["department_id"] == facts.department_id:
        raise _refuse("same_department", facts, action)
    if action is Action.APPROVE_RETURN:
        target = args.get("department_id") or facts.suggested_department_id
        if target is None:
            raise _refuse("need_department", facts, action)
        if target == facts.department_id:
            raise _refuse("same_department", facts, action)
    if action is Action.RETURN and not (args.get("note") or "").strip():
        raise _refuse("need_reason", facts, action)
    if action is Action.RATE and args.get("rating") not in set(Rating):
        raise _refuse("bad_rating", facts, action)
    if action is Action.MERGE and args.get("into_id") in (None, args.get("ticket_id")):
        raise _refuse("bad_merge", facts, action)


def _recorded(args: dict[str, Any]) -> dict[str, Any]:
    keep = ("department_id", "rating", "promised_date", "into_id", "suggested_department_id")
    return {
        k: (str(v) if k == "promised_date" else v)
        for k, v in args.items()
        if k in keep and v is not None
    }


def apply(facts: TicketFacts, action: Action, data: Mapping[str, Any]) -> TicketFacts:
    """The effect of an accepted event; also used to replay a ticket from its events."""
    match action:
        case Action.ASSIGN:
            return replace(facts, state=S.ASSIGNED, department_id=data["department_id"])
        case Action.CLAIM:
            to = S.SUPERVISED if facts.state is S.SUPERVISED else S.CLAIMED
            return replace(facts, state=to, claimant_id=data.get("actor_id"))
        case Action.RETURN:
            return replace(
                facts,
                state=S.RETURNED,
                suggested_department_id=data.get("suggested_department_id"),
                return_count=facts.return_count + 1,
            )
        case Action.APPROVE_RETURN:
            dept = data.get("department_id") or facts.suggested_department_id
            return replace(
                facts,
                state=S.ASSIGNED,
                department_id=dept,
                suggested_department_id=None,
                claimant_id=None,
            )
        case Action.REJECT_RETURN:
            return replace(facts, state=S.ASSIGNED, suggested_department_id=None)
        case Action.SUPERVISE:
            return replace(facts, state=S.SUPERVISED, supervised=True)
        case Action.PROGRESS:
            return facts
        case Action.RESOLVE:
            return replace(facts, state=S.RESOLVED)
        case Action.RATE:
            return _rated(facts, data["rating"])
        case Action.AUTOCLOSE:
            return replace(facts, state=S.CLOSED)
        case Action.WITHDRAW:
            return replace(facts, state=S.WITHDRAWN)
        case Action.MERGE:
            return replace(facts, state=S.MERGED, merged_into_id=data["into_id"])
        case Action.TRANSFER:
            return replace(
                facts,
                state=S.ASSIGNED,
                department_id=data["department_id"],
                claimant_id=None,
                suggested_department_id=None,
                supervised=False,
            )
    raise ValueError(f"no effect for {action}")


def _rated(facts: TicketFacts, rating: str) -> TicketFacts:
    if rating in GOOD_RATINGS:
        return replace(facts, state=S.CLOSED, rating=rating)
    back = S.SUPERVISED if facts.supervised else S.CLAIMED
    return replace(facts, state=back, rating=rating, redo_count=facts.redo_count + 1)


def fold(
    initial: TicketFacts, events: Iterable[tuple[str, int | None, Mapping[str, Any]]]
) -> TicketFacts:
    """Replay (kind, actor, data) events over the reported ticket; other kinds are notes."""
    facts = initial
    known = {a.value for a in Action}
    for kind, actor_id, data in events:
        if kind in known and kind != Action.REPORT:
            facts = apply(facts, Action(kind), {**data, "actor_id": actor_id})
    return facts

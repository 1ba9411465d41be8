"""TicketService against SQLite and PostgreSQL: intake, every move, and every refusal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from itertools import pairwise
from typing import Any

import pytest
import sqlalchemy as sa

from bot.errors import (
    InvalidTransitionError,
    NotRegisteredError,
    RateLimitedError,
    TicketNotFoundError,
    UnboundGroupError,
)
from bot.services.tickets import NewAttachment, TicketService
from bot.tickets import Action
from storage.tables import Attachment, Ticket, TicketEvent, TicketState
from tests.bot.services.conftest import REPORT_LIMIT, Flow
from tests.factories import COUNTY_GROUP, GROUP

S = TicketState

# ---- intake --------------------------------------------------------------------------------


async def test_a_report_naming_one_departments_keywords_goes_to_that_department(tickets, flow):
    outcome = await tickets.report(
        flow.org["acme_boss"], "We cannot print an invoice 发票", chat_id=GROUP, message_id=1
    )
    view = outcome.ticket
    assert (view.state, view.department_code) == (S.ASSIGNED, "tax")
    assert outcome.created
    events = await flow.events(view.number)
    assert [(e.kind, e.actor_id, e.to_state) for e in events] == [
        ("report", events[0].actor_id, "reported"),
        ("assign", None, "assigned"),
    ]
    assert events[1].note == "keywords"
    assert (await flow.ticket(view.number)).due_at is not None


async def test_a_routed_report_is_written_once_with_its_messages_in_one_statement(
    tickets, flow, engine
):
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()[:3]).upper())

    sa.event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        outcome = await tickets.report(
            flow.org["acme_boss"], "We cannot print an invoice 发票", chat_id=GROUP, message_id=1
        )
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", seen)
    assert outcome.ticket.state is S.ASSIGNED
    # the events need no ids read back; the enterprise came in the reporter's statement
    assert not [s for s in statements if s.startswith(("SELECT MAX(", "SELECT ENTERPRISE."))]
    writes = [s for s in statements if s.startswith(("INSERT", "UPDATE", "DELETE"))]
    assert writes == [
        "INSERT INTO TICKET",
        "INSERT INTO TICKETEVENT",
        "INSERT INTO OUTBOX",
    ]
    stored = await flow.ticket(outcome.ticket.number)
    assert (stored.state, stored.version, stored.due_at is not None) == (S.ASSIGNED, 2, True)
    # the card first (answering the report), then a private note to each tax official
    rows = await flow.outbox()
    assert (rows[0].is_card, rows[0].chat_id) == (True, GROUP)
    assert rows[0].payload["reply_parameters"]["message_id"] == 1
    assert all(not r.is_card and r.chat_id != GROUP for r in rows[1:])
    assert len(rows) > 1
    assert [r.id for r in rows] == sorted(r.id for r in rows)


async def test_a_report_naming_two_departments_keywords_stays_for_the_coordinator(tickets, flow):
    outcome = await tickets.report(
        flow.org["acme_boss"], "税 and the business license", chat_id=GROUP, message_id=1
    )
    assert (outcome.ticket.state, outcome.ticket.department_code) == (S.REPORTED, None)
    assert [e.kind for e in await flow.events(outcome.ticket.number)] == ["report"]


async def test_a_report_naming_no_department_stays_reported(tickets, flow):
    outcome = await tickets.report(
        flow.org["beta_boss"], "The road to the plant is flooded", chat_id=GROUP, message_id=1
    )
    assert outcome.ticket.state is S.REPORTED
    assert (await flow.ticket(outcome.ticket.number)).due_at is None


async def test_a_county_departments_keywords_do_not_route_a_city_groups_report(tickets, flow):
    outcome = await tickets.report(
        flow.org["beta_boss"], "pollution from next door", chat_id=GROUP, message_id=1
    )
    assert outcome.ticket.state is S.REPORTED
    county = await tickets.report(
        flow.org["acme_boss"], "pollution from next door", chat_id=COUNTY_GROUP, message_id=1
    )
    assert county.ticket.department_code == "east_env"


async def test_a_report_in_a_group_not_bound_to_a_region_is_refused(tickets, flow):
    with pytest.raises(UnboundGroupError):
        await tickets.report(flow.org["acme_boss"], "help", chat_id=-100999, message_id=1)
    assert await flow.count(Ticket) == 0


async def test_a_report_by_someone_not_registered_is_refused(tickets, flow):
    with pytest.raises(NotRegisteredError):
        await tickets.report(123, "help", chat_id=GROUP, message_id=1)
    assert await flow.count(Ticket) == 0


@pytest.mark.parametrize("who", ["tax_head", "mayor", "city_coord", "admin"])
async def test_only_enterprise_members_may_report(tickets, flow, who):
    with pytest.raises(InvalidTransitionError) as refused:
        await tickets.report(flow.org[who], "help", chat_id=GROUP, message_id=1)
    assert refused.value.code == "role"
    assert await flow.count(Ticket) == 0


async def test_the_same_message_reported_twice_is_one_ticket(tickets, flow):
    first = await tickets.report(flow.org["acme_boss"], "leak", chat_id=GROUP, message_id=7)
    again = await tickets.report(flow.org["acme_boss"], "leak", chat_id=GROUP, message_id=7)
    assert first.created
    assert not again.created
    assert again.ticket.number == first.ticket.number
    assert await flow.count(Ticket) == 1
    assert await flow.count(TicketEvent) == 1


async def test_the_same_message_id_in_another_chat_is_another_ticket(tickets, flow):
    await tickets.report(flow.org["acme_boss"], "leak", chat_id=GROUP, message_id=7)
    await tickets.report(flow.org["acme_boss"], "leak", chat_id=COUNTY_GROUP, message_id=7)
    assert await flow.count(Ticket) == 2


async def test_a_flood_of_reports_stops_at_the_hourly_limit_and_keeps_the_earlier_ones(
    tickets, flow, clock
):
    boss = flow.org["acme_boss"]
    for message in range(REPORT_LIMIT):
        await tickets.report(boss, f"problem {message}", chat_id=GROUP, message_id=message)
    with pytest.raises(RateLimitedError):
        await tickets.report(boss, "one more", chat_id=GROUP, message_id=99)
    assert await flow.count(Ticket) == REPORT_LIMIT
    # a colleague is not held back, and an hour later the boss may report again
    await tickets.report(flow.org["acme_clerk"], "mine", chat_id=GROUP, message_id=100)
    clock.advance(timedelta(hours=1, seconds=1))
    await tickets.report(boss, "next hour", chat_id=GROUP, message_id=101)
    assert await flow.count(Ticket) == REPORT_LIMIT + 2


async def test_a_private_anonymous_report_goes_to_the_enterprises_county_group(tickets, flow):
    outcome = await tickets.report(
        flow.org["acme_boss"],
        "An inspector asked for a gift",
        chat_id=flow.org["acme_boss"],
        message_id=5,
        private=True,
        anonymous=True,
    )
    ticket = await flow.ticket(outcome.ticket.number)
    assert ticket.anonymous
    assert ticket.group_chat_id == COUNTY_GROUP
    assert ticket.region_id == flow.org.regions["east"]


async def test_anonymity_is_only_for_private_reports(tickets, flow):
    outcome = await tickets.report(
        flow.org["acme_boss"], "leak", chat_id=GROUP, message_id=5, anonymous=True
    )
    assert not outcome.ticket.anonymous


async def test_a_report_keeps_its_photos(tickets, flow):
    outcome = await tickets.report(
        flow.org["acme_boss"],
        "see the photo",
        chat_id=GROUP,
        message_id=5,
        attachments=[NewAttachment("photo", file_id="AgAD-1")],
    )
    assert await flow.count(Attachment) == 1
    async with flow.uows(readonly=True) as uow:
        [photo] = await uow.events.attachments_of(outcome.ticket.number)
        [event] = await uow.events.of_ticket(outcome.ticket.number)
        assert (photo.file_id, photo.event_id) == ("AgAD-1", event.id)


# ---- every move, the way it should go ------------------------------------------------------


async def test_a_coordinator_assigns_and_the_due_time_is_set(tickets, flow, clock):
    number = await flow.reported()
    outcome = await tickets.assign(flow.org["city_coord"], number, "Tax")
    assert (outcome.ticket.state, outcome.ticket.department_code) == (S.ASSIGNED, "tax")
    ticket = await flow.ticket(number)
    assert ticket.assigned_at == clock.now()
    assert ticket.due_at is not None
    assert ticket.due_at > clock.now()
    [_, event] = await flow.events(number)
    assert (event.kind, event.from_state, event.to_state) == ("assign", "reported", "assigned")
    assert event.data == {"department_id": flow.org.depts["tax"]}


async def test_an_official_claims_with_a_promise_date(tickets, flow, clock):
    number = await flow.assigned()
    promised = date(2026, 3, 6)
    outcome = await tickets.claim(flow.org["tax_clerk"], number, promised)
    assert (outcome.ticket.state, outcome.ticket.claimant_name) == (S.CLAIMED, "税务小王")
    assert outcome.ticket.promised_date == promised
    ticket = await flow.ticket(number)
    assert ticket.claimed_at == clock.now()
    assert (await flow.events(number))[-1].data == {"promised_date": "2026-03-06"}


async def test_a_promise_for_today_is_accepted_and_one_for_yesterday_is_refused(tickets, flow):
    number = await flow.assigned()
    before = await flow.stored(number)
    with pytest.raises(InvalidTransitionError) as refused:
        await tickets.claim(flow.org["tax_clerk"], number, date(2026, 3, 1))
    assert refused.value.code == "bad_promise"
    assert await flow.stored(number) == before
    await tickets.claim(flow.org["tax_clerk"], number, date(2026, 3, 2))


async def test_a_second_claim_is_refused_with_the_name_of_who_holds_it(tickets, flow):
    number = await flow.claimed(who="tax_clerk")
    before = await flow.stored(number)
    with pytest.raises(InvalidTransitionError) as refused:
        await tickets.claim(flow.org["tax_head"], number)
    assert refused.value.code == "already_claimed"
    assert refused.value.params["claimant_name"] == "税务小王"
    assert refused.value.params["number"] == number
    assert await flow.stored(number) == before


async def test_a_supervised_ticket_nobody_holds_is_claimed_and_stays_supervised(tickets, flow):
    number = await flow.assigned()
    await tickets.supervise(flow.org["mayor"], number, "two weeks already")
    outcome = await tickets.claim(flow.org["tax_clerk"], number)
    assert (outcome.ticket.state, outcome.ticket.claimant_name) == (S.SUPERVISED, "税务小王")
    with pytest.raises(InvalidTransitionError) as refused:
        await tickets.claim(flow.org["tax_head"], number)
    assert refused.value.params["claimant_name"] == "税务小王"


async def test_a_return_goes_back_to_the_coordinator_with_a_suggestion(tickets, flow):
    number = await flow.assigned()
    outcome = await tickets.return_(
        flow.org["tax_head"], number, "licences are not ours", "market"
    )
    assert outcome.ticket.state is S.RETURNED
    assert outcome.ticket.suggested_department_name == "Market Regulation"
    assert (await flow.ticket(number)).return_count == 1


async def test_approving_a_return_moves_the_ticket_without_restarting_the_clock(
    tickets, flow, clock
):
    number = await flow.assigned()
    due = (await flow.ticket(number)).due_at
    assigned_at = (await flow.ticket(number)).assigned_at
    clock.advance(timedelta(hours=3))
    await tickets.return_(flow.org["tax_head"], number, "not ours", "market")
    clock.advance(timedelta(hours=3))
    outcome = await tickets.approve_return(flow.org["city_coord"], number)
    assert (outcome.ticket.state, outcome.ticket.department_code) == (S.ASSIGNED, "market")
    ticket = await flow.ticket(number)
    assert (ticket.due_at, ticket.assigned_at) == (due, assigned_at)
    assert ticket.suggested_department_id is None


async def test_approving_a_return_may_name_another_department(tickets, flow):
    number = await flow.assigned()
    await tickets.return_(flow.org["tax_head"], number, "not ours", "market")
    outcome = await tickets.approve_return(flow.org["mayor"], number, "east_env")
    assert outcome.ticket.department_code == "east_env"


async def test_rejecting_a_return_keeps_the_department_and_counts_the_return(tickets, flow):
    number = await flow.assigned()
    await tickets.return_(flow.org["tax_clerk"], number, "not ours")
    outcome = await tickets.reject_return(flow.org["city_coord"], number, "it is a tax matter")
    assert (outcome.ticket.state, outcome.ticket.department_code) == (S.ASSIGNED, "tax")
    ticket = await flow.ticket(number)
    assert ticket.return_count == 1
    assert [e.kind for e in await flow.events(number)][-2:] == ["return", "reject_return"]


async def test_a_leader_supervises_with_photos_and_a_place(tickets, flow, clock):
    number = await flow.claimed()
    attachments = [
        NewAttachment("photo", file_id="AgAD-2"),
        NewAttachment("location", latitude=40.65, longitude=109.84),
    ]
    outcome = await tickets.supervise(flow.org["mayor"], number, "visit today", attachments)
    assert outcome.ticket.state is S.SUPERVISED
    ticket = await flow.ticket(number)
    assert ticket.supervised_at == clock.now()
    assert ticket.claimant_id is not None
    async with flow.uows(readonly=True) as uow:
        files = [(f.kind, f.latitude) for f in await uow.events.attachments_of(number)]
    assert files == [("photo", None), ("location", 40.65)]


async def test_progress_changes_no_state_but_counts_as_activity(tickets, flow, clock):
    number = await flow.claimed()
    clock.advance(timedelta(hours=5))
    outcome = await tickets.progress(flow.org["tax_clerk"], number, "called the landlord")
    assert outcome.ticket.state is S.CLAIMED
    assert outcome.ticket.last_activity_at == clock.now()
    [*_, event] = await flow.events(number)
    assert (event.kind, event.from_state, event.to_state) == ("progress", "claimed", "claimed")
    assert event.note == "called the landlord"


async def test_the_department_head_may_resolve_what_a_colleague_holds(tickets, flow, clock):
    number = await flow.claimed(who="tax_clerk")
    outcome = await tickets.resolve(flow.org["tax_head"], number, "done")
    assert outcome.ticket.state is S.RESOLVED
    assert (await flow.ticket(number)).resolved_at == clock.now()


@pytest.mark.parametrize("rating", ["satisfied", "basic"])
async def test_a_good_rating_closes_the_ticket(tickets, flow, clock, rating):
    number = await flow.resolved()
    outcome = await tickets.rate(flow.org["acme_clerk"], number, rating)
    assert (outcome.ticket.state, outcome.ticket.rating) == (S.CLOSED, rating)
    assert (await flow.ticket(number)).closed_at == clock.now()


async def test_each_bad_rating_sends_the_ticket_back_and_counts_a_redo(tickets, flow):
    number = await flow.resolved()
    outcome = await tickets.rate(flow.org["acme_boss"], number, "unsolved", "still leaks")
    assert (outcome.ticket.state, outcome.ticket.redo_count) == (S.CLAIMED, 1)
    assert outcome.ticket.resolved_at is None
    await tickets.supervise(flow.org["mayor"], number, "again?")
    await tickets.resolve(flow.org["tax_clerk"], number, "now really")
    outcome = await tickets.rate(flow.org["acme_boss"], number, "unsatisfied", "rude")
    assert (outcome.ticket.state, outcome.ticket.redo_count) == (S.SUPERVISED, 2)
    assert outcome.ticket.claimant_name == "税务小王"


async def test_the_reporter_withdraws_a_ticket_nobody_has_claimed(tickets, flow, clock):
    number = await flow.assigned()
    outcome = await tickets.withdraw(flow.org["acme_boss"], number)
    assert outcome.ticket.state is S.WITHDRAWN
    assert (await flow.ticket(number)).closed_at == clock.now()


async def test_a_duplicate_is_merged_into_the_other_ticket(tickets, flow):
    first = await flow.reported()
    duplicate = await flow.reported(who="acme_clerk")
    outcome = await tickets.merge(flow.org["city_coord"], duplicate, first)
    assert (outcome.ticket.state, outcome.ticket.merged_into) == (S.MERGED, first)
    assert (await flow.events(duplicate))[-1].data == {"into_id": first}


@pytest.mark.parametrize("start", ["assigned", "claimed", "supervised", "returned"])
async def test_a_transfer_hands_the_ticket_to_another_department_unheld(tickets, flow, start):
    number = await (flow.assigned() if start in ("assigned", "returned") else flow.claimed())
    if start == "supervised":
        await tickets.supervise(flow.org["mayor"], number, "hurry")
    if start == "returned":
        await tickets.return_(flow.org["tax_clerk"], number, "not ours")
    due = (await flow.ticket(number)).due_at
    outcome = await tickets.transfer(flow.org["mayor"], number, "market")
    assert (outcome.ticket.state, outcome.ticket.department_code) == (S.ASSIGNED, "market")
    ticket = await flow.ticket(number)
    assert (ticket.claimant_id, ticket.supervised_at, ticket.due_at) == (None, None, due)


async def test_the_scheduler_supervises_and_closes_unrated_tickets(tickets, flow):
    late = await flow.claimed()
    outcome = await tickets.system(late, Action.SUPERVISE, "past due")
    assert outcome.ticket.state is S.SUPERVISED
    unrated = await flow.resolved()
    outcome = await tickets.system(unrated, Action.AUTOCLOSE)
    assert (outcome.ticket.state, outcome.ticket.rating) == (S.CLOSED, None)
    assert (await flow.events(unrated))[-1].actor_id is None


# ---- refusals: a clear answer, and nothing changed -----------------------------------------

Call = Callable[[TicketService, Flow, int], Awaitable[Any]]


def by(name: str, method: str, *args: Any) -> Call:
    async def call(tickets: TicketService, flow: Flow, number: int) -> Any:
        return await getattr(tickets, method)(flow.org[name], number, *args)

    call.__qualname__ = f"{method.rstrip('_')}_by_{name}"
    return call


REFUSED = [
    ("reported", by("acme_boss", "assign", "tax"), "role"),
    ("reported", by("tax_head", "claim"), "not_found"),
    ("reported", by("city_coord", "assign", "nothing-like-this"), "unknown_department"),
    ("reported", by("city_coord", "claim"), "wrong_state"),
    ("reported", by("acme_clerk", "withdraw"), "not_reporter"),
    ("reported", by("east_coord", "assign", "tax"), "not_found"),
    ("reported", by("west_leader", "assign", "tax"), "not_found"),
    ("assigned", by("market_head", "claim"), "not_found"),
    ("assigned", by("mayor", "claim"), "role"),
    ("assigned", by("tax_clerk", "return_", "  "), "need_reason"),
    ("assigned", by("tax_clerk", "resolve", "done"), "wrong_state"),
    ("assigned", by("city_coord", "approve_return"), "wrong_state"),
    ("assigned", by("city_coord", "supervise", "faster"), "role"),
    ("assigned", by("mayor", "transfer", "tax"), "same_department"),
    ("assigned", by("acme_boss", "rate", "satisfied"), "wrong_state"),
    ("claimed", by("tax_head", "claim"), "already_claimed"),
    ("claimed", by("acme_boss", "withdraw"), "wrong_state"),
    ("claimed", by("acme_boss", "resolve", "done myself"), "role"),
    ("claimed", by("mayor", "resolve", "done"), "role"),
    ("resolved", by("beta_boss", "rate", "satisfied"), "not_found"),
    ("resolved", by("acme_boss", "rate", "excellent"), "bad_rating"),
    ("resolved", by("tax_clerk", "rate", "satisfied"), "role"),
    ("resolved", by("tax_clerk", "progress", "more"), "wrong_state"),
    ("closed", by("mayor", "transfer", "market"), "wrong_state"),
    ("closed", by("acme_boss", "rate", "unsolved"), "wrong_state"),
    ("closed", by("tax_clerk", "claim"), "wrong_state"),
]


@pytest.mark.parametrize(
    ("state", "call", "code"),
    [pytest.param(s, c, code, id=f"{s}-{c.__qualname__}-{code}") for s, c, code in REFUSED],
)
async def test_a_refused_move_changes_neither_the_ticket_nor_its_events(
    tickets, flow, state, call, code
):
    number = await getattr(flow, state)()
    before = await flow.stored(number)
    with pytest.raises((InvalidTransitionError, TicketNotFoundError)) as refused:
        await call(tickets, flow, number)
    assert refused.value.code == code
    assert await flow.stored(number) == before


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(call, id=call.__qualname__)
        for call in (
            by("gamma_boss", "withdraw"),
            by("gamma_boss", "rate", "satisfied"),
            by("market_head", "claim"),
            by("market_head", "resolve", "done"),
            by("west_leader", "supervise", "x"),
            by("east_coord", "transfer", "market"),
        )
    ],
)
async def test_someone_elses_ticket_and_no_ticket_look_exactly_the_same(tickets, flow, call):
    number = await flow.claimed()
    with pytest.raises(TicketNotFoundError) as foreign:
        await call(tickets, flow, number)
    with pytest.raises(TicketNotFoundError) as missing:
        await call(tickets, flow, number + 1000)
    assert type(foreign.value) is type(missing.value)
    assert foreign.value.code == missing.value.code == "not_found"
    assert foreign.value.params == {"number": number}
    assert missing.value.params == {"number": number + 1000}


@pytest.mark.parametrize("number", [0, -1, 2**31, 2**63, 10**30])
async def test_numbers_no_ticket_can_have_are_simply_not_found(tickets, flow, number):
    await flow.claimed()
    with pytest.raises(TicketNotFoundError):
        await tickets.progress(flow.org["tax_clerk"], number, "x")


async def test_people_not_registered_or_deactivated_cannot_act(tickets, flow):
    number = await flow.assigned()
    with pytest.raises(NotRegisteredError):
        await tickets.claim(42, number)
    async with flow.uows() as uow:
        clerk = await uow.org.person_by_telegram(flow.org["tax_clerk"])
        assert clerk is not None
        clerk.active = False
        await uow.commit()
    with pytest.raises(NotRegisteredError):
        await tickets.claim(flow.org["tax_clerk"], number)


# ---- merging -------------------------------------------------------------------------------


async def test_a_ticket_cannot_be_merged_into_a_closed_one(tickets, flow):
    closed = await flow.closed()
    duplicate = await flow.reported()
    before = await flow.stored(duplicate)
    with pytest.raises(InvalidTransitionError) as refused:
        await tickets.merge(flow.org["city_coord"], duplicate, closed)
    assert refused.value.code == "merge_target"
    assert await flow.stored(duplicate) == before


async def test_a_ticket_cannot_be_merged_into_one_its_merger_cannot_see(tickets, flow):
    city_ticket = await flow.reported(who="beta_boss")
    county_ticket = await flow.reported(chat=COUNTY_GROUP)
    with pytest.raises(InvalidTransitionError) as refused:
        await tickets.merge(flow.org["east_coord"], county_ticket, city_ticket)
    assert refused.value.code == "merge_target"
    # the same words as for a ticket that does not exist
    with pytest.raises(InvalidTransitionError) as missing:
        await tickets.merge(flow.org["east_coord"], county_ticket, city_ticket + 1000)
    assert missing.value.code == "merge_target"


@pytest.mark.parametrize("into", [0, -5, 2**31, 2**63])
async def test_a_merge_into_a_number_no_ticket_can_have_is_refused(tickets, flow, into):
    number = await flow.reported()
    with pytest.raises(InvalidTransitionError) as refused:
        await tickets.merge(flow.org["city_coord"], number, into)
    assert refused.value.code == "merge_target"


async def test_only_a_reported_ticket_can_be_merged(tickets, flow):
    target = await flow.reported()
    claimed = await flow.claimed()
    with pytest.raises(InvalidTransitionError) as refused:
        await tickets.merge(flow.org["city_coord"], claimed, target)
    assert refused.value.code == "wrong_state"


@pytest.mark.parametrize("target", ["itself", "merged"])
async def test_a_ticket_cannot_be_merged_into_itself_or_a_merged_one(tickets, flow, target):
    number = await flow.reported()
    into = number
    if target == "merged":
        into = await flow.reported()
        await tickets.merge(flow.org["city_coord"], into, await flow.reported())
    with pytest.raises(InvalidTransitionError) as refused:
        await tickets.merge(flow.org["city_coord"], number, into)
    assert refused.value.code in ("merge_target", "bad_merge")
    assert (await flow.ticket(number)).state == S.REPORTED


# ---- the record ----------------------------------------------------------------------------


async def test_every_move_appends_one_event_with_who_when_and_from_to(tickets, flow, clock):
    number = await flow.closed()
    events = await flow.events(number)
    assert [e.kind for e in events] == ["report", "assign", "claim", "resolve", "rate"]
    for before, after in pairwise(events):
        assert after.from_state == before.to_state
    people = [flow.org[n] for n in ("acme_boss", "city_coord", "tax_clerk", "tax_clerk")]
    async with flow.uows(readonly=True) as uow:
        ids = [(await uow.org.person_by_telegram(p)).id for p in people]  # type: ignore[union-attr]
    assert [e.actor_id for e in events[:4]] == ids
    assert all(e.at == clock.now() for e in events)


async def test_ticket_events_cannot_be_changed_through_the_orm(flow):
    number = await flow.claimed()
    async with flow.uows() as uow:
        [event, *_] = await uow.events.of_ticket(number)
        event.note = "rewritten history"
        with pytest.raises(sa.exc.DBAPIError, match="immutable"):
            await uow.flush()
    async with flow.uows() as uow:
        [event, *_] = await uow.events.of_ticket(number)
        await uow.session.delete(event)
        with pytest.raises(sa.exc.DBAPIError, match="immutable"):
            await uow.flush()
    assert len(await flow.events(number)) == 3


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ticketevent SET note = 'rewritten'",
        "UPDATE ticketevent SET to_state = 'closed' WHERE kind = 'claim'",
        "DELETE FROM ticketevent",
    ],
)
async def test_ticket_events_cannot_be_changed_with_raw_sql(engine, flow, statement):
    number = await flow.claimed()
    before = await flow.stored(number)
    with pytest.raises(sa.exc.DBAPIError, match="immutable"):
        async with engine.begin() as conn:
            await conn.execute(sa.text(statement))
    assert await flow.stored(number) == before


async def test_telegram_ids_and_supergroup_ids_keep_all_64_bits(tickets, flow, queries):
    message = 2**40 + 3
    outcome = await tickets.report(
        flow.org["acme_boss"], "big ids", chat_id=GROUP, message_id=message
    )
    ticket = await flow.ticket(outcome.ticket.number)
    assert (ticket.source_chat_id, ticket.source_message_id) == (GROUP, message)
    assert ticket.group_chat_id == GROUP == -1001000000001
    assert flow.org["acme_boss"] > 2**32
    me = await queries.whoami(flow.org["acme_boss"])
    assert me is not None
    assert me.telegram_id == flow.org["acme_boss"]
    again = await tickets.report(flow.org["acme_boss"], "x", chat_id=GROUP, message_id=message)
    assert not again.created
    assert {row.chat_id for row in await flow.outbox()} == {GROUP}

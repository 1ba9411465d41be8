"""QueryService: one ticket with its timeline, and lists scoped to who is asking."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from bot import texts
from bot.errors import NotRegisteredError, TicketNotFoundError
from bot.services.tickets import NewAttachment
from storage.tables import Role, TicketState
from tests.factories import COUNTY_GROUP, GROUP

S = TicketState


@dataclass
class World:
    """Five tickets across the city and both counties, in different hands."""

    city_acme: int  # acme in the city group, claimed by the tax clerk
    city_beta: int  # beta in the city group, still reported
    east_acme: int  # acme's clerk in the county group, with East Environment, supervised
    west_gamma: int  # gamma privately, a west county ticket, still reported
    market_beta: int  # beta, resolved by Market Regulation

    def all(self) -> set[int]:
        return {self.city_acme, self.city_beta, self.east_acme, self.west_gamma, self.market_beta}


@pytest.fixture
async def world(tickets, flow) -> World:
    org = flow.org
    city_acme = await flow.reported("The bills will not print")
    await tickets.assign(org["city_coord"], city_acme, "tax")
    await tickets.claim(org["tax_clerk"], city_acme)
    await tickets.progress(org["tax_clerk"], city_acme, "called the vendor")
    city_beta = await flow.reported("The road is flooded", who="beta_boss")
    east_acme = await flow.reported("Dust from the quarry", who="acme_clerk", chat=COUNTY_GROUP)
    await tickets.assign(org["east_coord"], east_acme, "east_env")
    await tickets.supervise(org["east_leader"], east_acme, "the school is next door")
    west = await tickets.report(
        org["gamma_boss"], "Water cut", chat_id=org["gamma_boss"], message_id=1, private=True
    )
    market_beta = await flow.reported("Licence renewal stuck", who="beta_boss")
    await tickets.assign(org["mayor"], market_beta, "market")
    await tickets.claim(org["market_head"], market_beta)
    await tickets.resolve(org["market_head"], market_beta, "renewed")
    return World(city_acme, city_beta, east_acme, west.ticket.number, market_beta)


def numbers(views) -> set[int]:
    return {v.number for v in views}


# ---- one ticket ----------------------------------------------------------------------------


async def test_a_ticket_comes_with_its_timeline_of_events_authors_and_notes(
    queries, tickets, flow, world, settings
):
    await tickets.progress(flow.org["tax_clerk"], world.city_acme, "sent a photo")
    await tickets.supervise(
        flow.org["mayor"],
        world.city_acme,
        "see the site",
        [NewAttachment("location", latitude=40.6, longitude=109.8)],
    )
    view, reveal = await queries.ticket(flow.org["tax_head"], world.city_acme)
    assert view.state is S.SUPERVISED
    assert [(e.kind, e.actor_name, e.note) for e in view.events] == [
        ("report", "Ann Acme", None),
        ("assign", "Cora Coord", None),
        ("claim", "税务小王", None),
        ("progress", "税务小王", "called the vendor"),
        ("progress", "税务小王", "sent a photo"),
        ("supervise", "Mia Mayor", "see the site"),
    ]
    assert [(e.from_state, e.to_state) for e in view.events][-1] == ("claimed", "supervised")
    assert [(a.kind, a.latitude) for a in view.attachments] == [("location", 40.6)]
    assert reveal
    timeline = texts.timeline("en", settings.tz, view, reveal=reveal)
    assert "see the site" in timeline
    assert "Mia Mayor" in timeline


async def test_a_keyword_routed_ticket_shows_the_system_as_the_one_who_assigned(
    queries, tickets, flow
):
    outcome = await tickets.report(
        flow.org["acme_boss"], "税 question", chat_id=GROUP, message_id=1
    )
    view, _ = await queries.ticket(flow.org["acme_boss"], outcome.ticket.number)
    assert [(e.kind, e.actor_name) for e in view.events] == [
        ("report", "Ann Acme"),
        ("assign", None),
    ]


@pytest.mark.parametrize(
    ("who", "ticket"),
    [
        ("beta_boss", "city_acme"),
        ("gamma_boss", "east_acme"),
        ("acme_boss", "city_beta"),
        ("market_head", "city_acme"),
        ("tax_head", "east_acme"),
        ("east_leader", "city_beta"),
        ("west_leader", "east_acme"),
        ("east_coord", "west_gamma"),
    ],
)
async def test_a_ticket_out_of_scope_looks_exactly_like_no_ticket(
    queries, flow, world, who, ticket
):
    number = getattr(world, ticket)
    with pytest.raises(TicketNotFoundError) as hidden:
        await queries.ticket(flow.org[who], number)
    with pytest.raises(TicketNotFoundError) as missing:
        await queries.ticket(flow.org[who], 4242)
    assert hidden.value.code == missing.value.code
    assert set(hidden.value.params) == set(missing.value.params) == {"number"}


@pytest.mark.parametrize("number", [0, -3, 2**31, 2**62, 2**64])
async def test_numbers_no_ticket_can_have_are_not_found(queries, flow, world, number):
    with pytest.raises(TicketNotFoundError):
        await queries.ticket(flow.org["admin"], number)


async def test_people_not_registered_get_nothing(queries, world):
    for ask in (queries.mine, queries.open, queries.overdue):
        with pytest.raises(NotRegisteredError):
            await ask(77)
    with pytest.raises(NotRegisteredError):
        await queries.ticket(77, world.city_acme)
    assert await queries.whoami(77) is None


async def test_whoami_describes_the_person(queries, flow):
    me = await queries.whoami(flow.org["tax_head"])
    assert me is not None
    assert (me.name, me.role, me.is_head, me.language) == ("Tia Tax", Role.OFFICIAL, True, "en")


# ---- the lists -----------------------------------------------------------------------------

OPEN_BY = {
    "acme_boss": {"city_acme", "east_acme"},
    "acme_clerk": {"city_acme", "east_acme"},
    "beta_boss": {"city_beta", "market_beta"},
    "gamma_boss": {"west_gamma"},
    "tax_head": {"city_acme"},
    "tax_clerk": {"city_acme"},
    "market_head": {"market_beta"},
    "env_head": {"east_acme"},
    "east_leader": {"east_acme"},
    "east_coord": {"east_acme"},
    "west_leader": {"west_gamma"},
    "mayor": {"city_acme", "city_beta", "east_acme", "west_gamma", "market_beta"},
    "city_coord": {"city_acme", "city_beta", "east_acme", "west_gamma", "market_beta"},
    "admin": {"city_acme", "city_beta", "east_acme", "west_gamma", "market_beta"},
}


@pytest.mark.parametrize(("who", "expected"), OPEN_BY.items())
async def test_open_tickets_are_scoped_to_the_person(queries, flow, world, who, expected):
    assert numbers(await queries.open(flow.org[who])) == {getattr(world, t) for t in expected}


async def test_closed_tickets_leave_the_open_list(queries, tickets, flow, world):
    await tickets.rate(flow.org["beta_boss"], world.market_beta, "satisfied")
    await tickets.withdraw(flow.org["beta_boss"], world.city_beta)
    assert numbers(await queries.open(flow.org["beta_boss"])) == set()
    assert numbers(await queries.open(flow.org["admin"])) == world.all() - {
        world.market_beta,
        world.city_beta,
    }


MINE_BY = {
    "acme_boss": {"city_acme", "east_acme"},
    "beta_boss": {"city_beta", "market_beta"},
    "tax_clerk": {"city_acme"},
    "tax_head": set(),
    "market_head": {"market_beta"},
    "east_leader": {"east_acme"},
    "west_leader": {"west_gamma"},
    "mayor": {"city_beta", "east_acme", "west_gamma"},
    "admin": {"city_beta", "east_acme", "west_gamma"},
}


@pytest.mark.parametrize(("who", "expected"), MINE_BY.items())
async def test_mine_lists_what_each_role_has_to_act_on(queries, flow, world, who, expected):
    assert numbers(await queries.mine(flow.org[who])) == {getattr(world, t) for t in expected}


OVERDUE_BY = {
    "acme_boss": {"city_acme", "east_acme"},
    "beta_boss": set(),  # its one assigned ticket is resolved: waiting on beta, not overdue
    "tax_clerk": {"city_acme"},
    "market_head": set(),
    "env_head": {"east_acme"},
    "east_leader": {"east_acme"},
    "west_leader": set(),
    "mayor": {"city_acme", "east_acme"},
    "admin": {"city_acme", "east_acme"},
}


@pytest.mark.parametrize(("who", "expected"), OVERDUE_BY.items())
async def test_overdue_lists_tickets_past_due_within_the_persons_scope(
    queries, flow, clock, world, who, expected
):
    assert await queries.overdue(flow.org[who]) == []
    clock.advance(timedelta(days=30))
    assert numbers(await queries.overdue(flow.org[who])) == {getattr(world, t) for t in expected}


# ---- anonymous reports ---------------------------------------------------------------------


@pytest.fixture
async def anonymous(tickets, flow) -> int:
    outcome = await tickets.report(
        flow.org["acme_boss"],
        "An inspector keeps asking for gifts",
        chat_id=flow.org["acme_boss"],
        message_id=9,
        private=True,
        anonymous=True,
    )
    await tickets.assign(flow.org["east_coord"], outcome.ticket.number, "tax")
    return outcome.ticket.number


async def test_an_anonymous_ticket_hides_the_enterprise_from_the_group(
    queries, flow, anonymous, settings
):
    view, _ = await queries.ticket(flow.org["east_coord"], anonymous)
    assert view.anonymous
    assert view.shown_enterprise(reveal=False) == "East County · rare earth"
    tz = settings.tz
    for shown in (texts.card("zh", tz, view), texts.timeline("en", tz, view)):
        assert "Acme" not in shown
        assert "East County · rare earth" in shown


@pytest.mark.parametrize("who", ["tax_head", "tax_clerk", "east_coord", "east_leader", "mayor"])
async def test_the_department_and_the_leaders_may_see_who_reported_anonymously(
    queries, flow, anonymous, who, settings
):
    view, reveal = await queries.ticket(flow.org[who], anonymous)
    assert reveal
    assert view.shown_enterprise(reveal=reveal) == "Acme <Rare Earth> & Co"
    assert "Ann Acme" in texts.timeline("en", settings.tz, view, reveal=reveal)


async def test_the_reporting_enterprise_sees_its_own_anonymous_ticket(queries, flow, anonymous):
    view, reveal = await queries.ticket(flow.org["acme_clerk"], anonymous)
    assert reveal
    assert view.shown_enterprise(reveal=reveal) == "Acme <Rare Earth> & Co"
    with pytest.raises(TicketNotFoundError):
        await queries.ticket(flow.org["gamma_boss"], anonymous)

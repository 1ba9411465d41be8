"""Invites, languages and group bindings, against the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.clock import ManualClock
from bot.errors import InviteError, NotRegisteredError
from bot.services.people import PeopleService
from storage.tables import Role, Ticket
from storage.uow import UnitOfWorkFactory
from tests.factories import COUNTY_GROUP, GROUP, build_org

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
NEW = 8_000_000_001


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def people(uows: UnitOfWorkFactory, clock: ManualClock) -> PeopleService:
    await build_org(uows)
    return PeopleService(uows, clock)


async def test_an_invite_makes_a_person_of_its_role_and_scope(people: PeopleService) -> None:
    invite = await people.create_invite("official", "王科长", department="market", is_head=True)
    assert invite.role is Role.OFFICIAL
    assert 12 <= len(invite.code) <= 64
    person = await people.start(NEW, invite.code, "wang", "en-GB")
    assert (person.role, person.is_head, person.language, person.username) == (
        Role.OFFICIAL,
        True,
        "en",
        "wang",
    )
    assert person.department_id is not None
    assert person.region_id is not None  # the department's region


async def test_the_invite_language_wins_over_telegrams(people: PeopleService) -> None:
    invite = await people.create_invite("enterprise", "Li", enterprise="acme", language="zh")
    assert (await people.start(NEW, invite.code, None, "en")).language == "zh"


async def test_an_invite_is_single_use_and_expires(
    people: PeopleService, clock: ManualClock
) -> None:
    used = await people.create_invite("coordinator", "Co", region="east")
    await people.start(NEW, used.code)
    with pytest.raises(InviteError) as error:
        await people.start(NEW + 1, used.code)
    assert error.value.code == "invite_used"
    late = await people.create_invite("leader", "Le", region="west", ttl=timedelta(minutes=5))
    clock.advance(timedelta(minutes=5))
    with pytest.raises(InviteError) as error:
        await people.start(NEW + 2, late.code)
    assert error.value.code == "invite_expired"
    with pytest.raises(InviteError) as error:
        await people.start(NEW + 3, "nope")
    assert error.value.code == "invite_unknown"


async def test_start_without_a_code_knows_only_registered_people(people: PeopleService) -> None:
    with pytest.raises(NotRegisteredError):
        await people.start(NEW, None)
    invite = await people.create_invite("admin", "Ad")
    await people.start(NEW, invite.code)
    assert (await people.start(NEW, "")).name == "Ad"


@pytest.mark.parametrize(
    ("role", "scope", "code"),
    [
        ("enterprise", {}, "bad_scope"),
        ("official", {"region": "east"}, "bad_scope"),
        ("leader", {}, "bad_scope"),
        ("chief", {}, "bad_role"),
        ("enterprise", {"enterprise": "nobody"}, "unknown_enterprise"),
        ("official", {"department": "nobody"}, "unknown_department"),
        ("leader", {"region": "nowhere"}, "unknown_region"),
        ("admin", {"language": "fr"}, "bad_language"),
    ],
)
async def test_invites_with_a_bad_scope_are_refused(
    people: PeopleService, role: str, scope: dict[str, str], code: str
) -> None:
    with pytest.raises(InviteError) as error:
        await people.create_invite(role, "X", **scope)  # type: ignore[arg-type]
    assert error.value.code == code


async def test_set_language(people: PeopleService) -> None:
    invite = await people.create_invite("admin", "Ad")
    await people.start(NEW, invite.code, language="zh")
    assert (await people.set_language(NEW, "EN")).language == "en"
    with pytest.raises(InviteError):
        await people.set_language(NEW, "fr")
    with pytest.raises(NotRegisteredError):
        await people.set_language(NEW + 1, "en")


async def test_a_migrated_group_keeps_its_binding_and_tickets(
    people: PeopleService, uows: UnitOfWorkFactory
) -> None:
    async with uows() as uow:
        region = (await uow.org.group_by_chat(GROUP)).region_id  # type: ignore[union-attr]
        uow.tickets.add(
            Ticket(
                state="reported",
                region_id=region,
                enterprise_id=1,
                reporter_id=1,
                summary="s",
                text="t",
                group_chat_id=GROUP,
                card_message_id=7,
                created_at=START,
                last_activity_at=START,
            )
        )
        await uow.commit()
    new = -1009000000001
    await people.migrate_group(GROUP, new)
    await people.migrate_group(GROUP, new)  # the second service message changes nothing
    assert await people.group(GROUP) is None
    assert (await people.group(new)).region_id == region  # type: ignore[union-attr]
    async with uows(readonly=True) as uow:
        ticket = await uow.tickets.get(1)
        assert ticket is not None
        assert (ticket.group_chat_id, ticket.card_message_id) == (new, None)


async def test_the_unbound_hint_is_given_once_per_chat(people: PeopleService) -> None:
    assert await people.hint_once(-100777) is True
    assert await people.hint_once(-100777) is False
    assert await people.hint_once(-100778) is True


async def test_categories_are_the_departments_of_the_enterprises_regions(
    people: PeopleService,
) -> None:
    org_ids = 5_000_000_000  # acme_boss in build_org
    names = await people.categories(org_ids)
    assert names == ["Tax Bureau", "Market Regulation", "East Environment"]
    assert await people.group(COUNTY_GROUP) is not None


async def test_an_invite_prints_as_its_code(people: PeopleService) -> None:
    invite = await people.create_invite("admin", "Ad")
    assert str(invite) == invite.code

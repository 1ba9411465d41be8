"""The org chart kept between units of work: answers are shared, yet a change made here is seen
at once, a change made elsewhere within the keeping time, and rows from it save like any other."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.clock import SystemClock
from bot.services.people import PeopleService
from bot.services.queries import QueryService
from storage.db import create_schema, make_engine, make_session_factory
from storage.orgcache import KEEP_SECONDS, MISSING, org_cache_for
from storage.tables import Person
from storage.uow import UnitOfWorkFactory
from tests.factories import GROUP, Ticking, build_org


@pytest.fixture
def ticking(engine: AsyncEngine) -> Ticking:
    clock = Ticking()
    org_cache_for(engine).clock = clock
    return clock


async def _language(uows: UnitOfWorkFactory, telegram_id: int) -> str:
    async with uows(readonly=True) as uow:
        person = await uow.org.person_by_telegram(telegram_id)
        assert person is not None
        return person.language


async def _statements(engine: AsyncEngine) -> list[str]:
    seen: list[str] = []

    @sa.event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _note(_c, _cur, statement: str, *_: object) -> None:
        seen.append(statement)

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _began(_c: object) -> None:
        seen.append("BEGIN")  # SQLite's is sent to the driver directly, unseen above

    return seen


async def test_a_second_reader_asks_the_database_nothing(engine, uows, ticking):
    org = await build_org(uows)
    assert await _language(uows, org["tax_clerk"]) == "zh"
    statements = await _statements(engine)
    assert await _language(uows, org["tax_clerk"]) == "zh"
    assert statements == []  # not even a BEGIN
    ticking.now += KEEP_SECONDS
    assert await _language(uows, org["tax_clerk"]) == "zh"
    assert [s for s in statements if s.startswith("SELECT")] != []  # kept no longer


async def test_a_change_made_here_is_seen_by_the_next_unit_of_work(uows, ticking):
    org = await build_org(uows)
    assert await _language(uows, org["tax_clerk"]) == "zh"
    async with uows() as uow:
        person = await uow.org.person_by_telegram(org["tax_clerk"])
        assert person is not None
        person.language = "en"  # a row from the shared answer, changed and saved as any other
        await uow.commit()
    assert await _language(uows, org["tax_clerk"]) == "en"


@pytest.fixture
async def shared_uows(engine, tmp_path) -> AsyncIterator[UnitOfWorkFactory]:
    """Units of work on connections of their own (an in-memory SQLite has just one)."""
    if engine.dialect.name != "sqlite":
        yield UnitOfWorkFactory(make_session_factory(engine))
        return
    on_file = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'org.db'}")
    await create_schema(on_file)
    org_cache_for(on_file).clock = Ticking()
    yield UnitOfWorkFactory(make_session_factory(on_file))
    await on_file.dispose()


async def test_an_answer_read_while_a_change_is_not_yet_committed_is_not_kept(shared_uows):
    uows = shared_uows
    org = await build_org(uows)
    async with uows() as writer:
        person = await writer.org.person_by_telegram(org["tax_clerk"])
        assert person is not None
        person.language = "en"
        await writer.flush()  # written, not committed: a reader still sees "zh"
        assert await _language(uows, org["tax_clerk"]) == "zh"
        await writer.commit()
    assert await _language(uows, org["tax_clerk"]) == "en"


async def test_a_change_made_by_another_process_is_seen_within_the_keeping_time(shared_uows):
    uows = shared_uows
    bind = uows.sessions.kw["bind"]
    ticking = Ticking()
    org_cache_for(bind).clock = ticking
    org = await build_org(uows)
    assert await _language(uows, org["tax_clerk"]) == "zh"
    other = make_engine(bind.url.render_as_string(hide_password=False))  # its own cache
    try:
        async with other.begin() as conn:
            await conn.execute(
                sa.update(Person)
                .where(Person.telegram_id == org["tax_clerk"])
                .values(language="en")
            )
    finally:
        await other.dispose()
    assert await _language(uows, org["tax_clerk"]) == "zh"  # still kept
    ticking.now += KEEP_SECONDS
    assert await _language(uows, org["tax_clerk"]) == "en"


async def test_a_kept_answer_never_overwrites_a_row_the_session_already_changed(uows, ticking):
    org = await build_org(uows)
    async with uows(readonly=True) as uow:
        official = await uow.org.person_by_telegram(org["tax_clerk"])
        assert official is not None
        await uow.org.person(official.id)  # kept under both keys
    async with uows() as uow:
        mine = await uow.org.person_by_telegram(org["tax_clerk"])
        assert mine is not None
        mine.dm_blocked = True
        again = await uow.org.person(mine.id)
        assert again is mine
        assert again.dm_blocked is True
        await uow.commit()
    async with uows(readonly=True) as uow:
        fresh = await uow.org.person_by_telegram(org["tax_clerk"])
        assert fresh is not None
        assert fresh.dm_blocked is True


async def test_a_change_through_plain_sql_forgets_everything(engine, uows, ticking):
    org = await build_org(uows)
    assert await _language(uows, org["tax_clerk"]) == "zh"
    async with engine.begin() as conn:
        await conn.exec_driver_sql("UPDATE person SET language = 'en'")
    assert await _language(uows, org["tax_clerk"]) == "en"


async def test_rows_only_read_are_shared_without_joining_the_session(uows, ticking):
    org = await build_org(uows)
    tax, city = org.depts["tax"], org.regions["city"]
    async with uows(readonly=True) as uow:
        first = [(p.id, p.name) for p in await uow.org.officials_of(tax)]
        await uow.org.departments_in([city])
    async with uows() as uow:
        officials = await uow.org.officials_of(tax)
        assert [(p.id, p.name) for p in officials] == first
        assert not any(p in uow.session for p in officials)  # the cache's own, not copied
        department = await uow.org.department(tax)
        assert department is not None
        assert department in uow.session  # a row that may be changed is the session's
        department.keywords = ["海关"]
        await uow.commit()
    async with uows(readonly=True) as uow:
        [seen] = [d for d in await uow.org.departments_in([city]) if d.id == tax]
        assert seen.keywords == ["海关"]


async def test_a_row_read_for_its_name_is_never_the_one_a_writer_then_changes(uows, ticking):
    """A ticket's view reads its department for the name, as the cache's own snapshot; the
    same unit of work asking for the department to change it gets its own copy all the same."""
    org = await build_org(uows)
    tax = org.depts["tax"]
    async with uows(readonly=True) as uow:
        await uow.org.department(tax)  # read, and kept
    async with uows() as uow:
        named = await uow.org.department(tax, read_only=True)
        assert named is not None
        assert named not in uow.session  # the cache's own, not copied
        mine = await uow.org.department(tax)
        assert mine is not None
        assert mine is not named
        assert mine in uow.session
        mine.name = "税务局（新）"
        assert named.name != "税务局（新）"
        assert await uow.org.department(tax, read_only=True) is named
        await uow.commit()
    async with uows(readonly=True) as uow:
        seen = await uow.org.department(tax)
        assert seen is not None
        assert seen.name == "税务局（新）"


async def test_a_persons_enterprise_comes_with_them_and_is_kept_as_well(engine, uows, ticking):
    org = await build_org(uows)
    statements = await _statements(engine)
    async with uows(readonly=True) as uow:
        person = await uow.org.person_by_telegram(org["acme_boss"])
        assert person is not None
        assert person.enterprise_id is not None
        firm_id = person.enterprise_id
        firm = await uow.org.enterprise(firm_id)
        assert firm is not None
        name = firm.name
    assert len([s for s in statements if s.startswith("SELECT")]) == 1  # one statement for both
    statements.clear()
    async with uows() as uow:
        again = await uow.org.enterprise(firm_id)
        assert again is not None
        assert (again.id, again.name) == (firm_id, name)
        again.name = "Acme Renamed"  # the kept row is the session's own to change
        await uow.commit()
    assert [s for s in statements if s.startswith("SELECT")] == []
    async with uows(readonly=True) as uow:
        assert (await uow.org.enterprise(firm_id)).name == "Acme Renamed"  # type: ignore[union-attr]


async def test_answers_past_their_time_do_not_pile_up(uows, engine, ticking):
    """People asked for once are not kept for the life of the process."""
    org = await build_org(uows)
    cache = org_cache_for(engine)
    people = [org["tax_clerk"], org["acme_boss"], org["beta_boss"]]
    for telegram_id in people:
        await _language(uows, telegram_id)
    kept = len(cache)
    assert kept >= len(people)
    ticking.now += KEEP_SECONDS
    await _language(uows, org["tax_clerk"])  # a new answer, after the others' time is up
    assert len(cache) < kept
    assert await _language(uows, org["acme_boss"]) == "en"  # and read again when asked for


async def test_a_reader_gets_the_kept_rows_as_they_are_and_a_writer_its_own_copies(uows, ticking):
    """A unit of work that only reads is served the cache's snapshots without copying them into
    its session; one that may write gets rows of its own, and its changes touch no snapshot."""
    org = await build_org(uows)
    async with uows(readonly=True) as uow:
        await uow.org.person_by_telegram(org["tax_clerk"])  # read, and kept
    async with uows(readonly=True) as uow:
        shared = await uow.org.person_by_telegram(org["tax_clerk"])
        assert shared is not None
        assert shared not in uow.session
    async with uows() as uow:
        mine = await uow.org.person_by_telegram(org["tax_clerk"])
        assert mine is not None
        assert mine in uow.session
        assert mine is not shared
        mine.language = "en"  # and not committed
    assert shared.language == "zh"
    async with uows(readonly=True) as uow:
        again = await uow.org.person_by_telegram(org["tax_clerk"])
        assert again is not None
        assert again.language == "zh"


async def test_people_known_in_one_statement_need_no_query_of_their_own(engine, uows, ticking):
    org = await build_org(uows)
    statements = await _statements(engine)
    stranger = 999_000_111
    async with uows(readonly=True) as uow:
        await uow.org.know_people({org["acme_boss"], org["tax_clerk"], stranger})
    assert len([s for s in statements if s.startswith("SELECT")]) == 1
    statements.clear()
    async with uows(readonly=True) as uow:
        boss = await uow.org.person_by_telegram(org["acme_boss"])
        assert boss is not None
        assert boss.enterprise_id is not None
        firm = await uow.org.enterprise(boss.enterprise_id)  # read with the person
        assert firm is not None
        clerk = await uow.org.person_by_telegram(org["tax_clerk"])
        assert clerk is not None
        assert clerk.telegram_id == org["tax_clerk"]
        assert await uow.org.person_by_telegram(stranger) is None  # nobody, and known so
    assert statements == []
    async with uows(readonly=True) as uow:  # the known are not asked for again
        await uow.org.know_people({org["acme_boss"], stranger})
    assert statements == []


async def test_someone_known_as_nobody_is_found_once_added_here(uows, ticking):
    org = await build_org(uows)
    newcomer = 999_000_222
    async with uows(readonly=True) as uow:
        await uow.org.know_people({newcomer})
    async with uows() as uow:
        clerk = await uow.org.person_by_telegram(org["tax_clerk"])
        assert clerk is not None
        uow.org.add(
            Person(telegram_id=newcomer, name="新来的", role=clerk.role,
                   department_id=clerk.department_id, region_id=clerk.region_id)
        )  # fmt: skip
        await uow.commit()
    async with uows(readonly=True) as uow:
        found = await uow.org.person_by_telegram(newcomer)
        assert found is not None
        assert found.name == "新来的"


async def test_people_asked_for_together_are_kept_one_by_one(engine, uows, ticking):
    """A ticket names its claimant and its reporter: a pair seldom asked for again, though
    each of them is asked for often; each is kept on their own."""
    org = await build_org(uows)
    async with uows(readonly=True) as uow:
        boss = await uow.org.person_by_telegram(org["acme_boss"])
        clerk = await uow.org.person_by_telegram(org["tax_clerk"])
        head = await uow.org.person_by_telegram(org["tax_head"])
        assert boss is not None
        assert clerk is not None
        assert head is not None
        ids = [boss.id, clerk.id, head.id]
    ticking.now += KEEP_SECONDS  # forgotten: they are asked for by their ids below
    nobody = 987_654
    statements = await _statements(engine)
    async with uows(readonly=True) as uow:
        pair = await uow.org.people([ids[0], ids[1]], read_only=True)
        assert sorted(p.id for p in pair) == sorted(ids[:2])
    assert len([s for s in statements if s.startswith("SELECT")]) == 1
    statements.clear()
    async with uows() as uow:  # the same people, the other way round, for a writer
        found = await uow.org.people([ids[1], ids[0]])
        assert [p.id for p in found] == [ids[1], ids[0]]
        person = await uow.org.person(ids[0])
        assert person is found[1]  # the writer's own copy, one per person
    assert statements == []  # not even a BEGIN
    for _ in range(2):  # only those not yet asked for are read, nobody included, once
        async with uows(readonly=True) as uow:
            found = await uow.org.people([ids[2], nobody, ids[0]], read_only=True)
            assert sorted(p.id for p in found) == sorted([ids[0], ids[2]])
    selects = [s for s in statements if s.startswith("SELECT")]
    assert len(selects) == 1
    assert selects[0].count("?") + selects[0].count("$") == 2  # ids[2] and nobody


async def test_the_kept_answers_are_a_readers_without_a_unit_of_work(uows, ticking, monkeypatch):
    """Who wrote an update and which group it came from are asked of every update: while the
    cache holds them they come from it with no session at all, as a reader would get them;
    what it does not hold (or no longer) says so, and a change made here is seen at once."""
    org = await build_org(uows)
    kept = uows.kept
    assert kept.person_by_telegram(org["tax_clerk"]) is MISSING  # nothing asked for yet
    assert kept.group_by_chat(GROUP) is MISSING
    for _ in range(2):  # read and kept; then a reader gets the kept snapshots
        async with uows(readonly=True) as uow:
            clerk = await uow.org.person_by_telegram(org["tax_clerk"])
            group = await uow.org.group_by_chat(GROUP)
            assert await uow.org.person_by_telegram(999_000_333) is None  # nobody, kept so
    opened: list[object] = []
    monkeypatch.setattr(UnitOfWorkFactory, "__call__", lambda *a, **k: opened.append(a))
    assert kept.person_by_telegram(org["tax_clerk"]) is clerk  # the reader's snapshot itself
    assert kept.group_by_chat(GROUP) is group
    assert kept.person_by_telegram(999_000_333) is None
    assert opened == []
    monkeypatch.undo()
    async with uows() as uow:
        mine = await uow.org.person_by_telegram(org["tax_clerk"])
        assert mine is not None
        mine.language = "en"
        await uow.commit()
    assert kept.person_by_telegram(org["tax_clerk"]) is MISSING  # forgotten with the change
    ticking.now += KEEP_SECONDS
    assert kept.group_by_chat(GROUP) is MISSING  # and past the keeping time


async def test_the_door_answers_from_the_cache_and_sees_a_change(uows, ticking):
    org = await build_org(uows)
    queries, people = QueryService(uows, SystemClock()), PeopleService(uows, SystemClock())
    me = await queries.whoami(org["tax_clerk"])  # read, and kept
    assert me is not None
    assert me.language == "zh"
    assert (await people.group(GROUP)) is not None
    assert await queries.whoami(999_000_444) is None
    async with uows() as uow:
        mine = await uow.org.person_by_telegram(org["tax_clerk"])
        assert mine is not None
        mine.active = False
        await uow.commit()
    assert await queries.whoami(org["tax_clerk"]) is None  # a kept answer would not have known


async def test_someone_found_by_their_telegram_id_is_known_by_their_id(engine, uows, ticking):
    """Whoever writes an update is looked up by Telegram id; the ticket views that name them
    next ask by their id, and find them kept, in the same unit of work and in the next."""
    org = await build_org(uows)
    statements = await _statements(engine)
    async with uows() as uow:
        boss = await uow.org.person_by_telegram(org["acme_boss"], read_only=True)
        assert boss is not None
        read = len(statements)
        assert await uow.org.people([boss.id], read_only=True) == [boss]
        assert await uow.org.person(boss.id, read_only=True) is boss
        assert len(statements) == read  # no query of its own
    async with uows(readonly=True) as uow:
        await uow.org.know_people({org["tax_clerk"]})
    statements.clear()
    async with uows(readonly=True) as uow:
        clerk = await uow.org.person_by_telegram(org["tax_clerk"])
        assert clerk is not None
        [again] = await uow.org.people([clerk.id], read_only=True)
        assert again is clerk
        assert (await uow.org.people([boss.id], read_only=True))[0].name == boss.name
    assert statements == []


async def test_people_looked_up_together_when_the_cache_keeps_nothing(engine, uows, ticking):
    """With nothing kept (a keeping time of zero, or the chart changed while they were read),
    the batch lookup still answers and keeps nobody, by Telegram id or by id."""
    org = await build_org(uows)
    cache = org_cache_for(engine)
    kept_for, cache._keep = cache._keep, 0.0
    try:
        async with uows(readonly=True) as uow:
            await uow.org.know_people({org["acme_boss"], org["tax_clerk"]})
            clerk = await uow.org.person_by_telegram(org["tax_clerk"])
            assert clerk is not None
        assert len(cache) == 0
    finally:
        cache._keep = kept_for

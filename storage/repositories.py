"""Repositories: queries named for what they are for. They never commit."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as sa_postgresql
from sqlalchemy.dialects import sqlite as sa_sqlite
from sqlalchemy.orm import aliased
from sqlalchemy.orm.util import identity_key
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.orgcache import MISSING, OrgCache
from storage.tables import (
    OPEN_STATES,
    Attachment,
    ChatGroup,
    Department,
    DigestRun,
    Enterprise,
    InboxUpdate,
    Invite,
    KeyValue,
    Nudge,
    Outbox,
    OutboxState,
    Person,
    Region,
    Role,
    Ticket,
    TicketEvent,
    TicketState,
)


class _Repository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, row: Any) -> None:
        self.session.add(row)

    async def insert_ignoring_duplicate(self, row: Any) -> bool:
        """Insert in a savepoint; False when a unique key says it is already there."""
        try:
            async with self.session.begin_nested():
                self.session.add(row)
                await self.session.flush()
        except sa.exc.IntegrityError:
            return False
        return True


_WITH_FIRM = select(Person, Enterprise).outerjoin(  # type: ignore[call-overload]
    Enterprise, col(Enterprise.id) == col(Person.enterprise_id)
)
_PERSON_WITH_FIRM = _WITH_FIRM.where(col(Person.telegram_id) == sa.bindparam("tg"))
_PEOPLE_WITH_FIRMS = _WITH_FIRM.where(
    col(Person.telegram_id).in_(sa.bindparam("tgs", expanding=True))
)


def _telegram_key(telegram_id: int) -> tuple[Any, ...]:
    return ("telegram", telegram_id)


def _person_key(person_id: int) -> tuple[Any, ...]:
    return ("person", person_id)


def _group_key(chat_id: int) -> tuple[Any, ...]:
    return ("group", chat_id)


class KeptOrg:
    """What a reader of the org chart would be answered from the process's shared cache, asked
    without a unit of work: no session, no connection. Each answer is the cache's own snapshot
    (as a reader gets it: not to be changed), or MISSING when the cache does not hold it and
    the question needs a unit of work after all."""

    def __init__(self, shared: OrgCache | None) -> None:
        self._shared = shared

    def person_by_telegram(self, telegram_id: int) -> Person | None:
        return self._get(_telegram_key(telegram_id))

    def group_by_chat(self, chat_id: int) -> ChatGroup | None:
        return self._get(_group_key(chat_id))

    def _get(self, key: tuple[Any, ...]) -> Any:
        return MISSING if self._shared is None else self._shared.get(key)


class OrgRepository(_Repository):
    def __init__(
        self, session: AsyncSession, shared: OrgCache | None = None, *, reads_only: bool = False
    ) -> None:
        super().__init__(session)
        self._shared = shared
        # a reader changes nothing: the cache's own snapshots serve it as they are
        self._attach = not reads_only
        # The org chart barely changes, and one unit of work asks for the same rows again and
        # again (a report's card, its lines and its notes each name the enterprise, region and
        # department). An answer read once is kept for the unit of work: it also keeps the rows
        # alive, which the session's identity map holds only weakly. Adding a row or moving a
        # chat forgets them all.
        self._known: dict[tuple[Any, ...], Any] = {}

    async def _once(
        self, key: tuple[Any, ...], read: Callable[[], Awaitable[Any]], *, attach: bool = True
    ) -> Any:
        """`attach=False`: a kept answer comes as the cache's own snapshots, not copied into
        this session, for rows only read (copying each of a county's departments cost more
        than the rest of a report's lookups)."""
        found = self._kept(key, attach)
        if found is not MISSING:
            return found
        read_in = None if self._shared is None else self._shared.generation
        value = await read()
        self._keep(key, value, read_in, attach)
        return value

    def _kept(self, key: tuple[Any, ...], attach: bool) -> Any:
        """The answer to `key` kept by this unit of work or the shared cache, else MISSING."""
        memo = self._memo(key, attach)
        if memo in self._known:
            return self._known[memo]
        if self._shared is None:
            return MISSING
        kept = self._shared.get(key)
        if kept is not MISSING:
            if attach and self._attach:
                kept = self._shared.attach(kept, self.session.sync_session)
            self._known[memo] = kept
        return kept

    def _keep(self, key: tuple[Any, ...], value: Any, read_in: int | None, attach: bool) -> None:
        """An answer just read (while the shared cache's generation was `read_in`)."""
        self._known[self._memo(key, attach)] = value
        if self._shared is not None and read_in is not None:
            self._shared.put(key, value, read_in)

    def _memo(self, key: tuple[Any, ...], attach: bool) -> tuple[Any, ...]:
        # a writer's copies and the cache's own snapshots are kept apart: one asked for to be
        # read must not be handed later to a caller that changes it
        return key if attach or not self._attach else (*key, "read")

    def add(self, row: Any) -> None:
        self._known.clear()
        super().add(row)

    async def region(self, region_id: int, *, read_only: bool = False) -> Region | None:
        """`read_only`, here and below: a row only to be read (for its name, say) may be the
        cache's own snapshot, not a copy in this unit of work's session."""
        return await self._once(
            ("region", region_id),
            lambda: self.session.get(Region, region_id),
            attach=not read_only,
        )

    async def region_by_code(self, code: str) -> Region | None:
        return (await self.session.exec(select(Region).where(Region.code == code))).first()

    async def all_regions(self) -> Sequence[Region]:
        return await self._all_once(("regions",), lambda: select(Region).order_by(Region.id))

    async def _all(self, query: Any) -> Sequence[Any]:
        return (await self.session.exec(query)).all()

    async def _all_once(
        self, key: tuple[Any, ...], query: Callable[[], Any], *, attach: bool = True
    ) -> Sequence[Any]:
        return await self._once(key, lambda: self._all(query()), attach=attach)

    async def _first_once(
        self, key: tuple[Any, ...], query: Callable[[], Any], *, attach: bool = True
    ) -> Any:
        return await self._once(key, lambda: self._first(query()), attach=attach)

    async def _first(self, query: Any) -> Any:
        return (await self.session.exec(query)).first()

    async def region_and_below(self, region_id: int) -> frozenset[int]:
        """The region and every region under it (a city and its counties)."""
        regions = await self.all_regions()
        children: dict[int | None, list[int]] = {}
        for region in regions:
            children.setdefault(region.parent_id, []).append(region.id)  # type: ignore[arg-type]
        found, todo = set(), [region_id]
        while todo:
            current = todo.pop()
            if current not in found:
                found.add(current)
                todo.extend(children.get(current, []))
        return frozenset(found)

    async def region_and_above(self, region_id: int) -> list[Region]:
        """The region and the ones above it, nearest first: rows to read, not to change (every
        report's routing climbs it, and copying each into the session cost more than that)."""
        chain: list[Region] = []
        seen: set[int] = set()
        current = await self.region(region_id, read_only=True)
        while current is not None and current.id not in seen:
            seen.add(current.id)  # type: ignore[arg-type]
            chain.append(current)
            up = current.parent_id
            current = await self.region(up, read_only=True) if up else None
        return chain

    async def department(
        self, department_id: int, *, read_only: bool = False
    ) -> Department | None:
        return await self._once(
            ("department", department_id),
            lambda: self.session.get(Department, department_id),
            attach=not read_only,
        )

    async def department_by_code(self, code: str) -> Department | None:
        return (await self.session.exec(select(Department).where(Department.code == code))).first()

    async def departments_in(self, region_ids: Sequence[int]) -> Sequence[Department]:
        """The departments serving these regions: rows to read, not to change."""
        return await self._all_once(
            ("departments_in", *region_ids),
            lambda: (
                select(Department)
                .where(col(Department.region_id).in_(region_ids))
                .order_by(Department.id)
            ),
            attach=False,
        )

    async def all_departments(self) -> Sequence[Department]:
        return await self._all_once(
            ("departments",), lambda: select(Department).order_by(Department.id)
        )

    async def enterprise(
        self, enterprise_id: int, *, read_only: bool = False
    ) -> Enterprise | None:
        return await self._once(
            ("enterprise", enterprise_id),
            lambda: self.session.get(Enterprise, enterprise_id),
            attach=not read_only,
        )

    async def enterprise_by_code(self, code: str) -> Enterprise | None:
        return (await self.session.exec(select(Enterprise).where(Enterprise.code == code))).first()

    async def person(self, person_id: int, *, read_only: bool = False) -> Person | None:
        return await self._once(
            _person_key(person_id),
            lambda: self.session.get(Person, person_id),
            attach=not read_only,
        )

    async def person_by_telegram(
        self, telegram_id: int, *, read_only: bool = False
    ) -> Person | None:
        attach = not read_only
        person = await self._once(
            _telegram_key(telegram_id), lambda: self._with_firm(telegram_id), attach=attach
        )
        if person is not None:  # and by their id, as `person` and `people` ask for them
            self._known.setdefault(self._memo(_person_key(person.id), attach), person)
        return person  # type: ignore[no-any-return]

    async def _with_firm(self, telegram_id: int) -> Person | None:
        """The person, and their enterprise in the same statement, kept as `enterprise`
        would keep it: whoever files a report is looked up first, and the report's card and
        answer then name the enterprise."""
        read_in = None if self._shared is None else self._shared.generation
        row = (await self.session.exec(_PERSON_WITH_FIRM, params={"tg": telegram_id})).first()  # type: ignore[call-overload]
        if row is None:
            return None
        person, firm = row
        if self._shared is not None and read_in is not None:
            self._shared.put(_person_key(person.id), person, read_in)
        if firm is not None:
            key = ("enterprise", firm.id)
            self._known.setdefault(key, firm)
            if self._shared is not None and read_in is not None:
                self._shared.put(key, firm, read_in)
        return person  # type: ignore[no-any-return]

    async def know_people(self, telegram_ids: Collection[int]) -> None:
        """Read these Telegram users (and their enterprises) in one statement into the shared
        cache, where the units of work that ask for them next find them: those the cache
        holds already are not asked for, and one nobody knows is kept as nobody."""
        shared = self._shared
        if shared is None:
            return
        wanted = [t for t in telegram_ids if shared.get(_telegram_key(t)) is MISSING]
        if not wanted:
            return
        read_in = shared.generation
        rows = await self.session.exec(_PEOPLE_WITH_FIRMS, params={"tgs": wanted})  # type: ignore[call-overload]
        found = {}
        for person, firm in rows.all():
            found[person.telegram_id] = person
            if firm is not None:
                shared.put(("enterprise", firm.id), firm, read_in)
        for telegram_id in wanted:
            person = found.get(telegram_id)
            shared.put(_telegram_key(telegram_id), person, read_in)
            if person is not None:  # and by their id, as `person` and `people` ask for them
                kept = shared.get(_telegram_key(telegram_id))  # the snapshot, if one was kept
                shared.put(_person_key(person.id), person if kept is MISSING else kept, read_in)

    async def person_by_username(self, username: str) -> Person | None:
        query = select(Person).where(sa.func.lower(Person.username) == username.lower())
        return (await self.session.exec(query)).first()

    async def people(self, ids: Sequence[int], *, read_only: bool = False) -> Sequence[Person]:
        if not ids:
            return []
        # people this unit of work already holds (a report's author, say) need no query
        held = self.session.sync_session.identity_map
        found = [held.get(identity_key(Person, i)) for i in ids]
        if all(p is not None for p in found):
            return found  # type: ignore[return-value]
        # each person is kept as `person` keeps them: a ticket's claimant and reporter, asked
        # for together, are a pair seldom asked for again, but each is asked for often
        attach = not read_only
        kept = {i: self._kept(_person_key(i), attach) for i in ids}
        missing = sorted({i for i, p in kept.items() if p is MISSING})
        if missing:
            read_in = None if self._shared is None else self._shared.generation
            read = {
                p.id: p for p in await self._all(select(Person).where(col(Person.id).in_(missing)))
            }
            for i in missing:
                kept[i] = read.get(i)
                self._keep(_person_key(i), kept[i], read_in, attach)
        return [p for p in (kept[i] for i in dict.fromkeys(ids)) if p is not None]

    async def officials_of(
        self, department_id: int, *, heads_only: bool = False
    ) -> Sequence[Person]:
        """The department's active officials: rows to read, not to change."""

        def query() -> Any:
            found = select(Person).where(
                Person.department_id == department_id, Person.role == Role.OFFICIAL, Person.active
            )
            return (found.where(Person.is_head) if heads_only else found).order_by(Person.id)

        return await self._all_once(("officials", department_id, heads_only), query, attach=False)

    async def people_to_nudge(
        self, person_ids: Sequence[int], department_ids: Sequence[int], roles: Sequence[Role]
    ) -> Sequence[Any]:
        """Whom the idle sweep's nudges can go to, in one query: these people, the active
        officials of these departments, and the active people of these roles who have a
        region. Narrow rows (id, telegram_id, name, language, dm_blocked, active, role,
        region_id, department_id, is_head), each person once, in id order."""
        if not (person_ids or department_ids or roles):
            return []
        params = {"ids": list(person_ids), "departments": list(department_ids)}
        params["roles"] = [str(r) for r in roles]
        return (await self.session.exec(_PEOPLE_TO_NUDGE, params=params)).all()  # type: ignore[call-overload]

    async def people_with_role(self, role: Role, region_ids: Sequence[int]) -> Sequence[Person]:
        return await self._all_once(
            ("role", role, *region_ids),
            lambda: (
                select(Person)
                .where(Person.role == role, col(Person.region_id).in_(region_ids), Person.active)
                .order_by(Person.id)
            ),
        )

    async def all_people_with_role(self, role: Role) -> Sequence[Person]:
        query = select(Person).where(Person.role == role, Person.active)
        return (await self.session.exec(query.order_by(Person.id))).all()

    async def group_by_chat(self, chat_id: int, *, read_only: bool = False) -> ChatGroup | None:
        return await self._first_once(
            _group_key(chat_id),
            lambda: select(ChatGroup).where(ChatGroup.chat_id == chat_id),
            attach=not read_only,
        )

    async def groups_of(self, region_id: int) -> Sequence[ChatGroup]:
        return await self._all_once(
            ("groups_of", region_id),
            lambda: (
                select(ChatGroup).where(ChatGroup.region_id == region_id).order_by(ChatGroup.id)
            ),
        )

    async def invite(self, code: str) -> Invite | None:
        return (await self.session.exec(select(Invite).where(Invite.code == code))).first()

    async def move_chat(self, old: int, new: int) -> None:
        """A group migrated to a supergroup: its binding, tickets and queue follow the new id."""
        self._known.clear()
        await self.session.exec(  # type: ignore[call-overload]
            sa.update(ChatGroup).where(col(ChatGroup.chat_id) == old).values(chat_id=new)
        )
        await self.session.exec(  # type: ignore[call-overload]
            sa.update(Ticket)
            .where(col(Ticket.group_chat_id) == old)
            .values(group_chat_id=new, card_message_id=None)
        )
        await self.session.exec(  # type: ignore[call-overload]
            sa.update(Outbox)
            .where(col(Outbox.chat_id) == old, Outbox.state == OutboxState.PENDING)
            .values(chat_id=new, lease_until=None)
        )

    async def counts(self) -> dict[str, int]:
        out = {}
        for table in (Region, Department, Enterprise, Person, ChatGroup):
            total = await self.session.exec(select(sa.func.count()).select_from(table))
            out[table.__tablename__] = total.one()  # type: ignore[attr-defined]
        return out


# ticket ids are INTEGER columns: a larger number typed by someone is no ticket, and must not
# reach PostgreSQL, which refuses it as out of range instead of finding nothing
MAX_TICKET_ID = 2**31 - 1


class TicketRepository(_Repository):
    async def get(self, ticket_id: int, *, for_update: bool = False) -> Ticket | None:
        if not 0 < ticket_id <= MAX_TICKET_ID:
            return None
        query = select(Ticket).where(Ticket.id == ticket_id)
        if for_update:
            query = query.with_for_update()
        return (await self.session.exec(query)).first()

    async def insert_new(self, ticket: Ticket) -> None:
        """Write a ticket made in this unit of work with one plain INSERT, and give it its id.
        It does not join the session: a new report is written once, in its final state, and
        nothing in the unit of work changes it afterwards."""
        values = {column.key: getattr(ticket, column.key) for column in _NEW_TICKET_COLUMNS}
        found = await self.session.exec(_INSERT_TICKET, params=values)  # type: ignore[call-overload]
        ticket.id = found.scalar_one()

    async def card_message_id(self, ticket_id: int) -> int | None:
        """The id of the ticket's card message, if it has been posted (one column, not the
        whole ticket: the sender asks before each edit of a card)."""
        found = await self.session.exec(_CARD_OF, params={"ticket": ticket_id})  # type: ignore[call-overload]
        return found.scalar_one_or_none()  # type: ignore[no-any-return]

    async def forget_card_digest(self, ticket_id: int) -> None:
        await self.session.exec(  # type: ignore[call-overload]
            sa.update(Ticket).where(col(Ticket.id) == ticket_id).values(card_digest=None)
        )

    async def intake_check(
        self, chat_id: int, message_id: int | None, reporter_id: int, since: datetime
    ) -> tuple[Ticket | None, int]:
        """The ticket already filed from this message (if any), and how many reports the
        person has filed since then: one statement for both questions every report asks."""
        params = {"chat": chat_id, "message": message_id, "reporter": reporter_id, "since": since}
        known, count = (await self.session.exec(_INTAKE_CHECK, params=params)).one()  # type: ignore[call-overload]
        return (await self.get(known) if known is not None else None), count

    async def listing(
        self,
        *,
        enterprise_id: int | None = None,
        department_id: int | None = None,
        region_ids: Sequence[int] | None = None,
        claimant_id: int | None = None,
        reporter_id: int | None = None,
        states: Sequence[TicketState] | None = None,
        overdue_at: datetime | None = None,
        limit: int = 50,
    ) -> Sequence[Ticket]:
        query = select(Ticket)
        if enterprise_id is not None:
            query = query.where(Ticket.enterprise_id == enterprise_id)
        if department_id is not None:
            query = query.where(Ticket.department_id == department_id)
        if region_ids is not None:
            query = query.where(col(Ticket.region_id).in_(region_ids))
        if claimant_id is not None:
            query = query.where(Ticket.claimant_id == claimant_id)
        if reporter_id is not None:
            query = query.where(Ticket.reporter_id == reporter_id)
        if states is not None:
            query = query.where(col(Ticket.state).in_(states))
        if overdue_at is not None:
            query = query.where(col(Ticket.due_at) < overdue_at)
        order = col(Ticket.due_at) if overdue_at is not None else col(Ticket.id).desc()
        return (await self.session.exec(query.order_by(order).limit(limit))).all()

    async def open_tickets(self, *, limit: int = 10_000) -> Sequence[Ticket]:
        """Every ticket the scheduler may still have to act on (indexed by state)."""
        query = select(Ticket).where(col(Ticket.state).in_(list(OPEN_STATES)))
        return (await self.session.exec(query.order_by(Ticket.id).limit(limit))).all()

    async def stale_open(self, idle_before: datetime, limit: int = 1000) -> Sequence[Ticket]:
        """Open tickets idle since before a moment, or past their due time, oldest first."""
        query = select(Ticket).where(
            col(Ticket.state).in_(list(OPEN_STATES)),
            sa.or_(col(Ticket.last_activity_at) < idle_before, col(Ticket.due_at) < idle_before),
        )
        return (
            await self.session.exec(query.order_by(Ticket.last_activity_at).limit(limit))
        ).all()

    # ---- the idle scan and the digest: narrow rows and aggregates, never whole histories ----

    async def scan_candidates(self, idle_before: datetime, now: datetime) -> Sequence[int]:
        """The ids, in order, of the open tickets idle since before a moment or past their due
        time: the idle sweep's candidates, read once a sweep and then a page at a time with
        `scan_page`.

        The idle ones and the late ones are two ranges, of the (state, last_activity_at) and
        the (state, due_at) index, merged: the cost follows the open tickets that are idle or
        late. As one query with OR, ordered by id and limited, PostgreSQL walked the primary
        key through the whole history (0.3 s at a million tickets) to find the open ones at
        its end. Read again for every page (the ones after the last page's end), the ranges
        cost the square of the candidates: 0.5 s a sweep once all of 10⁴ open tickets were.

        The open states are written into the statement: PostgreSQL plans a statement prepared
        five times once for any values, and with the states as parameters that plan walked
        the primary key through the whole history on every sweep.
        """
        params = {"idle_before": idle_before, "now": now}
        return (await self.session.exec(_SCAN_CANDIDATES, params=params)).scalars().all()  # type: ignore[call-overload]

    async def scan_page(
        self, ticket_ids: Sequence[int], idle_before: datetime, now: datetime
    ) -> Sequence[Any]:
        """Those of these tickets that are still open and idle since before a moment or past
        their due time, as narrow rows (id, state, claimant_id, last_activity_at, due_at,
        supervised_at, resolved_at) in id order."""
        if not ticket_ids:
            return []
        params = {"ids": list(ticket_ids), "idle_before": idle_before, "now": now}
        return (await self.session.exec(_SCAN_PAGE, params=params)).all()  # type: ignore[call-overload]

    async def remember_cards(self, cards: Sequence[tuple[int, int, bool]]) -> None:
        """The messages that are tickets' cards, as (ticket id, message id, replace): a first
        card where none is known, or a new one that replaces it. A statement for the first
        cards and one for the replacements; the outcome is that of taking them in order, as
        a replacement wins over a first card either way."""
        first = [{"tid": t, "mid": m} for t, m, replace in cards if not replace]
        anew = [{"tid": t, "mid": m} for t, m, replace in cards if replace]
        for query, params in ((_FIRST_CARD, first), (_NEW_CARD, anew)):
            if params:
                await self.session.exec(query, params=params)  # type: ignore[call-overload]

    async def lock_for_nudges(self, ticket_ids: Sequence[int]) -> Sequence[Any]:
        """The tickets the idle sweep is about to nudge, locked for this transaction (those
        another worker holds are left out), as narrow rows: the ladder's times (as in
        `scan_page`), department_id, region_id, reporter_id, group_chat_id, anonymous and
        summary, and what the nudges name: department_name and group_language (None when
        there is no such department or group)."""
        params = {"ids": list(ticket_ids)}
        return (await self.session.exec(_LOCK_FOR_NUDGES, params=params)).all()  # type: ignore[call-overload]

    async def claim_for_work(self, ticket_id: int) -> Ticket | None:
        """The ticket locked for this transaction, or None while another worker holds it
        (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite has one writer at a time anyway)."""
        query = select(Ticket).where(Ticket.id == ticket_id).with_for_update(skip_locked=True)
        return (await self.session.exec(query)).first()

    async def state_counts(self, region_ids: Sequence[int]) -> dict[str, int]:
        """How many of the regions' tickets are in each open state (one GROUP BY)."""
        query = (
            select(Ticket.state, sa.func.count())  # type: ignore[call-overload]
            .where(col(Ticket.region_id).in_(region_ids), col(Ticket.state).in_(list(OPEN_STATES)))
            .group_by(Ticket.state)
        )
        return {str(state): n for state, n in (await self.session.exec(query)).all()}

    async def overdue_rows(
        self,
        region_ids: Sequence[int],
        now: datetime,
        *,
        department_id: int | None = None,
        claimant_id: int | None = None,
        limit: int = 20,
    ) -> Sequence[Any]:
        """Unresolved open tickets past their due time, the longest overdue first, as rows
        (id, summary, department name, claimant name, due_at, last_activity_at)."""
        claimant = aliased(Person)
        query = (
            select(  # type: ignore[call-overload]
                Ticket.id,
                Ticket.summary,
                col(Department.name).label("department_name"),
                col(claimant.name).label("claimant_name"),
                Ticket.due_at,
                Ticket.last_activity_at,
            )
            .join(Department, col(Department.id) == Ticket.department_id, isouter=True)
            .join(claimant, col(claimant.id) == Ticket.claimant_id, isouter=True)
            .where(
                col(Ticket.region_id).in_(region_ids),
                col(Ticket.state).in_(list(OPEN_STATES - {TicketState.RESOLVED})),
                col(Ticket.due_at) < now,
            )
        )
        if department_id is not None:
            query = query.where(Ticket.department_id == department_id)
        if claimant_id is not None:
            query = query.where(Ticket.claimant_id == claimant_id)
        query = query.order_by(col(Ticket.due_at), col(Ticket.id)).limit(limit)
        return (await self.session.exec(query)).all()

    async def overdue_counts(self, region_ids: Sequence[int], now: datetime) -> dict[int, int]:
        """Unresolved open tickets past their due time, per department (one GROUP BY)."""
        query = (
            select(Ticket.department_id, sa.func.count())  # type: ignore[call-overload]
            .where(
                col(Ticket.region_id).in_(region_ids),
                col(Ticket.state).in_(list(OPEN_STATES - {TicketState.RESOLVED})),
                col(Ticket.due_at) < now,
            )
            .group_by(Ticket.department_id)
        )
        return {d: n for d, n in (await self.session.exec(query)).all() if d is not None}

    async def open_reports(self, region_ids: Sequence[int], limit: int = 5000) -> Sequence[Any]:
        """Unresolved open tickets, newest first, as rows (id, department_id, enterprise_id,
        summary, state, claimant_id, assigned_at, due_at)."""
        query = (
            select(  # type: ignore[call-overload]
                Ticket.id,
                Ticket.department_id,
                Ticket.enterprise_id,
                Ticket.summary,
                Ticket.state,
                Ticket.claimant_id,
                Ticket.assigned_at,
                Ticket.due_at,
            )
            .where(
                col(Ticket.region_id).in_(region_ids),
                col(Ticket.state).in_(list(OPEN_STATES - {TicketState.RESOLVED})),
            )
            .order_by(col(Ticket.id).desc())
            .limit(limit)
        )
        return (await self.session.exec(query)).all()


# Statements every report runs, built once and as plain Core: an ORM-enabled UPDATE built per
# call cost five times the plain one here (it also works out what to change in the session).
_TICKETS = Ticket.__table__  # type: ignore[attr-defined]
_INTAKE_CHECK = sa.select(
    sa.select(_TICKETS.c.id)
    .where(
        _TICKETS.c.source_chat_id == sa.bindparam("chat"),
        # a message id of NULL matches nothing: a private report has no message to repeat
        _TICKETS.c.source_message_id == sa.bindparam("message"),
    )
    .scalar_subquery(),
    sa.select(sa.func.count())
    .where(
        _TICKETS.c.reporter_id == sa.bindparam("reporter"),
        _TICKETS.c.created_at >= sa.bindparam("since", type_=_TICKETS.c.created_at.type),
    )
    .scalar_subquery(),
)
_NEW_TICKET_COLUMNS = [column for column in _TICKETS.columns if column.key != "id"]
_INSERT_TICKET = sa.insert(_TICKETS).returning(_TICKETS.c.id)
_CARD_OF = sa.select(_TICKETS.c.card_message_id).where(_TICKETS.c.id == sa.bindparam("ticket"))
_NEW_CARD = (
    sa.update(_TICKETS)
    .where(_TICKETS.c.id == sa.bindparam("tid"))
    .values(card_message_id=sa.bindparam("mid"))
)
_FIRST_CARD = _NEW_CARD.where(_TICKETS.c.card_message_id.is_(None))


class EventRepository(_Repository):
    async def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Events as plain values (`storage.tables.event_row`), in one executemany; their ids
        are left to the database and not read back."""
        if rows:
            await self.session.exec(_ADD_EVENTS, params=list(rows))  # type: ignore[call-overload]

    async def of_ticket(self, ticket_id: int) -> Sequence[TicketEvent]:
        query = select(TicketEvent).where(TicketEvent.ticket_id == ticket_id)
        return (await self.session.exec(query.order_by(TicketEvent.id))).all()

    async def attachments_of(self, ticket_id: int) -> Sequence[Attachment]:
        query = select(Attachment).where(Attachment.ticket_id == ticket_id)
        return (await self.session.exec(query.order_by(Attachment.id))).all()

    async def between(
        self, start: datetime, end: datetime, kinds: Sequence[str]
    ) -> Sequence[TicketEvent]:
        query = select(TicketEvent).where(
            TicketEvent.at >= start, TicketEvent.at < end, col(TicketEvent.kind).in_(kinds)
        )
        return (await self.session.exec(query.order_by(TicketEvent.id))).all()

    async def window_events(
        self, start: datetime, end: datetime, kinds: Sequence[str], region_ids: Sequence[int]
    ) -> Sequence[Any]:
        """Events of some kinds in [start, end) on the regions' tickets (time-bounded, over
        ix_event_kind_at_ticket), as rows (ticket_id, kind, to_state, at, actor_id, actor's
        department_id, data, ticket's department_id, ticket's claimant_id)."""
        actor = aliased(Person)
        query = (
            select(  # type: ignore[call-overload]
                TicketEvent.ticket_id,
                TicketEvent.kind,
                TicketEvent.to_state,
                TicketEvent.at,
                TicketEvent.actor_id,
                col(actor.department_id).label("actor_department_id"),
                TicketEvent.data,
                col(Ticket.department_id).label("ticket_department_id"),
                col(Ticket.claimant_id).label("ticket_claimant_id"),
            )
            .join(Ticket, col(Ticket.id) == TicketEvent.ticket_id)
            .join(actor, col(actor.id) == TicketEvent.actor_id, isouter=True)
            .where(
                TicketEvent.at >= start,
                TicketEvent.at < end,
                col(TicketEvent.kind).in_(kinds),
                col(Ticket.region_id).in_(region_ids),
            )
            .order_by(col(TicketEvent.id))
        )
        return (await self.session.exec(query)).all()

    async def window_kinds(
        self, start: datetime, end: datetime, kinds: Sequence[str], region_ids: Sequence[int]
    ) -> Sequence[Any]:
        """`window_events` narrowed to what a count needs: rows (ticket_id, kind, to_state,
        ticket's department_id), with no times, data or actors to read and convert.

        The events come from the covering (kind, at, ticket_id, to_state) index; each one's
        ticket is looked up by its key. Written as a join, PostgreSQL hashed the whole ticket
        table instead (60-200 ms at a million tickets, growing with the history).
        """
        ticket = aliased(Ticket)

        def of_ticket(column: Any) -> Any:
            return select(column).where(ticket.id == TicketEvent.ticket_id).scalar_subquery()

        query = select(  # type: ignore[call-overload]
            TicketEvent.ticket_id,
            TicketEvent.kind,
            TicketEvent.to_state,
            of_ticket(ticket.department_id).label("ticket_department_id"),
        ).where(
            TicketEvent.at >= start,
            TicketEvent.at < end,
            col(TicketEvent.kind).in_(kinds),
            of_ticket(ticket.region_id).in_(region_ids),
        )
        return (await self.session.exec(query)).all()

    async def tickets_with_event(
        self, kind: str, start: datetime, end: datetime, region_ids: Sequence[int]
    ) -> Sequence[Any]:
        """The regions' tickets with an event of this kind in [start, end), as rows (id,
        department_id, state, assigned_at, claimed_at, resolved_at, due_at, promised_date)."""
        query = (
            select(  # type: ignore[call-overload]
                Ticket.id,
                Ticket.department_id,
                Ticket.state,
                Ticket.assigned_at,
                Ticket.claimed_at,
                Ticket.resolved_at,
                Ticket.due_at,
                Ticket.promised_date,
            )
            .join(TicketEvent, col(TicketEvent.ticket_id) == Ticket.id)
            .where(
                TicketEvent.kind == kind,
                TicketEvent.at >= start,
                TicketEvent.at < end,
                col(Ticket.region_id).in_(region_ids),
            )
            .distinct()
        )
        return (await self.session.exec(query)).all()


class OutboxRepository(_Repository):
    async def queue(self, rows: Sequence[dict[str, Any]]) -> None:
        """Messages as plain values (`bot.notify.outbox_row`), in one executemany, in order."""
        if rows:
            await self.session.exec(_QUEUE_OUTBOX, params=list(rows))  # type: ignore[call-overload]

    async def queue_returning(
        self, rows: Sequence[dict[str, Any]]
    ) -> list[tuple[int, int | None]]:
        """Queue as `queue` does; returns, for each row in order, its id and the id of the last
        row pending before it in its chat when it was written (None when there was none)."""
        if not rows:
            return []
        if self.session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
            result = await self.session.exec(_QUEUE_OUTBOX_RETURNING, params=list(rows))  # type: ignore[call-overload]
            return [(row[0], row[1]) for row in result.all()]
        # SQLite promises no order of RETURNING, and SQLAlchemy, to keep it, would insert the
        # rows one statement each; but under the write lock each row takes the next id after
        # the highest, in the order of the VALUES, so the ids in order are the rows in order
        result = await self.session.exec(_QUEUE_OUTBOX_RETURNING_ANY, params=list(rows))  # type: ignore[call-overload]
        return sorted((row[0], row[1]) for row in result.all())

    async def queue_marking(
        self,
        rows: Sequence[dict[str, Any]],
        update_id: int,
        at: datetime,
        events: Sequence[dict[str, Any]] = (),
        answered: Collection[int] = (),
    ) -> tuple[list[tuple[int, int | None]], bool]:
        """PostgreSQL: `queue_returning`, and in the same statement the inbox update marked
        processed as `InboxRepository.mark_processed` marks it; also whether it was (False:
        someone else had; the caller rolls back). The reminders of the `answered` tickets
        are marked acted in it as `ScheduleRepository.mark_nudges_acted` marks them. With
        `events` (at most `MARKING_ROWS` messages), those are appended in it too, as
        `EventRepository.append` would. One round trip where they had been up to four."""
        if not rows or (events and len(rows) > MARKING_ROWS):
            raise ValueError("queue_marking takes 1 to MARKING_ROWS messages with events")
        extra: dict[str, Any] = {
            "mark_update": update_id,
            "mark_at": at,
            "mark_answered": sorted(set(answered)),
        }
        statement = _QUEUE_OUTBOX_MARKING
        if events:
            statement = _QUEUE_OUTBOX_MARKING_EVENTS
            extra["mark_events"] = json.dumps([_event_json(e) for e in events])
        params = [{**row, **extra} for row in rows]
        result = (await self.session.exec(statement, params=params)).all()  # type: ignore[call-overload]
        # a long list goes in several statements, each with the mark: the first one marks
        return [(row[0], row[1]) for row in result], any(row[2] for row in result)

    async def get(self, outbox_id: int) -> Outbox | None:
        return await self.session.get(Outbox, outbox_id)

    async def depth(self) -> int:
        query = select(sa.func.count()).where(Outbox.state == OutboxState.PENDING)
        return (await self.session.exec(query)).one()

    async def oldest_pending(self) -> datetime | None:
        query = select(sa.func.min(Outbox.created_at)).where(Outbox.state == OutboxState.PENDING)
        return (await self.session.exec(query)).one()

    async def card_queued(self, ticket_id: int) -> bool:
        query = select(Outbox.id).where(Outbox.ticket_id == ticket_id, col(Outbox.is_card))
        return (await self.session.exec(query.limit(1))).first() is not None

    async def release(self, outbox_ids: Collection[int], *owners: str) -> None:
        """Give back the leases these owners still hold on these rows."""
        if outbox_ids:
            await self.session.exec(  # type: ignore[call-overload]
                sa.update(Outbox)
                .where(col(Outbox.id).in_(list(outbox_ids)), col(Outbox.lease_owner).in_(owners))
                .values(lease_until=None)
            )

    async def claim(
        self,
        now: datetime,
        until: datetime,
        *,
        owner: str,
        chats: int,
        depth: int,
        skip: Collection[int] = (),
        skip_locked: bool = False,
    ) -> list[sa.Row[Any]]:
        """Lease to `owner` until `until`, for each of up to `chats` chats (those of `skip`
        aside), the first pending rows in the chat's order that may go now, up to `depth` of
        them: from its first pending row on, up to the first that is not due yet or that
        another live sender holds (none, when that is the first). A sender restarted under the
        same name takes back its own leases at once. Chats go in the order of their first
        row. Returns the rows leased (the columns a send needs), by chat and in order."""
        params = {"now": now, "owner": owner, "depth": depth, "skip": list(skip)}
        runs: dict[int, list[int]] = {}  # each chat's rows that may go, from its first on
        ended: set[int] = set()
        for outbox_id, chat_id, is_free in await self._rows(_CLAIM_RANKED, params):
            run = runs.setdefault(chat_id, [])
            if chat_id in ended:
                continue
            if is_free:
                run.append(outbox_id)
            else:
                ended.add(chat_id)
        order = [chat for _, chat in sorted((run[0], c) for c, run in runs.items() if run)]
        rows: list[sa.Row[Any]] = []
        gaps: list[int] = []
        won, tried = 0, 0
        while won < chats and tried < len(order):
            # chats another sender leases this moment (PostgreSQL) are left to it, and the
            # next ones tried instead
            wanted = order[tried : tried + chats - won]
            tried += len(wanted)
            ids = [i for chat in wanted for i in runs[chat]]
            # on PostgreSQL the rows are found by their ids, whatever the planner believes of
            # the queue: with the statistics of a queue that was short until a moment ago, it
            # had scanned the pending rows once for each id (a second for 2,000 rows)
            leased = _LEASE_LOCKED if skip_locked else _LEASE
            lease = {"ids": ids, "now": now, "owner": owner, "until": until}
            got = {row.id: row for row in await self._rows(leased, lease)}
            for chat in wanted:
                # a row taken or sent by another sender since it was read leaves a gap: the
                # chat's rows after it are given back, they must not overtake it
                whole = True
                for outbox_id in runs[chat]:
                    whole = whole and outbox_id in got
                    if whole:
                        rows.append(got[outbox_id])
                    elif outbox_id in got:
                        gaps.append(outbox_id)
                won += runs[chat][0] in got
        await self.release(gaps, owner)
        return rows

    async def _rows(self, query: Any, params: dict[str, Any] | None = None) -> list[sa.Row[Any]]:
        return list((await self.session.exec(query, params=params)).all())  # type: ignore[call-overload]

    async def mark_all_sent(self, sent: Sequence[tuple[int, datetime, int | None]]) -> None:
        """Record Telegram's acceptance of many rows in one statement: (id, at, message id)."""
        if sent:
            params = [{"outbox_id": i, "at": at, "message_id": m} for i, at, m in sent]
            await self.session.exec(_MARK_SENT_CORE, params=params)  # type: ignore[call-overload]

    async def record_sent(
        self,
        sent: Sequence[tuple[int, datetime, int | None]],
        cards: Sequence[tuple[int, int, bool]],
    ) -> None:
        """`mark_all_sent` and `TicketRepository.remember_cards` together. On PostgreSQL it is
        one statement, whole by itself: in a unit of work that commits each statement on its
        own (`UnitOfWorkFactory.single`) the sender's record is one round trip where it had
        been four (BEGIN, the two updates, COMMIT)."""
        if self.session.bind.dialect.name != "postgresql":  # type: ignore[union-attr]
            await self.mark_all_sent(sent)
            await TicketRepository(self.session).remember_cards(cards)
            return
        if not sent and not cards:
            return
        folded = fold_cards(cards)
        params = {
            "sent": OutboxState.SENT.value,
            "ids": [i for i, _, _ in sent],
            "ats": [at for _, at, _ in sent],
            "mids": [m for _, _, m in sent],
            "tids": list(folded),
            "cmids": [m for m, _ in folded.values()],
            "anew": [anew for _, anew in folded.values()],
        }
        await self.session.exec(_RECORD_SENT_PG, params=params)  # type: ignore[call-overload]


_IDS = sa_postgresql.ARRAY(sa.Integer)

# The claim, built once: the sender runs it each time it looks for work.
_OUTBOX = Outbox.__table__  # type: ignore[attr-defined]
_AT = _OUTBOX.c.not_before.type
_FREE = sa.and_(  # due, and leased by nobody live (or by this sender, restarted)
    _OUTBOX.c.not_before <= sa.bindparam("now", type_=_AT),
    sa.or_(
        _OUTBOX.c.lease_until.is_(None),
        _OUTBOX.c.lease_until < sa.bindparam("now", type_=_AT),
        _OUTBOX.c.lease_owner == sa.bindparam("owner"),
    ),
)
_RANKED = (
    sa.select(
        _OUTBOX.c.id,
        _OUTBOX.c.chat_id,
        sa.case((_FREE, 1), else_=0).label("free"),
        sa.func.row_number()
        .over(partition_by=_OUTBOX.c.chat_id, order_by=_OUTBOX.c.id)
        .label("n"),
    )
    .where(
        _OUTBOX.c.state == OutboxState.PENDING,
        _OUTBOX.c.chat_id.not_in(sa.bindparam("skip", expanding=True)),
    )
    .subquery()
)
_CLAIM_RANKED = (
    sa.select(_RANKED.c.id, _RANKED.c.chat_id, _RANKED.c.free)
    .where(_RANKED.c.n <= sa.bindparam("depth"))
    .order_by(_RANKED.c.chat_id, _RANKED.c.n)
)
_CLAIMED = (
    _OUTBOX.c.id,
    _OUTBOX.c.chat_id,
    _OUTBOX.c.method,
    _OUTBOX.c.payload,
    _OUTBOX.c.ticket_id,
    _OUTBOX.c.is_card,
    _OUTBOX.c.person_id,
    _OUTBOX.c.attempts,
)
_LEASE = (
    sa.update(_OUTBOX)
    .where(
        _OUTBOX.c.id.in_(sa.bindparam("ids", expanding=True)),
        _OUTBOX.c.state == OutboxState.PENDING,
        _FREE,
    )
    .values(lease_owner=sa.bindparam("owner"), lease_until=sa.bindparam("until", type_=_AT))
    .returning(*_CLAIMED)
)
_LOCKED = (
    sa.select(_OUTBOX.c.id)
    .where(_OUTBOX.c.id == sa.any_(sa.bindparam("ids", type_=_IDS)))
    .where(_OUTBOX.c.state == OutboxState.PENDING, _FREE)
    .with_for_update(skip_locked=True)
    .cte("locked")
)
_LEASE_LOCKED = (
    sa.update(_OUTBOX)
    .where(_OUTBOX.c.id == _LOCKED.c.id)
    .values(lease_owner=sa.bindparam("owner"), lease_until=sa.bindparam("until", type_=_AT))
    .returning(*_CLAIMED)
)

# built once: the sender runs it for every message
_NUDGES = Nudge.__table__  # type: ignore[attr-defined]
_NUDGES_ACTED = (
    sa.update(_NUDGES)
    .where(_NUDGES.c.ticket_id == sa.bindparam("ticket"), ~_NUDGES.c.acted)
    .values(acted=True)
)
_INBOX = InboxUpdate.__table__  # type: ignore[attr-defined]


def _add_updates(insert: Any) -> Any:
    """The inbox's INSERT, built once: an update id already stored is skipped, and the ids
    that were new come back. Built per call from the batch's values, through the ORM, it
    was compiled anew for every poll: at one update a poll, the receiver's step took 1.7 ms
    of CPU, and 1.1 ms with this."""
    statement = insert(_INBOX).on_conflict_do_nothing(index_elements=[_INBOX.c.update_id])
    return statement.returning(_INBOX.c.update_id)


_ADD_UPDATES = {
    "sqlite": _add_updates(sa_sqlite.insert),
    "postgresql": _add_updates(sa_postgresql.insert),
}
# the worker asks at every pass: built once, and read as plain rows
_PENDING = (
    sa.select(_INBOX.c.update_id, _INBOX.c.chat_id, _INBOX.c.payload, _INBOX.c.attempts)
    .where(~_INBOX.c.processed, ~_INBOX.c.parked)
    .order_by(_INBOX.c.received_at, _INBOX.c.update_id)
    .limit(sa.bindparam("limit"))
)
_PENDING_SKIPPING = _PENDING.where(
    sa.or_(
        _INBOX.c.chat_id.is_(None), _INBOX.c.chat_id.not_in(sa.bindparam("skip", expanding=True))
    )
)
_MARK_PROCESSED = (
    sa.update(_INBOX)
    .where(_INBOX.c.update_id == sa.bindparam("update"), ~_INBOX.c.processed)
    .values(processed=True, processed_at=sa.bindparam("at", type_=_INBOX.c.processed_at.type))
)


def fold_cards(cards: Sequence[tuple[int, int, bool]]) -> dict[int, tuple[int, bool]]:
    """(ticket, message, replace) taken in order, one per ticket: ticket -> (message, replace).
    A replacement wins over what came before it; a first card counts only where nothing came
    before it for its ticket (and then only where the ticket has none yet)."""
    out: dict[int, tuple[int, bool]] = {}
    for ticket_id, message_id, replace in cards:
        if replace or ticket_id not in out:
            out[ticket_id] = (message_id, replace)
    return out


_RECORD_SENT_PG = sa.text(
    f"""
    WITH sent AS (
        UPDATE {_OUTBOX.name} SET state = :sent, sent_at = v.at, sent_message_id = v.mid,
            attempts = {_OUTBOX.name}.attempts + 1, lease_until = NULL
        FROM unnest(:ids, :ats, :mids) AS v(id, at, mid)
        WHERE {_OUTBOX.name}.id = v.id
    )
    UPDATE {_TICKETS.name} SET card_message_id = CASE WHEN c.anew THEN c.mid
        ELSE coalesce({_TICKETS.name}.card_message_id, c.mid) END
    FROM unnest(:tids, :cmids, :anew) AS c(tid, mid, anew)
    WHERE {_TICKETS.name}.id = c.tid
    """
).bindparams(
    sa.bindparam("ids", type_=_IDS),
    sa.bindparam("ats", type_=sa_postgresql.ARRAY(_OUTBOX.c.sent_at.type)),
    sa.bindparam("mids", type_=sa_postgresql.ARRAY(sa.BigInteger)),
    sa.bindparam("tids", type_=_IDS),
    sa.bindparam("cmids", type_=sa_postgresql.ARRAY(sa.BigInteger)),
    sa.bindparam("anew", type_=sa_postgresql.ARRAY(sa.Boolean)),
)

_MARK_SENT_CORE = (
    sa.update(Outbox.__table__)  # type: ignore[attr-defined]
    .where(Outbox.__table__.c.id == sa.bindparam("outbox_id"))  # type: ignore[attr-defined]
    .values(
        state=OutboxState.SENT,
        sent_at=sa.bindparam("at", type_=Outbox.__table__.c.sent_at.type),  # type: ignore[attr-defined]
        sent_message_id=sa.bindparam("message_id"),
        attempts=Outbox.__table__.c.attempts + 1,  # type: ignore[attr-defined]
        lease_until=None,
    )
)


class InboxRepository(_Repository):
    async def get(self, update_id: int) -> InboxUpdate | None:
        return await self.session.get(InboxUpdate, update_id)

    async def add_new(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert raw updates, ignoring update ids already stored; returns how many were new."""
        if not rows:
            return 0
        statement = _ADD_UPDATES[self.session.bind.dialect.name]  # type: ignore[union-attr]
        result = await self.session.exec(statement, params=list(rows))  # type: ignore[call-overload]
        return len(result.all())

    async def mark_processed(self, update_id: int, at: datetime) -> bool:
        """Mark an update processed; False when it already was (someone else did it)."""
        params = {"update": update_id, "at": at}
        result = await self.session.exec(_MARK_PROCESSED, params=params)  # type: ignore[call-overload]
        return bool(result.rowcount)

    async def record_failure(self, update_id: int, error: str, *, park: bool) -> bool:
        """Count a failed attempt (and park the update); False when it was processed meanwhile."""
        result = await self.session.exec(  # type: ignore[call-overload]
            sa.update(InboxUpdate)
            .where(col(InboxUpdate.update_id) == update_id, ~col(InboxUpdate.processed))
            .values(attempts=InboxUpdate.attempts + 1, error=error, parked=park)
        )
        return bool(result.rowcount)

    async def pending(
        self, limit: int = 100, *, skip_chats: Collection[int] = ()
    ) -> Sequence[Any]:
        """The next updates to handle, oldest first, leaving out the chats held back: narrow
        rows (update_id, chat_id, payload, attempts), not the inbox's entities."""
        params: dict[str, Any] = {"limit": limit}
        if skip_chats:
            params["skip"] = list(skip_chats)
        query = _PENDING_SKIPPING if skip_chats else _PENDING
        return (await self.session.exec(query, params=params)).all()  # type: ignore[call-overload]

    async def parked(self, limit: int = 50) -> Sequence[InboxUpdate]:
        query = select(InboxUpdate).where(col(InboxUpdate.parked))
        return (await self.session.exec(query.order_by(InboxUpdate.update_id).limit(limit))).all()

    async def oldest_pending_at(self) -> datetime | None:
        query = select(sa.func.min(InboxUpdate.received_at)).where(
            ~col(InboxUpdate.processed), ~col(InboxUpdate.parked)
        )
        return (await self.session.exec(query)).one()


def _put_value(insert: Any) -> Any:
    table = KeyValue.__table__  # type: ignore[attr-defined]
    statement = insert(table).values(
        key=sa.bindparam("key"),
        value=sa.bindparam("value", type_=table.c.value.type),
        updated_at=sa.bindparam("at", type_=table.c.updated_at.type),
    )
    return statement.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at},
    )


_PUT_VALUE = {
    "sqlite": _put_value(sa_sqlite.insert),
    "postgresql": _put_value(sa_postgresql.insert),
}
_DELETE_VALUE = sa.delete(KeyValue).where(col(KeyValue.key) == sa.bindparam("key"))


class ScheduleRepository(_Repository):
    async def nudges_of(self, ticket_id: int) -> Sequence[Nudge]:
        query = select(Nudge).where(Nudge.ticket_id == ticket_id).order_by(Nudge.id)
        return (await self.session.exec(query)).all()

    async def last_nudge(self, ticket_id: int, rung: str, person_id: int | None) -> Nudge | None:
        query = select(Nudge).where(
            Nudge.ticket_id == ticket_id, Nudge.rung == rung, Nudge.person_id == person_id
        )
        return (await self.session.exec(query.order_by(col(Nudge.id).desc()).limit(1))).first()

    async def mark_nudges_acted(self, ticket_ids: Collection[int]) -> None:
        """Someone acted on the tickets: their reminders so far are answered (every action by
        a person comes here, so it is built once, as plain Core)."""
        params = [{"ticket": t} for t in sorted(set(ticket_ids))]
        if params:
            await self.session.exec(_NUDGES_ACTED, params=params)  # type: ignore[call-overload]

    async def digest_run(self, leader_id: int, day: Any) -> DigestRun | None:
        query = select(DigestRun).where(DigestRun.leader_id == leader_id, DigestRun.day == day)
        return (await self.session.exec(query)).first()

    async def get_value(self, key: str) -> KeyValue | None:
        return await self.session.get(KeyValue, key)

    async def put_value(self, key: str, value: dict[str, Any], now: datetime) -> None:
        """Set a small fact: one upsert (the receiver sets its offset after every poll that
        brought updates), or a change to the row when this unit of work already holds it."""
        held = self.session.sync_session.identity_map.get(identity_key(KeyValue, key))
        if held is not None:
            held.value = value
            held.updated_at = now
            return
        upsert = _PUT_VALUE[self.session.bind.dialect.name]  # type: ignore[union-attr]
        await self.session.exec(upsert, params={"key": key, "value": value, "at": now})  # type: ignore[call-overload]

    async def values_with_prefix(self, prefix: str) -> Sequence[KeyValue]:
        """Every small fact whose key starts with the prefix (conversation states, drafts)."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = select(KeyValue).where(col(KeyValue.key).like(f"{escaped}%", escape="\\"))
        return (await self.session.exec(query.order_by(KeyValue.key))).all()

    async def delete_value(self, key: str) -> None:
        """Forget a small fact, in one statement whether or not it was there."""
        held = self.session.sync_session.identity_map.get(identity_key(KeyValue, key))
        if held is not None:
            await self.session.delete(held)
            return
        await self.session.exec(_DELETE_VALUE, params={"key": key})  # type: ignore[call-overload]

    # ---- the idle scan and the digest ----------------------------------------------------

    async def latest_nudges(self, ticket_ids: Sequence[int]) -> Sequence[Any]:
        """Per ticket and rung: (ticket_id, rung, the highest slot, the latest time sent)."""
        if not ticket_ids:
            return []
        params = {"ids": list(ticket_ids)}
        return (await self.session.exec(_LATEST_NUDGES, params=params)).all()  # type: ignore[call-overload]

    async def add_nudges(
        self, keys: Sequence[tuple[int, str, int, int]], at: datetime
    ) -> set[tuple[int, str, int, int]]:
        """Record nudges under their unique keys (ticket, rung, person, slot) in one statement;
        the keys that were new (the rest were sent already: a rerun, another instance).

        One statement of many rows, built from one cached statement and the rows' values
        (executemany with RETURNING): an INSERT of many VALUES built row by row cost more to
        compile than to run."""
        if not keys:
            return set()
        dialect = self.session.bind.dialect.name  # type: ignore[union-attr]
        rows = [
            {"ticket_id": t, "rung": r, "person_id": p, "slot": s, "at": at, "acted": False}
            for t, r, p, s in dict.fromkeys(keys)
        ]
        statement = _ADD_NUDGES[dialect if dialect == "postgresql" else "sqlite"]
        result = await self.session.exec(statement, params=rows)  # type: ignore[call-overload]
        return {tuple(row) for row in result.all()}

    async def queue_nudges(
        self, messages: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]]
    ) -> None:
        """Write the idle sweep's outbox rows and the events that record its nudges: one
        executemany a table, as plain values (a row object each cost more than the insert)."""
        if messages:
            await self.session.exec(_QUEUE_OUTBOX, params=list(messages))  # type: ignore[call-overload]
        if events:
            await self.session.exec(_ADD_EVENTS, params=list(events))  # type: ignore[call-overload]

    async def ignored_nudges(
        self, region_ids: Sequence[int], rungs: Sequence[str]
    ) -> Sequence[Any]:
        """Unanswered nudges on the regions' open tickets, as rows (ticket's department_id,
        person_id, person's name, count)."""
        query = (
            select(  # type: ignore[call-overload]
                Ticket.department_id, Nudge.person_id, Person.name, sa.func.count()
            )
            .join(Ticket, col(Ticket.id) == Nudge.ticket_id)
            .join(Person, col(Person.id) == Nudge.person_id)
            .where(
                col(Ticket.region_id).in_(region_ids),
                col(Ticket.state).in_(list(OPEN_STATES)),
                ~col(Nudge.acted),
                col(Nudge.rung).in_(rungs),
            )
            .group_by(Ticket.department_id, Nudge.person_id, Person.name)
        )
        return (await self.session.exec(query)).all()

    async def nudge_counts(
        self, person_ids: Sequence[int], since: datetime, region_ids: Sequence[int]
    ) -> tuple[int, int]:
        """(sent, still unanswered) nudges to these people since a moment, on the regions'
        tickets."""
        if not person_ids:
            return 0, 0
        ignored = sa.func.sum(sa.case((col(Nudge.acted), 0), else_=1))
        query = (
            select(sa.func.count(), ignored)  # type: ignore[call-overload]
            .select_from(Nudge)
            .join(Ticket, col(Ticket.id) == Nudge.ticket_id)
            .where(
                col(Nudge.person_id).in_(person_ids),
                Nudge.at >= since,
                col(Ticket.region_id).in_(region_ids),
            )
        )
        total, unanswered = (await self.session.exec(query)).one()
        return int(total or 0), int(unanswered or 0)

    async def owed_digest(self, role: Role, day: Any) -> Sequence[Person]:
        """Active people of a role with a region and no digest recorded for the day."""
        done = sa.exists().where(DigestRun.leader_id == Person.id, DigestRun.day == day)
        query = select(Person).where(
            Person.role == role,
            col(Person.active),
            col(Person.region_id).is_not(None),
            ~done,
        )
        return (await self.session.exec(query.order_by(col(Person.id)))).all()


# the idle sweep's statements, built once: it runs them every minute, and building them
# cost more than running them. The writes name the tables, not the classes, so that many rows
# go to the driver as they are (the ORM's bulk path would look at each).


def _in(column: Any, name: str) -> Any:
    return col(column).in_(sa.bindparam(name, expanding=True))


_PERSON_COLUMNS = (
    Person.id,
    Person.telegram_id,
    Person.name,
    Person.language,
    Person.dm_blocked,
    Person.active,
    Person.role,
    Person.region_id,
    Person.department_id,
    Person.is_head,
)
_people_found = sa.union(
    select(*_PERSON_COLUMNS).where(_in(Person.id, "ids")),
    select(*_PERSON_COLUMNS).where(
        _in(Person.department_id, "departments"), Person.role == Role.OFFICIAL, col(Person.active)
    ),
    select(*_PERSON_COLUMNS).where(
        _in(Person.role, "roles"), col(Person.region_id).is_not(None), col(Person.active)
    ),
).subquery()
_PEOPLE_TO_NUDGE = sa.select(*_people_found.c).order_by(_people_found.c.id)

_SCAN_COLUMNS = (
    Ticket.id,
    Ticket.state,
    Ticket.claimant_id,
    Ticket.last_activity_at,
    Ticket.due_at,
    Ticket.supervised_at,
    Ticket.resolved_at,
)
_OPEN = col(Ticket.state).in_(
    sa.bindparam("open_states", sorted(OPEN_STATES), expanding=True, literal_execute=True)
)
_IDLE = col(Ticket.last_activity_at) <= sa.bindparam("idle_before")
_LATE = col(Ticket.due_at) <= sa.bindparam("now")
_candidates = sa.union(
    select(Ticket.id).where(_OPEN, _IDLE), select(Ticket.id).where(_OPEN, _LATE)
).subquery()
_SCAN_CANDIDATES = sa.select(_candidates.c.id).order_by(_candidates.c.id)
_SCAN_PAGE = (
    select(*_SCAN_COLUMNS)
    .where(_in(Ticket.id, "ids"), _OPEN, sa.or_(_IDLE, _LATE))
    .order_by(col(Ticket.id))
)

_LOCK_FOR_NUDGES = (
    select(  # type: ignore[call-overload]
        *_SCAN_COLUMNS,
        Ticket.department_id,
        Ticket.region_id,
        Ticket.reporter_id,
        Ticket.group_chat_id,
        Ticket.anonymous,
        Ticket.summary,
        col(Department.name).label("department_name"),
        col(ChatGroup.language).label("group_language"),
    )
    .join(Department, col(Department.id) == Ticket.department_id, isouter=True)
    .join(ChatGroup, col(ChatGroup.chat_id) == Ticket.group_chat_id, isouter=True)
    .where(_in(Ticket.id, "ids"))
    .order_by(col(Ticket.id))
    .with_for_update(of=Ticket.__table__, skip_locked=True)  # type: ignore[attr-defined]
)

_LATEST_NUDGES = (
    select(  # type: ignore[call-overload]
        Nudge.ticket_id, Nudge.rung, sa.func.max(Nudge.slot), sa.func.max(Nudge.at)
    )
    .where(_in(Nudge.ticket_id, "ids"))
    .group_by(Nudge.ticket_id, Nudge.rung)
)

_NUDGE_KEY = ["ticket_id", "rung", "person_id", "slot"]
_ADD_NUDGES = {
    name: (
        insert(Nudge.__table__)  # type: ignore[attr-defined]
        .on_conflict_do_nothing(index_elements=_NUDGE_KEY)
        .returning(*(Nudge.__table__.c[c] for c in _NUDGE_KEY))  # type: ignore[attr-defined]
    )
    for name, insert in (("postgresql", sa_postgresql.insert), ("sqlite", sa_sqlite.insert))
}
_QUEUE_OUTBOX = sa.insert(Outbox.__table__)  # type: ignore[attr-defined]


def _pending_before(indexed_by: str = "") -> Any:
    """The last row pending before each new one in its chat, read from the chat's pending
    rows (`ix_outbox_chat_pending`). Written out, since SQLAlchemy renders the columns of a
    RETURNING clause without their table, which a correlated subquery needs."""
    return sa.literal_column(
        f"(SELECT max(before.id) FROM outbox AS before{indexed_by}"
        " WHERE before.chat_id = outbox.chat_id"
        f" AND before.state = '{OutboxState.PENDING.value}' AND before.id < outbox.id)"
    )


_QUEUE_OUTBOX_RETURNING = _QUEUE_OUTBOX.returning(
    _OUTBOX.c.id, _pending_before(), sort_by_parameter_order=True
)
_MARKED = (
    sa.text(
        f"UPDATE {InboxUpdate.__tablename__} SET processed = true, processed_at = :mark_at"
        " WHERE update_id = :mark_update AND NOT processed RETURNING update_id"
    )
    .bindparams(
        sa.bindparam("mark_at", type_=InboxUpdate.__table__.c.processed_at.type),  # type: ignore[attr-defined]
        sa.bindparam("mark_update", type_=sa.BigInteger),
    )
    .columns(update_id=sa.BigInteger)
    .cte("marked")
)
_MARKING_RETURNS = (
    _OUTBOX.c.id,
    _pending_before(),
    sa.select(sa.func.count()).select_from(_MARKED).scalar_subquery(),
)
# the reminders a person's action answers (`ScheduleRepository.mark_nudges_acted`), of the
# tickets in one array parameter, empty for none; repeated, as each page of a statement of many
# messages repeats it, it changes nothing more
_ANSWERED = (
    sa.text(
        f"UPDATE {Nudge.__tablename__} SET acted = true"
        " WHERE ticket_id = ANY(:mark_answered) AND NOT acted RETURNING id"
    )
    .bindparams(sa.bindparam("mark_answered", type_=sa_postgresql.ARRAY(sa.Integer)))
    .columns(id=sa.Integer)
    .cte("answered")
)
_QUEUE_OUTBOX_MARKING = (
    _QUEUE_OUTBOX.add_cte(_MARKED)
    .add_cte(_ANSWERED)
    .returning(*_MARKING_RETURNS, sort_by_parameter_order=True)
)
# The events go in the statement as one JSON parameter: a statement of many messages is sent
# in several (SQLAlchemy's insertmanyvalues pages), each of which would append them again, so
# they go with a few messages only, which always fit one page.
MARKING_ROWS = 100
_EVENT_COLUMNS = {
    "ticket_id": "integer",
    "kind": "text",
    "actor_id": "integer",
    "from_state": "text",
    "to_state": "text",
    "note": "text",
    "data": "json",
    "at": "timestamptz",
}
_APPENDED = (
    sa.text(
        f"INSERT INTO {TicketEvent.__tablename__} ({', '.join(_EVENT_COLUMNS)})"
        f" SELECT {', '.join(_EVENT_COLUMNS)} FROM json_to_recordset(CAST(:mark_events AS json))"
        f" AS e({', '.join(f'{k} {t}' for k, t in _EVENT_COLUMNS.items())})"
        " RETURNING ticket_id"
    )
    .bindparams(sa.bindparam("mark_events", type_=sa.Text))
    .columns(ticket_id=sa.Integer)
    .cte("appended")
)
_QUEUE_OUTBOX_MARKING_EVENTS = (
    _QUEUE_OUTBOX.add_cte(_MARKED)
    .add_cte(_ANSWERED)
    .add_cte(_APPENDED)
    .returning(*_MARKING_RETURNS, sort_by_parameter_order=True)
)


def _event_json(row: dict[str, Any]) -> dict[str, Any]:
    if set(row) != set(_EVENT_COLUMNS):
        raise ValueError(f"an event row has the columns {sorted(_EVENT_COLUMNS)}")
    return {**row, "at": row["at"].isoformat()}


# SQLite's planner, without statistics, may as well take the chat's index and walk back over
# every message the chat was ever sent (46 ms behind 100,000 of them): it is told which to use
_QUEUE_OUTBOX_RETURNING_ANY = _QUEUE_OUTBOX.returning(
    _OUTBOX.c.id, _pending_before(" INDEXED BY ix_outbox_chat_pending")
)
_ADD_EVENTS = sa.insert(TicketEvent.__table__)  # type: ignore[attr-defined]

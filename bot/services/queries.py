"""Read-only questions: one ticket with its timeline, and the scoped lists."""

from __future__ import annotations

from bot import tickets as flow
from bot.clock import Clock
from bot.errors import NotRegisteredError, TicketNotFoundError
from bot.services.org import OrgDirectory, facts_of, person_view
from bot.services.views import PersonView, TicketView
from storage.orgcache import MISSING
from storage.tables import OPEN_STATES, Person, Role, TicketState
from storage.uow import UnitOfWork, UnitOfWorkFactory

S = TicketState
_ACTIVE = list(OPEN_STATES)


class QueryService:
    def __init__(self, uows: UnitOfWorkFactory, clock: Clock) -> None:
        self._uows = uows
        self._clock = clock
        self.org = OrgDirectory()

    async def whoami(self, telegram_id: int) -> PersonView | None:
        # every update asks this (the guard): the org cache mostly knows without a unit of work
        person = self._uows.kept.person_by_telegram(telegram_id)
        if person is MISSING:
            async with self._uows(readonly=True) as uow:
                person = await uow.org.person_by_telegram(telegram_id)
        return person_view(person) if person and person.active else None

    async def ticket(self, telegram_id: int, number: int) -> tuple[TicketView, bool]:
        """The ticket with its timeline, and whether the asker may see who reported it.

        Raises NotRegisteredError, TicketNotFoundError (also when it is not theirs to see).
        """
        async with self._uows(readonly=True) as uow:
            person, actor = await self._actor(uow, telegram_id)
            row = await uow.tickets.get(number) if 0 < number < 2**62 else None
            if row is None or not flow.can_see(facts_of(row), actor):
                raise TicketNotFoundError(number=number)
            view = await self.org.view(uow, row, timeline=True)
            return view, _reveals(person, row.enterprise_id)

    async def mine(self, telegram_id: int) -> list[TicketView]:
        """An enterprise's own tickets, an official's claimed ones, a leader's supervised ones."""
        async with self._uows(readonly=True) as uow:
            person, actor = await self._actor(uow, telegram_id)
            role = Role(person.role)
            if role is Role.ENTERPRISE:
                rows = await uow.tickets.listing(enterprise_id=person.enterprise_id, limit=30)
            elif role is Role.OFFICIAL:
                rows = await uow.tickets.listing(claimant_id=person.id, states=_ACTIVE, limit=30)
            else:
                rows = await uow.tickets.listing(
                    region_ids=sorted(actor.region_ids),
                    states=[S.SUPERVISED, S.RETURNED, S.REPORTED],
                    limit=30,
                )
            return [await self.org.view(uow, r) for r in rows]

    async def open(self, telegram_id: int) -> list[TicketView]:
        async with self._uows(readonly=True) as uow:
            person, actor = await self._actor(uow, telegram_id)
            rows = await uow.tickets.listing(states=_ACTIVE, limit=40, **_scope(person, actor))
            return [await self.org.view(uow, r) for r in rows]

    async def overdue(self, telegram_id: int) -> list[TicketView]:
        async with self._uows(readonly=True) as uow:
            person, actor = await self._actor(uow, telegram_id)
            rows = await uow.tickets.listing(
                states=[s for s in _ACTIVE if s is not S.RESOLVED],
                overdue_at=self._clock.now(),
                limit=40,
                **_scope(person, actor),
            )
            return [await self.org.view(uow, r) for r in rows]

    async def _actor(self, uow: UnitOfWork, telegram_id: int) -> tuple[Person, flow.Actor]:
        person = await uow.org.person_by_telegram(telegram_id)
        if person is None or not person.active:
            raise NotRegisteredError(telegram_id=telegram_id)
        return person, await self.org.actor(uow, person)


def _scope(person: Person, actor: flow.Actor) -> dict[str, object]:
    role = Role(person.role)
    if role is Role.ENTERPRISE:
        return {"enterprise_id": person.enterprise_id}
    if role is Role.OFFICIAL:
        return {"department_id": person.department_id}
    if role is Role.ADMIN:
        return {}
    return {"region_ids": sorted(actor.region_ids)}


def _reveals(person: Person, enterprise_id: int) -> bool:
    """Everyone but other enterprises may know who reported (they see only their own anyway)."""
    return Role(person.role) is not Role.ENTERPRISE or person.enterprise_id == enterprise_id

"""People and groups: redeeming invites, languages, group bindings, what a reporter may pick."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.clock import Clock
from bot.errors import InviteError, NotRegisteredError
from bot.i18n import LANGUAGES, normalize
from bot.services.org import person_view
from bot.services.views import PersonView
from storage.orgcache import MISSING
from storage.tables import Invite, Person, Role
from storage.uow import UnitOfWork, UnitOfWorkFactory

_HINT_KEY = "unbound_hint:{chat_id}"


@dataclass(frozen=True)
class InviteView:
    code: str
    role: Role
    name: str
    expires_at: datetime

    def __str__(self) -> str:
        """The code, which is what an admin hands on (`qunban invite` prints it)."""
        return self.code


@dataclass(frozen=True)
class GroupView:
    chat_id: int
    region_id: int
    title: str
    language: str


class PeopleService:
    """Who someone is and how they joined; each method is one unit of work."""

    def __init__(self, uows: UnitOfWorkFactory, clock: Clock) -> None:
        self._uows = uows
        self._clock = clock

    async def start(
        self,
        telegram_id: int,
        code: str | None,
        username: str | None = None,
        language: str | None = None,
    ) -> PersonView:
        """Bind a Telegram account to the org chart by redeeming an invite.

        Without a code, return the person already bound. Raises NotRegisteredError (no code,
        unknown account) and InviteError (invite_unknown, invite_used, invite_expired,
        already_registered).
        """
        now = self._clock.now()
        async with self._uows() as uow:
            known = await uow.org.person_by_telegram(telegram_id)
            if not code:
                if known is None or not known.active:
                    raise NotRegisteredError(telegram_id=telegram_id)
                return person_view(known)
            invite = _redeemable(await uow.org.invite(code.strip()[:64]), now)
            if known is not None:
                raise InviteError("already_registered", name=known.name)
            person = await self._enrol(uow, invite, telegram_id, username, language)
            invite.used_at = now
            invite.used_by_telegram_id = telegram_id
            await uow.flush()
            view = person_view(person)
            await uow.commit()
        return view

    async def _enrol(
        self,
        uow: UnitOfWork,
        invite: Invite,
        telegram_id: int,
        username: str | None,
        language: str | None,
    ) -> Person:
        region_id = invite.region_id
        if invite.enterprise_id is not None:
            enterprise = await uow.org.enterprise(invite.enterprise_id)
            region_id = enterprise.region_id if enterprise else region_id
        if invite.department_id is not None:
            department = await uow.org.department(invite.department_id)
            region_id = department.region_id if department else region_id
        person = Person(
            telegram_id=telegram_id,
            username=(username or None) and username[:64],
            name=invite.name,
            role=invite.role,
            enterprise_id=invite.enterprise_id,
            department_id=invite.department_id,
            region_id=region_id,
            is_head=invite.is_head,
            language=invite.language or normalize(language),
        )
        uow.org.add(person)
        await uow.flush()
        return person

    async def set_language(self, telegram_id: int, language: str) -> PersonView:
        """Change the language a person is answered in. Raises NotRegisteredError, InviteError
        (bad_language)."""
        wanted = language.strip().lower()
        if wanted not in LANGUAGES:
            raise InviteError("bad_language", language=wanted[:8])
        async with self._uows() as uow:
            person = await uow.org.person_by_telegram(telegram_id)
            if person is None or not person.active:
                raise NotRegisteredError(telegram_id=telegram_id)
            person.language = wanted
            await uow.flush()
            view = person_view(person)
            await uow.commit()
        return view

    async def create_invite(
        self,
        role: Role | str,
        name: str,
        *,
        enterprise: str | None = None,
        department: str | None = None,
        region: str | None = None,
        is_head: bool = False,
        language: str | None = None,
        ttl: timedelta = timedelta(days=7),
    ) -> InviteView:
        """A single-use invite for `/start CODE`, bound to a role and its scope (by codes).

        Raises InviteError (bad_role, bad_scope, unknown_enterprise, unknown_department,
        unknown_region, bad_language).
        """
        try:
            role = Role(role)
        except ValueError:
            raise InviteError("bad_role", role=str(role)) from None
        if language is not None and normalize(language) != language:
            raise InviteError("bad_language", language=language)
        _check_scope(role, enterprise, department, region)
        now = self._clock.now()
        async with self._uows() as uow:
            invite = Invite(
                code=secrets.token_urlsafe(12),
                role=role,
                name=name.strip()[:128] or role.value,
                is_head=is_head and role is Role.OFFICIAL,
                # empty: the person's own Telegram language decides at /start
                language=language or "",
                created_at=now,
                expires_at=now + ttl,
            )
            await _scope_ids(uow, invite, enterprise, department, region)
            uow.org.add(invite)
            await uow.commit()
        return InviteView(invite.code, role, invite.name, invite.expires_at)

    async def group(self, chat_id: int) -> GroupView | None:
        """The binding of a Telegram group to a region, if it has one."""
        # every update asks this first: the org cache mostly knows without a unit of work
        row = self._uows.kept.group_by_chat(chat_id)
        if row is MISSING:
            async with self._uows(readonly=True) as uow:
                row = await uow.org.group_by_chat(chat_id)
        if row is None:
            return None
        return GroupView(row.chat_id, row.region_id, row.title, row.language)

    async def migrate_group(self, old: int, new: int) -> None:
        """The group became a supergroup: the binding, its tickets and its queue follow.
        Safe to repeat (both service messages of a migration call it)."""
        async with self._uows() as uow:
            if await uow.org.group_by_chat(new) is None:
                await uow.org.move_chat(old, new)
                await uow.commit()

    async def hint_once(self, chat_id: int) -> bool:
        """True the first time only: an unbound group gets one polite line, then silence."""
        key = _HINT_KEY.format(chat_id=chat_id)
        now = self._clock.now()
        async with self._uows() as uow:
            if await uow.schedule.get_value(key) is not None:
                return False
            await uow.schedule.put_value(key, {"at": now.isoformat()}, now)
            await uow.commit()
        return True

    async def categories(self, telegram_id: int) -> list[str]:
        """Names of the departments an enterprise member may file a problem with."""
        async with self._uows(readonly=True) as uow:
            person = await uow.org.person_by_telegram(telegram_id)
            if person is None or not person.active:
                raise NotRegisteredError(telegram_id=telegram_id)
            region_id = person.region_id
            if person.enterprise_id is not None:
                enterprise = await uow.org.enterprise(person.enterprise_id)
                region_id = enterprise.region_id if enterprise else region_id
            if region_id is None:
                return []
            chain = [r.id for r in await uow.org.region_and_above(region_id)]
            return [d.name for d in await uow.org.departments_in(chain)]  # type: ignore[arg-type]


def _redeemable(invite: Invite | None, now: datetime) -> Invite:
    if invite is None:
        raise InviteError("invite_unknown")
    if invite.used_at is not None:
        raise InviteError("invite_used")
    if invite.expires_at <= now:
        raise InviteError("invite_expired")
    return invite


def _check_scope(
    role: Role, enterprise: str | None, department: str | None, region: str | None
) -> None:
    needs = {
        Role.ENTERPRISE: (enterprise, "enterprise"),
        Role.OFFICIAL: (department, "department"),
        Role.LEADER: (region, "region"),
        Role.COORDINATOR: (region, "region"),
    }
    if role in needs and not needs[role][0]:
        raise InviteError("bad_scope", role=role.value, needs=needs[role][1])


async def _scope_ids(
    uow: UnitOfWork,
    invite: Invite,
    enterprise: str | None,
    department: str | None,
    region: str | None,
) -> None:
    if enterprise:
        found = await uow.org.enterprise_by_code(enterprise)
        if found is None:
            raise InviteError("unknown_enterprise", query=enterprise)
        invite.enterprise_id, invite.region_id = found.id, found.region_id
    if department:
        dept = await uow.org.department_by_code(department)
        if dept is None:
            raise InviteError("unknown_department", query=department)
        invite.department_id, invite.region_id = dept.id, dept.region_id
    if region:
        place = await uow.org.region_by_code(region)
        if place is None:
            raise InviteError("unknown_region", query=region)
        invite.region_id = place.id

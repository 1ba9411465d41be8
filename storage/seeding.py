"""Load an org chart seed file: upsert by natural key, all of it in one transaction or none."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.seed_file import SeedError, SeedFile, read_seed
from storage.tables import ChatGroup, Department, Enterprise, Person, Region, RegionLevel, Role
from storage.uow import UnitOfWorkFactory

__all__ = ["SeedError", "SeedReport", "Tally", "load_seed"]


@dataclass(frozen=True)
class Tally:
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged


@dataclass(frozen=True)
class SeedReport:
    """What one load did, per kind of row."""

    regions: Tally
    departments: Tally
    enterprises: Tally
    people: Tally
    groups: Tally

    def __str__(self) -> str:
        return "; ".join(
            f"{kind} {tally.total} ({tally.created} created, {tally.updated} updated, "
            f"{tally.unchanged} unchanged)"
            for kind, tally in self.as_dict().items()
        )

    def as_dict(self) -> dict[str, Tally]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


async def load_seed(uows: UnitOfWorkFactory, path: Path) -> SeedReport:
    """Load the seed at `path`; running it again changes nothing.

    Raises SeedError (one line, naming the entry) on a bad file or on a clash with rows already
    in the database; then nothing is loaded.
    """
    seed = read_seed(path)
    async with uows() as uow:
        try:
            report = await _Loader(uow.session, path).load(seed)
            await uow.commit()
        except sa.exc.IntegrityError as error:
            # a row changed under us since the checks, by another writer
            detail = " ".join(str(error.orig).split())
            raise SeedError(f"{path}: the database refused the seed: {detail}") from None
    return report


class _Loader:
    """Upserts each section in turn, remembering the ids that later sections point at."""

    def __init__(self, session: AsyncSession, path: Path) -> None:
        self.session = session
        self.path = path
        self.regions: dict[str, int] = {}
        self.departments: dict[str, int] = {}
        self.enterprises: dict[str, int] = {}

    async def load(self, seed: SeedFile) -> SeedReport:
        return SeedReport(
            regions=await self._regions(seed),
            departments=await self._departments(seed),
            enterprises=await self._enterprises(seed),
            people=await self._people(seed),
            groups=await self._groups(seed),
        )

    async def _regions(self, seed: SeedFile) -> Tally:
        rows = await self._existing(Region.code, [r.code for r in seed.regions])
        counts = _Counts()
        for entry in seed.regions:  # parents first, so a parent's id is known
            values = {
                "name": entry.name,
                "level": RegionLevel(entry.level),
                "parent_id": self.regions[entry.parent] if entry.parent else None,
            }
            row = await self._put(rows, Region, "code", entry.code, values, counts)
            self.regions[entry.code] = row.id
        return counts.tally()

    async def _departments(self, seed: SeedFile) -> Tally:
        rows = await self._existing(Department.code, [d.code for d in seed.departments])
        counts = _Counts()
        for entry in seed.departments:
            values = {
                "name": entry.name,
                "region_id": self.regions[entry.region],
                "keywords": list(entry.keywords),
            }
            row = await self._put(rows, Department, "code", entry.code, values, counts)
            self.departments[entry.code] = row.id
        return counts.tally()

    async def _enterprises(self, seed: SeedFile) -> Tally:
        await self._refuse_taken_credit_codes(seed)
        rows = await self._existing(Enterprise.code, [e.code for e in seed.enterprises])
        counts = _Counts()
        for entry in seed.enterprises:
            values: dict[str, Any] = {
                "name": entry.name,
                "region_id": self.regions[entry.region],
                "credit_code": entry.credit_code,
            }
            if entry.industry is not None:
                values["industry"] = entry.industry
            row = await self._put(rows, Enterprise, "code", entry.code, values, counts)
            self.enterprises[entry.code] = row.id
        return counts.tally()

    async def _refuse_taken_credit_codes(self, seed: SeedFile) -> None:
        codes = [e.credit_code for e in seed.enterprises]
        holders = await self._existing(Enterprise.credit_code, codes)
        for index, entry in enumerate(seed.enterprises):
            holder = holders.get(entry.credit_code)
            if holder is not None and holder.code != entry.code:
                raise SeedError(
                    f"{self.path}: enterprises[{index}] ({entry.code}): credit code "
                    f"{entry.credit_code} belongs to enterprise {holder.code} in the database"
                )

    async def _people(self, seed: SeedFile) -> Tally:
        rows = await self._existing(Person.telegram_id, [p.telegram_id for p in seed.people])
        counts = _Counts()
        for entry in seed.people:
            values: dict[str, Any] = {
                "name": entry.name,
                "role": Role(entry.role),
                "enterprise_id": self.enterprises.get(entry.enterprise or ""),
                "department_id": self.departments.get(entry.department or ""),
                "region_id": self.regions.get(entry.region or ""),
                "is_head": entry.head,
            }
            # left as they are when the file is silent: people change these themselves
            if entry.language is not None:
                values["language"] = entry.language
            if entry.username is not None:
                values["username"] = entry.username
            await self._put(
                rows, Person, "telegram_id", entry.telegram_id, values, counts, referenced=False
            )
        return counts.tally()

    async def _groups(self, seed: SeedFile) -> Tally:
        rows = await self._existing(ChatGroup.chat_id, [g.chat_id for g in seed.groups])
        counts = _Counts()
        for entry in seed.groups:
            values: dict[str, Any] = {
                "region_id": self.regions[entry.region],
                "title": entry.title,
            }
            if entry.language is not None:
                values["language"] = entry.language
            await self._put(
                rows, ChatGroup, "chat_id", entry.chat_id, values, counts, referenced=False
            )
        return counts.tally()

    async def _existing(self, column: Any, keys: Iterable[Any]) -> dict[Any, Any]:
        """The rows already there whose `column` is one of `keys`, by that key."""
        wanted = list(keys)
        if not wanted:
            return {}
        found = await self.session.exec(select(column.class_).where(col(column).in_(wanted)))
        return {getattr(row, column.key): row for row in found.all()}

    async def _put(
        self,
        rows: dict[Any, Any],
        table: type[SQLModel],
        key: str,
        value: Any,
        values: dict[str, Any],
        counts: _Counts,
        *,
        referenced: bool = True,
    ) -> Any:
        row = rows.get(value)
        if row is None:
            row = table(**{key: value}, **values)
            self.session.add(row)
            if referenced:  # later rows point at its id
                await self.session.flush()
            counts.created += 1
            return row
        changed = {name: new for name, new in values.items() if getattr(row, name) != new}
        for name, new in changed.items():
            setattr(row, name, new)
        if changed:
            counts.updated += 1
        else:
            counts.unchanged += 1
        return row


@dataclass
class _Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def tally(self) -> Tally:
        return Tally(self.created, self.updated, self.unchanged)

"""Org charts and tickets built in code, independent of any seed file."""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.tables import ChatGroup, Department, Enterprise, Person, Region, RegionLevel, Role
from storage.uow import UnitOfWorkFactory

GROUP = -1001000000001
COUNTY_GROUP = -1001000000002


@dataclass
class Org:
    """Telegram ids of a small two-level org chart, by who they are."""

    ids: dict[str, int] = field(default_factory=dict)
    depts: dict[str, int] = field(default_factory=dict)
    regions: dict[str, int] = field(default_factory=dict)
    enterprises: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.ids[name]


async def build_org(uows: UnitOfWorkFactory) -> Org:
    """A city with one county; two city departments and one county department; people of all roles.

    Telegram ids are large on purpose (64-bit).
    """
    org = Org()
    async with uows() as uow:
        city = Region(code="metro", name="Metro City", level=RegionLevel.CITY)
        uow.org.add(city)
        await uow.flush()
        county = Region(
            code="east", name="East County", level=RegionLevel.COUNTY, parent_id=city.id
        )
        other = Region(
            code="west", name="West County", level=RegionLevel.COUNTY, parent_id=city.id
        )
        uow.org.add(county)
        uow.org.add(other)
        await uow.flush()
        org.regions = {"city": city.id, "east": county.id, "west": other.id}
        depts = {
            "tax": Department(
                code="tax", name="Tax Bureau", region_id=city.id, keywords=["税", "invoice"]
            ),
            "market": Department(
                code="market",
                name="Market Regulation",
                region_id=city.id,
                keywords=["执照", "license"],
            ),
            "east_env": Department(
                code="east_env",
                name="East Environment",
                region_id=county.id,
                keywords=["污染", "pollution"],
            ),
        }
        for dept in depts.values():
            uow.org.add(dept)
        ents = {
            "acme": Enterprise(
                code="acme",
                name="Acme <Rare Earth> & Co",
                region_id=county.id,
                credit_code="91150200MA0N000001",
                industry="rare earth",
            ),
            "beta": Enterprise(
                code="beta",
                name="Beta Dairy",
                region_id=city.id,
                credit_code="91150200MA0N000002",
                industry="dairy",
            ),
            "gamma": Enterprise(
                code="gamma",
                name="Gamma Steel",
                region_id=other.id,
                credit_code="91150200MA0N000003",
                industry="steel",
            ),
        }
        for ent in ents.values():
            uow.org.add(ent)
        await uow.flush()
        org.depts = {k: v.id for k, v in depts.items()}
        org.enterprises = {k: v.id for k, v in ents.items()}
        base = 5_000_000_000
        people = {
            "acme_boss": Person(
                name="Ann Acme",
                role=Role.ENTERPRISE,
                enterprise_id=ents["acme"].id,
                region_id=county.id,
                language="en",
            ),
            "acme_clerk": Person(
                name="艾克",
                role=Role.ENTERPRISE,
                enterprise_id=ents["acme"].id,
                region_id=county.id,
            ),
            "beta_boss": Person(
                name="Bob Beta",
                role=Role.ENTERPRISE,
                enterprise_id=ents["beta"].id,
                region_id=city.id,
                language="en",
            ),
            "gamma_boss": Person(
                name="Gus Gamma",
                role=Role.ENTERPRISE,
                enterprise_id=ents["gamma"].id,
                region_id=other.id,
            ),
            "tax_head": Person(
                name="Tia Tax",
                role=Role.OFFICIAL,
                department_id=depts["tax"].id,
                region_id=city.id,
                is_head=True,
                language="en",
            ),
            "tax_clerk": Person(
                name="税务小王",
                role=Role.OFFICIAL,
                department_id=depts["tax"].id,
                region_id=city.id,
            ),
            "market_head": Person(
                name="Max Market",
                role=Role.OFFICIAL,
                is_head=True,
                department_id=depts["market"].id,
                region_id=city.id,
            ),
            "env_head": Person(
                name="Eve Env",
                role=Role.OFFICIAL,
                is_head=True,
                department_id=depts["east_env"].id,
                region_id=county.id,
            ),
            "mayor": Person(name="Mia Mayor", role=Role.LEADER, region_id=city.id, language="en"),
            "east_leader": Person(name="Earl East", role=Role.LEADER, region_id=county.id),
            "west_leader": Person(name="Wes West", role=Role.LEADER, region_id=other.id),
            "city_coord": Person(name="Cora Coord", role=Role.COORDINATOR, region_id=city.id),
            "east_coord": Person(name="Ed Coord", role=Role.COORDINATOR, region_id=county.id),
            "admin": Person(name="Ada Admin", role=Role.ADMIN),
        }
        for offset, (key, person) in enumerate(people.items()):
            person.telegram_id = base + offset
            person.username = key
            uow.org.add(person)
        uow.org.add(ChatGroup(chat_id=GROUP, region_id=city.id, title="Metro 1+10+N"))
        uow.org.add(ChatGroup(chat_id=COUNTY_GROUP, region_id=county.id, title="East 1+10+N"))
        await uow.commit()
        org.ids = {k: v.telegram_id for k, v in people.items()}  # type: ignore[misc]
    return org


class Ticking:
    """A monotonic clock in seconds that only moves when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

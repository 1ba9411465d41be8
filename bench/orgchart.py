"""A Baotou-sized org chart written in one go: regions, bureaus, enterprises, people, groups."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from storage.credit_code import make_code
from storage.tables import ChatGroup, Department, Enterprise, Person, Region, Role

COUNTIES = (
    ("kundulun", "昆都仑区"),
    ("qingshan", "青山区"),
    ("donghe", "东河区"),
    ("jiuyuan", "九原区"),
    ("shiguai", "石拐区"),
    ("baiyunebo", "白云鄂博矿区"),
    ("tuyouqi", "土默特右旗"),
    ("guyang", "固阳县"),
    ("damao", "达尔罕茂明安联合旗"),
)
CITY_BUREAUS = (
    ("reform", "发展和改革委员会", ("立项", "能耗", "备案", "节能审查")),
    ("industry", "工业和信息化局", ("技改", "电价", "专精特新", "智能制造")),
    ("commerce", "商务局", ("外贸", "进出口", "招商", "展会")),
    ("market", "市场监督管理局", ("营业执照", "食品", "商标", "计量")),
    ("tax", "税务局", ("税", "发票", "退税", "留抵")),
    ("land", "自然资源局", ("用地", "土地", "不动产", "林地")),
    ("ecology", "生态环境局", ("环评", "排污", "危废", "碳排放")),
    ("hrss", "人力资源和社会保障局", ("社保", "招工", "工资", "职称")),
    ("housing", "住房和城乡建设局", ("施工许可", "消防验收", "竣工", "物业")),
    ("service", "政务服务与数据管理局", ("审批", "一网通办", "营商环境", "帮办代办")),
)
COUNTY_BUREAUS = ("market", "ecology", "hrss", "service")
INDUSTRIES = ("稀土新材料", "钢铁", "电解铝", "风电装备", "光伏材料", "乳业", "物流", "化工")
SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚"
GROUP_BASE = -1001500000000  # supergroup ids, one per region
PEOPLE_BASE = 7_000_000_000  # 64-bit Telegram ids


@dataclass
class Chart:
    """Ids by what they are, for the history generator and the cases."""

    city: int = 0
    regions: list[int] = field(default_factory=list)
    region_code: dict[int, str] = field(default_factory=dict)
    group_of: dict[int, int] = field(default_factory=dict)  # region id -> chat id
    departments: dict[int, list[int]] = field(default_factory=dict)  # region -> its bureaus
    keywords: dict[int, tuple[str, ...]] = field(default_factory=dict)  # department -> words
    enterprises: dict[int, list[int]] = field(default_factory=dict)  # region -> enterprises
    members: dict[int, list[int]] = field(default_factory=dict)  # enterprise -> person ids
    officials: dict[int, list[int]] = field(default_factory=dict)  # department -> person ids
    coordinators: dict[int, int] = field(default_factory=dict)  # region -> person id
    leaders: dict[int, int] = field(default_factory=dict)  # region -> person id
    telegram: dict[int, int] = field(default_factory=dict)  # person id -> telegram id

    def bureaus_for(self, region: int) -> list[int]:
        """The departments that take a region's tickets: its own, then the city's."""
        return self.departments.get(region, []) + self.departments[self.city]


def _name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN)


class _Ids:
    def __init__(self) -> None:
        self.next: dict[str, int] = {}

    def take(self, table: str) -> int:
        self.next[table] = self.next.get(table, 0) + 1
        return self.next[table]


def plan_chart(enterprises_per_region: int, seed: int = 7) -> tuple[Chart, dict[str, list]]:
    """The chart and its rows per table (explicit ids, so nothing needs reading back)."""
    rng, ids, chart = random.Random(seed), _Ids(), Chart()
    rows: dict[str, list[dict[str, Any]]] = {
        t: [] for t in ("region", "department", "enterprise", "person", "group")
    }
    chart.city = ids.take("region")
    rows["region"].append({"id": chart.city, "code": "baotou", "name": "包头市", "level": "city"})
    for code, name in COUNTIES:
        rid = ids.take("region")
        rows["region"].append(
            {"id": rid, "code": code, "name": name, "level": "county", "parent_id": chart.city}
        )
    for region in rows["region"]:
        rid = region["id"]
        chart.regions.append(rid)
        chart.region_code[rid] = region["code"]
        chart.group_of[rid] = GROUP_BASE - rid
        rows["group"].append(
            {
                "chat_id": chart.group_of[rid],
                "region_id": rid,
                "title": f"{region['name']}1+10+N企业服务群",
            }
        )
        _departments(rows, chart, ids, rid, region)
        _enterprises(rows, chart, ids, rng, rid, enterprises_per_region)
        _staff(rows, chart, ids, rng, rid)
    admin = ids.take("person")
    rows["person"].append({"id": admin, "name": "系统管理员", "role": Role.ADMIN})
    chart.telegram[admin] = PEOPLE_BASE + admin
    for person in rows["person"]:
        person["telegram_id"] = chart.telegram[person["id"]]
        person["username"] = f"u{person['id']}"
    return chart, rows


def _departments(rows: dict, chart: Chart, ids: _Ids, rid: int, region: dict) -> None:
    city = rid == chart.city
    for code, name, words in CITY_BUREAUS:
        if not city and code not in COUNTY_BUREAUS:
            continue
        did = ids.take("department")
        prefix = "包头市" if city else region["name"]
        rows["department"].append(
            {
                "id": did,
                "code": code if city else f"{region['code']}_{code}",
                "name": prefix + name,
                "region_id": rid,
                "keywords": list(words),
            }
        )
        chart.departments.setdefault(rid, []).append(did)
        chart.keywords[did] = words
        chart.officials[did] = []
        for k in range(3):
            pid = ids.take("person")
            rows["person"].append(
                {
                    "id": pid,
                    "name": f"{prefix}{name[:2]}干部{k + 1}",
                    "role": Role.OFFICIAL,
                    "department_id": did,
                    "region_id": rid,
                    "is_head": k == 0,
                }
            )
            chart.officials[did].append(pid)
            chart.telegram[pid] = PEOPLE_BASE + pid


def _enterprises(rows: dict, chart: Chart, ids: _Ids, rng: random.Random, rid: int, n: int):
    for _ in range(n):
        eid = ids.take("enterprise")
        industry = rng.choice(INDUSTRIES)
        first17 = f"91150200MA{eid:07d}"
        rows["enterprise"].append(
            {
                "id": eid,
                "code": f"e{eid:05d}",
                "name": f"包头{_name(rng)}{industry}有限公司",
                "region_id": rid,
                "credit_code": make_code(first17),
                "industry": industry,
            }
        )
        chart.enterprises.setdefault(rid, []).append(eid)
        chart.members[eid] = []
        for _ in range(1 + (eid % 2)):
            pid = ids.take("person")
            rows["person"].append(
                {
                    "id": pid,
                    "name": _name(rng),
                    "role": Role.ENTERPRISE,
                    "enterprise_id": eid,
                    "region_id": rid,
                }
            )
            chart.members[eid].append(pid)
            chart.telegram[pid] = PEOPLE_BASE + pid


def _staff(rows: dict, chart: Chart, ids: _Ids, rng: random.Random, rid: int) -> None:
    for role, into in ((Role.LEADER, chart.leaders), (Role.COORDINATOR, chart.coordinators)):
        pid = ids.take("person")
        rows["person"].append({"id": pid, "name": _name(rng), "role": role, "region_id": rid})
        into[rid] = pid
        chart.telegram[pid] = PEOPLE_BASE + pid


async def write_chart(conn: Any, rows: dict[str, list[dict[str, Any]]]) -> None:
    """Insert the chart with Core executemany (a few thousand rows; types handled by Core)."""
    tables = (
        ("region", Region),
        ("department", Department),
        ("enterprise", Enterprise),
        ("person", Person),
        ("group", ChatGroup),
    )
    for key, model in tables:
        table = model.__table__  # type: ignore[attr-defined]
        defaults = {
            c.name: c.default.arg
            for c in table.columns
            if c.default is not None and not callable(c.default.arg)
        }
        blank = {c.name: None for c in table.columns if c.name != "id"}
        full = [{**blank, **defaults, **r} for r in rows[key]]
        if key == "group":
            for r in full:
                r.pop("id", None)
        await conn.execute(sa.insert(table), full)

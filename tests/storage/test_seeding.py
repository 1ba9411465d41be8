"""Loading org chart seeds: Baotou's file, idempotence, and every way a file can be wrong."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from storage.credit_code import is_valid, make_code
from storage.seeding import SeedError, load_seed
from storage.tables import Role
from storage.uow import UnitOfWorkFactory

BAOTOU = Path(__file__).resolve().parents[2] / "seeds" / "baotou.yaml"
KINDS = {
    "regions": "region",
    "departments": "department",
    "enterprises": "enterprise",
    "people": "person",
    "groups": "chatgroup",
}
EMPTY = dict.fromkeys(KINDS.values(), 0)


def baotou() -> dict[str, Any]:
    return yaml.safe_load(BAOTOU.read_text(encoding="utf-8"))


def write(tmp_path: Path, document: Any, name: str = "seed.yaml") -> Path:
    path = tmp_path / name
    text = document if isinstance(document, str) else yaml.safe_dump(document, allow_unicode=True)
    path.write_text(text, encoding="utf-8")
    return path


async def counts(uows: UnitOfWorkFactory) -> dict[str, int]:
    async with uows() as uow:
        return await uow.org.counts()


async def test_baotou_loads_and_a_second_load_changes_nothing(uows):
    document = baotou()
    expected = {kind: len(document[kind]) for kind in KINDS}

    first = await load_seed(uows, BAOTOU)
    second = await load_seed(uows, BAOTOU)

    assert {kind: tally.created for kind, tally in first.as_dict().items()} == expected
    assert {kind: tally.total for kind, tally in first.as_dict().items()} == expected
    assert {kind: tally.unchanged for kind, tally in second.as_dict().items()} == expected
    assert all(tally.created == tally.updated == 0 for tally in second.as_dict().values())
    assert await counts(uows) == {KINDS[kind]: n for kind, n in expected.items()}


async def test_the_loaded_org_chart_is_wired_as_the_file_says(uows):
    await load_seed(uows, BAOTOU)
    async with uows() as uow:
        tax = await uow.org.department_by_code("tax")
        [head] = await uow.org.officials_of(tax.id, heads_only=True)
        county = await uow.org.region_by_code("kundulun")
        city = await uow.org.region_by_code("baotou")
        steel = await uow.org.enterprise_by_code("e006")
        member = await uow.org.person_by_telegram(352190847)
        foreigner = await uow.org.person_by_telegram(7598210346)
        group = await uow.org.group_by_chat(-1001234567890)
        by_name = await uow.org.person_by_username("WANG_GUODONG")

        assert head.name == "王国栋"
        assert head.region_id == city.id  # an official works where the department is
        assert county.parent_id == city.id
        assert steel.region_id == county.id
        assert steel.industry == "钢铁"
        assert member.enterprise_id == steel.id
        assert member.region_id == county.id  # an enterprise member where the enterprise is
        assert member.language == "zh"
        assert foreigner.language == "en"
        assert foreigner.telegram_id > 2**31
        assert group.region_id == city.id
        assert by_name == head


async def test_a_changed_entry_is_updated_in_place(uows, tmp_path):
    await load_seed(uows, BAOTOU)
    document = baotou()
    document["enterprises"][0]["name"] = "包头瑞源稀土新材料股份有限公司"
    document["people"][1]["region"] = "kundulun"

    report = await load_seed(uows, write(tmp_path, document))

    assert (report.enterprises.updated, report.people.updated) == (1, 1)
    assert report.enterprises.unchanged == len(document["enterprises"]) - 1
    async with uows() as uow:
        enterprise = await uow.org.enterprise_by_code("e001")
        leader = await uow.org.person_by_telegram(document["people"][1]["telegram_id"])
        county = await uow.org.region_by_code("kundulun")
        assert enterprise.name == "包头瑞源稀土新材料股份有限公司"
        assert leader.region_id == county.id


async def test_language_and_username_are_left_alone_when_the_file_is_silent(uows, tmp_path):
    await load_seed(uows, BAOTOU)
    async with uows() as uow:
        person = await uow.org.person_by_telegram(218734561)
        person.language = "en"  # as /lang en does
        person.username = "new_name"  # as Telegram tells the bot
        await uow.commit()
    document = baotou()
    mayor = document["people"][1]
    del mayor["username"]

    report = await load_seed(
        uows, write(tmp_path, {"regions": document["regions"], "people": [mayor]})
    )

    assert report.people.unchanged == 1
    async with uows() as uow:
        person = await uow.org.person_by_telegram(218734561)
        assert (person.language, person.username) == ("en", "new_name")


def test_the_baotou_file_covers_every_role_and_every_county():
    document = baotou()
    people = document["people"]
    roles = {person["role"] for person in people}
    counties = [r["code"] for r in document["regions"] if r["level"] == "county"]

    assert roles == {role.value for role in Role}
    assert len(counties) >= 4
    assert len(document["enterprises"]) >= 20
    for region in ["baotou", *counties]:
        for role in ("leader", "coordinator"):
            assert any(p["role"] == role and p.get("region") == region for p in people), (
                role,
                region,
            )
        assert any(group["region"] == region for group in document["groups"]), region
    for department in document["departments"]:
        heads = [p for p in people if p.get("department") == department["code"] and p.get("head")]
        assert len(heads) == 1, department["code"]
    assert all(is_valid(e["credit_code"]) for e in document["enterprises"])
    assert all(e["credit_code"].startswith("91150") for e in document["enterprises"])
    assert sum(p["telegram_id"] > 2**31 for p in people) >= 3
    assert sum(p.get("language") == "en" for p in people) >= 2


def test_no_routing_keyword_of_one_department_is_part_of_another_in_the_same_region():
    departments = baotou()["departments"]
    for one in departments:
        for other in departments:
            if one is other or one["region"] != other["region"]:
                continue
            for word in one["keywords"]:
                clashes = [k for k in other["keywords"] if word in k]
                assert not clashes, f"{one['code']} {word} is in {other['code']} {clashes}"


# --- broken files ----------------------------------------------------------------------------


def small() -> dict[str, Any]:
    """A valid seed with one of everything, for breaking in one place at a time."""
    return {
        "regions": [
            {"code": "city", "name": "包头市", "level": "city"},
            {"code": "east", "name": "东河区", "level": "county", "parent": "city"},
        ],
        "departments": [
            {"code": "tax", "name": "税务局", "region": "city", "keywords": ["税", "发票"]},
            {"code": "east_env", "name": "东河区生态环境分局", "region": "east"},
        ],
        "enterprises": [
            {"code": "e001", "name": "包头甲稀土有限公司", "region": "city",
             "credit_code": make_code("91150200MA0N00001")},
            {"code": "e002", "name": "包头乙乳业有限公司", "region": "east",
             "credit_code": make_code("91150202MA0N00002")},
        ],
        "people": [
            {"telegram_id": 1001, "name": "王局长", "role": "official", "department": "tax",
             "head": True, "username": "wang_tax"},
            {"telegram_id": 5_000_000_001, "name": "张经理", "role": "enterprise",
             "enterprise": "e001", "language": "en"},
            {"telegram_id": 1003, "name": "刘市长", "role": "leader", "region": "city"},
            {"telegram_id": 1004, "name": "高协调", "role": "coordinator", "region": "east"},
            {"telegram_id": 1005, "name": "赵运维", "role": "admin"},
        ],
        "groups": [{"chat_id": -1001234567890, "region": "city", "title": "包头市服务群"}],
    }  # fmt: skip


def _set(section: str, index: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        for key, value in changes.items():
            if value is _DROP:
                del document[section][index][key]
            else:
                document[section][index][key] = value

    return change


def _append(section: str, index: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        document[section].append(copy.deepcopy(document[section][index]) | changes)

    return change


def _above_east_nothing(document: dict[str, Any]) -> None:
    """A town under east, listed first, and east under a region nobody defined."""
    document["regions"][1]["parent"] = "inner_mongolia"
    document["regions"].insert(
        0, {"code": "town", "name": "镇", "level": "county", "parent": "east"}
    )


_DROP = object()
BAD_CHECK = make_code("91150200MA0N00001")[:-1] + "0"

BROKEN: list[tuple[str, Callable[[dict[str, Any]], None] | str, str]] = [
    ("yaml-syntax", "regions:\n  - {code: city, name: 包头市\n", "line 3, column 1:"),
    ("yaml-tabs", "regions:\n\t- {code: city}\n", "line 2, column 1:"),
    ("duplicate-yaml-key", "regions:\n  - {code: a, code: b}\n", "key 'code' given twice"),
    ("empty-file", "", "expected a mapping with the sections"),
    ("not-a-mapping", "- regions\n", "expected a mapping with the sections"),
    ("unknown-section", "regions: []\nofficials: []\n", "unknown section 'officials'"),
    ("section-not-a-list", "regions: {code: city}\n", "regions: expected a list of entries"),
    ("entry-not-a-mapping", "regions: [city]\n", "regions[0]: expected a mapping of fields"),
    ("missing-name", _set("enterprises", 0, name=_DROP),
     "enterprises[0] (e001): missing field name"),
    ("missing-telegram-id", _set("people", 2, telegram_id=_DROP),
     "people[2]: missing field telegram_id"),
    ("unknown-field", _set("people", 0, heed=True), "people[0] (1001): unknown field heed"),
    ("blank-name", _set("regions", 0, name="  "), "regions[0] (city): name: string should have"),
    ("unknown-region", _set("departments", 0, region="west"),
     "departments[0] (tax): unknown region west"),
    ("unknown-enterprise-region", _set("enterprises", 1, region="west"),
     "enterprises[1] (e002): unknown region west"),
    ("unknown-parent", _set("regions", 1, parent="inner_mongolia"),
     "regions[1] (east): unknown parent region inner_mongolia"),
    ("unknown-grandparent", _above_east_nothing,
     "regions[2] (east): unknown parent region inner_mongolia"),
    ("unknown-department", _set("people", 0, department="police"),
     "people[0] (1001): unknown department police"),
    ("unknown-enterprise", _set("people", 1, enterprise="e999"),
     "people[1] (5000000001): unknown enterprise e999"),
    ("unknown-person-region", _set("people", 2, region="west"),
     "people[2] (1003): unknown region west"),
    ("unknown-group-region", _set("groups", 0, region="west"),
     "groups[0] (-1001234567890): unknown region west"),
    ("duplicate-region", _append("regions", 1),
     "regions[2] (east): code east is already used by regions[1]"),
    ("duplicate-department", _append("departments", 0, name="税务二局"),
     "departments[2] (tax): code tax is already used by departments[0]"),
    ("duplicate-enterprise", _append("enterprises", 0, credit_code=make_code("9115020000000001X")),
     "enterprises[2] (e001): code e001 is already used by enterprises[0]"),
    ("duplicate-credit-code", _set("enterprises", 1, credit_code=make_code("91150200MA0N00001")),
     f"enterprises[1] (e002): credit code {make_code('91150200MA0N00001')} is already used by "
     "enterprises[0]"),
    ("duplicate-telegram-id", _set("people", 3, telegram_id=1001),
     "people[3] (1001): telegram_id 1001 is already used by people[0]"),
    ("duplicate-username", _set("people", 2, username="@Wang_Tax"),
     "people[2] (1003): username wang_tax is already used by people[0]"),
    ("duplicate-chat-id", _append("groups", 0, region="east"),
     "groups[1] (-1001234567890): chat_id -1001234567890 is already used by groups[0]"),
    ("bad-check-character", _set("enterprises", 0, credit_code=BAD_CHECK),
     f"enterprises[0] (e001): credit code {BAD_CHECK} fails its check character"),
    ("credit-code-letter-O", _set("enterprises", 0, credit_code="91150200MA0N0000O1"),
     "enterprises[0] (e001): credit code 91150200MA0N0000O1 has characters outside its "
     "alphabet: O"),
    ("credit-code-short", _set("enterprises", 0, credit_code="91150200MA0N0001"),
     "enterprises[0] (e001): credit code 91150200MA0N0001 has 16 characters, not 18"),
    ("credit-code-number", _set("enterprises", 0, credit_code=911502025246514619),
     "enterprises[0] (e001): credit_code: 911502025246514619 is a number; put text in quotes"),
    ("wrong-role", _set("people", 2, role="mayor"), "people[2] (1003): unknown role 'mayor'"),
    ("enterprise-without-enterprise", _set("people", 1, enterprise=_DROP),
     "people[1] (5000000001): role enterprise needs enterprise"),
    ("official-without-department", _set("people", 0, department=_DROP, head=False),
     "people[0] (1001): role official needs department"),
    ("leader-without-region", _set("people", 2, region=_DROP),
     "people[2] (1003): role leader needs region"),
    ("coordinator-without-region", _set("people", 3, region=_DROP),
     "people[3] (1004): role coordinator needs region"),
    ("official-with-enterprise", _set("people", 0, enterprise="e001"),
     "people[0] (1001): role official takes no enterprise"),
    ("head-who-is-no-official", _set("people", 2, head=True),
     "people[2] (1003): only an official can be a department head"),
    ("region-other-than-department", _set("people", 0, region="east"),
     "people[0] (1001): region east is not where they work (city)"),
    ("unknown-language", _set("people", 1, language="mn"),
     "people[1] (5000000001): unknown language 'mn'"),
    ("bad-level", _set("regions", 1, level="province"), "regions[1] (east): unknown level"),
    ("county-without-parent", _set("regions", 1, parent=_DROP),
     "regions[1] (east): a county needs a parent region"),
    ("self-parent", _set("regions", 1, parent="east"),
     "regions[1] (east): the parent regions form a cycle: east → east"),
    ("cycle", _set("regions", 0, parent="east"),
     "regions[0] (city): the parent regions form a cycle: city → east → city"),
    ("telegram-id-negative", _set("people", 2, telegram_id=-5),
     "people[2] (-5): telegram_id: input should be greater than 0"),
    ("telegram-id-text", _set("people", 2, telegram_id="lao_wang"),
     "people[2] (lao_wang): telegram_id: input should be a valid integer"),
    ("telegram-id-beyond-64-bits", _set("people", 2, telegram_id=2**63),
     "telegram_id: input should be less than"),
    ("chat-id-positive", _set("groups", 0, chat_id=1234), "groups[0] (1234): chat_id: input"),
    ("bad-username", _set("people", 2, username="a b"),
     "people[2] (1003): username 'a b' is not a Telegram username"),
    ("bad-code", _set("departments", 0, code="税务"),
     "departments[0] (税务): code: string should"),
    ("nul-in-name", _set("regions", 0, name="包头\x00市"),
     "regions[0] (city): name contains a NUL character"),
]  # fmt: skip


def _broken(change: Callable[[dict[str, Any]], None] | str) -> Any:
    if isinstance(change, str):
        return change
    document = small()
    change(document)
    return document


async def test_the_small_seed_is_valid(uows, tmp_path):
    report = await load_seed(uows, write(tmp_path, small()))
    assert report.people.created == 5


@pytest.mark.parametrize(
    ("change", "problem"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
async def test_a_broken_file_is_refused_in_one_line_and_loads_nothing(
    uows, tmp_path, change, problem
):
    path = write(tmp_path, _broken(change))

    with pytest.raises(SeedError) as refused:
        await load_seed(uows, path)

    message = str(refused.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message
    assert await counts(uows) == EMPTY


async def test_a_refused_file_leaves_a_loaded_org_chart_as_it_was(uows, tmp_path):
    await load_seed(uows, BAOTOU)
    before = await counts(uows)
    document = baotou()
    document["regions"][1]["name"] = "改了名的区"  # a change that must not land
    document["people"].append({"telegram_id": 42, "name": "新人", "role": "enterprise"})

    with pytest.raises(SeedError, match=r"people\[\d+\] \(42\): role enterprise needs"):
        await load_seed(uows, write(tmp_path, document))

    assert await counts(uows) == before
    async with uows() as uow:
        assert (await uow.org.region_by_code("kundulun")).name == "昆都仑区"


async def test_a_credit_code_held_by_another_enterprise_in_the_database_is_refused(uows, tmp_path):
    await load_seed(uows, BAOTOU)
    before = await counts(uows)
    document = small()
    document["regions"][0]["name"] = "改名市"
    taken = baotou()["enterprises"][5]["credit_code"]
    document["enterprises"][1]["credit_code"] = taken

    with pytest.raises(SeedError) as refused:
        await load_seed(uows, write(tmp_path, document))

    assert str(refused.value) == (
        f"{tmp_path / 'seed.yaml'}: enterprises[1] (e002): credit code {taken} belongs to "
        "enterprise e006 in the database"
    )
    assert await counts(uows) == before
    async with uows() as uow:
        assert await uow.org.region_by_code("city") is None


async def test_a_missing_or_undecodable_file_is_a_seed_error(uows, tmp_path):
    with pytest.raises(SeedError, match="cannot read the file"):
        await load_seed(uows, tmp_path / "nowhere.yaml")
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("regions: [{code: a, name: caf\xe9, level: city}]".encode("latin-1"))
    with pytest.raises(SeedError, match="not UTF-8"):
        await load_seed(uows, latin)


# --- random damage: a file is loaded or refused with a SeedError, nothing else ----------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=80),
    st.sampled_from(["baotou", "kundulun", "tax", "e001", "official", "county", "en", "@x"]),
)
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3), st.dictionaries(st.text(), _SCALARS))


def _mangle(data: st.DataObject, document: dict[str, Any]) -> None:
    section = data.draw(st.sampled_from(list(KINDS)))
    entries = document.get(section)
    action = data.draw(st.sampled_from(["set", "drop", "copy", "dup", "remove", "section"]))
    if action == "section" or not isinstance(entries, list) or not entries:
        document[section] = data.draw(_VALUES)
        return
    index = data.draw(st.integers(0, len(entries) - 1))
    entry = entries[index]
    if action == "remove":
        del entries[index]
    elif action == "dup":
        entries.append(copy.deepcopy(entry))
    elif not isinstance(entry, dict):
        entries[index] = data.draw(_VALUES)
    else:
        field = data.draw(st.sampled_from([*entry, "extra"]))
        if action == "drop":
            entry.pop(field, None)
        elif action == "copy":  # another entry's value: duplicates and crossed references
            other = data.draw(st.sampled_from(entries))
            entry[field] = copy.deepcopy(other.get(field) if isinstance(other, dict) else other)
        else:
            entry[field] = data.draw(_VALUES)


def _damage_text(data: st.DataObject, text: str) -> str:
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 40)))
    noise = data.draw(
        st.text(alphabet="{}[]:,-'\"\n\t #&*!|>%@`?0123456789abc包头税", max_size=12)
    )
    return text[:start] + noise + text[end:]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_a_damaged_file_is_loaded_or_refused_with_a_seed_error(uows, tmp_path, data):
    document = baotou()
    for _ in range(data.draw(st.integers(1, 3))):
        _mangle(data, document)
    text = yaml.safe_dump(document, allow_unicode=True)
    if data.draw(st.booleans()):
        text = _damage_text(data, text)
    path = write(tmp_path, text, "damaged.yaml")

    try:
        await load_seed(uows, path)
    except SeedError as error:
        message = str(error)
        event(message.split(": ", 1)[-1][:30])
    else:
        event("loaded")
        return
    assert message.startswith(f"{path}: ")
    assert "\n" not in message

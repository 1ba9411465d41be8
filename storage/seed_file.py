"""The org chart seed file: parsed and checked in full before anything touches the database."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from storage.seed_entries import (
    DepartmentEntry,
    EnterpriseEntry,
    GroupEntry,
    PersonEntry,
    RegionEntry,
)

SECTIONS = ("regions", "departments", "enterprises", "people", "groups")


class SeedError(ValueError):
    """A seed file that cannot be loaded; the message is one line naming the entry and why."""


class _Unfit(Exception):
    """A problem with one entry, before the file name is put in front of it."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)


@dataclass(frozen=True)
class SeedFile:
    """A checked seed: every reference resolves, regions come parents first."""

    regions: list[RegionEntry]
    departments: list[DepartmentEntry]
    enterprises: list[EnterpriseEntry]
    people: list[PersonEntry]  # each with its region filled in where it has one
    groups: list[GroupEntry]


def read_seed(path: Path) -> SeedFile:
    """Parse and check a seed file. Raises SeedError, one line, on the first problem."""
    try:
        return check_document(_parse(path))
    except _Unfit as unfit:
        raise SeedError(f"{path}: {unfit}") from None


def check_document(document: Any) -> SeedFile:
    if not isinstance(document, dict):
        raise _Unfit("", f"expected a mapping with the sections {', '.join(SECTIONS)}")
    unknown = [str(key) for key in document if key not in SECTIONS]
    if unknown:
        raise _Unfit("", f"unknown section {unknown[0]!r}; the sections are {', '.join(SECTIONS)}")
    regions = _entries(document, "regions", RegionEntry, "code")
    departments = _entries(document, "departments", DepartmentEntry, "code")
    enterprises = _entries(document, "enterprises", EnterpriseEntry, "code")
    people = _entries(document, "people", PersonEntry, "telegram_id")
    groups = _entries(document, "groups", GroupEntry, "chat_id")
    return _cross_check(regions, departments, enterprises, people, groups)


class _SafeUniqueLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader, refusing a key given twice in one mapping instead of keeping the last."""


def _mapping(loader: _SafeUniqueLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
    loader.flatten_mapping(node)  # type: ignore[no-untyped-call]
    return dict(loader.construct_pairs(node, deep=True))  # type: ignore[no-untyped-call]


_SafeUniqueLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _parse(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _Unfit("", f"not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise _Unfit("", f"cannot read the file: {error.strerror or error}") from None
    try:
        return yaml.load(text, Loader=_SafeUniqueLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        place = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = error.problem or error.context or "not YAML"
        raise _Unfit("", f"{place}{_one_line(what)}") from None
    except (yaml.YAMLError, RecursionError) as error:
        raise _Unfit("", _one_line(str(error) or "not YAML")) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _label(section: str, index: int, raw: Any, key: str) -> str:
    natural = raw.get(key) if isinstance(raw, dict) else None
    if isinstance(natural, str | int) and not isinstance(natural, bool):
        return f"{section}[{index}] ({_one_line(str(natural))[:64]})"
    return f"{section}[{index}]"


def _entries(document: dict[str, Any], section: str, model: type[Any], key: str) -> list[Any]:
    raw_entries = document.get(section)
    if raw_entries is None:
        return []
    if not isinstance(raw_entries, list):
        raise _Unfit(section, "expected a list of entries")
    checked = []
    for index, raw in enumerate(raw_entries):
        try:
            checked.append(model.model_validate(raw))
        except ValidationError as error:
            raise _Unfit(_label(section, index, raw, key), _describe(error)) from None
    return checked


def _describe(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"])
    kind, message = first["type"], _one_line(first["msg"])
    if kind == "missing":
        return f"missing field {field}"
    if kind == "extra_forbidden":
        return f"unknown field {field}"
    if kind == "model_type":
        return "expected a mapping of fields"
    if kind == "literal_error":
        return f"unknown {field} {_show(first['input'])}: {message[0].lower()}{message[1:]}"
    if kind == "seed":
        return f"{field} {message}" if field else message
    if kind == "string_type" and isinstance(first["input"], int | float):
        return f"{field}: {_show(first['input'])} is a number; put text in quotes"
    return f"{field}: {message[0].lower()}{message[1:]}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _cross_check(
    regions: list[RegionEntry],
    departments: list[DepartmentEntry],
    enterprises: list[EnterpriseEntry],
    people: list[PersonEntry],
    groups: list[GroupEntry],
) -> SeedFile:
    region_of = _unique("regions", regions, lambda r: r.code, "code")
    _check_parents(regions, region_of)
    dept_of = _unique("departments", departments, lambda d: d.code, "code")
    firm_of = _unique("enterprises", enterprises, lambda e: e.code, "code")
    _unique("enterprises", enterprises, lambda e: e.credit_code, "credit code")
    _unique("people", people, lambda p: p.telegram_id, "telegram_id")
    _unique("people", people, lambda p: p.username and p.username.lower(), "username")
    _unique("groups", groups, lambda g: g.chat_id, "chat_id")
    for section, entries in (("departments", departments), ("enterprises", enterprises)):
        for index, entry in enumerate(entries):
            _known(f"{section}[{index}] ({entry.code})", "region", entry.region, region_of)
    for index, group in enumerate(groups):
        _known(f"groups[{index}] ({group.chat_id})", "region", group.region, region_of)
    placed = [
        _place(f"people[{i}] ({p.telegram_id})", p, region_of, dept_of, firm_of)
        for i, p in enumerate(people)
    ]
    return SeedFile(_parents_first(regions), departments, enterprises, placed, groups)


def _unique(section: str, entries: Sequence[Any], key: Callable[[Any], Any], what: str) -> dict:
    """Entries by `key`, refusing a key used twice; entries whose key is None are left out."""
    first: dict[Any, int] = {}
    for index, entry in enumerate(entries):
        value = key(entry)
        if value is None:
            continue
        if value in first:
            raise _Unfit(
                f"{section}[{index}] ({_natural(entry)})",
                f"{what} {value} is already used by {section}[{first[value]}]",
            )
        first[value] = index
    return {key(entry): entry for entry in entries}


def _natural(entry: Any) -> Any:
    for key in ("code", "telegram_id", "chat_id"):
        if hasattr(entry, key):
            return getattr(entry, key)
    return "?"


def _known(where: str, field: str, code: str, known: dict[str, Any]) -> Any:
    if code not in known:
        raise _Unfit(where, f"unknown {field} {code}")
    return known[code]


def _check_parents(regions: list[RegionEntry], region_of: dict[str, RegionEntry]) -> None:
    for index, region in enumerate(regions):
        if region.parent is not None:
            _known(f"regions[{index}] ({region.code})", "parent region", region.parent, region_of)
    for index, region in enumerate(regions):
        where = f"regions[{index}] ({region.code})"
        chain, current = [region.code], region.parent
        while current is not None:
            if current in chain:
                loop = " → ".join([*chain[chain.index(current) :], current])
                raise _Unfit(where, f"the parent regions form a cycle: {loop}")
            chain.append(current)
            current = region_of[current].parent


def _parents_first(regions: Iterable[RegionEntry]) -> list[RegionEntry]:
    ordered: list[RegionEntry] = []
    pending = list(regions)
    done: set[str] = set()
    while pending:
        ready = [r for r in pending if r.parent is None or r.parent in done]
        ordered.extend(ready)
        done.update(r.code for r in ready)
        pending = [r for r in pending if r.code not in done]
    return ordered


def _place(
    where: str,
    person: PersonEntry,
    region_of: dict[str, RegionEntry],
    dept_of: dict[str, DepartmentEntry],
    firm_of: dict[str, EnterpriseEntry],
) -> PersonEntry:
    """The person with the region they work in: their department's or enterprise's."""
    implied = None
    if person.department is not None:
        implied = _known(where, "department", person.department, dept_of).region
    if person.enterprise is not None:
        implied = _known(where, "enterprise", person.enterprise, firm_of).region
    if person.region is not None:
        _known(where, "region", person.region, region_of)
        if implied is not None and person.region != implied:
            raise _Unfit(where, f"region {person.region} is not where they work ({implied})")
    return person.model_copy(update={"region": person.region or implied})

"""The working calendar: which instants are working time, and how working time adds up."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

# libyaml's parser where PyYAML was built with it: the same documents, ten times faster
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

SEEDS_DIR = Path(__file__).resolve().parent.parent / "seeds" / "calendar"
ALWAYS_OPEN = "24x7"
DEFAULT_TIMEZONE = "Asia/Shanghai"
_ZERO = timedelta(0)
_DAY = timedelta(days=1)
_FILE_KEYS = {"timezone", "working_hours", "years"}
_HOLIDAY_KEYS = {"name", "days_off", "workdays"}

DayKind = Literal["off", "workday"]
Period = tuple[datetime, datetime]


class DayOff(NamedTuple):
    """One line of a notice: a non-weekend day off, or a weekend day made a working day."""

    day: date
    kind: DayKind
    name: str


def to_local(t: datetime, tz: tzinfo) -> datetime:
    """The instant t on the clocks of tz; a naive datetime names no instant and is refused."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"naive datetime {t.isoformat()}: times must be timezone-aware")
    return t.astimezone(tz)


def _check_duration(duration: timedelta) -> None:
    if duration < _ZERO:
        raise ValueError(f"negative duration {duration}")


class WorkCalendar(ABC):
    """Working days and hours. Times go in aware (any zone) and come out aware UTC."""

    @abstractmethod
    def covers(self, year: int) -> bool:
        """Whether the official holidays of year are known; if not, the plain week applies."""

    @abstractmethod
    def is_working_day(self, d: date) -> bool:
        """Whether the local date d is a working day."""

    @abstractmethod
    def is_working_time(self, t: datetime) -> bool:
        """Whether the instant t falls inside working hours on a working day."""

    @abstractmethod
    def add_working(self, start: datetime, duration: timedelta) -> datetime:
        """The first instant at which duration of working time has passed since start."""

    @abstractmethod
    def working_between(self, a: datetime, b: datetime) -> timedelta:
        """The working time from a to b; zero if b is not after a."""

    @abstractmethod
    def next_working_start(self, t: datetime) -> datetime:
        """t itself if it is working time, else the start of the next working period."""

    @abstractmethod
    def days_off(self, year: int) -> list[DayOff]:
        """The year's non-weekend days off and weekend make-up working days, by date."""

    @abstractmethod
    def working_day_length(self) -> timedelta:
        """The working time in one working day: what "1 working day" adds up to."""


class AlwaysOpen(WorkCalendar):
    """Every instant is working time (`24x7`)."""

    def covers(self, year: int) -> bool:
        return True

    def is_working_day(self, d: date) -> bool:
        return True

    def is_working_time(self, t: datetime) -> bool:
        to_local(t, UTC)
        return True

    def add_working(self, start: datetime, duration: timedelta) -> datetime:
        _check_duration(duration)
        return to_local(start, UTC) + duration

    def working_between(self, a: datetime, b: datetime) -> timedelta:
        return max(to_local(b, UTC) - to_local(a, UTC), _ZERO)

    def next_working_start(self, t: datetime) -> datetime:
        return to_local(t, UTC)

    def days_off(self, year: int) -> list[DayOff]:
        return []

    def working_day_length(self) -> timedelta:
        return timedelta(days=1)


class OfficeCalendar(WorkCalendar):
    """Office hours on working days: the plain week, amended by the holiday notices."""

    def __init__(
        self,
        *,
        zone: tzinfo,
        hours: Sequence[tuple[time, time]],
        years: Iterable[int],
        off: Mapping[date, str],
        workday: Mapping[date, str],
    ) -> None:
        _check_hours(hours)
        self.zone = zone
        self.hours = tuple(hours)
        self._day_length = sum(
            (
                datetime.combine(date.min, end) - datetime.combine(date.min, start)
                for start, end in self.hours
            ),
            _ZERO,
        )
        self._years = frozenset(years)
        self._off = dict(off)
        self._workday = dict(workday)
        # every duration walks the days it spans: each day's periods are worked out once
        self._day_periods: dict[date, tuple[Period, ...]] = {}

    @classmethod
    def load(cls, path: str | Path, tz: str | tzinfo | None = None) -> OfficeCalendar:
        """Read a calendar file; tz, when given, overrides the file's timezone.

        Raises ValueError, with one line naming the file, if it is missing or malformed.
        """
        try:
            return _parse(_read_yaml(Path(path)), tz)
        except ValueError as exc:
            raise ValueError(f"calendar {path}: {exc}") from exc

    def covers(self, year: int) -> bool:
        return year in self._years

    def is_working_day(self, d: date) -> bool:
        if d in self._workday:
            return True
        return d not in self._off and d.weekday() < 5

    def is_working_time(self, t: datetime) -> bool:
        day = to_local(t, self.zone).date()
        return any(start <= t < end for start, end in self._periods(day))

    def add_working(self, start: datetime, duration: timedelta) -> datetime:
        _check_duration(duration)
        if duration == _ZERO:
            return to_local(start, UTC)
        remaining = duration
        for begin, end in self._periods_from(start):
            if end - begin >= remaining:
                return begin + remaining
            remaining -= end - begin
        raise AssertionError("unreachable: working periods never run out")

    def working_between(self, a: datetime, b: datetime) -> timedelta:
        total = _ZERO
        b = to_local(b, UTC)
        for begin, end in self._periods_from(a):
            if begin >= b:
                break
            total += min(end, b) - begin
        return total

    def next_working_start(self, t: datetime) -> datetime:
        return next(self._periods_from(t))[0]

    def days_off(self, year: int) -> list[DayOff]:
        off = [DayOff(d, "off", n) for d, n in self._off.items() if d.weekday() < 5]
        work = [DayOff(d, "workday", n) for d, n in self._workday.items()]
        return sorted(entry for entry in off + work if entry.day.year == year)

    def working_day_length(self) -> timedelta:
        return self._day_length

    def _periods(self, day: date) -> tuple[Period, ...]:
        """The working periods of a local date, as UTC instants; none on a day off."""
        found = self._day_periods.get(day)
        if found is None:
            found = ()
            if self.is_working_day(day):
                found = tuple((self._at(day, a), self._at(day, b)) for a, b in self.hours)
            self._day_periods[day] = found
        return found

    def _periods_from(self, t: datetime) -> Iterator[Period]:
        """The working periods still to come at t, the current one cut to begin at t; endless."""
        t = to_local(t, UTC)
        day = to_local(t, self.zone).date()
        while True:
            for begin, end in self._periods(day):
                if end > t:
                    yield max(begin, t), end
            day += _DAY

    def _at(self, day: date, clock: time) -> datetime:
        return datetime.combine(day, clock, tzinfo=self.zone).astimezone(UTC)


def load_calendar(spec: str, tz: str) -> WorkCalendar:
    """`24x7`, a calendar file's path, or a name under seeds/calendar (`cn`) -> its calendar.

    Raises ValueError with one clear line for an unknown name or a bad file.
    """
    spec = spec.strip()
    if not spec:
        raise ValueError(f"empty calendar: name a file, one of seeds/calendar, or {ALWAYS_OPEN}")
    if spec.lower() == ALWAYS_OPEN:
        return AlwaysOpen()
    path = Path(spec)
    if path.suffix == "" and len(path.parts) == 1:
        path = SEEDS_DIR / f"{spec}.yaml"
    return OfficeCalendar.load(path, tz)


def format_calendar(cal: WorkCalendar, year: int) -> str:
    """`YYYY-MM-DD off NAME` / `YYYY-MM-DD workday NAME`, one line each; empty if none."""
    return "\n".join(f"{e.day.isoformat()} {e.kind} {e.name}" for e in cal.days_off(year))


def _check_hours(hours: Sequence[tuple[time, time]]) -> None:
    if not hours:
        raise ValueError("working_hours: at least one period is needed")
    for start, end in hours:
        if start >= end:
            raise ValueError(f"working_hours: {start:%H:%M}-{end:%H:%M} ends before it starts")
    for (_, end), (start, _) in pairwise(hours):
        if start < end:
            raise ValueError("working_hours: periods must be in order and must not overlap")


def _read_yaml(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError("not UTF-8 text") from exc
    try:
        data = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ValueError("not valid YAML" + (f" (line {mark.line + 1})" if mark else "")) from exc
    except ValueError as exc:  # PyYAML builds dates itself: 2025-13-01 fails here
        raise ValueError(f"not a date: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("expected a mapping with timezone, working_hours and years")
    if unknown := set(data) - _FILE_KEYS:
        raise ValueError(f"unknown keys {sorted(map(str, unknown))}")
    return data


def _parse(data: Mapping[str, Any], tz: str | tzinfo | None) -> OfficeCalendar:
    zone = _zone(tz if tz is not None else data.get("timezone", DEFAULT_TIMEZONE))
    hours = [_period(pair) for pair in _items(data.get("working_hours"), "working_hours")]
    years = data.get("years") or {}
    if not isinstance(years, dict):
        raise ValueError("years: expected a mapping of year to holidays")
    off: dict[date, str] = {}
    workday: dict[date, str] = {}
    for year, holidays in years.items():
        if not isinstance(year, int):
            raise ValueError(f"years: {year!r} is not a year")
        for item in _items(holidays, f"years {year}"):
            _add_holiday(item, year, off, workday)
    return OfficeCalendar(zone=zone, hours=hours, years=years, off=off, workday=workday)


def _add_holiday(item: Any, year: int, off: dict[date, str], workday: dict[date, str]) -> None:
    if not isinstance(item, dict) or not str(item.get("name") or "").strip():
        raise ValueError(f"years {year}: each holiday needs a name and days_off: [FIRST, LAST]")
    name = str(item["name"]).strip()
    if unknown := set(item) - _HOLIDAY_KEYS:
        raise ValueError(f"{year} {name}: unknown keys {sorted(map(str, unknown))}")
    span = [_date(v, year, name) for v in _items(item.get("days_off"), f"{year} {name} days_off")]
    if len(span) != 2 or span[0] > span[1]:
        raise ValueError(f"{year} {name}: days_off must be [FIRST, LAST], in that order")
    for offset in range((span[1] - span[0]).days + 1):
        _claim(span[0] + offset * _DAY, name, off, off, workday)
    made_up = _items(item["workdays"], f"{year} {name} workdays") if "workdays" in item else []
    for value in made_up:
        day = _date(value, year, name)
        if day.weekday() < 5:
            raise ValueError(f"{year} {name}: make-up working day {day} is not a weekend day")
        _claim(day, name, workday, off, workday)


def _claim(day: date, name: str, into: dict[date, str], *taken: dict[date, str]) -> None:
    for already in taken:
        if day in already:
            raise ValueError(f"{day} is listed twice ({already[day]}, {name})")
    into[day] = name


def _items(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list")
    return value


def _period(pair: Any) -> tuple[time, time]:
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair)):
        raise ValueError(f'working_hours: {pair!r} is not a pair like ["08:30", "12:00"]')
    try:
        return time.fromisoformat(pair[0]), time.fromisoformat(pair[1])
    except ValueError as exc:
        raise ValueError(f"working_hours: {pair!r} is not HH:MM") from exc


def _date(value: Any, year: int, name: str) -> date:
    try:
        if isinstance(value, datetime):
            raise ValueError(value)
        day = value if isinstance(value, date) else date.fromisoformat(str(value))
    except ValueError as exc:
        raise ValueError(f"{year} {name}: {value!r} is not a date YYYY-MM-DD") from exc
    if abs(day.year - year) > 1:
        raise ValueError(f"{year} {name}: {value} does not belong to {year}")
    return day


def _zone(name: str | tzinfo) -> tzinfo:
    if isinstance(name, tzinfo):
        return name
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r}") from exc

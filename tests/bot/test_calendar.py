"""The working calendar against the State Council notices, and working-time arithmetic."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.calendar import (
    SEEDS_DIR,
    AlwaysOpen,
    DayOff,
    OfficeCalendar,
    WorkCalendar,
    format_calendar,
    load_calendar,
)

BEIJING = ZoneInfo("Asia/Shanghai")

# Transcribed from the notices themselves, independently of seeds/calendar/cn.yaml:
# (name, first day off, last day off, "共N天", weekend days worked instead).
NOTICES: dict[int, list[tuple[str, str, str, int, list[str]]]] = {
    2025: [  # 国办发明电〔2024〕12号
        ("元旦", "2025-01-01", "2025-01-01", 1, []),
        ("春节", "2025-01-28", "2025-02-04", 8, ["2025-01-26", "2025-02-08"]),
        ("清明节", "2025-04-04", "2025-04-06", 3, []),
        ("劳动节", "2025-05-01", "2025-05-05", 5, ["2025-04-27"]),
        ("端午节", "2025-05-31", "2025-06-02", 3, []),
        ("国庆节、中秋节", "2025-10-01", "2025-10-08", 8, ["2025-09-28", "2025-10-11"]),
    ],
    2026: [  # notice of 2025-11-04
        ("元旦", "2026-01-01", "2026-01-03", 3, ["2026-01-04"]),
        ("春节", "2026-02-15", "2026-02-23", 9, ["2026-02-14", "2026-02-28"]),
        ("清明节", "2026-04-04", "2026-04-06", 3, []),
        ("劳动节", "2026-05-01", "2026-05-05", 5, ["2026-05-09"]),
        ("端午节", "2026-06-19", "2026-06-21", 3, []),
        ("中秋节", "2026-09-25", "2026-09-27", 3, []),
        ("国庆节", "2026-10-01", "2026-10-07", 7, ["2026-09-20", "2026-10-10"]),
    ],
}


def bj(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=BEIJING)


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(n) for n in range((last - first).days + 1)]


def notice_days(year: int) -> tuple[dict[date, str], dict[date, str]]:
    off: dict[date, str] = {}
    work: dict[date, str] = {}
    for name, first, last, _, made_up in NOTICES[year]:
        off |= dict.fromkeys(days(date.fromisoformat(first), date.fromisoformat(last)), name)
        work |= {date.fromisoformat(d): name for d in made_up}
    return off, work


@pytest.fixture(scope="module")
def cn() -> WorkCalendar:
    return load_calendar("cn", "Asia/Shanghai")


@pytest.mark.parametrize("year", sorted(NOTICES))
def test_the_transcribed_notices_are_consistent(year):
    for name, first, last, count, made_up in NOTICES[year]:
        assert len(days(date.fromisoformat(first), date.fromisoformat(last))) == count, name
        assert all(date.fromisoformat(d).weekday() >= 5 for d in made_up), name


@pytest.mark.parametrize("year", sorted(NOTICES))
def test_every_day_of_a_covered_year_follows_the_notice(cn, year):
    off, work = notice_days(year)
    assert cn.covers(year)
    for day in days(date(year, 1, 1), date(year, 12, 31)):
        expected = day in work or (day.weekday() < 5 and day not in off)
        assert cn.is_working_day(day) is expected, day


@pytest.mark.parametrize("year", sorted(NOTICES))
def test_days_off_lists_weekday_holidays_and_make_up_days(cn, year):
    off, work = notice_days(year)
    expected = [DayOff(d, "off", n) for d, n in off.items() if d.weekday() < 5]
    expected += [DayOff(d, "workday", n) for d, n in work.items()]
    assert cn.days_off(year) == sorted(expected)


def test_the_2026_spring_festival_is_nine_days_between_two_working_saturdays(cn):
    assert not any(cn.is_working_day(d) for d in days(date(2026, 2, 15), date(2026, 2, 23)))
    assert cn.is_working_day(date(2026, 2, 14))
    assert cn.is_working_day(date(2026, 2, 28))


def test_format_calendar_prints_one_line_per_entry(cn):
    lines = format_calendar(cn, 2026).splitlines()
    assert lines[:3] == ["2026-01-01 off 元旦", "2026-01-02 off 元旦", "2026-01-04 workday 元旦"]
    assert lines[-1] == "2026-10-10 workday 国庆节"


@pytest.mark.parametrize("year", [2024, 2027])
def test_a_year_without_a_notice_falls_back_to_the_plain_week(cn, year):
    assert not cn.covers(year)
    assert cn.is_working_day(date(year, 10, 1)) is (date(year, 10, 1).weekday() < 5)
    assert not cn.is_working_day(date(year, 10, 2) + timedelta(5 - date(year, 10, 2).weekday()))
    assert cn.days_off(year) == []
    assert format_calendar(cn, year) == ""


def test_two_working_hours_from_friday_17_00_end_monday_10_00(cn):
    end = cn.add_working(bj(2025, 3, 7, 17), timedelta(hours=2))
    assert end == bj(2025, 3, 10, 10)
    assert end.tzinfo is UTC


def test_working_time_ends_at_the_close_rather_than_the_next_opening(cn):
    assert cn.add_working(bj(2025, 3, 7, 17), timedelta(minutes=30)) == bj(2025, 3, 7, 17, 30)


def test_the_spring_festival_is_skipped_entirely(cn):
    assert cn.add_working(bj(2025, 1, 27, 17), timedelta(hours=1)) == bj(2025, 2, 5, 9)


def test_ten_working_days_span_the_national_day_week(cn):
    # 9/22-26, Sunday 9/28, 9/29, 9/30, then 10/1-8 off, then 10/9 and 10/10.
    start = bj(2025, 9, 22, 8, 30)
    end = cn.add_working(start, timedelta(hours=75))
    assert end == bj(2025, 10, 10, 17, 30)
    assert cn.working_between(start, end) == timedelta(hours=75)
    assert cn.working_between(bj(2025, 9, 30, 17), bj(2025, 10, 9, 9)) == timedelta(hours=1)


def test_a_start_in_the_night_waits_for_the_morning(cn):
    assert cn.add_working(bj(2025, 3, 4, 2), timedelta(hours=1)) == bj(2025, 3, 4, 9, 30)
    assert cn.next_working_start(bj(2025, 3, 4, 2)) == bj(2025, 3, 4, 8, 30)
    assert cn.next_working_start(bj(2025, 3, 7, 23)) == bj(2025, 3, 10, 8, 30)
    assert cn.next_working_start(bj(2025, 3, 4, 10)) == bj(2025, 3, 4, 10)


def test_the_lunch_break_is_not_working_time(cn):
    assert cn.add_working(bj(2025, 3, 4, 11, 30), timedelta(hours=1)) == bj(2025, 3, 4, 14)
    assert cn.add_working(bj(2025, 3, 4, 12, 30), timedelta(minutes=30)) == bj(2025, 3, 4, 14)
    assert cn.working_between(bj(2025, 3, 4, 11), bj(2025, 3, 4, 14)) == timedelta(hours=1.5)
    assert cn.next_working_start(bj(2025, 3, 4, 12)) == bj(2025, 3, 4, 13, 30)


@pytest.mark.parametrize(
    ("when", "working"),
    [
        (bj(2025, 3, 4, 8, 29), False),
        (bj(2025, 3, 4, 8, 30), True),
        (bj(2025, 3, 4, 11, 59), True),
        (bj(2025, 3, 4, 12), False),
        (bj(2025, 3, 4, 13, 30), True),
        (bj(2025, 3, 4, 17, 30), False),
        (bj(2025, 3, 8, 10), False),  # a Saturday
        (bj(2025, 1, 26, 10), True),  # a make-up Sunday
        (bj(2025, 10, 6, 10), False),  # a Monday in the National Day week
    ],
)
def test_is_working_time(cn, when, working):
    assert cn.is_working_time(when) is working
    assert cn.is_working_time(when.astimezone(UTC)) is working


def test_working_between_is_zero_backwards_and_counts_only_office_hours(cn):
    assert cn.working_between(bj(2025, 3, 5), bj(2025, 3, 4)) == timedelta(0)
    assert cn.working_between(bj(2025, 3, 7, 17), bj(2025, 3, 10, 9)) == timedelta(hours=1)


def test_zero_duration_is_the_start_and_a_negative_one_is_refused(cn):
    assert cn.add_working(bj(2025, 3, 8, 3), timedelta(0)) == bj(2025, 3, 8, 3)
    with pytest.raises(ValueError, match="negative"):
        cn.add_working(bj(2025, 3, 8, 3), timedelta(minutes=-1))


def test_naive_datetimes_are_refused(cn):
    with pytest.raises(ValueError, match="timezone-aware"):
        cn.add_working(datetime(2025, 3, 4, 9), timedelta(hours=1))


def test_a_duration_of_many_working_days_spans_years(cn):
    start = bj(2024, 12, 30, 10)
    end = cn.add_working(start, timedelta(hours=7.5 * 600))
    assert end.year == 2027
    assert cn.working_between(start, end) == timedelta(hours=7.5 * 600)


instants = st.datetimes(
    min_value=datetime(2024, 6, 1), max_value=datetime(2027, 6, 1), timezones=st.just(UTC)
)


durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40))


@given(start=instants, duration=durations)
def test_working_between_undoes_add_working(cn, start, duration):
    end = cn.add_working(start, duration)
    assert end >= start
    assert cn.working_between(start, end) == duration


@given(when=instants)
def test_next_working_start_is_working_time_with_none_before_it(cn, when):
    begin = cn.next_working_start(when)
    assert cn.is_working_time(begin)
    assert cn.working_between(when, begin) == timedelta(0)
    assert (begin == when) is cn.is_working_time(when)


def test_always_open_counts_every_instant():
    cal = load_calendar("24x7", "Asia/Shanghai")
    assert isinstance(cal, AlwaysOpen)
    sunday_night = bj(2025, 10, 5, 3)
    assert cal.is_working_time(sunday_night)
    assert cal.is_working_day(date(2025, 10, 1))
    assert cal.add_working(sunday_night, timedelta(hours=2)) == bj(2025, 10, 5, 5)
    assert cal.working_between(sunday_night, bj(2025, 10, 5, 5)) == timedelta(hours=2)
    assert cal.working_between(bj(2025, 10, 5, 5), sunday_night) == timedelta(0)
    assert cal.next_working_start(sunday_night) == sunday_night
    assert cal.days_off(2025) == []


def test_a_calendar_is_found_by_name_or_by_path():
    by_path = load_calendar(str(SEEDS_DIR / "cn.yaml"), "Asia/Shanghai")
    assert isinstance(by_path, OfficeCalendar)
    assert by_path.covers(2026)


def test_the_timezone_given_overrides_the_file(tmp_path):
    cal = OfficeCalendar.load(SEEDS_DIR / "cn.yaml", tz="UTC")
    assert cal.next_working_start(bj(2025, 3, 4, 2)) == datetime(2025, 3, 4, 8, 30, tzinfo=UTC)


GOOD_HOURS = 'working_hours: [["08:30", "12:00"]]\n'


def in_2025(*holidays: str) -> str:
    return GOOD_HOURS + "years: {2025: [" + ", ".join(holidays) + "]}"


BAD_FILES = [
    ("[1, 2", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("years: {}\n", "working_hours: expected a non-empty list"),
    ("working_hours: [[8:30, 12:00]]\n", "not a pair"),
    ('working_hours: [["08:30", "noon"]]\n', "not HH:MM"),
    ('working_hours: [["13:30", "17:30"], ["08:30", "12:00"]]\n', "in order"),
    ('working_hours: [["12:00", "08:30"]]\n', "ends before it starts"),
    ("holidays: {}\n" + GOOD_HOURS, "unknown keys"),
    (in_2025("{name: X, off: [2025-01-01, 2025-01-01]}"), "unknown keys"),
    (in_2025("{name: X, days_off: [2025-01-02, 2025-01-01]}"), "in that order"),
    (in_2025("{name: X, days_off: [2025-01-01, 2025-01-01], workdays: [2025-01-02]}"), "weekend"),
    (in_2025("{name: X, days_off: [2025-01-01]}"), "days_off must be"),
    (
        in_2025(
            "{name: X, days_off: [2025-01-01, 2025-01-03]}",
            "{name: Y, days_off: [2025-01-03, 2025-01-03]}",
        ),
        "listed twice",
    ),
    (in_2025("{name: X, days_off: [2052-01-01, 2052-01-01]}"), "belong"),
    (in_2025("{name: X, days_off: [2025-13-01, 2025-13-02]}"), "not a date"),
    (in_2025("{days_off: [2025-01-01, 2025-01-01]}"), "needs a name"),
]


@pytest.mark.parametrize(("text", "problem"), BAD_FILES)
def test_a_bad_file_is_refused_in_one_line(tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=problem) as caught:
        load_calendar(str(path), "Asia/Shanghai")
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("spec", ["mars", "/nonexistent/cal.yaml", " "])
def test_an_unknown_calendar_is_refused_in_one_line(spec):
    with pytest.raises(ValueError, match=r"cannot read|empty calendar") as caught:
        load_calendar(spec, "Asia/Shanghai")
    assert "\n" not in str(caught.value)


def test_an_unknown_timezone_is_refused(tmp_path):
    path = tmp_path / "mars.yaml"
    path.write_text("timezone: Mars/Olympus\n" + GOOD_HOURS, encoding="utf-8")
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Olympus'"):
        OfficeCalendar.load(path)
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Olympus'"):
        load_calendar("cn", "Mars/Olympus")


def test_a_file_without_years_works_on_the_plain_week(tmp_path: Path):
    path = tmp_path / "plain.yaml"
    path.write_text(GOOD_HOURS, encoding="utf-8")
    cal = OfficeCalendar.load(path)
    assert not cal.covers(2025)
    assert cal.add_working(bj(2025, 10, 1, 11), timedelta(hours=2)) == bj(2025, 10, 2, 9, 30)

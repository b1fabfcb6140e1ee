"""Recurrence expansion (docs/architecture.md §5.3): patterns, ranges, DST, all-day, exceptions, validation.

Expected dates are hand-checked against a printed calendar.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from sync_engine.recurrence import (
    MAX_OCCURRENCES,
    ExpandedOccurrence,
    OccurrenceOverrides,
    RecurrenceError,
    expand,
    expand_event,
    parse_recurrence,
)
from sync_engine.timezones import UnknownTimeZoneError
from trueconf.calendar.v1 import calendar_pb2, common_pb2

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
MOSCOW = ZoneInfo("Europe/Moscow")

MO, TU, WE, TH, FR, SA, SU = (
    common_pb2.DAY_OF_WEEK_MONDAY,
    common_pb2.DAY_OF_WEEK_TUESDAY,
    common_pb2.DAY_OF_WEEK_WEDNESDAY,
    common_pb2.DAY_OF_WEEK_THURSDAY,
    common_pb2.DAY_OF_WEEK_FRIDAY,
    common_pb2.DAY_OF_WEEK_SATURDAY,
    common_pb2.DAY_OF_WEEK_SUNDAY,
)
WIDE_START = datetime(2000, 1, 1, tzinfo=UTC)
WIDE_END = datetime(2040, 1, 1, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def run(
    recurrence: common_pb2.Recurrence,
    first_start: datetime,
    *,
    minutes: int = 60,
    window: tuple[datetime, datetime] = (WIDE_START, WIDE_END),
    all_day: bool = False,
    modified: tuple[common_pb2.ModifiedOccurrence, ...] = (),
    deleted: tuple[datetime, ...] = (),
) -> list[ExpandedOccurrence]:
    """Expand a series whose master starts at ``first_start`` (in the series' zone), lasting ``minutes``."""
    zone = ZoneInfo("UTC") if first_start.tzinfo is UTC else first_start.tzinfo
    assert isinstance(zone, ZoneInfo)
    return expand(
        recurrence,
        start=first_start,
        end=first_start + timedelta(minutes=minutes),
        zone=zone,
        window_start=window[0],
        window_end=window[1],
        all_day=all_day,
        modified_occurrences=modified,
        deleted_occurrences=deleted,
    )


def local_starts(occurrences: list[ExpandedOccurrence], zone: ZoneInfo) -> list[str]:
    return [occurrence.start.astimezone(zone).strftime("%Y-%m-%d %H:%M") for occurrence in occurrences]


def dates(occurrences: list[ExpandedOccurrence], zone: ZoneInfo) -> list[str]:
    return [occurrence.start.astimezone(zone).date().isoformat() for occurrence in occurrences]


# ---------------------------------------------------------------------------------------------------------
# Patterns and ranges
# ---------------------------------------------------------------------------------------------------------


def test_weekly_every_monday_until_end_date_inclusive() -> None:
    recurrence = common_pb2.Recurrence(
        weekly=common_pb2.WeeklyPattern(interval=1, days_of_week=[MO]),
        start_date="2025-06-30",
        end_date="2025-07-28",
    )
    occurrences = run(recurrence, datetime(2025, 6, 30, 10, 0, tzinfo=BERLIN))
    assert local_starts(occurrences, BERLIN) == [
        "2025-06-30 10:00",
        "2025-07-07 10:00",
        "2025-07-14 10:00",
        "2025-07-21 10:00",
        "2025-07-28 10:00",
    ]
    assert all(occurrence.end - occurrence.start == timedelta(hours=1) for occurrence in occurrences)
    assert all(not occurrence.modified and occurrence.overrides is None for occurrence in occurrences)
    assert all(occurrence.original_start == occurrence.start for occurrence in occurrences)
    assert all(occurrence.start.tzinfo is UTC for occurrence in occurrences)


def test_end_date_is_a_local_date_in_the_series_zone() -> None:
    # 23:30 in New York on 2025-07-28 is already 2025-07-29 in UTC; the end date still includes it.
    recurrence = common_pb2.Recurrence(
        weekly=common_pb2.WeeklyPattern(interval=1, days_of_week=[MO]),
        start_date="2025-07-21",
        end_date="2025-07-28",
    )
    occurrences = run(recurrence, datetime(2025, 7, 21, 23, 30, tzinfo=NEW_YORK))
    assert local_starts(occurrences, NEW_YORK) == ["2025-07-21 23:30", "2025-07-28 23:30"]
    assert occurrences[-1].start == utc(2025, 7, 29, 3, 30)


def test_weekly_first_occurrence_is_first_matching_day_on_or_after_start_date() -> None:
    recurrence = common_pb2.Recurrence(
        weekly=common_pb2.WeeklyPattern(interval=1, days_of_week=[MO, FR]),
        start_date="2025-07-02",  # a Wednesday
        number_of_occurrences=3,
    )
    occurrences = run(recurrence, datetime(2025, 7, 4, 8, 0, tzinfo=BERLIN))
    assert dates(occurrences, BERLIN) == ["2025-07-04", "2025-07-07", "2025-07-11"]


@pytest.mark.parametrize(
    ("first_day", "expected"),
    [
        # RFC 5545 §3.8.5.3: "every other week on Tuesday and Sunday", the week start changes the result.
        (MO, ["1997-08-05", "1997-08-10", "1997-08-19", "1997-08-24"]),
        (SU, ["1997-08-05", "1997-08-17", "1997-08-19", "1997-08-31"]),
    ],
)
def test_weekly_interval_respects_first_day_of_week(
    first_day: common_pb2.DayOfWeek.ValueType, expected: list[str]
) -> None:
    recurrence = common_pb2.Recurrence(
        weekly=common_pb2.WeeklyPattern(interval=2, days_of_week=[TU, SU], first_day_of_week=first_day),
        start_date="1997-08-05",
        number_of_occurrences=4,
    )
    occurrences = run(
        recurrence, datetime(1997, 8, 5, 9, 0, tzinfo=NEW_YORK), window=(utc(1997, 1, 1), utc(1998, 1, 1))
    )
    assert dates(occurrences, NEW_YORK) == expected


def test_weekly_unspecified_first_day_of_week_is_monday() -> None:
    recurrence = common_pb2.Recurrence(
        weekly=common_pb2.WeeklyPattern(interval=2, days_of_week=[TU, SU]),
        start_date="1997-08-05",
        number_of_occurrences=4,
    )
    occurrences = run(
        recurrence, datetime(1997, 8, 5, 9, 0, tzinfo=NEW_YORK), window=(utc(1997, 1, 1), utc(1998, 1, 1))
    )
    assert dates(occurrences, NEW_YORK) == ["1997-08-05", "1997-08-10", "1997-08-19", "1997-08-24"]


def test_weekly_aggregate_weekday_means_monday_to_friday() -> None:
    recurrence = common_pb2.Recurrence(
        weekly=common_pb2.WeeklyPattern(interval=1, days_of_week=[common_pb2.DAY_OF_WEEK_WEEKDAY]),
        start_date="2025-07-03",
        number_of_occurrences=4,
    )
    occurrences = run(recurrence, datetime(2025, 7, 3, 9, 0, tzinfo=BERLIN))
    assert dates(occurrences, BERLIN) == ["2025-07-03", "2025-07-04", "2025-07-07", "2025-07-08"]


def test_daily_every_three_days_with_count() -> None:
    recurrence = common_pb2.Recurrence(
        daily=common_pb2.DailyPattern(interval=3), start_date="2025-03-28", number_of_occurrences=4
    )
    occurrences = run(recurrence, datetime(2025, 3, 28, 9, 0, tzinfo=MOSCOW))
    assert dates(occurrences, MOSCOW) == ["2025-03-28", "2025-03-31", "2025-04-03", "2025-04-06"]


def test_absolute_monthly_31st_falls_on_the_last_day_of_shorter_months() -> None:
    recurrence = common_pb2.Recurrence(
        absolute_monthly=common_pb2.AbsoluteMonthlyPattern(interval=1, day_of_month=31),
        start_date="2025-01-01",
        number_of_occurrences=6,
    )
    occurrences = run(recurrence, datetime(2025, 1, 31, 12, 0, tzinfo=BERLIN))
    assert dates(occurrences, BERLIN) == [
        "2025-01-31",
        "2025-02-28",
        "2025-03-31",
        "2025-04-30",
        "2025-05-31",
        "2025-06-30",
    ]


def test_absolute_monthly_30th_every_two_months_in_a_leap_year() -> None:
    recurrence = common_pb2.Recurrence(
        absolute_monthly=common_pb2.AbsoluteMonthlyPattern(interval=2, day_of_month=30),
        start_date="2023-12-01",
        number_of_occurrences=3,
    )
    occurrences = run(recurrence, datetime(2023, 12, 30, 12, 0, tzinfo=BERLIN))
    assert dates(occurrences, BERLIN) == ["2023-12-30", "2024-02-29", "2024-04-30"]


def test_relative_monthly_second_tuesday_every_two_months() -> None:
    recurrence = common_pb2.Recurrence(
        relative_monthly=common_pb2.RelativeMonthlyPattern(
            interval=2, days_of_week=TU, week_index=common_pb2.WEEK_INDEX_SECOND
        ),
        start_date="2025-01-01",
        number_of_occurrences=4,
    )
    occurrences = run(recurrence, datetime(2025, 1, 14, 15, 0, tzinfo=BERLIN))
    assert dates(occurrences, BERLIN) == ["2025-01-14", "2025-03-11", "2025-05-13", "2025-07-08"]


def test_relative_monthly_last_weekday_of_the_month() -> None:
    recurrence = common_pb2.Recurrence(
        relative_monthly=common_pb2.RelativeMonthlyPattern(
            interval=1, days_of_week=common_pb2.DAY_OF_WEEK_WEEKDAY, week_index=common_pb2.WEEK_INDEX_LAST
        ),
        start_date="2025-01-01",
        end_date="2025-08-31",
    )
    occurrences = run(recurrence, datetime(2025, 1, 31, 17, 0, tzinfo=BERLIN))
    assert dates(occurrences, BERLIN) == [
        "2025-01-31",
        "2025-02-28",
        "2025-03-31",
        "2025-04-30",
        "2025-05-30",
        "2025-06-30",
        "2025-07-31",
        "2025-08-29",
    ]


def test_relative_monthly_first_weekend_day() -> None:
    recurrence = common_pb2.Recurrence(
        relative_monthly=common_pb2.RelativeMonthlyPattern(
            interval=1,
            days_of_week=common_pb2.DAY_OF_WEEK_WEEKEND_DAY,
            week_index=common_pb2.WEEK_INDEX_FIRST,
        ),
        start_date="2025-03-01",
        number_of_occurrences=4,
    )
    occurrences = run(recurrence, datetime(2025, 3, 1, 10, 0, tzinfo=BERLIN))
    assert dates(occurrences, BERLIN) == ["2025-03-01", "2025-04-05", "2025-05-03", "2025-06-01"]


@pytest.mark.parametrize(
    ("week_index", "expected"),
    [
        (common_pb2.WEEK_INDEX_THIRD, ["2025-01-03", "2025-02-03", "2025-03-03"]),
        (common_pb2.WEEK_INDEX_LAST, ["2025-01-31", "2025-02-28", "2025-03-31"]),
    ],
)
def test_relative_monthly_any_day(week_index: common_pb2.WeekIndex.ValueType, expected: list[str]) -> None:
    recurrence = common_pb2.Recurrence(
        relative_monthly=common_pb2.RelativeMonthlyPattern(
            interval=1,
            days_of_week=common_pb2.DAY_OF_WEEK_DAY,
            week_index=week_index,
        ),
        start_date="2025-01-01",
        number_of_occurrences=3,
    )
    occurrences = run(recurrence, datetime(2025, 1, 3, 10, 0, tzinfo=BERLIN))
    assert dates(occurrences, BERLIN) == expected


def test_absolute_yearly_february_29_falls_on_february_28_in_common_years() -> None:
    recurrence = common_pb2.Recurrence(
        absolute_yearly=common_pb2.AbsoluteYearlyPattern(month=2, day_of_month=29),
        start_date="2024-02-29",
        number_of_occurrences=5,
    )
    occurrences = run(recurrence, datetime(2024, 2, 29, 9, 0, tzinfo=BERLIN))
    assert dates(occurrences, BERLIN) == [
        "2024-02-29",
        "2025-02-28",
        "2026-02-28",
        "2027-02-28",
        "2028-02-29",
    ]


@pytest.mark.parametrize(
    ("day", "week_index", "expected"),
    [
        (FR, common_pb2.WEEK_INDEX_LAST, ["2025-11-28", "2026-11-27", "2027-11-26"]),
        (TH, common_pb2.WEEK_INDEX_FOURTH, ["2025-11-27", "2026-11-26", "2027-11-25"]),
    ],
)
def test_relative_yearly_in_november(
    day: common_pb2.DayOfWeek.ValueType, week_index: common_pb2.WeekIndex.ValueType, expected: list[str]
) -> None:
    recurrence = common_pb2.Recurrence(
        relative_yearly=common_pb2.RelativeYearlyPattern(month=11, days_of_week=day, week_index=week_index),
        start_date="2025-01-01",
        no_end=True,
    )
    occurrences = run(
        recurrence, datetime(2025, 11, 27, 18, 0, tzinfo=NEW_YORK), window=(utc(2025, 1, 1), utc(2028, 1, 1))
    )
    assert dates(occurrences, NEW_YORK) == expected


@pytest.mark.parametrize(
    ("recurrence", "first_start", "window", "expected"),
    [
        pytest.param(
            # the expansion fast-forwards by whole periods, so the phase of the interval must survive
            common_pb2.Recurrence(
                absolute_yearly=common_pb2.AbsoluteYearlyPattern(month=6, day_of_month=15, interval=2),
                start_date="2024-01-01",
                no_end=True,
            ),
            datetime(2024, 6, 15, 9, 0, tzinfo=BERLIN),
            (utc(2031, 1, 1), utc(2036, 12, 31)),
            ["2032-06-15", "2034-06-15", "2036-06-15"],
            id="absolute-every-2nd-year-from-2024-keeps-its-phase-in-2031-2036",
        ),
        pytest.param(
            common_pb2.Recurrence(
                relative_yearly=common_pb2.RelativeYearlyPattern(
                    month=11, days_of_week=TH, week_index=common_pb2.WEEK_INDEX_FOURTH, interval=3
                ),
                start_date="2025-01-01",
                number_of_occurrences=3,
            ),
            datetime(2025, 11, 27, 18, 0, tzinfo=NEW_YORK),
            (WIDE_START, WIDE_END),
            ["2025-11-27", "2028-11-23", "2031-11-27"],
            id="relative-every-3rd-year-counts-its-3-occurrences-from-the-start",
        ),
        pytest.param(
            common_pb2.Recurrence(
                absolute_yearly=common_pb2.AbsoluteYearlyPattern(month=3, day_of_month=1),
                start_date="2025-01-01",
                no_end=True,
            ),
            datetime(2025, 3, 1, 9, 0, tzinfo=BERLIN),
            (utc(2029, 1, 1), utc(2031, 12, 31)),
            ["2029-03-01", "2030-03-01", "2031-03-01"],
            id="interval-unset-is-every-year-as-ews-sends-it",
        ),
    ],
)
def test_yearly_interval(
    recurrence: common_pb2.Recurrence, first_start: datetime, window: tuple[datetime, datetime], expected: list[str]
) -> None:
    """Graph's yearly patterns carry an interval (EWS's do not: unset is every year)."""
    zone = first_start.tzinfo
    assert isinstance(zone, ZoneInfo)
    assert dates(run(recurrence, first_start, window=window), zone) == expected


def test_count_is_counted_from_the_series_start_when_the_window_starts_later() -> None:
    recurrence = common_pb2.Recurrence(
        daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-01", number_of_occurrences=10
    )
    occurrences = run(recurrence, datetime(2025, 1, 1, 9, 0, tzinfo=BERLIN), window=(utc(2025, 1, 8), utc(2025, 2, 1)))
    assert dates(occurrences, BERLIN) == ["2025-01-08", "2025-01-09", "2025-01-10"]


def test_window_is_half_open_and_keeps_occurrences_that_overlap_it() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-01", no_end=True)
    first = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
    # 09:00-10:00 daily; a window 09:30 Jan 2 .. 09:00 Jan 4 holds Jan 2 (overlaps) and Jan 3;
    # Jan 4 starts at the window's (exclusive) end.
    occurrences = run(recurrence, first, window=(utc(2025, 1, 2, 9, 30), utc(2025, 1, 4, 9, 0)))
    assert [occurrence.start for occurrence in occurrences] == [utc(2025, 1, 2, 9), utc(2025, 1, 3, 9)]
    # An occurrence ending exactly at the window start is outside.
    assert run(recurrence, first, window=(utc(2025, 1, 2, 10), utc(2025, 1, 2, 11))) == []


def test_zero_length_occurrences_belong_to_the_window_they_start_in() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-01", no_end=True)
    first = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
    occurrences = run(recurrence, first, minutes=0, window=(utc(2025, 1, 2, 9), utc(2025, 1, 3, 9)))
    assert [occurrence.start for occurrence in occurrences] == [utc(2025, 1, 2, 9)]
    assert occurrences[0].end == occurrences[0].start


def test_long_occurrence_that_started_days_before_the_window_is_in_it() -> None:
    recurrence = common_pb2.Recurrence(
        weekly=common_pb2.WeeklyPattern(interval=1, days_of_week=[MO]), start_date="2025-06-02", no_end=True
    )
    # Monday 08:00 to Wednesday 10:00 (50 hours), every week.
    occurrences = run(
        recurrence,
        datetime(2025, 6, 2, 8, 0, tzinfo=UTC),
        minutes=50 * 60,
        window=(utc(2025, 6, 11, 9), utc(2025, 6, 12)),
    )
    assert [(occurrence.start, occurrence.end) for occurrence in occurrences] == [
        (utc(2025, 6, 9, 8), utc(2025, 6, 11, 10))
    ]


def test_occurrence_ending_in_a_dst_gap_just_after_the_window_start_is_in_it() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-03-01", no_end=True)
    # 01:45-02:30 local; on 2025-03-30 02:30 does not exist and the end is read as 01:30 UTC (03:30 CEST),
    # while the window starts at 03:15 CEST: local wall times alone would put it before the window.
    occurrences = run(
        recurrence,
        datetime(2025, 3, 1, 1, 45, tzinfo=BERLIN),
        minutes=45,
        window=(utc(2025, 3, 30, 1, 15), utc(2025, 3, 30, 2)),
    )
    assert [(occurrence.start, occurrence.end) for occurrence in occurrences] == [
        (utc(2025, 3, 30, 0, 45), utc(2025, 3, 30, 1, 30))
    ]


def test_no_end_series_far_from_its_start() -> None:
    recurrence = common_pb2.Recurrence(
        weekly=common_pb2.WeeklyPattern(interval=3, days_of_week=[WE], first_day_of_week=SU),
        start_date="2001-01-03",
        no_end=True,
    )
    occurrences = run(recurrence, datetime(2001, 1, 3, 9, 0, tzinfo=BERLIN), window=(utc(2025, 7, 1), utc(2025, 9, 1)))
    # Every 21 days from 2001-01-03: 2025-07-02 is 8946 days = 426 * 21 days later.
    assert dates(occurrences, BERLIN) == ["2025-07-02", "2025-07-23", "2025-08-13"]


def test_huge_no_end_daily_series_over_a_one_month_window() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="1925-01-01", no_end=True)
    occurrences = run(recurrence, datetime(1925, 1, 1, 9, 0, tzinfo=BERLIN), window=(utc(2025, 3, 1), utc(2025, 4, 1)))
    assert len(occurrences) == 31
    assert dates(occurrences, BERLIN)[0] == "2025-03-01"
    assert dates(occurrences, BERLIN)[-1] == "2025-03-31"


def test_series_from_year_1_with_a_window_up_to_the_end_of_time() -> None:
    recurrence = common_pb2.Recurrence(
        absolute_yearly=common_pb2.AbsoluteYearlyPattern(month=12, day_of_month=31),
        start_date="0001-01-01",
        no_end=True,
    )
    occurrences = run(
        recurrence,
        datetime(1, 12, 31, 9, 0, tzinfo=UTC),
        window=(datetime(9990, 1, 1, tzinfo=UTC), datetime.max.replace(tzinfo=UTC)),
    )
    assert [occurrence.start.year for occurrence in occurrences] == list(range(9990, 10000))


@pytest.mark.parametrize("all_day", [False, True])
def test_occurrences_at_the_end_of_time_west_of_utc_do_not_overflow(all_day: bool) -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="9999-12-01", no_end=True)
    los_angeles = ZoneInfo("America/Los_Angeles")
    first = datetime(9999, 12, 1, 0 if all_day else 20, 0, tzinfo=los_angeles)
    occurrences = run(
        recurrence,
        first,
        minutes=30 * 60,
        all_day=all_day,
        window=(utc(9999, 12, 25), datetime.max.replace(tzinfo=UTC)),
    )
    # The last occurrence (local 9999-12-30 20:00 or all-day 9999-12-31) starts on the last UTC day; its end
    # (in year 10000) is cut at the end of the datetime range.
    assert occurrences[-1].start == (utc(9999, 12, 31, 8) if all_day else utc(9999, 12, 31, 4))
    assert all(occurrence.start <= occurrence.end for occurrence in occurrences)
    # Overlapping the window: timed local 12-23..12-30 (30 hours each), all-day 12-23..12-31 (two days each).
    assert len(occurrences) == (9 if all_day else 8)


def test_window_holding_more_occurrences_than_the_cap_is_refused() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2000-01-01", no_end=True)
    with pytest.raises(RecurrenceError, match=f"more than {MAX_OCCURRENCES} occurrences"):
        run(recurrence, datetime(2000, 1, 1, 9, 0, tzinfo=UTC), window=(utc(2000, 1, 1), utc(2040, 1, 1)))


# ---------------------------------------------------------------------------------------------------------
# Time zones and DST
# ---------------------------------------------------------------------------------------------------------


def test_berlin_keeps_local_time_across_spring_and_autumn_transitions() -> None:
    recurrence = common_pb2.Recurrence(
        weekly=common_pb2.WeeklyPattern(interval=1, days_of_week=[MO]), start_date="2025-03-17", no_end=True
    )
    first = datetime(2025, 3, 17, 9, 0, tzinfo=BERLIN)
    spring = run(recurrence, first, window=(utc(2025, 3, 17), utc(2025, 4, 8)))
    assert local_starts(spring, BERLIN) == [
        "2025-03-17 09:00",
        "2025-03-24 09:00",
        "2025-03-31 09:00",
        "2025-04-07 09:00",
    ]
    assert [occurrence.start for occurrence in spring] == [
        utc(2025, 3, 17, 8),
        utc(2025, 3, 24, 8),
        utc(2025, 3, 31, 7),  # CEST from 2025-03-30
        utc(2025, 4, 7, 7),
    ]
    autumn = run(recurrence, first, window=(utc(2025, 10, 20), utc(2025, 11, 4)))
    assert [occurrence.start for occurrence in autumn] == [
        utc(2025, 10, 20, 7),
        utc(2025, 10, 27, 8),
        utc(2025, 11, 3, 8),
    ]
    assert all(occurrence.end - occurrence.start == timedelta(hours=1) for occurrence in spring + autumn)


def test_new_york_keeps_local_time_across_spring_and_autumn_transitions() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-03-07", no_end=True)
    first = datetime(2025, 3, 7, 9, 0, tzinfo=NEW_YORK)
    spring = run(recurrence, first, window=(utc(2025, 3, 7), utc(2025, 3, 11)))
    assert [occurrence.start for occurrence in spring] == [
        utc(2025, 3, 7, 14),
        utc(2025, 3, 8, 14),
        utc(2025, 3, 9, 13),  # EDT from 2025-03-09
        utc(2025, 3, 10, 13),
    ]
    autumn = run(recurrence, first, window=(utc(2025, 11, 1), utc(2025, 11, 4)))
    assert [occurrence.start for occurrence in autumn] == [
        utc(2025, 11, 1, 13),
        utc(2025, 11, 2, 14),
        utc(2025, 11, 3, 14),
    ]
    assert set(local_starts(spring + autumn, NEW_YORK)) == {
        f"2025-{day} 09:00" for day in ("03-07", "03-08", "03-09", "03-10", "11-01", "11-02", "11-03")
    }


def test_moscow_has_no_dst_and_keeps_the_same_utc_instant() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-01", no_end=True)
    first = datetime(2025, 1, 1, 9, 0, tzinfo=MOSCOW)
    for window in ((utc(2025, 3, 29), utc(2025, 4, 1)), (utc(2025, 10, 25), utc(2025, 10, 28))):
        occurrences = run(recurrence, first, window=window)
        assert len(occurrences) == 3
        assert {(occurrence.start.hour, occurrence.start.minute) for occurrence in occurrences} == {(6, 0)}


def test_nonexistent_and_ambiguous_wall_times() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-03-01", no_end=True)
    first = datetime(2025, 3, 1, 2, 30, tzinfo=BERLIN)
    spring = run(recurrence, first, minutes=15, window=(utc(2025, 3, 29), utc(2025, 3, 31, 12)))
    # 02:30 does not exist on 2025-03-30: read with the offset before the gap (= 03:30 CEST).
    assert [occurrence.start for occurrence in spring] == [
        utc(2025, 3, 29, 1, 30),
        utc(2025, 3, 30, 1, 30),
        utc(2025, 3, 31, 0, 30),
    ]
    autumn = run(recurrence, first, minutes=15, window=(utc(2025, 10, 25), utc(2025, 10, 27, 12)))
    # 02:30 happens twice on 2025-10-26: the first one (CEST) is meant.
    assert [occurrence.start for occurrence in autumn] == [
        utc(2025, 10, 25, 0, 30),
        utc(2025, 10, 26, 0, 30),
        utc(2025, 10, 27, 1, 30),
    ]


def test_end_follows_the_wall_clock_on_a_short_night() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-03-29", no_end=True)
    occurrences = run(
        recurrence,
        datetime(2025, 3, 29, 1, 0, tzinfo=BERLIN),
        minutes=180,
        window=(utc(2025, 3, 29), utc(2025, 3, 30, 12)),
    )
    assert [(occurrence.start, occurrence.end) for occurrence in occurrences] == [
        (utc(2025, 3, 29, 0), utc(2025, 3, 29, 3)),
        (utc(2025, 3, 30, 0), utc(2025, 3, 30, 2)),  # 01:00-04:00 local, two hours that night
    ]


def test_master_ending_in_the_repeated_hour_before_its_wall_start_keeps_its_elapsed_length() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-10-26", no_end=True)
    # 02:45 CEST to 02:15 CET on 2025-10-26: 30 minutes, but an earlier wall time at the end.
    occurrences = expand(
        recurrence,
        start=utc(2025, 10, 26, 0, 45),
        end=utc(2025, 10, 26, 1, 15),
        zone=BERLIN,
        window_start=utc(2025, 10, 27),
        window_end=utc(2025, 10, 28),
    )
    assert [(occurrence.start, occurrence.end) for occurrence in occurrences] == [
        (utc(2025, 10, 27, 1, 45), utc(2025, 10, 27, 2, 15))
    ]


def test_end_inside_a_gap_before_a_shifted_start_is_clamped_to_the_start() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-03-29", no_end=True)
    occurrences = run(
        recurrence,
        datetime(2025, 3, 29, 2, 30, tzinfo=BERLIN),
        minutes=45,
        window=(utc(2025, 3, 30), utc(2025, 3, 30, 12)),
    )
    # 02:30 (gap) -> 01:30 UTC; 03:15 CEST -> 01:15 UTC would end before it starts.
    assert [(occurrence.start, occurrence.end) for occurrence in occurrences] == [(utc(2025, 3, 30, 1, 30),) * 2]


# ---------------------------------------------------------------------------------------------------------
# All-day series
# ---------------------------------------------------------------------------------------------------------


def test_all_day_series_are_dates_starting_at_local_midnight() -> None:
    recurrence = common_pb2.Recurrence(
        daily=common_pb2.DailyPattern(interval=1), start_date="2025-03-29", number_of_occurrences=3
    )
    first = datetime(2025, 3, 29, 0, 0, tzinfo=BERLIN)
    occurrences = run(recurrence, first, minutes=24 * 60, all_day=True)
    assert [(occurrence.start_date, occurrence.end_date) for occurrence in occurrences] == [
        (date(2025, 3, 29), date(2025, 3, 30)),
        (date(2025, 3, 30), date(2025, 3, 31)),
        (date(2025, 3, 31), date(2025, 4, 1)),
    ]
    assert all(occurrence.all_day for occurrence in occurrences)
    # Local midnight in Berlin; 2025-03-30 is 23 hours long.
    assert [(occurrence.start, occurrence.end) for occurrence in occurrences] == [
        (utc(2025, 3, 28, 23), utc(2025, 3, 29, 23)),
        (utc(2025, 3, 29, 23), utc(2025, 3, 30, 22)),
        (utc(2025, 3, 30, 22), utc(2025, 3, 31, 22)),
    ]


def test_multi_day_all_day_series_keeps_its_length_in_days() -> None:
    recurrence = common_pb2.Recurrence(
        weekly=common_pb2.WeeklyPattern(interval=1, days_of_week=[SA]),
        start_date="2025-10-18",
        number_of_occurrences=2,
    )
    first = datetime(2025, 10, 18, 0, 0, tzinfo=NEW_YORK)
    occurrences = run(recurrence, first, minutes=2 * 24 * 60, all_day=True)
    assert [(occurrence.start_date, occurrence.end_date) for occurrence in occurrences] == [
        (date(2025, 10, 18), date(2025, 10, 20)),
        (date(2025, 10, 25), date(2025, 10, 27)),
    ]


def test_timed_occurrences_have_no_dates() -> None:
    recurrence = common_pb2.Recurrence(
        daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-01", number_of_occurrences=1
    )
    (occurrence,) = run(recurrence, datetime(2025, 1, 1, 9, 0, tzinfo=BERLIN))
    assert (occurrence.all_day, occurrence.start_date, occurrence.end_date) == (False, None, None)


# ---------------------------------------------------------------------------------------------------------
# Modified and deleted occurrences
# ---------------------------------------------------------------------------------------------------------


def weekly_monday_berlin() -> tuple[common_pb2.Recurrence, datetime]:
    recurrence = common_pb2.Recurrence(
        weekly=common_pb2.WeeklyPattern(interval=1, days_of_week=[MO]), start_date="2025-06-02", no_end=True
    )
    return recurrence, datetime(2025, 6, 2, 10, 0, tzinfo=BERLIN)


def test_deleted_occurrence_is_removed() -> None:
    recurrence, first = weekly_monday_berlin()
    occurrences = run(recurrence, first, window=(utc(2025, 6, 1), utc(2025, 6, 30)), deleted=(utc(2025, 6, 16, 8),))
    assert dates(occurrences, BERLIN) == ["2025-06-02", "2025-06-09", "2025-06-23"]


def test_modified_occurrence_replaces_the_original() -> None:
    recurrence, first = weekly_monday_berlin()
    moved = common_pb2.ModifiedOccurrence(
        item_id="exc-1",
        original_start=ts(utc(2025, 6, 9, 8)),
        start=ts(utc(2025, 6, 10, 12)),
        end=ts(utc(2025, 6, 10, 13, 30)),
        subject="Moved to Tuesday",
        location="Room 5",
    )
    occurrences = run(recurrence, first, window=(utc(2025, 6, 1), utc(2025, 6, 20)), modified=(moved,))
    assert [(occurrence.start, occurrence.modified) for occurrence in occurrences] == [
        (utc(2025, 6, 2, 8), False),
        (utc(2025, 6, 10, 12), True),
        (utc(2025, 6, 16, 8), False),
    ]
    changed = occurrences[1]
    assert changed.original_start == utc(2025, 6, 9, 8)
    assert changed.end == utc(2025, 6, 10, 13, 30)
    assert changed.overrides == OccurrenceOverrides(
        item_id="exc-1", subject="Moved to Tuesday", location="Room 5", body=None, cancelled=False
    )


def test_modified_occurrence_moves_out_of_and_into_the_window() -> None:
    recurrence, first = weekly_monday_berlin()
    out_of_window = common_pb2.ModifiedOccurrence(
        item_id="out",
        original_start=ts(utc(2025, 6, 9, 8)),
        start=ts(utc(2025, 7, 9, 8)),
        end=ts(utc(2025, 7, 9, 9)),
    )
    into_window = common_pb2.ModifiedOccurrence(
        item_id="in",
        original_start=ts(utc(2025, 6, 30, 8)),
        start=ts(utc(2025, 6, 12, 8)),
        end=ts(utc(2025, 6, 12, 9)),
    )
    occurrences = run(
        recurrence, first, window=(utc(2025, 6, 8), utc(2025, 6, 20)), modified=(out_of_window, into_window)
    )
    assert [(occurrence.start, occurrence.original_start) for occurrence in occurrences] == [
        (utc(2025, 6, 12, 8), utc(2025, 6, 30, 8)),
        (utc(2025, 6, 16, 8), utc(2025, 6, 16, 8)),
    ]


def test_modified_occurrence_without_times_keeps_the_series_time_and_cancelled_is_reported() -> None:
    recurrence, first = weekly_monday_berlin()
    renamed = common_pb2.ModifiedOccurrence(
        item_id="renamed", original_start=ts(utc(2025, 6, 9, 8)), body="agenda", cancelled=True
    )
    occurrences = run(recurrence, first, window=(utc(2025, 6, 8), utc(2025, 6, 11)), modified=(renamed,))
    assert len(occurrences) == 1
    (occurrence,) = occurrences
    assert (occurrence.start, occurrence.end, occurrence.modified) == (
        utc(2025, 6, 9, 8),
        utc(2025, 6, 9, 9),
        True,
    )
    assert occurrence.overrides == OccurrenceOverrides(
        item_id="renamed", subject=None, location=None, body="agenda", cancelled=True
    )


def test_deletion_wins_over_a_modification_of_the_same_occurrence() -> None:
    recurrence, first = weekly_monday_berlin()
    moved = common_pb2.ModifiedOccurrence(
        item_id="x",
        original_start=ts(utc(2025, 6, 9, 8)),
        start=ts(utc(2025, 6, 10, 8)),
        end=ts(utc(2025, 6, 10, 9)),
    )
    occurrences = run(
        recurrence,
        first,
        window=(utc(2025, 6, 8), utc(2025, 6, 14)),
        modified=(moved,),
        deleted=(utc(2025, 6, 9, 8),),
    )
    assert occurrences == []


def test_all_day_exceptions_are_matched_by_local_date() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-06-01", no_end=True)
    first = datetime(2025, 6, 1, 0, 0, tzinfo=NEW_YORK)
    moved = common_pb2.ModifiedOccurrence(
        item_id="m",
        # midnight New York on 2025-06-03, as Exchange reports it
        original_start=ts(utc(2025, 6, 3, 4)),
        start=ts(utc(2025, 6, 9, 4)),
        end=ts(utc(2025, 6, 11, 4)),
        subject="two days later",
    )
    occurrences = run(
        recurrence,
        first,
        minutes=24 * 60,
        all_day=True,
        window=(utc(2025, 6, 1, 4), utc(2025, 6, 6, 4)),
        modified=(moved,),
        deleted=(utc(2025, 6, 2, 4),),
    )
    assert [occurrence.start_date for occurrence in occurrences] == [
        date(2025, 6, 1),
        date(2025, 6, 4),
        date(2025, 6, 5),
    ]
    later = run(
        recurrence,
        first,
        minutes=24 * 60,
        all_day=True,
        window=(utc(2025, 6, 8, 4), utc(2025, 6, 10, 4)),
        modified=(moved,),
    )
    assert [(occurrence.start_date, occurrence.end_date, occurrence.modified) for occurrence in later] == [
        (date(2025, 6, 8), date(2025, 6, 9), False),
        (date(2025, 6, 9), date(2025, 6, 11), True),
        (date(2025, 6, 9), date(2025, 6, 10), False),
    ]
    assert later[1].original_start == utc(2025, 6, 3, 4)
    assert later[1].start == utc(2025, 6, 9, 4)
    assert later[1].end == utc(2025, 6, 11, 4)


def test_all_day_exception_original_start_is_normalized_to_local_midnight() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-06-01", no_end=True)
    first = datetime(2025, 6, 1, 0, 0, tzinfo=NEW_YORK)
    renamed = common_pb2.ModifiedOccurrence(item_id="noon", original_start=ts(utc(2025, 6, 3, 16)), subject="renamed")
    occurrences = run(
        recurrence,
        first,
        minutes=24 * 60,
        all_day=True,
        window=(utc(2025, 6, 2, 4), utc(2025, 6, 4, 4)),
        modified=(renamed,),
        deleted=(utc(2025, 6, 2, 15),),
    )
    assert len(occurrences) == 1
    assert occurrences[0].start_date == date(2025, 6, 3)
    assert occurrences[0].original_start == utc(2025, 6, 3, 4)
    assert occurrences[0].start == utc(2025, 6, 3, 4)
    assert occurrences[0].overrides is not None
    assert occurrences[0].overrides.subject == "renamed"


# ---------------------------------------------------------------------------------------------------------
# The CalendarEvent entry point
# ---------------------------------------------------------------------------------------------------------


MASTER_START = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
MASTER_END = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def master_event(
    *,
    time_zone: str = "",
    windows_time_zone: str = "",
    all_day: bool = False,
    start: datetime = MASTER_START,
    end: datetime = MASTER_END,
) -> calendar_pb2.CalendarEvent:
    """A weekly Monday master from 2025-03-03, as ews-ingest would publish it."""
    return calendar_pb2.CalendarEvent(
        item_id="AAMk-master",
        kind=calendar_pb2.ITEM_KIND_RECURRING_MASTER,
        start=ts(start),
        end=ts(end),
        time_zone=time_zone,
        windows_time_zone=windows_time_zone,
        all_day=all_day,
        recurrence=common_pb2.Recurrence(
            weekly=common_pb2.WeeklyPattern(interval=1, days_of_week=[MO]),
            start_date="2025-03-03",
            no_end=True,
        ),
    )


def test_expand_event_uses_the_iana_zone() -> None:
    event = master_event(time_zone="Europe/Berlin", windows_time_zone="W. Europe Standard Time")
    event.deleted_occurrences.append(ts(utc(2025, 3, 17, 8)))
    event.modified_occurrences.append(
        common_pb2.ModifiedOccurrence(
            item_id="e",
            original_start=ts(utc(2025, 3, 24, 8)),
            start=ts(utc(2025, 3, 25, 8)),
            end=ts(utc(2025, 3, 25, 9)),
        )
    )
    occurrences = expand_event(event, utc(2025, 3, 1), utc(2025, 4, 8))
    assert [occurrence.start for occurrence in occurrences] == [
        utc(2025, 3, 3, 8),
        utc(2025, 3, 10, 8),
        utc(2025, 3, 25, 8),
        utc(2025, 3, 31, 7),
        utc(2025, 4, 7, 7),
    ]


def test_expand_event_falls_back_to_the_windows_zone_id() -> None:
    event = master_event(windows_time_zone="W. Europe Standard Time")
    occurrences = expand_event(event, utc(2025, 3, 30), utc(2025, 4, 1))
    assert [occurrence.start for occurrence in occurrences] == [utc(2025, 3, 31, 7)]


def test_expand_event_unknown_zone_raises_and_the_caller_can_use_utc() -> None:
    event = master_event(time_zone="Mars/Olympus_Mons")
    with pytest.raises(UnknownTimeZoneError, match="Mars/Olympus_Mons") as caught:
        expand_event(event, utc(2025, 3, 30), utc(2025, 4, 1))
    assert caught.value.zone_id == "Mars/Olympus_Mons"
    occurrences = expand_event(event, utc(2025, 3, 30), utc(2025, 4, 1), zone=ZoneInfo("UTC"))
    assert [occurrence.start for occurrence in occurrences] == [utc(2025, 3, 31, 8)]


def test_expand_event_all_day() -> None:
    event = master_event(time_zone="Europe/Moscow", all_day=True, start=utc(2025, 3, 2, 21), end=utc(2025, 3, 3, 21))
    occurrences = expand_event(event, utc(2025, 3, 1), utc(2025, 3, 15))
    assert [(occurrence.start_date, occurrence.start) for occurrence in occurrences] == [
        (date(2025, 3, 3), utc(2025, 3, 2, 21)),
        (date(2025, 3, 10), utc(2025, 3, 9, 21)),
    ]


def test_expand_event_without_recurrence_start_or_end() -> None:
    event = calendar_pb2.CalendarEvent(
        item_id="single", time_zone="UTC", start=ts(utc(2025, 1, 1)), end=ts(utc(2025, 1, 1))
    )
    with pytest.raises(RecurrenceError, match="'single' has no recurrence"):
        expand_event(event, utc(2025, 1, 1), utc(2025, 2, 1))
    event = master_event(time_zone="UTC")
    event.ClearField("end")
    with pytest.raises(RecurrenceError, match="has no end"):
        expand_event(event, utc(2025, 1, 1), utc(2025, 2, 1))


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recurrence", "message"),
    [
        (common_pb2.Recurrence(start_date="2025-01-01", no_end=True), "no pattern"),
        (
            common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-01"),
            "no range",
        ),
        (
            common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=0), start_date="2025-01-01", no_end=True),
            "interval must be at least 1, got 0",
        ),
        (
            common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=-3), start_date="2025-01-01", no_end=True),
            "got -3",
        ),
        (
            common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1001), start_date="2025-01-01", no_end=True),
            "interval 1001 exceeds",
        ),
        (
            common_pb2.Recurrence(
                weekly=common_pb2.WeeklyPattern(interval=0, days_of_week=[MO]),
                start_date="2025-01-01",
                no_end=True,
            ),
            "weekly pattern: interval must be at least 1, got 0",
        ),
        (
            common_pb2.Recurrence(weekly=common_pb2.WeeklyPattern(interval=1), start_date="2025-01-01", no_end=True),
            "days_of_week is empty",
        ),
        (
            common_pb2.Recurrence(
                weekly=common_pb2.WeeklyPattern(interval=1, days_of_week=[common_pb2.DAY_OF_WEEK_UNSPECIFIED]),
                start_date="2025-01-01",
                no_end=True,
            ),
            "DAY_OF_WEEK_UNSPECIFIED",
        ),
        (
            common_pb2.Recurrence(
                weekly=common_pb2.WeeklyPattern(
                    interval=1, days_of_week=[MO], first_day_of_week=common_pb2.DAY_OF_WEEK_WEEKDAY
                ),
                start_date="2025-01-01",
                no_end=True,
            ),
            "first_day_of_week must be a day from Monday to Sunday, got DAY_OF_WEEK_WEEKDAY",
        ),
        (
            common_pb2.Recurrence(
                absolute_monthly=common_pb2.AbsoluteMonthlyPattern(interval=1, day_of_month=0),
                start_date="2025-01-01",
                no_end=True,
            ),
            "day_of_month must be within 1..31, got 0",
        ),
        (
            common_pb2.Recurrence(
                absolute_monthly=common_pb2.AbsoluteMonthlyPattern(interval=1, day_of_month=32),
                start_date="2025-01-01",
                no_end=True,
            ),
            "got 32",
        ),
        (
            common_pb2.Recurrence(
                absolute_monthly=common_pb2.AbsoluteMonthlyPattern(interval=0, day_of_month=3),
                start_date="2025-01-01",
                no_end=True,
            ),
            "absolute_monthly pattern: interval must be at least 1, got 0",
        ),
        (
            common_pb2.Recurrence(
                relative_monthly=common_pb2.RelativeMonthlyPattern(
                    interval=1, days_of_week=MO, week_index=common_pb2.WEEK_INDEX_UNSPECIFIED
                ),
                start_date="2025-01-01",
                no_end=True,
            ),
            "week_index is missing or invalid: WEEK_INDEX_UNSPECIFIED",
        ),
        (
            common_pb2.Recurrence(
                relative_monthly=common_pb2.RelativeMonthlyPattern(interval=1, week_index=common_pb2.WEEK_INDEX_FIRST),
                start_date="2025-01-01",
                no_end=True,
            ),
            "days_of_week is missing or invalid: DAY_OF_WEEK_UNSPECIFIED",
        ),
        (
            common_pb2.Recurrence(
                absolute_yearly=common_pb2.AbsoluteYearlyPattern(month=13, day_of_month=1),
                start_date="2025-01-01",
                no_end=True,
            ),
            "month must be within 1..12, got 13",
        ),
        (
            common_pb2.Recurrence(
                absolute_yearly=common_pb2.AbsoluteYearlyPattern(month=0, day_of_month=1),
                start_date="2025-01-01",
                no_end=True,
            ),
            "got 0",
        ),
        (
            common_pb2.Recurrence(
                absolute_yearly=common_pb2.AbsoluteYearlyPattern(month=2, day_of_month=40),
                start_date="2025-01-01",
                no_end=True,
            ),
            "day_of_month must be within 1..31, got 40",
        ),
        (
            common_pb2.Recurrence(
                relative_yearly=common_pb2.RelativeYearlyPattern(
                    month=14, days_of_week=MO, week_index=common_pb2.WEEK_INDEX_LAST
                ),
                start_date="2025-01-01",
                no_end=True,
            ),
            "relative_yearly pattern: month must be within 1..12, got 14",
        ),
        (
            common_pb2.Recurrence(
                absolute_yearly=common_pb2.AbsoluteYearlyPattern(month=2, day_of_month=1, interval=-2),
                start_date="2025-01-01",
                no_end=True,
            ),
            "absolute_yearly pattern: interval must be at least 1, got -2",
        ),
        (
            common_pb2.Recurrence(
                relative_yearly=common_pb2.RelativeYearlyPattern(
                    month=2, days_of_week=MO, week_index=common_pb2.WEEK_INDEX_LAST, interval=1001
                ),
                start_date="2025-01-01",
                no_end=True,
            ),
            "relative_yearly pattern: interval 1001 exceeds the maximum of 1000",
        ),
        (
            common_pb2.Recurrence(
                daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-01", number_of_occurrences=0
            ),
            "number_of_occurrences must be at least 1, got 0",
        ),
        (
            common_pb2.Recurrence(
                daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-01", number_of_occurrences=-5
            ),
            "got -5",
        ),
        (
            common_pb2.Recurrence(
                daily=common_pb2.DailyPattern(interval=1),
                start_date="2025-01-01",
                number_of_occurrences=10_001,
            ),
            "number_of_occurrences 10001 exceeds the cap of 10000 occurrences per series",
        ),
        (
            common_pb2.Recurrence(
                daily=common_pb2.DailyPattern(interval=1),
                start_date="2025-01-01",
                number_of_occurrences=2**31 - 1,
            ),
            "2147483647 exceeds the cap",
        ),
        (
            common_pb2.Recurrence(
                daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-10", end_date="2025-01-09"
            ),
            "end_date 2025-01-09 is before start_date 2025-01-10",
        ),
        (
            common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-13-01", no_end=True),
            "start_date is not a valid date: '2025-13-01'",
        ),
        (
            common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="next monday", no_end=True),
            "start_date must be a date YYYY-MM-DD, got 'next monday'",
        ),
        (
            common_pb2.Recurrence(
                daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-01", end_date="20250201"
            ),
            "end_date must be a date YYYY-MM-DD, got '20250201'",
        ),
    ],
)
def test_invalid_recurrences_are_refused_naming_the_value(recurrence: common_pb2.Recurrence, message: str) -> None:
    with pytest.raises(RecurrenceError, match=re.escape(message)):
        parse_recurrence(recurrence)
    with pytest.raises(RecurrenceError, match=re.escape(message)):
        run(recurrence, datetime(2025, 1, 1, 9, 0, tzinfo=UTC))


def test_unknown_enum_values_are_refused() -> None:
    recurrence = common_pb2.Recurrence(
        relative_monthly=common_pb2.RelativeMonthlyPattern(interval=1, days_of_week=MO),
        start_date="2025-01-01",
        no_end=True,
    )
    recurrence.relative_monthly.week_index = 42  # type: ignore[assignment]
    with pytest.raises(RecurrenceError, match="week_index is missing or invalid: 42"):
        parse_recurrence(recurrence)
    recurrence.relative_monthly.week_index = common_pb2.WEEK_INDEX_FIRST
    recurrence.relative_monthly.days_of_week = 77  # type: ignore[assignment]
    with pytest.raises(RecurrenceError, match="days_of_week is missing or invalid: 77"):
        parse_recurrence(recurrence)


def test_end_date_before_the_master_start_when_start_date_is_missing() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), end_date="2025-01-09")
    with pytest.raises(RecurrenceError, match="end_date 2025-01-09 is before the series start 2025-01-10"):
        run(recurrence, datetime(2025, 1, 10, 9, 0, tzinfo=BERLIN))


def test_missing_start_date_uses_the_master_start() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=2), number_of_occurrences=2)
    occurrences = run(recurrence, datetime(2025, 1, 10, 9, 0, tzinfo=BERLIN))
    assert dates(occurrences, BERLIN) == ["2025-01-10", "2025-01-12"]


def test_invalid_master_window_and_exceptions_are_refused() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-01", no_end=True)
    start = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
    with pytest.raises(RecurrenceError, match="series end 2025-01-01T08:00:00\\+00:00 is before its start"):
        expand(
            recurrence,
            start=start,
            end=start - timedelta(hours=1),
            zone=BERLIN,
            window_start=start,
            window_end=start,
        )
    with pytest.raises(RecurrenceError, match="window_start must be timezone-aware, got naive 2025-01-01T00:00:00"):
        expand(
            recurrence,
            start=start,
            end=start,
            zone=BERLIN,
            window_start=datetime(2025, 1, 1),
            window_end=utc(2025, 2, 1),
        )
    with pytest.raises(RecurrenceError, match="window_end 2024-12-01T00:00:00\\+00:00 is before window_start"):
        expand(
            recurrence,
            start=start,
            end=start,
            zone=BERLIN,
            window_start=utc(2025, 1, 1),
            window_end=utc(2024, 12, 1),
        )
    backwards = common_pb2.ModifiedOccurrence(
        item_id="bad-exception", original_start=ts(start), start=ts(utc(2025, 1, 2)), end=ts(utc(2025, 1, 1))
    )
    with pytest.raises(RecurrenceError, match="modified occurrence 'bad-exception' ends"):
        run(recurrence, start, modified=(backwards,))
    orphan = common_pb2.ModifiedOccurrence(item_id="no-original", start=ts(utc(2025, 1, 2)))
    with pytest.raises(RecurrenceError, match="'no-original' has no original_start"):
        run(recurrence, start, modified=(orphan,))


def test_empty_window_is_empty() -> None:
    recurrence = common_pb2.Recurrence(daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-01", no_end=True)
    start = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
    assert run(recurrence, start, window=(start, start)) == []


def test_occurrences_are_frozen() -> None:
    recurrence = common_pb2.Recurrence(
        daily=common_pb2.DailyPattern(interval=1), start_date="2025-01-01", number_of_occurrences=1
    )
    (occurrence,) = run(recurrence, datetime(2025, 1, 1, 9, 0, tzinfo=UTC))
    with pytest.raises(AttributeError):
        occurrence.start = utc(2026, 1, 1)  # type: ignore[misc]

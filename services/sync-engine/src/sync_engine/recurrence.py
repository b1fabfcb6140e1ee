"""Expansion of recurring series (EWS recurrence) into occurrences inside a window.

A recurring master arrives as a :class:`~trueconf.calendar.v1.calendar_pb2.CalendarEvent` whose
``recurrence`` is one EWS pattern plus one range (``common.proto``). This module turns it into the
occurrences that overlap a window ``[window_start, window_end)`` of UTC instants (docs/architecture.md §5.3, §5.4):

* Rules are evaluated by python-dateutil (:class:`dateutil.rrule.rrule`) in the series' own IANA zone
  with **wall-clock** semantics: a 09:00 Europe/Berlin meeting stays at 09:00 local across DST, so its
  UTC instant moves by an hour. A wall time that does not exist (spring-forward gap) is read with the
  offset before the gap (02:30 → 03:30 summer time), an ambiguous one (autumn) as its first instance;
  this is RFC 5545 §3.3.5 and ``zoneinfo``'s ``fold=0``.
* An occurrence's end is its start plus the master's **wall-clock** duration (Exchange keeps a series'
  start and end as minutes after local midnight), so a 01:00-04:00 meeting ends at 04:00 local even on
  a night that is one hour shorter. An end that would fall before its start (end inside a DST gap) is
  clamped to the start.
* Only occurrences near the window are ever generated: series without a count are fast-forwarded to the
  window by whole pattern periods (constant work however old the series), and series with a count
  (at most :data:`MAX_OCCURRENCES`) are counted from their first occurrence.
* Occurrences overlap the window when ``start < window_end and end > window_start``; a zero-length
  occurrence belongs to it when ``window_start <= start < window_end``.
* ``ModifiedOccurrence`` items replace the occurrence with the same original start (their new time may
  move them into or out of the window); deleted occurrences are removed by original start; a deletion
  wins over a modification of the same occurrence. A modification whose original start is not an
  occurrence of the rule is still returned, as Exchange still shows that exception item.
* All-day series work on calendar dates: each occurrence carries ``start_date``/``end_date`` (end
  exclusive, as iCalendar's DTEND) and, for ordering and windowing, ``start``/``end`` at local midnight
  of those dates in the series' zone. Modified and deleted all-day occurrences are matched by the local
  date of their original start.

A yearly pattern's ``interval`` (years; Microsoft Graph has one, EWS has none) defaults to 1 when unset (0).

Patterns follow Outlook: an absolute day 29-31 in a shorter month (February 29 in a common year) falls on
the month's last day; relative patterns pick the first..fourth or last day / weekday / weekend day / named
day of the month (``BYSETPOS``); a weekly pattern's ``first_day_of_week`` is the rule's ``WKST``
(Monday when unspecified, as exchangelib defaults). The range start is ``Recurrence.start_date``; the
first occurrence is the first date on or after it that fits the pattern, at the master's local time of
day (seconds resolution).

Invalid input raises :class:`RecurrenceError` naming the bad value; an unknown zone raises
:class:`~sync_engine.timezones.UnknownTimeZoneError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Final, Literal

from dateutil import rrule as du

from sync_engine.timezones import resolve_zone
from trueconf.calendar.v1 import calendar_pb2, common_pb2

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from zoneinfo import ZoneInfo

    from google.protobuf.timestamp_pb2 import Timestamp

__all__ = [
    "MAX_INTERVAL",
    "MAX_OCCURRENCES",
    "ExpandedOccurrence",
    "OccurrenceOverrides",
    "RecurrenceError",
    "RecurrenceRule",
    "expand",
    "expand_event",
    "parse_recurrence",
]

#: Largest number of occurrences a series may declare (``number_of_occurrences``) and the largest
#: number one expansion returns; Outlook itself stops at 999.
MAX_OCCURRENCES: Final = 10_000
#: Largest pattern interval accepted (days, weeks, months or years); Outlook offers at most 999 days.
MAX_INTERVAL: Final = 1_000

# How far beyond the window (in local wall time) candidates are generated before the exact UTC check:
# covers UTC-offset changes around the window's edges.
_MARGIN: Final = timedelta(days=1)
_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_LAST_DAY_OF_MONTH: Final = 31
_SHORTEST_MONTH: Final = 28
_MONTHS: Final = 12

Freq = Literal[0, 1, 2, 3]

_WEEKDAYS: Final[dict[int, int]] = {
    common_pb2.DAY_OF_WEEK_MONDAY: 0,
    common_pb2.DAY_OF_WEEK_TUESDAY: 1,
    common_pb2.DAY_OF_WEEK_WEDNESDAY: 2,
    common_pb2.DAY_OF_WEEK_THURSDAY: 3,
    common_pb2.DAY_OF_WEEK_FRIDAY: 4,
    common_pb2.DAY_OF_WEEK_SATURDAY: 5,
    common_pb2.DAY_OF_WEEK_SUNDAY: 6,
}
_AGGREGATE_DAYS: Final[dict[int, tuple[int, ...]]] = {
    common_pb2.DAY_OF_WEEK_DAY: (0, 1, 2, 3, 4, 5, 6),
    common_pb2.DAY_OF_WEEK_WEEKDAY: (0, 1, 2, 3, 4),
    common_pb2.DAY_OF_WEEK_WEEKEND_DAY: (5, 6),
}
_SET_POSITIONS: Final[dict[int, int]] = {
    common_pb2.WEEK_INDEX_FIRST: 1,
    common_pb2.WEEK_INDEX_SECOND: 2,
    common_pb2.WEEK_INDEX_THIRD: 3,
    common_pb2.WEEK_INDEX_FOURTH: 4,
    common_pb2.WEEK_INDEX_LAST: -1,
}


class RecurrenceError(ValueError):
    """A recurrence (or its master, window or exceptions) that cannot be expanded; names the bad value."""


@dataclass(frozen=True, slots=True)
class OccurrenceOverrides:
    """What a modified occurrence changes besides its time; None means "as the series"."""

    item_id: str
    subject: str | None
    location: str | None
    body: str | None
    cancelled: bool


@dataclass(frozen=True, slots=True)
class ExpandedOccurrence:
    """One occurrence of a series.

    ``original_start``, ``start`` and ``end`` are UTC instants. ``original_start`` identifies the
    occurrence within its series (where the rule put it, before any modification). For all-day series
    ``all_day`` is true, ``start_date``/``end_date`` are the local calendar dates (``end_date``
    exclusive) and ``start``/``end`` are local midnight of those dates in the series' zone; for timed
    series both dates are None.
    """

    original_start: datetime
    start: datetime
    end: datetime
    modified: bool
    overrides: OccurrenceOverrides | None
    all_day: bool = False
    start_date: date | None = None
    end_date: date | None = None


@dataclass(frozen=True, slots=True)
class RecurrenceRule:
    """A validated recurrence, in dateutil's terms (``freq`` is ``dateutil.rrule.DAILY`` etc.)."""

    pattern: str
    freq: Freq
    interval: int
    wkst: int
    byweekday: tuple[int, ...] | None
    bymonth: int | None
    bymonthday: tuple[int, ...] | None
    bysetpos: int | None
    #: First date of the range; None when the recurrence did not give one (the master's start date is used).
    start_date: date | None
    #: Last date of the range (inclusive), or None.
    end_date: date | None
    #: Number of occurrences, or None.
    count: int | None


# --------------------------------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------------------------------


def _interval(value: int, pattern: str) -> int:
    if value < 1:
        raise RecurrenceError(f"{pattern} pattern: interval must be at least 1, got {value}")
    if value > MAX_INTERVAL:
        raise RecurrenceError(f"{pattern} pattern: interval {value} exceeds the maximum of {MAX_INTERVAL}")
    return value


def _day_of_month(value: int, pattern: str) -> tuple[int, ...]:
    if not 1 <= value <= _LAST_DAY_OF_MONTH:
        raise RecurrenceError(f"{pattern} pattern: day_of_month must be within 1..31, got {value}")
    # Days 29-31 fall on the last day of shorter months (Outlook): take the last existing day of
    # 28..value in each period (used with BYSETPOS=-1).
    if value <= _SHORTEST_MONTH:
        return (value,)
    return tuple(range(_SHORTEST_MONTH, value + 1))


def _month(value: int, pattern: str) -> int:
    if not 1 <= value <= _MONTHS:
        raise RecurrenceError(f"{pattern} pattern: month must be within 1..12, got {value}")
    return value


def _day_name(value: int) -> str:
    try:
        return common_pb2.DayOfWeek.Name(common_pb2.DayOfWeek.ValueType(value))
    except ValueError:
        return str(value)


def _single_day(value: int, what: str) -> int:
    day = _WEEKDAYS.get(value)
    if day is None:
        raise RecurrenceError(f"{what} must be a day from Monday to Sunday, got {_day_name(value)}")
    return day


def _relative_days(value: int, pattern: str) -> tuple[int, ...]:
    if value in _AGGREGATE_DAYS:
        return _AGGREGATE_DAYS[value]
    if value in _WEEKDAYS:
        return (_WEEKDAYS[value],)
    raise RecurrenceError(f"{pattern} pattern: days_of_week is missing or invalid: {_day_name(value)}")


def _set_position(value: int, pattern: str) -> int:
    position = _SET_POSITIONS.get(value)
    if position is None:
        try:
            name = common_pb2.WeekIndex.Name(common_pb2.WeekIndex.ValueType(value))
        except ValueError:
            name = str(value)
        raise RecurrenceError(f"{pattern} pattern: week_index is missing or invalid: {name}")
    return position


def _parse_date(value: str, field: str) -> date:
    if not _DATE_RE.fullmatch(value):
        raise RecurrenceError(f"{field} must be a date YYYY-MM-DD, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise RecurrenceError(f"{field} is not a valid date: {value!r} ({exc})") from exc


@dataclass(frozen=True, slots=True)
class _Pattern:
    freq: Freq
    interval: int = 1
    wkst: int = 0
    byweekday: tuple[int, ...] | None = None
    bymonth: int | None = None
    bymonthday: tuple[int, ...] | None = None
    bysetpos: int | None = None


def _daily(pattern: common_pb2.DailyPattern) -> _Pattern:
    return _Pattern(du.DAILY, _interval(pattern.interval, "daily"))


def _weekly(pattern: common_pb2.WeeklyPattern) -> _Pattern:
    if not pattern.days_of_week:
        raise RecurrenceError("weekly pattern: days_of_week is empty")
    days: set[int] = set()
    for value in pattern.days_of_week:
        days.update(_relative_days(value, "weekly"))
    wkst = 0  # Monday, as exchangelib defaults
    if pattern.first_day_of_week != common_pb2.DAY_OF_WEEK_UNSPECIFIED:
        wkst = _single_day(pattern.first_day_of_week, "weekly pattern: first_day_of_week")
    return _Pattern(du.WEEKLY, _interval(pattern.interval, "weekly"), wkst, byweekday=tuple(sorted(days)))


def _absolute_monthly(pattern: common_pb2.AbsoluteMonthlyPattern) -> _Pattern:
    days = _day_of_month(pattern.day_of_month, "absolute_monthly")
    return _Pattern(
        du.MONTHLY,
        _interval(pattern.interval, "absolute_monthly"),
        bymonthday=days,
        bysetpos=-1 if len(days) > 1 else None,
    )


def _relative_monthly(pattern: common_pb2.RelativeMonthlyPattern) -> _Pattern:
    return _Pattern(
        du.MONTHLY,
        _interval(pattern.interval, "relative_monthly"),
        byweekday=_relative_days(pattern.days_of_week, "relative_monthly"),
        bysetpos=_set_position(pattern.week_index, "relative_monthly"),
    )


def _yearly_interval(value: int, pattern: str) -> int:
    """A yearly pattern's interval: 0 (unset: EWS has none, ews-ingest never sends one) is every year."""
    return 1 if value == 0 else _interval(value, pattern)


def _absolute_yearly(pattern: common_pb2.AbsoluteYearlyPattern) -> _Pattern:
    days = _day_of_month(pattern.day_of_month, "absolute_yearly")
    return _Pattern(
        du.YEARLY,
        _yearly_interval(pattern.interval, "absolute_yearly"),
        bymonth=_month(pattern.month, "absolute_yearly"),
        bymonthday=days,
        bysetpos=-1 if len(days) > 1 else None,
    )


def _relative_yearly(pattern: common_pb2.RelativeYearlyPattern) -> _Pattern:
    return _Pattern(
        du.YEARLY,
        _yearly_interval(pattern.interval, "relative_yearly"),
        bymonth=_month(pattern.month, "relative_yearly"),
        byweekday=_relative_days(pattern.days_of_week, "relative_yearly"),
        bysetpos=_set_position(pattern.week_index, "relative_yearly"),
    )


def _parse_pattern(recurrence: common_pb2.Recurrence) -> tuple[str, _Pattern]:
    name = recurrence.WhichOneof("pattern")
    if name is None:
        raise RecurrenceError(
            "recurrence has no pattern (expected one of daily, weekly, absolute_monthly, relative_monthly, "
            "absolute_yearly, relative_yearly)"
        )
    if name == "daily":
        return name, _daily(recurrence.daily)
    if name == "weekly":
        return name, _weekly(recurrence.weekly)
    if name == "absolute_monthly":
        return name, _absolute_monthly(recurrence.absolute_monthly)
    if name == "relative_monthly":
        return name, _relative_monthly(recurrence.relative_monthly)
    if name == "absolute_yearly":
        return name, _absolute_yearly(recurrence.absolute_yearly)
    return name, _relative_yearly(recurrence.relative_yearly)


def _parse_range(recurrence: common_pb2.Recurrence) -> tuple[date | None, date | None, int | None]:
    """(start_date, end_date, count) of the recurrence's range."""
    start_date = _parse_date(recurrence.start_date, "start_date") if recurrence.start_date else None
    range_kind = recurrence.WhichOneof("range")
    if range_kind is None:
        raise RecurrenceError("recurrence has no range (expected one of no_end, end_date, number_of_occurrences)")
    if range_kind == "end_date":
        end_date = _parse_date(recurrence.end_date, "end_date")
        if start_date is not None and end_date < start_date:
            raise RecurrenceError(f"end_date {end_date.isoformat()} is before start_date {start_date.isoformat()}")
        return start_date, end_date, None
    if range_kind == "number_of_occurrences":
        count = recurrence.number_of_occurrences
        if count < 1:
            raise RecurrenceError(f"number_of_occurrences must be at least 1, got {count}")
        if count > MAX_OCCURRENCES:
            raise RecurrenceError(
                f"number_of_occurrences {count} exceeds the cap of {MAX_OCCURRENCES} occurrences per series"
            )
        return start_date, None, count
    return start_date, None, None


def parse_recurrence(recurrence: common_pb2.Recurrence) -> RecurrenceRule:
    """Validate an EWS recurrence and translate it to dateutil terms.

    Raises :class:`RecurrenceError` for a missing pattern or range, an interval outside
    1..:data:`MAX_INTERVAL`, a day of month outside 1..31, a month outside 1..12, a missing or invalid
    day of week / week index, a count outside 1..:data:`MAX_OCCURRENCES`, a malformed date, or an end
    date before the start date.
    """
    name, pattern = _parse_pattern(recurrence)
    start_date, end_date, count = _parse_range(recurrence)
    return RecurrenceRule(
        pattern=name,
        freq=pattern.freq,
        interval=pattern.interval,
        wkst=pattern.wkst,
        byweekday=pattern.byweekday,
        bymonth=pattern.bymonth,
        bymonthday=pattern.bymonthday,
        bysetpos=pattern.bysetpos,
        start_date=start_date,
        end_date=end_date,
        count=count,
    )


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------

_NAIVE_MIN: Final = datetime.min
_NAIVE_MAX: Final = datetime.max


def _plus(moment: datetime, delta: timedelta) -> datetime:
    """``moment + delta`` saturated at the ends of the datetime range (naive, local wall time)."""
    try:
        return moment + delta
    except OverflowError:
        return _NAIVE_MAX if delta > timedelta(0) else _NAIVE_MIN


def _to_local(instant: datetime, zone: ZoneInfo) -> datetime:
    """Naive local wall time of an aware instant, saturated at the ends of the datetime range."""
    try:
        return instant.astimezone(zone).replace(tzinfo=None, fold=0)
    except OverflowError:
        return _NAIVE_MAX if instant.year > 1 else _NAIVE_MIN


def _to_utc(local: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a naive local wall time (gap: offset before it; ambiguous: first instance).

    Saturated at the ends of the datetime range.
    """
    try:
        return local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    except OverflowError:
        return (_NAIVE_MAX if local.year > 1 else _NAIVE_MIN).replace(tzinfo=UTC)


def _plus_days(day: date, delta: timedelta) -> date:
    """``day + delta`` saturated at the ends of the date range."""
    try:
        return day + delta
    except OverflowError:
        return date.max if delta > timedelta(0) else date.min


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return _to_utc(datetime.combine(day, time(0)), zone)


def _ceil_date(instant: datetime, zone: ZoneInfo) -> date:
    """The local date of ``instant``, or the next one when it is not at local midnight."""
    local = _to_local(instant, zone)
    return _plus_days(local.date(), timedelta(days=1)) if local.time() != time(0) else local.date()


def _timestamp(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def _aware_utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise RecurrenceError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise RecurrenceError(f"{what} {value.isoformat()} is outside the supported range of years 1..9999") from exc


def _overlaps(start: datetime, end: datetime, window_start: datetime, window_end: datetime) -> bool:
    if start == end:
        return window_start <= start < window_end
    return start < window_end and end > window_start


def _fast_forward(rule: RecurrenceRule, dtstart: datetime, target: datetime) -> datetime:
    """A later rule start, at or before ``target``, that yields the same occurrences from there on.

    Moves by whole pattern periods (``interval`` days / weeks / months, or years), so the phase of the
    interval and the week's first day are kept. Only valid for rules without a count.
    """
    if target <= dtstart:
        return dtstart
    if rule.freq == du.DAILY:
        periods = (target.date() - dtstart.date()).days // rule.interval
        return dtstart + timedelta(days=periods * rule.interval)
    if rule.freq == du.WEEKLY:
        first_week = dtstart.date() - timedelta(days=(dtstart.weekday() - rule.wkst) % 7)
        target_week = target.date() - timedelta(days=(target.weekday() - rule.wkst) % 7)
        weeks = (target_week - first_week).days // 7 // rule.interval * rule.interval
        moved = first_week + timedelta(weeks=weeks)
    elif rule.freq == du.MONTHLY:
        first_month = dtstart.year * 12 + dtstart.month - 1
        months = (target.year * 12 + target.month - 1 - first_month) // rule.interval * rule.interval
        year, month0 = divmod(first_month + months, 12)
        moved = date(year, month0 + 1, 1)
    else:
        years = (target.year - dtstart.year) // rule.interval * rule.interval
        moved = date(dtstart.year + years, 1, 1)
    # The first period keeps the original start (occurrences before it in that period do not exist).
    return datetime.combine(moved, dtstart.time()) if moved > dtstart.date() else dtstart


@dataclass(frozen=True, slots=True)
class _Series:
    """A validated series, placed in its zone: the rule starts at ``dtstart`` (naive local wall time)."""

    rule: RecurrenceRule
    zone: ZoneInfo
    all_day: bool
    dtstart: datetime
    #: Local wall-clock duration (whole days for all-day series).
    duration: timedelta

    @classmethod
    def build(cls, rule: RecurrenceRule, start: datetime, end: datetime, zone: ZoneInfo, *, all_day: bool) -> _Series:
        if end < start:
            raise RecurrenceError(f"series end {end.isoformat()} is before its start {start.isoformat()}")
        local_start = _to_local(start, zone)
        range_start = rule.start_date if rule.start_date is not None else local_start.date()
        if rule.end_date is not None and rule.end_date < range_start:
            raise RecurrenceError(
                f"end_date {rule.end_date.isoformat()} is before the series start {range_start.isoformat()}"
            )
        if all_day:
            time_of_day = time(0)
            duration = timedelta(days=max(1, (_ceil_date(end, zone) - local_start.date()).days))
        else:
            # dateutil works in whole seconds.
            time_of_day = local_start.time().replace(microsecond=0)
            duration = _to_local(end, zone) - local_start
            if duration < timedelta(0):
                # Ends in the repeated hour of an autumn night at an earlier wall time than it starts:
                # no wall-clock length describes it, keep the elapsed one.
                duration = end - start
        return cls(rule, zone, all_day, datetime.combine(range_start, time_of_day), duration)

    def key(self, instant: datetime) -> datetime | date:
        """What identifies an occurrence by its original start: the instant, or the local date (all-day)."""
        return _to_local(instant, self.zone).date() if self.all_day else instant

    def local_starts(self, low: datetime, high: datetime) -> Iterator[datetime]:
        """Naive local starts of the rule within ``[low, high]`` (local wall time), in order."""
        rule = self.rule
        dtstart = self.dtstart if rule.count is not None else _fast_forward(rule, self.dtstart, low)
        until = datetime.combine(rule.end_date, time.max) if rule.end_date is not None else None
        generator = du.rrule(
            rule.freq,
            dtstart=dtstart,
            interval=rule.interval,
            wkst=rule.wkst,
            count=rule.count,
            until=until,
            bysetpos=rule.bysetpos,
            bymonth=rule.bymonth,
            bymonthday=rule.bymonthday,
            byweekday=rule.byweekday,
            cache=False,
        )
        for local in generator:
            if local > high:
                return
            if local >= low:
                yield local

    def span_at(self, local: datetime) -> tuple[datetime, datetime, date | None, date | None]:
        """(start, end, start_date, end_date) of an occurrence starting at a local wall time."""
        if self.all_day:
            first_day = local.date()
            end_day = _plus_days(first_day, self.duration)
            return _midnight(first_day, self.zone), _midnight(end_day, self.zone), first_day, end_day
        start = _to_utc(local, self.zone)
        return start, max(_to_utc(_plus(local, self.duration), self.zone), start), None, None

    def modified_span(
        self, modified: common_pb2.ModifiedOccurrence, original_start: datetime
    ) -> tuple[datetime, datetime, date | None, date | None]:
        """(start, end, start_date, end_date) of a modified occurrence.

        An unset start means "where the occurrence was", an unset end "start + the series' duration".
        """
        anchor = _timestamp(modified.start) if modified.HasField("start") else original_start
        local = _to_local(anchor, self.zone)
        if self.all_day:
            start, end, start_day, end_day = self.span_at(datetime.combine(local.date(), time(0)))
        else:
            start, end, start_day, end_day = anchor, max(self.span_at(local)[1], anchor), None, None
        if not modified.HasField("end"):
            return start, end, start_day, end_day
        end = _timestamp(modified.end)
        if end < anchor:
            raise RecurrenceError(
                f"modified occurrence {modified.item_id!r} ends ({end.isoformat()}) before it starts "
                f"({anchor.isoformat()})"
            )
        if start_day is None:
            return start, end, None, None
        end_day = max(_ceil_date(end, self.zone), _plus_days(start_day, timedelta(days=1)))
        return start, _midnight(end_day, self.zone), start_day, end_day


class _Collector:
    """Occurrences found so far, never more than :data:`MAX_OCCURRENCES`."""

    def __init__(self, window_start: datetime, window_end: datetime) -> None:
        self.window_start = window_start
        self.window_end = window_end
        self.occurrences: list[ExpandedOccurrence] = []

    def add(self, occurrence: ExpandedOccurrence) -> None:
        if not _overlaps(occurrence.start, occurrence.end, self.window_start, self.window_end):
            return
        if len(self.occurrences) >= MAX_OCCURRENCES:
            raise RecurrenceError(
                f"the window {self.window_start.isoformat()} .. {self.window_end.isoformat()} holds more "
                f"than {MAX_OCCURRENCES} occurrences of the series (the cap per series); narrow the window"
            )
        self.occurrences.append(occurrence)

    def sorted(self) -> list[ExpandedOccurrence]:
        return sorted(self.occurrences, key=lambda occurrence: (occurrence.start, occurrence.original_start))


def _overrides(modified: common_pb2.ModifiedOccurrence) -> OccurrenceOverrides:
    return OccurrenceOverrides(
        item_id=modified.item_id,
        subject=modified.subject or None,
        location=modified.location or None,
        body=modified.body or None,
        cancelled=modified.cancelled,
    )


def expand(
    recurrence: common_pb2.Recurrence | RecurrenceRule,
    *,
    start: datetime,
    end: datetime,
    zone: ZoneInfo,
    window_start: datetime,
    window_end: datetime,
    all_day: bool = False,
    modified_occurrences: Iterable[common_pb2.ModifiedOccurrence] = (),
    deleted_occurrences: Iterable[datetime] = (),
) -> list[ExpandedOccurrence]:
    """The occurrences of a series that overlap ``[window_start, window_end)``, sorted by start.

    ``start``/``end`` are the master's (the first occurrence's) start and end as aware instants; they
    give the local time of day and the duration. ``deleted_occurrences`` are original starts (aware).
    Raises :class:`RecurrenceError` on invalid input, or when the window holds more than
    :data:`MAX_OCCURRENCES` occurrences.
    """
    rule = recurrence if isinstance(recurrence, RecurrenceRule) else parse_recurrence(recurrence)
    window_start = _aware_utc(window_start, "window_start")
    window_end = _aware_utc(window_end, "window_end")
    if window_end < window_start:
        raise RecurrenceError(f"window_end {window_end.isoformat()} is before window_start {window_start.isoformat()}")
    series = _Series.build(
        rule, _aware_utc(start, "series start"), _aware_utc(end, "series end"), zone, all_day=all_day
    )
    deleted = {series.key(_aware_utc(moment, "deleted occurrence")) for moment in deleted_occurrences}
    modifications: dict[datetime | date, common_pb2.ModifiedOccurrence] = {}
    for modified in modified_occurrences:
        if not modified.HasField("original_start"):
            raise RecurrenceError(f"modified occurrence {modified.item_id!r} has no original_start")
        modifications[series.key(_timestamp(modified.original_start))] = modified

    found = _Collector(window_start, window_end)
    low = _plus(_to_local(window_start, zone), -(series.duration + _MARGIN))
    high = _plus(_to_local(window_end, zone), _MARGIN)
    for local in series.local_starts(low, high):
        occurrence_start, occurrence_end, start_day, end_day = series.span_at(local)
        occurrence_key = series.key(occurrence_start)
        if occurrence_key in deleted or occurrence_key in modifications:
            continue
        found.add(
            ExpandedOccurrence(
                original_start=occurrence_start,
                start=occurrence_start,
                end=occurrence_end,
                modified=False,
                overrides=None,
                all_day=all_day,
                start_date=start_day,
                end_date=end_day,
            )
        )

    for modification_key, modified in modifications.items():
        if modification_key in deleted:
            continue
        original_start = _timestamp(modified.original_start)
        if all_day:
            original_start = _midnight(_to_local(original_start, zone).date(), zone)
        new_start, new_end, start_day, end_day = series.modified_span(modified, original_start)
        found.add(
            ExpandedOccurrence(
                original_start=original_start,
                start=new_start,
                end=new_end,
                modified=True,
                overrides=_overrides(modified),
                all_day=all_day,
                start_date=start_day,
                end_date=end_day,
            )
        )
    return found.sorted()


def expand_event(
    event: calendar_pb2.CalendarEvent,
    window_start: datetime,
    window_end: datetime,
    *,
    zone: ZoneInfo | None = None,
) -> list[ExpandedOccurrence]:
    """The occurrences of a recurring master that overlap ``[window_start, window_end)``, sorted by start.

    The series' zone is ``zone`` when given, else ``event.time_zone`` (or, when that is empty,
    ``event.windows_time_zone``) resolved by :func:`sync_engine.timezones.resolve_zone`, which raises
    :class:`~sync_engine.timezones.UnknownTimeZoneError` for an unknown name (the caller may retry with
    ``zone=ZoneInfo("UTC")``). Raises :class:`RecurrenceError` for an event without recurrence, start or
    end, and for everything :func:`expand` rejects.
    """
    if not event.HasField("recurrence"):
        raise RecurrenceError(f"event {event.item_id!r} has no recurrence (missing pattern)")
    for field in ("start", "end"):
        if not event.HasField(field):
            raise RecurrenceError(f"recurring master {event.item_id!r} has no {field}")
    if zone is None:
        zone = resolve_zone(event.time_zone or event.windows_time_zone)
    return expand(
        event.recurrence,
        start=_timestamp(event.start),
        end=_timestamp(event.end),
        zone=zone,
        window_start=window_start,
        window_end=window_end,
        all_day=event.all_day,
        modified_occurrences=event.modified_occurrences,
        deleted_occurrences=[_timestamp(moment) for moment in event.deleted_occurrences],
    )

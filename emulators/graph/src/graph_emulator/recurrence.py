"""patternedRecurrence → occurrence start instants, with python-dateutil.

https://learn.microsoft.com/en-us/graph/api/resources/patternedrecurrence,
https://learn.microsoft.com/en-us/graph/api/resources/recurrencepattern (type daily, weekly, absoluteMonthly,
relativeMonthly, absoluteYearly, relativeYearly; interval; daysOfWeek; dayOfMonth; month; index; firstDayOfWeek) and
https://learn.microsoft.com/en-us/graph/api/resources/recurrencerange (endDate, noEnd, numbered; startDate; endDate;
numberOfOccurrences; recurrenceTimeZone). Occurrences start at the event's local start time on each pattern date,
in the event's start time zone.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from dateutil import rrule

from .errors import bad_request
from .timefmt import parse_date, zone

WEEKDAYS = {
    "monday": rrule.MO,
    "tuesday": rrule.TU,
    "wednesday": rrule.WE,
    "thursday": rrule.TH,
    "friday": rrule.FR,
    "saturday": rrule.SA,
    "sunday": rrule.SU,
}
INDEXES = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
PATTERN_TYPES = ("daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly")
RANGE_TYPES = ("endDate", "noEnd", "numbered")
# noEnd series are expanded this far at most (an emulator limit, far beyond any calendar window a client asks for).
MAX_OCCURRENCES = 5000


def _days(pattern: dict[str, Any]) -> list[rrule.weekday]:
    days = pattern.get("daysOfWeek")
    if not isinstance(days, list) or not days or not all(isinstance(d, str) and d.lower() in WEEKDAYS for d in days):
        raise bad_request(
            f"recurrence.pattern.daysOfWeek must list weekdays for type {pattern.get('type')!r}, got {days!r}"
        )
    return [WEEKDAYS[d.lower()] for d in days]


def _int(pattern: dict[str, Any], key: str, low: int, high: int) -> int:
    value = pattern.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(
            f"recurrence.pattern.{key} must be {low}..{high} for type {pattern.get('type')!r}, got {value!r}"
        )
    return value


def validate(recurrence: Any) -> dict[str, Any]:
    """The recurrence as stored, or 400 naming what is wrong."""
    if not isinstance(recurrence, dict):
        raise bad_request(f"recurrence must be a patternedRecurrence object, got {recurrence!r}")
    pattern, rng = recurrence.get("pattern"), recurrence.get("range")
    if not isinstance(pattern, dict) or pattern.get("type") not in PATTERN_TYPES:
        raise bad_request(f"recurrence.pattern.type must be one of {PATTERN_TYPES}, got {pattern!r}")
    if not isinstance(rng, dict) or rng.get("type") not in RANGE_TYPES:
        raise bad_request(f"recurrence.range.type must be one of {RANGE_TYPES}, got {rng!r}")
    _rule_parts(pattern)
    parse_date(rng.get("startDate"), "recurrence.range.startDate")
    if rng["type"] == "endDate":
        end = parse_date(rng.get("endDate"), "recurrence.range.endDate")
        if end < parse_date(rng.get("startDate"), "recurrence.range.startDate"):
            raise bad_request(f"recurrence.range.endDate {end} is before startDate {rng.get('startDate')}")
    if rng["type"] == "numbered":
        count = rng.get("numberOfOccurrences")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise bad_request(f"recurrence.range.numberOfOccurrences must be a positive integer, got {count!r}")
    return recurrence


def _rule_parts(pattern: dict[str, Any]) -> dict[str, Any]:
    kind = pattern["type"]
    interval = pattern.get("interval", 1)
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise bad_request(f"recurrence.pattern.interval must be a positive integer, got {interval!r}")
    parts: dict[str, Any] = {"interval": interval}
    first_day = str(pattern.get("firstDayOfWeek") or "sunday").lower()
    if first_day not in WEEKDAYS:
        raise bad_request(f"recurrence.pattern.firstDayOfWeek must be a weekday, got {pattern.get('firstDayOfWeek')!r}")
    parts["wkst"] = WEEKDAYS[first_day]
    index = INDEXES.get(str(pattern.get("index") or "first").lower())
    if index is None:
        raise bad_request(f"recurrence.pattern.index must be one of {tuple(INDEXES)}, got {pattern.get('index')!r}")
    if kind == "daily":
        parts["freq"] = rrule.DAILY
    elif kind == "weekly":
        parts.update(freq=rrule.WEEKLY, byweekday=_days(pattern))
    elif kind == "absoluteMonthly":
        parts.update(freq=rrule.MONTHLY, bymonthday=_int(pattern, "dayOfMonth", 1, 31))
    elif kind == "relativeMonthly":
        parts.update(freq=rrule.MONTHLY, byweekday=_days(pattern), bysetpos=index)
    elif kind == "absoluteYearly":
        parts.update(
            freq=rrule.YEARLY, bymonth=_int(pattern, "month", 1, 12), bymonthday=_int(pattern, "dayOfMonth", 1, 31)
        )
    else:
        parts.update(freq=rrule.YEARLY, bymonth=_int(pattern, "month", 1, 12), byweekday=_days(pattern), bysetpos=index)
    return parts


def occurrence_starts(recurrence: dict[str, Any], first_start: datetime, start_zone: str) -> Iterator[datetime]:
    """UTC start instants of the series' occurrences in order (at most MAX_OCCURRENCES)."""
    pattern, rng = recurrence["pattern"], recurrence["range"]
    tz = zone(start_zone)
    local_time: time = first_start.astimezone(tz).time().replace(tzinfo=None)
    start_date: date = parse_date(rng["startDate"], "recurrence.range.startDate")
    parts = _rule_parts(pattern)
    dtstart = datetime.combine(start_date, local_time)
    if rng["type"] == "numbered":
        parts["count"] = rng["numberOfOccurrences"]
    elif rng["type"] == "endDate":
        parts["until"] = datetime.combine(parse_date(rng["endDate"], "recurrence.range.endDate"), time(23, 59, 59))
    rule = rrule.rrule(dtstart=dtstart, cache=False, **parts)
    for count, local in enumerate(rule):
        if count >= MAX_OCCURRENCES:
            return
        yield local.replace(tzinfo=tz).astimezone(UTC)


def starts_between(
    recurrence: dict[str, Any], first_start: datetime, start_zone: str, duration: timedelta, lo: datetime, hi: datetime
) -> list[datetime]:
    """Occurrence starts whose [start, start+duration) overlaps [lo, hi)."""
    found: list[datetime] = []
    for start in occurrence_starts(recurrence, first_start, start_zone):
        if start >= hi:
            break
        if start + duration > lo or (duration == timedelta(0) and start >= lo):
            found.append(start)
    return found

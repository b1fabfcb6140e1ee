"""Series masters: Graph's patternedRecurrence → common.Recurrence, and the master's modified and deleted occurrences.

calendarView/delta returns instances only (https://learn.microsoft.com/en-us/graph/delta-query-events). For every
series an instance of which a delta page brings, graph-ingest reads the master
(`GET /users/{id}/events/{seriesMasterId}`, https://learn.microsoft.com/en-us/graph/api/event-get) and its instances in
the cache window (`GET /users/{id}/events/{seriesMasterId}/instances?startDateTime&endDateTime`,
https://learn.microsoft.com/en-us/graph/api/event-list-instances), both through $batch, and publishes the master as
ITEM_KIND_RECURRING_MASTER like ews-ingest:

* `recurrence`: https://learn.microsoft.com/en-us/graph/api/resources/recurrencepattern (daily, weekly,
  absoluteMonthly, relativeMonthly, absoluteYearly, relativeYearly; interval, daysOfWeek, dayOfMonth, month, index,
  firstDayOfWeek) and https://learn.microsoft.com/en-us/graph/api/resources/recurrencerange (endDate, noEnd,
  numbered; startDate, endDate, numberOfOccurrences).
* `modified_occurrences`: the instances of type `exception` (item id, originalStart, start, end, subject, location,
  body, isCancelled).
* `deleted_occurrences`: Graph v1.0 names no cancelled occurrences on a master (`cancelledOccurrences` is beta), and
  a cancelled occurrence is simply missing from `instances`. So the rule is expanded here as Graph expands it
  (python-dateutil, the pattern's dates at the master's local start time in its start time zone) and every expected
  original start that `instances` did not return is a deleted occurrence. This covers the series' whole span the
  connector uses (`series_span`): from the cache window's start to `tccal.cache_window.SERIES_HORIZON` past its end,
  as far as sync-engine looks for a series' next occurrence. `instances` is read over that span in pieces of at most
  `INSTANCE_RANGE` (`instance_ranges`), all of them members of the same `$batch`, so they run side by side.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from dateutil import rrule

from graph_ingest.normalize import NormalizationError, parse_utc, plain_text, timestamp, zone_names
from tccal.cache_window import SERIES_HORIZON, CacheWindow
from trueconf.calendar.v1 import calendar_pb2, common_pb2

DAYS: dict[str, tuple[common_pb2.DayOfWeek.ValueType, rrule.weekday]] = {
    "monday": (common_pb2.DAY_OF_WEEK_MONDAY, rrule.MO),
    "tuesday": (common_pb2.DAY_OF_WEEK_TUESDAY, rrule.TU),
    "wednesday": (common_pb2.DAY_OF_WEEK_WEDNESDAY, rrule.WE),
    "thursday": (common_pb2.DAY_OF_WEEK_THURSDAY, rrule.TH),
    "friday": (common_pb2.DAY_OF_WEEK_FRIDAY, rrule.FR),
    "saturday": (common_pb2.DAY_OF_WEEK_SATURDAY, rrule.SA),
    "sunday": (common_pb2.DAY_OF_WEEK_SUNDAY, rrule.SU),
}
#: Graph's day sets a relative pattern may name, as the contract's aggregate days.
AGGREGATES: dict[frozenset[str], common_pb2.DayOfWeek.ValueType] = {
    frozenset(DAYS): common_pb2.DAY_OF_WEEK_DAY,
    frozenset({"monday", "tuesday", "wednesday", "thursday", "friday"}): common_pb2.DAY_OF_WEEK_WEEKDAY,
    frozenset({"saturday", "sunday"}): common_pb2.DAY_OF_WEEK_WEEKEND_DAY,
}
INDEXES: dict[str, tuple[common_pb2.WeekIndex.ValueType, int]] = {
    "first": (common_pb2.WEEK_INDEX_FIRST, 1),
    "second": (common_pb2.WEEK_INDEX_SECOND, 2),
    "third": (common_pb2.WEEK_INDEX_THIRD, 3),
    "fourth": (common_pb2.WEEK_INDEX_FOURTH, 4),
    "last": (common_pb2.WEEK_INDEX_LAST, -1),
}
#: Expansion stops here (an endless daily series over a two-year window is ~730).
MAX_EXPANDED = 10_000
#: The longest range one `instances` request covers (the span is cut into pieces read in parallel in one $batch).
INSTANCE_RANGE = dt.timedelta(days=366)
#: What master completion reads of an instance (`$select`; Graph adds `id` and `@odata.etag` anyway).
INSTANCE_FIELDS = ("id", "type", "originalStart", "start", "end", "subject", "location", "body", "isCancelled")


def series_span(window: CacheWindow) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) over which a master's occurrences, modified and deleted, are listed."""
    return window.start, window.end + SERIES_HORIZON


def instance_ranges(start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    """[start, end) cut into consecutive ranges of at most INSTANCE_RANGE."""
    ranges: list[tuple[dt.datetime, dt.datetime]] = []
    while start < end:
        ranges.append((start, min(start + INSTANCE_RANGE, end)))
        start += INSTANCE_RANGE
    return ranges


def _days(pattern: dict[str, Any]) -> list[str]:
    days = pattern.get("daysOfWeek")
    if not isinstance(days, list) or not days or not all(isinstance(d, str) and d.lower() in DAYS for d in days):
        raise NormalizationError(f"recurrence.pattern.daysOfWeek {days!r} does not list weekdays")
    return [d.lower() for d in days]


def _number(pattern: dict[str, Any], key: str, low: int, high: int) -> int:
    value = pattern.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise NormalizationError(f"recurrence.pattern.{key} {value!r} is not {low}..{high}")
    return value


def _index(pattern: dict[str, Any]) -> tuple[common_pb2.WeekIndex.ValueType, int]:
    name = str(pattern.get("index") or "first").lower()
    if name not in INDEXES:
        raise NormalizationError(f"recurrence.pattern.index {pattern.get('index')!r} is not one of {tuple(INDEXES)}")
    return INDEXES[name]


def _relative_day(days: list[str]) -> common_pb2.DayOfWeek.ValueType:
    if len(days) == 1:
        return DAYS[days[0]][0]
    aggregate = AGGREGATES.get(frozenset(days))
    if aggregate is None:
        raise NormalizationError(f"recurrence.pattern.daysOfWeek {days!r} is no day, weekday or weekend day set")
    return aggregate


def _date(value: Any, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise NormalizationError(f"recurrence.range.{what} {value!r} is not a date") from None


def recurrence_of(patterned: Any) -> common_pb2.Recurrence:
    """Graph patternedRecurrence → Recurrence (the contract ews-ingest fills from EWS)."""
    if not isinstance(patterned, dict):
        raise NormalizationError(f"series master recurrence {patterned!r} is not a patternedRecurrence")
    pattern, boundary = patterned.get("pattern"), patterned.get("range")
    if not isinstance(pattern, dict) or not isinstance(boundary, dict):
        raise NormalizationError(f"recurrence {patterned!r} needs a pattern and a range")
    kind = pattern.get("type")
    interval = pattern.get("interval", 1)
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise NormalizationError(f"recurrence.pattern.interval {interval!r} is not a positive integer")
    result = common_pb2.Recurrence()
    if kind == "daily":
        result.daily.interval = interval
    elif kind == "weekly":
        result.weekly.interval = interval
        result.weekly.days_of_week.extend(DAYS[d][0] for d in _days(pattern))
        first = str(pattern.get("firstDayOfWeek") or "sunday").lower()
        if first not in DAYS:
            raise NormalizationError(f"recurrence.pattern.firstDayOfWeek {pattern.get('firstDayOfWeek')!r} is no day")
        result.weekly.first_day_of_week = DAYS[first][0]
    elif kind == "absoluteMonthly":
        result.absolute_monthly.interval = interval
        result.absolute_monthly.day_of_month = _number(pattern, "dayOfMonth", 1, 31)
    elif kind == "relativeMonthly":
        result.relative_monthly.interval = interval
        result.relative_monthly.days_of_week = _relative_day(_days(pattern))
        result.relative_monthly.week_index = _index(pattern)[0]
    elif kind == "absoluteYearly":
        result.absolute_yearly.interval = interval
        result.absolute_yearly.month = _number(pattern, "month", 1, 12)
        result.absolute_yearly.day_of_month = _number(pattern, "dayOfMonth", 1, 31)
    elif kind == "relativeYearly":
        result.relative_yearly.interval = interval
        result.relative_yearly.month = _number(pattern, "month", 1, 12)
        result.relative_yearly.days_of_week = _relative_day(_days(pattern))
        result.relative_yearly.week_index = _index(pattern)[0]
    else:
        raise NormalizationError(f"recurrence.pattern.type {kind!r} is unknown")
    result.start_date = _date(boundary.get("startDate"), "startDate").isoformat()
    range_type = boundary.get("type")
    if range_type == "noEnd":
        result.no_end = True
    elif range_type == "endDate":
        result.end_date = _date(boundary.get("endDate"), "endDate").isoformat()
    elif range_type == "numbered":
        count = boundary.get("numberOfOccurrences")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise NormalizationError(f"recurrence.range.numberOfOccurrences {count!r} is not a positive integer")
        result.number_of_occurrences = count
    else:
        raise NormalizationError(f"recurrence.range.type {range_type!r} is not endDate, noEnd or numbered")
    return result


def _rule(patterned: dict[str, Any], first_local: dt.datetime) -> rrule.rrule:
    pattern, boundary = patterned["pattern"], patterned["range"]
    kind = pattern["type"]
    parts: dict[str, Any] = {"interval": int(pattern.get("interval", 1))}
    parts["wkst"] = DAYS[str(pattern.get("firstDayOfWeek") or "sunday").lower()][1]
    if kind == "daily":
        parts["freq"] = rrule.DAILY
    elif kind == "weekly":
        parts.update(freq=rrule.WEEKLY, byweekday=[DAYS[d][1] for d in _days(pattern)])
    elif kind == "absoluteMonthly":
        parts.update(freq=rrule.MONTHLY, bymonthday=int(pattern["dayOfMonth"]))
    elif kind == "relativeMonthly":
        parts.update(freq=rrule.MONTHLY, byweekday=[DAYS[d][1] for d in _days(pattern)], bysetpos=_index(pattern)[1])
    elif kind == "absoluteYearly":
        parts.update(freq=rrule.YEARLY, bymonth=int(pattern["month"]), bymonthday=int(pattern["dayOfMonth"]))
    else:
        parts.update(
            freq=rrule.YEARLY,
            bymonth=int(pattern["month"]),
            byweekday=[DAYS[d][1] for d in _days(pattern)],
            bysetpos=_index(pattern)[1],
        )
    start = dt.datetime.combine(_date(boundary["startDate"], "startDate"), first_local.time())
    if boundary["type"] == "numbered":
        parts["count"] = int(boundary["numberOfOccurrences"])
    elif boundary["type"] == "endDate":
        parts["until"] = dt.datetime.combine(_date(boundary["endDate"], "endDate"), dt.time(23, 59, 59))
    return rrule.rrule(dtstart=start, cache=False, **parts)


def expected_starts(
    patterned: dict[str, Any],
    first_start: dt.datetime,
    zone: str,
    duration: dt.timedelta,
    lo: dt.datetime,
    hi: dt.datetime,
) -> list[dt.datetime]:
    """UTC original starts of the occurrences the rule puts overlapping [lo, hi), as Graph's calendarView counts."""
    tz = ZoneInfo(zone)
    found: list[dt.datetime] = []
    for count, local in enumerate(_rule(patterned, first_start.astimezone(tz))):
        start = local.replace(tzinfo=tz).astimezone(dt.UTC)
        if start >= hi or count >= MAX_EXPANDED:
            break
        if start + duration > lo or (duration == dt.timedelta(0) and start >= lo):
            found.append(start)
    return found


def complete_master(
    event: calendar_pb2.CalendarEvent,
    master: dict[str, Any],
    instances: list[dict[str, Any]],
    span: tuple[dt.datetime, dt.datetime],
) -> None:
    """Fill `event` (the normalized master) with recurrence, modified and deleted occurrences; `instances` are those
    Graph returned over `span` (series_span), each once."""
    patterned = master.get("recurrence")
    event.recurrence.CopyFrom(recurrence_of(patterned))
    assert isinstance(patterned, dict)
    seen: set[dt.datetime] = set()
    for instance in instances:
        original = parse_utc(instance.get("originalStart"), f"instance {instance.get('id')!r} originalStart")
        seen.add(original)
        if instance.get("type") != "exception":
            continue
        modified = common_pb2.ModifiedOccurrence(
            item_id=str(instance.get("id") or ""),
            subject=str(instance.get("subject") or ""),
            location=str((instance.get("location") or {}).get("displayName") or ""),
            body=plain_text(instance.get("body")),
            cancelled=bool(instance.get("isCancelled")),
        )
        modified.original_start.CopyFrom(timestamp(original))
        modified.start.CopyFrom(timestamp(_instance_time(instance, "start")))
        modified.end.CopyFrom(timestamp(_instance_time(instance, "end")))
        event.modified_occurrences.append(modified)
    first_start, first_end = event.start.ToDatetime(dt.UTC), event.end.ToDatetime(dt.UTC)
    zone = zone_names(str(master.get("originalStartTimeZone") or ""))
    for start in expected_starts(patterned, first_start, zone, first_end - first_start, *span):
        if start not in seen:
            event.deleted_occurrences.append(timestamp(start))


def _instance_time(instance: dict[str, Any], key: str) -> dt.datetime:
    value = instance.get(key)
    if not isinstance(value, dict):
        raise NormalizationError(f"instance {instance.get('id')!r} has no {key}")
    return parse_utc(value.get("dateTime"), f"instance {key}")

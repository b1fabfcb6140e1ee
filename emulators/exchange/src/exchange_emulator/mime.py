"""MimeContent of calendar items: iCalendar (RFC 5545), as Exchange answers `item:MimeContent` of an appointment
and accepts it in CreateItem ("MimeContent", EWS reference: "the MIME content of an item", base64, with the
character set named in CharacterSet; for calendar items the content is a VCALENDAR).

Written: one VEVENT with UID, SEQUENCE, DTSTAMP, DTSTART/DTEND in UTC, SUMMARY, LOCATION, DESCRIPTION (text
body), ORGANIZER, ATTENDEEs with ROLE and PARTSTAT, STATUS, and for a series its RRULE and EXDATEs. Read in
CreateItem: one VEVENT, its TZID kept as the item's time zone (a Windows id as Outlook writes it, or an IANA name
mapped to its Windows id), and an RRULE translated into the EWS pattern that means the same (the patterns of
"Recurrence patterns and time zones in EWS": daily, weekly, absolute/relative monthly and yearly, with a
numbered, end-date or no-end range) and EXDATEs into deleted occurrences. A rule EWS has no pattern for (hourly,
BYHOUR, several month days, more than one RRULE, ...) is refused with ErrorCalendarInvalidRecurrence naming the
part, rather than stored as half of it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import icalendar
from tzlocal.windows_tz import tz_win

from .calxml import ItemError
from .model import Attendee, CalendarItem
from .recurrence import DAY_NAMES, MONTHS, Recurrence, RecurrenceError
from .timezones import is_known, zone_for

PARTSTAT = {
    "Accept": "ACCEPTED",
    "Tentative": "TENTATIVE",
    "Decline": "DECLINED",
    "NoResponseReceived": "NEEDS-ACTION",
    "Unknown": "NEEDS-ACTION",
    "Organizer": "ACCEPTED",
}
RESPONSE = {value: key for key, value in reversed(PARTSTAT.items())}


def to_icalendar(item: CalendarItem) -> bytes:
    top = item.master if item.master is not None and item.occurrence_view else item
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN")
    calendar.add("version", "2.0")
    calendar.add("method", "PUBLISH")
    event = icalendar.Event()
    event.add("uid", top.uid)
    event.add("sequence", top.sequence)
    event.add("dtstamp", top.modified.astimezone(dt.UTC))
    event.add("dtstart", item.start.astimezone(dt.UTC))
    event.add("dtend", item.end.astimezone(dt.UTC))
    event.add("summary", item.subject)
    if item.location:
        event.add("location", item.location)
    if item.body:
        event.add("description", item.body)
    if item.organizer_email:
        event.add("organizer", f"mailto:{item.organizer_email}", parameters={"CN": item.organizer_name or ""})
    for role, attendees in (("REQ-PARTICIPANT", item.required), ("OPT-PARTICIPANT", item.optional)):
        for attendee in attendees:
            params = {"ROLE": role, "PARTSTAT": PARTSTAT.get(attendee.response, "NEEDS-ACTION")}
            if attendee.name:
                params["CN"] = attendee.name
            event.add("attendee", f"mailto:{attendee.email}", parameters=params)
    event.add("status", "CANCELLED" if item.is_cancelled else "CONFIRMED")
    if item is top and top.recurrence is not None:
        rule = str(top.recurrence._rule(top.local_start().replace(tzinfo=None)))
        rrule_line = next(line for line in rule.splitlines() if line.startswith("RRULE:"))
        event.add("rrule", icalendar.vRecur.from_ical(rrule_line.removeprefix("RRULE:")))
        for original in sorted(top.deleted):
            event.add("exdate", original.astimezone(dt.UTC))
    calendar.add_component(event)
    return bytes(calendar.to_ical())


def from_icalendar(data: bytes) -> dict[str, Any]:
    """The fields of the one VEVENT in `data` (keys of CalendarItem); ItemError naming what is wrong."""
    try:
        calendar = icalendar.Calendar.from_ical(data)
    except ValueError as exc:
        raise ItemError("ErrorMimeContentConversionFailed", f"The MIME content is not iCalendar: {exc}") from exc
    events = [c for c in calendar.walk("VEVENT")]
    if len(events) != 1:
        raise ItemError("ErrorMimeContentConversionFailed", f"Expected one VEVENT, found {len(events)}")
    (event,) = events
    start, end = event.get("dtstart"), event.get("dtend")
    if start is None or end is None or not isinstance(start.dt, dt.datetime) or not isinstance(end.dt, dt.datetime):
        raise ItemError("ErrorMimeContentConversionFailed", "The VEVENT needs DTSTART and DTEND date-times")
    starts, ends = start.dt, end.dt
    if starts.tzinfo is None or ends.tzinfo is None:
        raise ItemError("ErrorMimeContentConversionFailed", "Floating DTSTART/DTEND: give UTC or a TZID")
    fields: dict[str, Any] = {
        "start": starts.astimezone(dt.UTC),
        "end": ends.astimezone(dt.UTC),
        "subject": str(event.get("summary", "")),
        "location": str(event.get("location", "")),
        "body": str(event.get("description", "")),
        "body_type": "Text",
    }
    if event.get("uid"):
        fields["uid"] = str(event.get("uid"))
    required: list[Attendee] = []
    optional: list[Attendee] = []
    raw = event.get("attendee") or []
    for value in raw if isinstance(raw, list) else [raw]:
        email = str(value).removeprefix("mailto:").removeprefix("MAILTO:")
        params = getattr(value, "params", {})
        target = optional if params.get("ROLE") == "OPT-PARTICIPANT" else required
        target.append(Attendee(email, str(params.get("CN", "")), "Unknown"))
    fields["required"], fields["optional"] = required, optional
    zone_id = _windows_zone(start.params.get("TZID"), starts)
    if zone_id is not None:
        fields["start_tz"] = fields["end_tz"] = zone_id
    rule = event.get("rrule")
    if rule is not None:
        if zone_id is None:
            raise ItemError(
                "ErrorCalendarInvalidRecurrence",
                f"The series' DTSTART time zone {start.params.get('TZID')!r} is not one Exchange knows",
            )
        local_start = starts.astimezone(zone_for(zone_id))
        try:
            recurrence = recurrence_of(rule, local_start)
            recurrence.validate()
        except RecurrenceError as exc:
            raise ItemError("ErrorCalendarInvalidRecurrence", f"RRULE {rule.to_ical().decode()}: {exc}") from exc
        fields["recurrence"] = recurrence
        fields["deleted"] = _exdates(event.get("exdate"))
    return fields


#: iCalendar day codes in EWS's order (Monday first).
ICAL_DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
#: Which EWS day value a set of days stands for in a relative pattern (BYDAY=MO,...,FR;BYSETPOS=n).
DAY_SETS = {
    frozenset(ICAL_DAYS): "Day",
    frozenset(ICAL_DAYS[:5]): "Weekday",
    frozenset(ICAL_DAYS[5:]): "WeekendDay",
}
ORDINALS = {1: "First", 2: "Second", 3: "Third", 4: "Fourth", -1: "Last"}
RULE_PARTS = {"FREQ", "INTERVAL", "COUNT", "UNTIL", "WKST", "BYDAY", "BYMONTHDAY", "BYMONTH", "BYSETPOS"}


def recurrence_of(rule: icalendar.vRecur, local_start: dt.datetime) -> Recurrence:
    """The EWS recurrence that means `rule` for a series starting at `local_start` (its own time zone)."""
    if isinstance(rule, list):
        raise RecurrenceError("EWS keeps one recurrence pattern per series; this event has several RRULEs")
    parts = {key.upper(): value for key, value in rule.items()}
    unknown = sorted(set(parts) - RULE_PARTS)
    if unknown:
        raise RecurrenceError(f"EWS has no recurrence pattern with {', '.join(unknown)}")
    freq = str(parts["FREQ"][0]) if "FREQ" in parts else ""
    days = [str(day).upper() for day in parts.get("BYDAY", [])]
    month_days = [int(day) for day in parts.get("BYMONTHDAY", [])]
    months = [int(month) for month in parts.get("BYMONTH", [])]
    positions = [int(position) for position in parts.get("BYSETPOS", [])]
    if len(month_days) > 1 or len(months) > 1 or len(positions) > 1:
        raise RecurrenceError("EWS patterns take one day of the month, one month and one position")
    recurrence = Recurrence(pattern="", range_kind="NoEndRecurrence", start_date=local_start.date())
    recurrence.interval = int(parts.get("INTERVAL", [1])[0])
    if freq == "DAILY" and not (days or month_days or months or positions):
        recurrence.pattern = "DailyRecurrence"
    elif freq == "WEEKLY" and not (month_days or months or positions):
        recurrence.pattern = "WeeklyRecurrence"
        recurrence.days_of_week = [_day_name(day) for day in days] or [DAY_NAMES[local_start.weekday()]]
        if "WKST" in parts:
            recurrence.first_day_of_week = _day_name(str(parts["WKST"][0]).upper())
    elif freq in ("MONTHLY", "YEARLY"):
        yearly = freq == "YEARLY"
        if yearly:
            recurrence.month = MONTHS[(months[0] if months else local_start.month) - 1]
        elif months:
            raise RecurrenceError("a monthly RRULE with BYMONTH has no EWS pattern")
        if days:
            index, day = _relative_day(days, positions)
            recurrence.pattern = "RelativeYearlyRecurrence" if yearly else "RelativeMonthlyRecurrence"
            recurrence.days_of_week, recurrence.day_of_week_index = [day], index
        else:
            if positions:
                raise RecurrenceError("BYSETPOS without BYDAY has no EWS pattern")
            recurrence.pattern = "AbsoluteYearlyRecurrence" if yearly else "AbsoluteMonthlyRecurrence"
            recurrence.day_of_month = month_days[0] if month_days else local_start.day
            if not 1 <= recurrence.day_of_month <= 31:
                raise RecurrenceError(f"BYMONTHDAY={recurrence.day_of_month} (counted from the end) has no EWS pattern")
    else:
        raise RecurrenceError(f"FREQ={freq or '(none)'} with these parts has no EWS pattern")
    if "COUNT" in parts and "UNTIL" in parts:
        raise RecurrenceError("COUNT and UNTIL together")
    if "COUNT" in parts:
        recurrence.range_kind, recurrence.number = "NumberedRecurrence", int(parts["COUNT"][0])
    elif "UNTIL" in parts:
        until = parts["UNTIL"][0]
        if isinstance(until, dt.datetime):
            until = (until if until.tzinfo else until.replace(tzinfo=dt.UTC)).astimezone(local_start.tzinfo).date()
        recurrence.range_kind, recurrence.end_date = "EndDateRecurrence", until
    return recurrence


def _day_name(code: str) -> str:
    if code not in ICAL_DAYS:
        raise RecurrenceError(f"BYDAY={code} has no EWS pattern (an ordinal is only for monthly and yearly rules)")
    return DAY_NAMES[ICAL_DAYS.index(code)]


def _relative_day(days: list[str], positions: list[int]) -> tuple[str, str]:
    """(DayOfWeekIndex, DaysOfWeek) of BYDAY=2TU, or of BYDAY=MO,...,FR;BYSETPOS=-1."""
    if len(days) == 1 and days[0][-2:] in ICAL_DAYS and days[0][:-2] and not positions:
        ordinal, code = int(days[0][:-2]), days[0][-2:]
        day = DAY_NAMES[ICAL_DAYS.index(code)]
    elif positions and all(day in ICAL_DAYS for day in days):
        ordinal = positions[0]
        wanted = frozenset(days)
        day = DAY_NAMES[ICAL_DAYS.index(days[0])] if len(wanted) == 1 else DAY_SETS.get(wanted, "")
        if not day:
            raise RecurrenceError(f"BYDAY={','.join(days)} is no day, weekday or weekend day set EWS has")
    else:
        raise RecurrenceError(f"BYDAY={','.join(days)} needs one ordinal day (2TU) or BYSETPOS for EWS")
    if ordinal not in ORDINALS:
        raise RecurrenceError(f"position {ordinal}: EWS has first to fourth and last")
    return ORDINALS[ordinal], day


def _windows_zone(tzid: Any, start: dt.datetime) -> str | None:
    """The Windows time zone id of a DTSTART: its TZID as given when Exchange knows it (Outlook writes Windows
    ids), else the IANA zone's Windows id; UTC for a UTC time; None when there is none."""
    if tzid is None:
        return "UTC" if start.utcoffset() == dt.timedelta(0) else None
    name = str(tzid)
    if is_known(name):
        return name
    if name in ("UTC", "Etc/UTC", "GMT"):
        return "UTC"
    windows = tz_win.get(name)
    return windows if windows is not None and is_known(windows) else None


def _exdates(value: Any) -> set[dt.datetime]:
    """EXDATE properties (one or several, each with one or several instants) as UTC original starts."""
    found: set[dt.datetime] = set()
    for prop in value if isinstance(value, list) else [value] if value is not None else []:
        for entry in prop.dts:
            moment = entry.dt
            if isinstance(moment, dt.datetime) and moment.tzinfo is not None:
                found.add(moment.astimezone(dt.UTC))
    return found

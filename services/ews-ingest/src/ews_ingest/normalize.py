"""exchangelib CalendarItem → CalendarEvent (calendar.proto).

Times become UTC instants; the item's own time zone is kept as IANA name (recurrence expands in it) and as the
Windows id Exchange gave. All-day items keep their local midnights: start = first day 00:00, end = the day after
the last day 00:00, both in the item's zone. Anything the engine could not use safely raises NormalizationError;
the caller quarantines that item and carries on with the rest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exchangelib import EWSDateTime
from google.protobuf.timestamp_pb2 import Timestamp
from lxml import html as lxml_html

from ews_ingest.conference_marker import MARKER_FIELD, MarkerError, MarkerParser
from ews_ingest.normalize_tz import install as install_time_zone_definitions
from tccal.event_text import shown_body
from trueconf.calendar.v1 import calendar_pb2, common_pb2

RESPONSES: dict[str, common_pb2.ResponseType.ValueType] = {
    "Unknown": common_pb2.RESPONSE_TYPE_UNKNOWN,
    "Organizer": common_pb2.RESPONSE_TYPE_ORGANIZER,
    "Tentative": common_pb2.RESPONSE_TYPE_TENTATIVE,
    "Accept": common_pb2.RESPONSE_TYPE_ACCEPT,
    "Decline": common_pb2.RESPONSE_TYPE_DECLINE,
    "NoResponseReceived": common_pb2.RESPONSE_TYPE_NO_RESPONSE_RECEIVED,
}
SENSITIVITIES: dict[str, common_pb2.Sensitivity.ValueType] = {
    "Normal": common_pb2.SENSITIVITY_NORMAL,
    "Personal": common_pb2.SENSITIVITY_PERSONAL,
    "Private": common_pb2.SENSITIVITY_PRIVATE,
    "Confidential": common_pb2.SENSITIVITY_CONFIDENTIAL,
}
KINDS: dict[str, calendar_pb2.ItemKind.ValueType] = {
    "Single": calendar_pb2.ITEM_KIND_SINGLE,
    "RecurringMaster": calendar_pb2.ITEM_KIND_RECURRING_MASTER,
    "Occurrence": calendar_pb2.ITEM_KIND_OCCURRENCE,
    "Exception": calendar_pb2.ITEM_KIND_EXCEPTION,
}
# EWS enumerations in exchangelib's order (exchangelib stores 1-based positions).
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "Day", "Weekday",
                 "WeekendDay")  # fmt: skip
WEEK_NAMES = ("First", "Second", "Third", "Fourth", "Last")
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December")  # fmt: skip


# Custom TimeZoneDefinitions (Outlook's "Customized Time Zone") become IANA zones instead of being dropped.
install_time_zone_definitions()


class NormalizationError(ValueError):
    """The item cannot be turned into a CalendarEvent; the message says which field and why."""


def plain_utc(moment: dt.datetime) -> dt.datetime:
    """A standard-library UTC datetime of `moment` (exchangelib's EWSDateTime refuses non-EWS time zones)."""
    if moment.tzinfo is None:
        raise NormalizationError(f"time {moment.isoformat()} has no time zone")
    offset = moment.utcoffset() or dt.timedelta(0)
    naive = moment.replace(tzinfo=None) if not isinstance(moment, EWSDateTime) else _naive(moment)
    base = naive - offset
    return dt.datetime(
        base.year, base.month, base.day, base.hour, base.minute, base.second, base.microsecond, tzinfo=dt.UTC
    )


def _naive(moment: dt.datetime) -> dt.datetime:
    return dt.datetime(
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second, moment.microsecond
    )


def timestamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(plain_utc(moment))
    return stamp


def _enum_index(value: Any, names: tuple[str, ...], what: str) -> int:
    """exchangelib's EnumField value (1-based int, or the EWS name) as a 1-based position."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= len(names):
        return value
    if isinstance(value, str) and value in names:
        return names.index(value) + 1
    raise NormalizationError(f"recurrence {what} {value!r} is not one of {', '.join(names)}")


def _day(value: Any) -> common_pb2.DayOfWeek.ValueType:
    return common_pb2.DayOfWeek.ValueType(_enum_index(value, WEEKDAY_NAMES, "day of week"))


def _week(value: Any) -> common_pb2.WeekIndex.ValueType:
    return common_pb2.WeekIndex.ValueType(_enum_index(value, WEEK_NAMES, "week index"))


def _month(value: Any) -> int:
    return _enum_index(value, MONTH_NAMES, "month")


def _date_text(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    raise NormalizationError(f"recurrence range date {value!r} is not a date")


def recurrence(value: Any) -> common_pb2.Recurrence:
    """EWS Recurrence (exchangelib) → Recurrence, every pattern and range EWS has for calendar items."""
    pattern, boundary = value.pattern, value.boundary
    result = common_pb2.Recurrence()
    kind = type(pattern).__name__
    if kind == "DailyPattern":
        result.daily.interval = int(pattern.interval)
    elif kind == "WeeklyPattern":
        days = pattern.weekdays if isinstance(pattern.weekdays, (list, tuple)) else [pattern.weekdays]
        result.weekly.interval = int(pattern.interval)
        result.weekly.days_of_week.extend(_day(d) for d in days)
        result.weekly.first_day_of_week = _day(pattern.first_day_of_week or 1)
    elif kind == "AbsoluteMonthlyPattern":
        result.absolute_monthly.interval = int(pattern.interval)
        result.absolute_monthly.day_of_month = int(pattern.day_of_month)
    elif kind == "RelativeMonthlyPattern":
        result.relative_monthly.interval = int(pattern.interval)
        result.relative_monthly.days_of_week = _day(pattern.weekday)
        result.relative_monthly.week_index = _week(pattern.week_number)
    elif kind == "AbsoluteYearlyPattern":
        result.absolute_yearly.month = _month(pattern.month)
        result.absolute_yearly.day_of_month = int(pattern.day_of_month)
    elif kind == "RelativeYearlyPattern":
        result.relative_yearly.month = _month(pattern.month)
        result.relative_yearly.days_of_week = _day(pattern.weekday)
        result.relative_yearly.week_index = _week(pattern.week_number)
    else:
        raise NormalizationError(f"recurrence pattern {kind} is not a calendar pattern (task regeneration?)")
    boundary_kind = type(boundary).__name__
    result.start_date = _date_text(boundary.start)
    if boundary_kind == "NoEndPattern":
        result.no_end = True
    elif boundary_kind == "EndDatePattern":
        result.end_date = _date_text(boundary.end)
    elif boundary_kind == "NumberedPattern":
        result.number_of_occurrences = int(boundary.number)
    else:
        raise NormalizationError(f"recurrence range {boundary_kind} is unknown")
    return result


def plain_text(item: Any) -> str:
    """The body as plain text: TextBody when Exchange gave it, else the HTML body's text."""
    text = getattr(item, "text_body", None)
    if text:
        return str(text).strip()
    body = getattr(item, "body", None)
    if not body:
        return ""
    if type(body).__name__ == "HTMLBody":
        try:
            return str(lxml_html.fromstring(str(body)).text_content()).strip()
        except (ValueError, TypeError):
            return str(body).strip()
    return str(body).strip()


def _person(mailbox: Any) -> common_pb2.Person:
    if mailbox is None:
        return common_pb2.Person()
    email = mailbox.email_address or ""
    if email and (mailbox.routing_type or "SMTP").upper() == "SMTP":
        email = email.lower()
    return common_pb2.Person(email=email, name=mailbox.name or "")


def _attendees(item: Any) -> list[common_pb2.Attendee]:
    out: list[common_pb2.Attendee] = []
    for field_name, role in (
        ("required_attendees", common_pb2.ATTENDEE_ROLE_REQUIRED),
        ("optional_attendees", common_pb2.ATTENDEE_ROLE_OPTIONAL),
        ("resources", common_pb2.ATTENDEE_ROLE_RESOURCE),
    ):
        for attendee in getattr(item, field_name, None) or []:
            entry = common_pb2.Attendee(
                person=_person(attendee.mailbox),
                role=role,
                response=RESPONSES.get(attendee.response_type or "", common_pb2.RESPONSE_TYPE_UNSPECIFIED),
            )
            if attendee.last_response_time is not None:
                entry.last_response_time.CopyFrom(timestamp(attendee.last_response_time))
            out.append(entry)
    return out


def _zone(item: Any) -> tuple[str, str, dt.tzinfo]:
    """(IANA name, Windows id, tzinfo) of the item's start time zone; UTC when Exchange gave none."""
    tz = getattr(item, "_start_timezone", None) or getattr(item, "_meeting_timezone", None)
    if tz is None:
        return "UTC", "UTC", dt.UTC
    iana = str(getattr(tz, "key", "") or "UTC")
    if iana == "Etc/UTC":
        iana = "UTC"
    windows = str(getattr(tz, "ms_id", "") or "")
    try:
        zone: dt.tzinfo = ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError):
        raise NormalizationError(f"time zone {iana!r} (Windows {windows!r}) is unknown to tzdata") from None
    return iana, windows, zone


def _instant(value: Any, zone: dt.tzinfo, *, end: bool, what: str) -> dt.datetime:
    if value is None:
        raise NormalizationError(f"{what} is missing")
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise NormalizationError(f"{what} {value.isoformat()} has no time zone")
        return value
    if isinstance(value, dt.date):
        # exchangelib gives all-day start/end as dates (end = last day): back to local midnights.
        day = value + dt.timedelta(days=1) if end else value
        return dt.datetime(day.year, day.month, day.day, tzinfo=zone)
    raise NormalizationError(f"{what} {value!r} is not a date or time")


def normalize(
    item: Any,
    *,
    marker: MarkerParser,
    exceptions: Mapping[str, Any] | None = None,
) -> calendar_pb2.CalendarEvent:
    """One CalendarEvent from an exchangelib CalendarItem fetched with all its properties.

    `exceptions` maps the item ids of a master's modified occurrences to their fetched CalendarItems (for the
    subject, location, body and cancellation an exception overrides).
    """
    item_id = getattr(item, "id", None)
    if not item_id:
        raise NormalizationError("item has no ItemId")
    uid = getattr(item, "uid", None)
    if not uid:
        raise NormalizationError("item has no UID (calendar:UID)")
    iana, windows, zone = _zone(item)
    start = _instant(item.start, zone, end=False, what="Start")
    end = _instant(item.end, zone, end=True, what="End")
    if end < start:
        raise NormalizationError(f"End {end.isoformat()} is before Start {start.isoformat()}")
    kind = KINDS.get(getattr(item, "type", None) or "Single")
    if kind is None:
        raise NormalizationError(f"CalendarItemType {item.type!r} is unknown")
    subject = item.subject or ""
    location = item.location or ""
    body = plain_text(item)
    event = calendar_pb2.CalendarEvent(
        item_id=item_id,
        change_key=item.changekey or "",
        uid=uid,
        kind=kind,
        subject=subject,
        body=shown_body(body),
        location=location,
        time_zone=iana,
        windows_time_zone=windows,
        all_day=bool(item.is_all_day),
        organizer=_person(item.organizer),
        my_response=RESPONSES.get(item.my_response_type or "", common_pb2.RESPONSE_TYPE_UNSPECIFIED),
        cancelled=bool(item.is_cancelled),
        sensitivity=SENSITIVITIES.get(item.sensitivity or "", common_pb2.SENSITIVITY_UNSPECIFIED),
        is_meeting=bool(item.is_meeting),
        appointment_sequence=int(item.appointment_sequence_number or 0),
    )
    event.start.CopyFrom(timestamp(start))
    event.end.CopyFrom(timestamp(end))
    event.attendees.extend(_attendees(item))
    if item.last_modified_time is not None:
        event.last_modified.CopyFrom(timestamp(item.last_modified_time))
    recurrence_id = getattr(item, "recurrence_id", None) or getattr(item, "original_start", None)
    if recurrence_id is not None and kind in (calendar_pb2.ITEM_KIND_EXCEPTION, calendar_pb2.ITEM_KIND_OCCURRENCE):
        event.recurrence_id.CopyFrom(timestamp(recurrence_id))
    if kind == calendar_pb2.ITEM_KIND_RECURRING_MASTER:
        if item.recurrence is None:
            raise NormalizationError("recurring master has no Recurrence")
        event.recurrence.CopyFrom(recurrence(item.recurrence))
        event.modified_occurrences.extend(_modified(item.modified_occurrences or [], exceptions or {}))
        for deleted in item.deleted_occurrences or []:
            if deleted.start is None:
                raise NormalizationError("a DeletedOccurrence has no Start")
            event.deleted_occurrences.append(timestamp(deleted.start))
    delegate = delegate_of(item, event.organizer, event.attendees)
    if delegate is not None:
        event.created_by_delegate.CopyFrom(delegate)
    try:
        spec = marker.detect(getattr(item, MARKER_FIELD, None), subject, location, body)
    except MarkerError as exc:
        raise NormalizationError(str(exc)) from None
    if spec is not None:
        event.conference.CopyFrom(spec)
    return event


def _modified(occurrences: Iterable[Any], exceptions: Mapping[str, Any]) -> list[common_pb2.ModifiedOccurrence]:
    out: list[common_pb2.ModifiedOccurrence] = []
    for occurrence in occurrences:
        if occurrence.original_start is None or occurrence.start is None or occurrence.end is None:
            raise NormalizationError("a ModifiedOccurrence lacks Start, End or OriginalStart")
        entry = common_pb2.ModifiedOccurrence(item_id=occurrence.id or "")
        entry.original_start.CopyFrom(timestamp(occurrence.original_start))
        entry.start.CopyFrom(timestamp(occurrence.start))
        entry.end.CopyFrom(timestamp(occurrence.end))
        detail = exceptions.get(occurrence.id or "")
        if detail is not None:
            entry.subject = detail.subject or ""
            entry.location = detail.location or ""
            entry.body = shown_body(plain_text(detail))
            entry.cancelled = bool(detail.is_cancelled)
        out.append(entry)
    return out


def delegate_of(
    item: Any, organizer: common_pb2.Person, attendees: Iterable[common_pb2.Attendee] = ()
) -> common_pb2.Person | None:
    """The delegate who last wrote the organizer's copy on the organizer's behalf (EWS LastModifiedName).

    Exchange keeps no "created by" on calendar items; on the organizer's own copy a LastModifiedName that is
    neither the organizer nor an attendee (whose answers also touch the organizer's copy) is the delegate (Outlook's
    "on behalf of"). Attendee copies never name a delegate.
    """
    if item.my_response_type != "Organizer":
        return None
    name = (getattr(item, "last_modified_name", None) or "").strip()
    if not name or not organizer.name:
        return None
    others = {organizer.name.casefold(), organizer.email.casefold()}
    for attendee in attendees:
        others.add(attendee.person.name.casefold())
        others.add(attendee.person.email.casefold())
    if name.casefold() in others:
        return None
    return common_pb2.Person(name=name)

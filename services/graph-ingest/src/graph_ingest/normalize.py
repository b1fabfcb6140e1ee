"""Microsoft Graph event JSON (calendarView/delta, asked with `Prefer: outlook.timezone="UTC"`) → CalendarEvent.

Graph's event resource: https://learn.microsoft.com/en-us/graph/api/resources/event. Times arrive as
`dateTimeTimeZone` in UTC (the Prefer header); the event's own zone is `originalStartTimeZone` (a Windows or an
IANA name), kept as IANA name and as given. calendarView/delta returns instances, never series masters: a single
event is ITEM_KIND_SINGLE, an unmodified occurrence ITEM_KIND_OCCURRENCE and a modified one ITEM_KIND_EXCEPTION, both
with `recurrence_id` = `originalStart` (the engine shows each such instance as one occurrence of the meeting its
iCalUId names). The conference marker is detected exactly as for EWS (tccal.conference_marker), its property read
from `singleValueExtendedProperties`. Anything unusable raises NormalizationError (the item is skipped and logged).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf.timestamp_pb2 import Timestamp
from lxml import html as lxml_html
from tzlocal.windows_tz import win_tz

from tccal.conference_marker import MARKER_GRAPH_PROPERTY_ID, MarkerError, MarkerParser
from tccal.event_text import shown_body
from trueconf.calendar.v1 import calendar_pb2, common_pb2

#: Graph responseType → ResponseType (https://learn.microsoft.com/en-us/graph/api/resources/responsestatus).
RESPONSES: dict[str, common_pb2.ResponseType.ValueType] = {
    "none": common_pb2.RESPONSE_TYPE_UNKNOWN,
    "organizer": common_pb2.RESPONSE_TYPE_ORGANIZER,
    "tentativelyAccepted": common_pb2.RESPONSE_TYPE_TENTATIVE,
    "accepted": common_pb2.RESPONSE_TYPE_ACCEPT,
    "declined": common_pb2.RESPONSE_TYPE_DECLINE,
    "notResponded": common_pb2.RESPONSE_TYPE_NO_RESPONSE_RECEIVED,
}
SENSITIVITIES: dict[str, common_pb2.Sensitivity.ValueType] = {
    "normal": common_pb2.SENSITIVITY_NORMAL,
    "personal": common_pb2.SENSITIVITY_PERSONAL,
    "private": common_pb2.SENSITIVITY_PRIVATE,
    "confidential": common_pb2.SENSITIVITY_CONFIDENTIAL,
}
KINDS: dict[str, calendar_pb2.ItemKind.ValueType] = {
    "singleInstance": calendar_pb2.ITEM_KIND_SINGLE,
    "seriesMaster": calendar_pb2.ITEM_KIND_RECURRING_MASTER,
    "occurrence": calendar_pb2.ITEM_KIND_OCCURRENCE,
    "exception": calendar_pb2.ITEM_KIND_EXCEPTION,
}
ROLES: dict[str, common_pb2.AttendeeRole.ValueType] = {
    "required": common_pb2.ATTENDEE_ROLE_REQUIRED,
    "optional": common_pb2.ATTENDEE_ROLE_OPTIONAL,
    "resource": common_pb2.ATTENDEE_ROLE_RESOURCE,
}


class NormalizationError(ValueError):
    """The event cannot be turned into a CalendarEvent; the message says which field and why."""


def parse_utc(value: Any, what: str) -> dt.datetime:
    """An ISO 8601 time from Graph as a UTC datetime (naive values are UTC: the Prefer header asked for UTC)."""
    if not isinstance(value, str) or not value:
        raise NormalizationError(f"{what} is missing")
    text = value.replace("Z", "+00:00")
    # Graph writes seven fractional digits (2026-01-05T10:00:00.0000000); Python reads at most six.
    if "." in text:
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        rest = tail[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest}"
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise NormalizationError(f"{what} {value!r} is not an ISO 8601 time") from None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _time(value: Any, what: str) -> dt.datetime:
    if not isinstance(value, dict):
        raise NormalizationError(f"{what} is missing")
    zone = str(value.get("timeZone") or "UTC")
    moment = parse_utc(value.get("dateTime"), what)
    if zone not in ("UTC", "Etc/UTC", "tzone://Microsoft/Utc"):
        raise NormalizationError(f"{what} is in {zone!r}, not UTC (was Prefer: outlook.timezone sent?)")
    return moment


def timestamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def zone_names(name: str | None) -> str:
    """The IANA name of a Graph time zone (Windows id such as "W. Europe Standard Time", or IANA); UTC if unknown."""
    if not name:
        return "UTC"
    candidate = win_tz.get(name, name)
    try:
        ZoneInfo(candidate)
    except (ZoneInfoNotFoundError, ValueError):
        return "UTC"
    return "UTC" if candidate == "Etc/UTC" else candidate


def _person(value: Any) -> common_pb2.Person:
    email = (value or {}).get("emailAddress") or {}
    return common_pb2.Person(email=str(email.get("address") or "").lower(), name=str(email.get("name") or ""))


def _attendees(event: dict[str, Any]) -> list[common_pb2.Attendee]:
    out: list[common_pb2.Attendee] = []
    for attendee in event.get("attendees") or []:
        status = attendee.get("status") or {}
        entry = common_pb2.Attendee(
            person=_person(attendee),
            role=ROLES.get(str(attendee.get("type") or "required"), common_pb2.ATTENDEE_ROLE_REQUIRED),
            response=RESPONSES.get(str(status.get("response") or ""), common_pb2.RESPONSE_TYPE_UNSPECIFIED),
        )
        answered = status.get("time")
        if isinstance(answered, str) and answered and not answered.startswith("0001-01-01"):
            entry.last_response_time.CopyFrom(timestamp(parse_utc(answered, "attendee status time")))
        out.append(entry)
    return out


def plain_text(body: Any) -> str:
    """The body's text: HTML bodies through lxml (tags dropped), text bodies as they are."""
    if not isinstance(body, dict):
        return ""
    content = str(body.get("content") or "")
    if not content.strip():
        return ""
    if str(body.get("contentType") or "text").lower() == "html":
        try:
            return str(lxml_html.fromstring(content).text_content()).strip()
        except (ValueError, TypeError):
            return content.strip()
    return content.strip()


def marker_property(event: dict[str, Any]) -> str | None:
    """The TrueConfMeeting extended property's value, when the event has it."""
    for prop in event.get("singleValueExtendedProperties") or []:
        if str(prop.get("id", "")).lower() == MARKER_GRAPH_PROPERTY_ID.lower():
            value = prop.get("value")
            return str(value) if value is not None else None
    return None


def normalize(event: dict[str, Any], *, marker: MarkerParser) -> calendar_pb2.CalendarEvent:
    """One CalendarEvent from one Graph event (an instance as calendarView/delta returns it)."""
    item_id = event.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise NormalizationError("event has no id")
    uid = event.get("iCalUId")
    if not isinstance(uid, str) or not uid:
        raise NormalizationError("event has no iCalUId")
    kind = KINDS.get(str(event.get("type") or "singleInstance"))
    if kind is None:
        raise NormalizationError(f"event type {event.get('type')!r} is unknown")
    start = _time(event.get("start"), "start")
    end = _time(event.get("end"), "end")
    if end < start:
        raise NormalizationError(f"end {end.isoformat()} is before start {start.isoformat()}")
    windows = str(event.get("originalStartTimeZone") or "")
    subject = str(event.get("subject") or "")
    location = str((event.get("location") or {}).get("displayName") or "")
    body = plain_text(event.get("body"))
    attendees = _attendees(event)
    result = calendar_pb2.CalendarEvent(
        item_id=item_id,
        change_key=str(event.get("changeKey") or ""),
        uid=uid,
        kind=kind,
        subject=subject,
        body=shown_body(body),
        location=location,
        time_zone=zone_names(windows),
        windows_time_zone=windows,
        all_day=bool(event.get("isAllDay")),
        organizer=_person(event.get("organizer")),
        my_response=RESPONSES.get(
            str((event.get("responseStatus") or {}).get("response") or ""), common_pb2.RESPONSE_TYPE_UNSPECIFIED
        ),
        cancelled=bool(event.get("isCancelled")),
        sensitivity=SENSITIVITIES.get(str(event.get("sensitivity") or ""), common_pb2.SENSITIVITY_UNSPECIFIED),
        is_meeting=bool(attendees),
    )
    result.start.CopyFrom(timestamp(start))
    result.end.CopyFrom(timestamp(end))
    result.attendees.extend(attendees)
    if event.get("lastModifiedDateTime"):
        result.last_modified.CopyFrom(timestamp(parse_utc(event["lastModifiedDateTime"], "lastModifiedDateTime")))
    if kind in (calendar_pb2.ITEM_KIND_OCCURRENCE, calendar_pb2.ITEM_KIND_EXCEPTION):
        result.recurrence_id.CopyFrom(timestamp(parse_utc(event.get("originalStart"), "originalStart")))
    try:
        spec = marker.detect(marker_property(event), subject, location, body)
    except MarkerError as exc:
        raise NormalizationError(str(exc)) from None
    if spec is not None:
        result.conference.CopyFrom(spec)
    return result

"""MimeContent of calendar items: iCalendar (RFC 5545), as Exchange answers `item:MimeContent` of an appointment
and accepts it in CreateItem ("MimeContent", EWS reference: "the MIME content of an item", base64, with the
character set named in CharacterSet; for calendar items the content is a VCALENDAR).

Written: one VEVENT with UID, SEQUENCE, DTSTAMP, DTSTART/DTEND in UTC, SUMMARY, LOCATION, DESCRIPTION (text
body), ORGANIZER, ATTENDEEs with ROLE and PARTSTAT, STATUS, and for a series its RRULE and EXDATEs. Read in
CreateItem: one VEVENT that does not recur. Exchange also imports recurring ones; this emulator does not translate
an RRULE into an EWS pattern and says so (ErrorCalendarInvalidRecurrence naming the reason) rather than store
half of it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import icalendar

from .calxml import ItemError
from .model import Attendee, CalendarItem

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
    if event.get("rrule") is not None:
        raise ItemError(
            "ErrorCalendarInvalidRecurrence",
            "This emulator does not import recurring iCalendar events (RRULE); create the series with Recurrence.",
        )
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
    return fields

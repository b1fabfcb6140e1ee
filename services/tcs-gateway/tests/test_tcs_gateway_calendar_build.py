"""A getCalendarList built the fast way (payloads.encoded_events_for: each meeting's shared part built once, each
event encoded once, pages written around those texts) is byte for byte the list built the straightforward way:
every occurrence through build_event and fit_event on its own, json.dumps of every frame."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st

from tccal.cache_window import CacheWindow
from tcs_gateway.bridge.events import (
    OCCURRENCE_OWN_FIELDS,
    _meeting_event,
    build_event,
    fit_event,
    meeting_key,
    overlaps,
)
from tcs_gateway.bridge.framing import format_instant
from tcs_gateway.bridge.list_pages import page_frame, split_pages
from tcs_gateway.bridge.payloads import encoded_events_for, event_budget
from trueconf.calendar.v1 import calendar_pb2, common_pb2

#: A small frame limit, so that a few events make several pages and long texts reach the limit.
MAX_FRAME = 24_576
BUDGET = event_budget(MAX_FRAME)
WINDOW = CacheWindow(datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 7, 1, tzinfo=UTC))
HOST = "video.example.test"
USERS = ["bob@example.test", "Bob@Example.test", "carol@example.test"]
EMAILS = ["alice@example.test", "bob@example.test", "BOB@example.test", "carol@example.test", "", "not-an-address"]
RESPONSES = list(common_pb2.ResponseType.values())
ROLES = list(common_pb2.AttendeeRole.values())
ZONES = st.sampled_from(["Europe/Moscow", "UTC", "", "Mars/Base"])
SHORT = st.sampled_from(["", "Planning", "Planning ", 'm\x00\x1f\x7f\\"', "«Планёрка» \u2028\u2029", "\U0001f600" * 3])
#: Texts of any length up to the frame limit's and beyond it: long bodies make events that do not fit (fit_event).
LONG = st.builds(
    lambda char, count: char * count, st.sampled_from(["x", "\x02", "ё", "\U0001f600"]), st.integers(0, 30_000)
)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _people(draw: st.DrawFn, occurrence: calendar_pb2.Occurrence) -> None:
    occurrence.organizer.email = draw(st.sampled_from(EMAILS))
    occurrence.organizer.name = draw(SHORT)
    del occurrence.attendees[:]
    for _ in range(draw(st.integers(0, 4))):
        occurrence.attendees.add(
            person=common_pb2.Person(email=draw(st.sampled_from(EMAILS)), name=draw(SHORT)),
            role=draw(st.sampled_from(ROLES)),
            response=draw(st.sampled_from(RESPONSES)),
        )
    occurrence.my_response = draw(st.sampled_from(RESPONSES))


def _at(occurrence: calendar_pb2.Occurrence, start: datetime, minutes: int) -> None:
    occurrence.start.FromDatetime(start)
    occurrence.end.FromDatetime(start + timedelta(minutes=minutes))  # before the start when minutes < 0


TWEAKS = (
    *("subject", "body", "location", "time_zone", "all_day", "private", "recurring", "my_response", "organizer"),
    *("organizer_name", "conference", "attendee", "attendee_name", "role", "response", "invitee", "time"),
)


def _tweak(draw: st.DrawFn, occurrence: calendar_pb2.Occurrence) -> None:
    """An exception of a series: one field of the meeting's changed (any field the event is built of)."""
    field = draw(st.sampled_from(TWEAKS))
    attendees = occurrence.attendees
    if field in ("subject", "location"):
        setattr(occurrence, field, draw(SHORT))
    elif field == "body":
        occurrence.body = draw(st.one_of(SHORT, LONG))
    elif field == "time_zone":
        occurrence.time_zone = draw(ZONES)
    elif field in ("all_day", "private", "recurring"):
        setattr(occurrence, field, not getattr(occurrence, field))
    elif field == "my_response":
        occurrence.my_response = draw(st.sampled_from(RESPONSES))
    elif field == "organizer":
        occurrence.organizer.email = draw(st.sampled_from(EMAILS))
    elif field == "organizer_name":
        occurrence.organizer.name = draw(SHORT)
    elif field == "conference":
        if draw(st.booleans()):
            occurrence.ClearField("conference")
        else:
            occurrence.conference.url = draw(st.sampled_from(["", "https://other.example.test/c/561849261795"]))
    elif field == "invitee":
        if len(attendees) > 0 and draw(st.booleans()):
            del attendees[draw(st.integers(0, len(attendees) - 1))]
        else:
            attendees.add(person=common_pb2.Person(email=draw(st.sampled_from(EMAILS))), response=1)
    elif field == "time":
        start = datetime(2025, 5, 28, tzinfo=UTC) + timedelta(minutes=draw(st.integers(0, 60 * 24 * 40)))
        _at(occurrence, start, draw(st.integers(-30, 90)))
    elif attendees:
        attendee = attendees[draw(st.integers(0, len(attendees) - 1))]
        if field == "attendee":
            attendee.person.email = draw(st.sampled_from(EMAILS))
        elif field == "attendee_name":
            attendee.person.name = draw(SHORT)
        elif field == "role":
            attendee.role = draw(st.sampled_from(ROLES))
        else:
            attendee.response = draw(st.sampled_from(RESPONSES))


@st.composite
def calendars(draw: st.DrawFn) -> list[calendar_pb2.Occurrence]:
    """Series of occurrences that share their meeting's fields, some of them exceptions that differ in one field
    or a few, in any order; some outside the window, some ids twice."""
    occurrences: list[calendar_pb2.Occurrence] = []
    for number in range(draw(st.integers(1, 4))):
        meeting = calendar_pb2.Occurrence(
            meeting_id=draw(st.sampled_from([f"meeting-{number}", ""])),
            uid=draw(st.sampled_from([f"uid-{number}", ""])),
            subject=draw(SHORT),
            body=draw(st.one_of(SHORT, LONG)),
            location=draw(SHORT),
            time_zone=draw(ZONES),
            all_day=draw(st.booleans()),
            private=draw(st.booleans()),
            recurring=draw(st.booleans()),
        )
        _people(draw, meeting)
        if draw(st.booleans()):
            meeting.conference.id = draw(st.sampled_from(["561849261795", "bad id!"]))
            meeting.conference.url = draw(st.sampled_from(["", "https://video.example.test/c/561849261795"]))
        moment = datetime(2025, 5, 1, tzinfo=UTC) + timedelta(microseconds=draw(st.integers(0, 10**12)))
        meeting.updated_at.FromDatetime(moment)
        first = datetime(2025, 5, 28, 9, tzinfo=UTC) + timedelta(hours=draw(st.integers(0, 24 * 40)))
        for index in range(draw(st.integers(1, 8))):
            occurrence = calendar_pb2.Occurrence()
            occurrence.CopyFrom(meeting)
            occurrence.id = draw(st.sampled_from([f"{number}@{index}", f"{number}@0", "x" * 600]))
            offset = timedelta(days=index, microseconds=draw(st.sampled_from([0, 1, 999_999])))
            _at(occurrence, first + offset, 30)
            occurrence.cancelled = draw(st.booleans())
            for _ in range(draw(st.integers(0, 2))):
                _tweak(draw, occurrence)
            occurrences.append(occurrence)
    return draw(st.permutations(occurrences))


def _straightforward(occurrences: list[calendar_pb2.Occurrence], user: str, seq: int) -> list[dict[str, Any]]:
    """The list as every event alone makes it: built, fitted, inside the window, the last of an id, by start."""
    found: dict[str, dict[str, Any]] = {}
    for occurrence in occurrences:
        event = fit_event(build_event(occurrence, user, seq, server_host=HOST), BUDGET, user)
        if overlaps(event, WINDOW.start, WINDOW.end):
            found[event["id"]] = event
    return sorted(found.values(), key=lambda e: (e["start"], e["id"]))


@settings(max_examples=200, deadline=None)
@given(calendars(), st.sampled_from(USERS))
def test_the_fast_list_is_byte_for_byte_the_straightforward_one(
    occurrences: list[calendar_pb2.Occurrence], user: str
) -> None:
    seq = 7_000_001
    expected = _straightforward(occurrences, user, seq)
    texts = encoded_events_for(occurrences, user, seq, WINDOW, server_host=HOST, budget=BUDGET)
    assert texts == [_json(event) for event in expected]
    window_from, window_to = format_instant(WINDOW.start), format_instant(WINDOW.end)
    pages = split_pages(texts, user, window_from, window_to, MAX_FRAME)
    answer = {"errorCode": 0, "user": user, "from": window_from, "to": window_to, "seq": seq, "listId": "l1st"}
    offset = 0
    for number, page in enumerate(pages):
        head = dict(answer, page=number, pageCount=len(pages))
        frame = page_frame(number + 1, head, page)
        events = expected[offset : offset + len(page)]
        assert frame == _json({"type": 2, "id": number + 1, "payload": dict(head, events=events)})
        assert len(frame) <= MAX_FRAME
        offset += len(page)
    assert offset == len(expected)


def _series_member() -> calendar_pb2.Occurrence:
    """An occurrence of a series bob is invited to, with every field the event shows set."""
    occurrence = calendar_pb2.Occurrence(
        id="s@1",
        meeting_id="s",
        uid="uid-s",
        subject="Planning",
        body="Agenda",
        location="Room 4",
        time_zone="Europe/Moscow",
        recurring=True,
        organizer=common_pb2.Person(email="alice@example.test", name="Alice"),
        my_response=common_pb2.RESPONSE_TYPE_UNSPECIFIED,
        conference=common_pb2.ConferenceLink(id="561849261795", url="https://video.example.test/c/561849261795"),
    )
    for email, name in (("bob@example.test", "Bob"), ("carol@example.test", "Carol")):
        occurrence.attendees.add(
            person=common_pb2.Person(email=email, name=name),
            role=common_pb2.ATTENDEE_ROLE_REQUIRED,
            response=common_pb2.RESPONSE_TYPE_ACCEPT,
        )
    _at(occurrence, datetime(2025, 6, 2, 9, tzinfo=UTC), 30)
    occurrence.updated_at.FromDatetime(datetime(2025, 5, 1, tzinfo=UTC))
    return occurrence


EXCEPTIONS = {
    "subject": lambda o: setattr(o, "subject", "Moved"),
    "body": lambda o: setattr(o, "body", "Other agenda"),
    "location": lambda o: setattr(o, "location", "Room 5"),
    "time_zone": lambda o: setattr(o, "time_zone", "Europe/Berlin"),
    "all_day": lambda o: setattr(o, "all_day", True),
    "private": lambda o: setattr(o, "private", True),
    "recurring": lambda o: setattr(o, "recurring", False),
    "my_response": lambda o: setattr(o, "my_response", common_pb2.RESPONSE_TYPE_DECLINE),
    "organizer": lambda o: setattr(o.organizer, "email", "dave@example.test"),
    "organizer name": lambda o: setattr(o.organizer, "name", "Alice P."),
    "conference id": lambda o: setattr(o.conference, "id", "561849261796"),
    "conference url": lambda o: setattr(o.conference, "url", "https://other.example.test/c/561849261795"),
    "attendee": lambda o: setattr(o.attendees[1].person, "email", "erin@example.test"),
    "attendee name": lambda o: setattr(o.attendees[1].person, "name", "Carol K."),
    "attendee role": lambda o: setattr(o.attendees[1], "role", common_pb2.ATTENDEE_ROLE_OPTIONAL),
    "attendee response": lambda o: setattr(o.attendees[1], "response", common_pb2.RESPONSE_TYPE_DECLINE),
    "invitee removed": lambda o: o.attendees.pop(),
    "invitee added": lambda o: o.attendees.add(person=common_pb2.Person(email="erin@example.test")),
}


@pytest.mark.parametrize("changed", list(EXCEPTIONS))
def test_an_exception_differing_in_one_field_is_not_built_as_its_series(changed: str) -> None:
    """Occurrences share their meeting's part only when every field it is built of is equal: an exception that
    differs from its series in any one of them shows that difference (and equals its straightforward build)."""
    occurrences = []
    for day in range(3):
        occurrence = _series_member()
        occurrence.id = f"s@{day}"
        _at(occurrence, datetime(2025, 6, 2 + day, 9, tzinfo=UTC), 30)
        occurrences.append(occurrence)
    EXCEPTIONS[changed](occurrences[1])
    expected = _straightforward(occurrences, "bob@example.test", 5)
    assert [event["id"] for event in expected] == ["s@0", "s@1", "s@2"]
    series, exception = ({k: v for k, v in expected[n].items() if k not in ("id", "start", "end")} for n in (0, 1))
    assert series != exception
    texts = encoded_events_for(occurrences, "bob@example.test", 5, WINDOW, server_host=HOST, budget=BUDGET)
    assert texts == [_json(event) for event in expected]


def _other_value(message: Any, field: FieldDescriptor) -> None:
    """Give `field` of `message` another value (a repeated field one more element, a message its first field's)."""
    if field.is_repeated:
        getattr(message, field.name).add()
    elif field.message_type is not None:
        _other_value(getattr(message, field.name), field.message_type.fields[0])
    elif field.type == FieldDescriptor.TYPE_BOOL:
        setattr(message, field.name, not getattr(message, field.name))
    elif field.type == FieldDescriptor.TYPE_STRING:
        setattr(message, field.name, getattr(message, field.name) + "x")
    else:  # integers and enums
        setattr(message, field.name, getattr(message, field.name) + 1)


@pytest.mark.parametrize("field", [field.name for field in calendar_pb2.Occurrence.DESCRIPTOR.fields])
def test_the_meeting_key_holds_every_field_of_an_occurrence_but_its_own(field: str) -> None:
    """meeting_key tells occurrences apart by every field of Occurrence, but for the occurrence's own fields, which
    the meeting's part is not built of: occurrences differing only in those share it (a field added to the proto is
    in the key, and so never shared wrongly, unless declared the occurrence's own)."""
    series = _series_member()
    other = calendar_pb2.Occurrence()
    other.CopyFrom(series)
    _other_value(other, calendar_pb2.Occurrence.DESCRIPTOR.fields_by_name[field])
    assert other != series
    own = field in OCCURRENCE_OWN_FIELDS
    assert (meeting_key(other) == meeting_key(series)) is own
    if own:
        assert _meeting_event(other, "bob@example.test", HOST) == _meeting_event(series, "bob@example.test", HOST)

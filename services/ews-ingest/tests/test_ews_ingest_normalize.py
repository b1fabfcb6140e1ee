"""Normalization of real EWS XML (fixtures modelled on Microsoft's published GetItem examples, validated against
the EWS schema) parsed exactly as exchangelib parses a GetItem answer: CalendarItem.from_xml."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from exchangelib import CalendarItem, EWSDate
from exchangelib.recurrence import (
    AbsoluteMonthlyPattern,
    AbsoluteYearlyPattern,
    DailyPattern,
    DailyRegeneration,
    EndDatePattern,
    NoEndPattern,
    NumberedPattern,
    Recurrence,
    RelativeMonthlyPattern,
    RelativeYearlyPattern,
    WeeklyPattern,
)
from lxml import etree

from ews_ingest.conference_marker import MarkerParser, register_marker_property
from ews_ingest.normalize import NormalizationError, normalize, recurrence
from exchange_emulator.schema import SchemaValidator
from tccal.config.schema import ConferenceDefaults
from trueconf.calendar.v1 import calendar_pb2, common_pb2

FIXTURES = Path(__file__).parent / "fixtures"
SOAP = "{http://schemas.xmlsoap.org/soap/envelope/}"
TYPES = "{http://schemas.microsoft.com/exchange/services/2006/types}"
DEFAULTS = ConferenceDefaults.model_validate({"mode": "PxP", "maxPodiums": 4, "recordingEnabled": True})
MARKER = MarkerParser(frozenset({"video.example.com"}), DEFAULTS)


def items(name: str) -> list[Any]:
    """The CalendarItems of a fixture, after checking the response against Microsoft's EWS schema."""
    root = etree.parse(str(FIXTURES / name)).getroot()
    body = root.find(f"{SOAP}Body")
    assert body is not None
    response = body[0]
    assert SchemaValidator().errors(response) == [], f"{name} is not schema-valid EWS"
    register_marker_property()
    return [CalendarItem.from_xml(elem=e, account=None) for e in response.iter(f"{TYPES}CalendarItem")]


def utc(stamp: Any) -> dt.datetime:
    return stamp.ToDatetime(tzinfo=dt.UTC)  # type: ignore[no-any-return]


def test_recurring_series_with_exceptions_attendees_and_dst_zone() -> None:
    (master,) = items("getitem_recurring_master.xml")
    (_, exception) = items("getitem_attendee_copy.xml")
    event = normalize(master, marker=MARKER, exceptions={exception.id: exception})
    assert event.kind == calendar_pb2.ITEM_KIND_RECURRING_MASTER
    assert event.uid.startswith("040000008200E00074C5B7101A82E008")
    assert event.change_key == "DwAAABYAAAC5YcBFYBgZRq/4CFJoTrq6AAAC1qle"
    assert (event.subject, event.location) == ("Weekly status", "Building 4, Room 1200")
    assert event.body == "Agenda: status of the release."  # HTML body as text
    assert (event.time_zone, event.windows_time_zone) == ("America/Los_Angeles", "Pacific Standard Time")
    # 09:00 Pacific before the 2026 switch to daylight saving (8 March) is 17:00 UTC ...
    assert utc(event.start) == dt.datetime(2026, 3, 2, 17, 0, tzinfo=dt.UTC)
    assert utc(event.end) - utc(event.start) == dt.timedelta(minutes=30)
    zone = ZoneInfo(event.time_zone)
    assert utc(event.start).astimezone(zone).time() == dt.time(9, 0)
    # ... and the exception's original start after the switch (16:00 UTC) is still 09:00 in the series' zone.
    (moved,) = event.modified_occurrences
    assert utc(moved.original_start).astimezone(zone).time() == dt.time(9, 0)
    assert utc(moved.start) == dt.datetime(2026, 3, 9, 18, 0, tzinfo=dt.UTC)
    assert utc(moved.end) == dt.datetime(2026, 3, 9, 18, 45, tzinfo=dt.UTC)
    assert (moved.subject, moved.location, moved.body) == (
        "Weekly status (moved: release day)",
        "Building 4, Room 1300",
        "Moved because of the release.",
    )
    assert not moved.cancelled
    assert [utc(d) for d in event.deleted_occurrences] == [dt.datetime(2026, 3, 11, 16, 0, tzinfo=dt.UTC)]
    assert event.recurrence.WhichOneof("pattern") == "weekly"
    assert list(event.recurrence.weekly.days_of_week) == [
        common_pb2.DAY_OF_WEEK_MONDAY,
        common_pb2.DAY_OF_WEEK_WEDNESDAY,
    ]
    assert event.recurrence.weekly.first_day_of_week == common_pb2.DAY_OF_WEEK_SUNDAY
    assert (event.recurrence.start_date, event.recurrence.number_of_occurrences) == ("2026-03-02", 10)
    assert event.organizer == common_pb2.Person(email="olga@contoso.com", name="Olga Organizer")
    assert event.my_response == common_pb2.RESPONSE_TYPE_ORGANIZER
    answers = [(a.person.email, a.role, a.response) for a in event.attendees]
    assert answers == [
        ("alfred@contoso.com", common_pb2.ATTENDEE_ROLE_REQUIRED, common_pb2.RESPONSE_TYPE_ACCEPT),
        ("dan@contoso.com", common_pb2.ATTENDEE_ROLE_REQUIRED, common_pb2.RESPONSE_TYPE_DECLINE),
        ("nora@contoso.com", common_pb2.ATTENDEE_ROLE_REQUIRED, common_pb2.RESPONSE_TYPE_NO_RESPONSE_RECEIVED),
        ("carol@contoso.com", common_pb2.ATTENDEE_ROLE_OPTIONAL, common_pb2.RESPONSE_TYPE_TENTATIVE),
        ("room1200@contoso.com", common_pb2.ATTENDEE_ROLE_RESOURCE, common_pb2.RESPONSE_TYPE_ACCEPT),
    ]
    assert utc(event.attendees[0].last_response_time) == dt.datetime(2026, 2, 20, 19, 2, 11, tzinfo=dt.UTC)
    assert not event.attendees[2].HasField("last_response_time")
    assert event.is_meeting and not event.cancelled
    assert event.appointment_sequence == 2
    assert utc(event.last_modified) == dt.datetime(2026, 2, 21, 9, 12, 44, tzinfo=dt.UTC)
    assert not event.HasField("created_by_delegate")  # the organizer wrote it
    # the TrueConfMeeting property, every key
    assert event.HasField("conference")
    spec = event.conference
    assert spec.source == common_pb2.CONFERENCE_SOURCE_EXTENDED_PROPERTY
    assert (spec.mode, spec.access) == (common_pb2.CONFERENCE_MODE_VIDEO_LECTURE, common_pb2.CONFERENCE_ACCESS_PUBLIC)
    assert (spec.max_podiums, spec.max_participants, spec.pin) == (2, 250, "4711")
    assert spec.waiting_room_enabled and spec.mute_mic_on_join
    assert not spec.recording_enabled and not spec.mute_camera_on_join


def test_attendee_copy_with_join_link_and_exception_item() -> None:
    copy, exception = items("getitem_attendee_copy.xml")
    event = normalize(copy, marker=MARKER)
    assert event.kind == calendar_pb2.ITEM_KIND_SINGLE
    assert event.my_response == common_pb2.RESPONSE_TYPE_TENTATIVE
    assert (event.time_zone, event.windows_time_zone) == ("Europe/Berlin", "W. Europe Standard Time")
    # 1 July is summer time in Berlin: 07:00 UTC is 09:00 local
    assert utc(event.start).astimezone(ZoneInfo("Europe/Berlin")).time() == dt.time(9, 0)
    assert [a.response for a in event.attendees] == [common_pb2.RESPONSE_TYPE_UNKNOWN] * 2
    assert event.conference.source == common_pb2.CONFERENCE_SOURCE_JOIN_LINK
    assert (event.conference.existing_conference_id, event.conference.join_link_host) == (
        "q3planning",
        "video.example.com",
    )
    assert not event.HasField("created_by_delegate")  # an attendee's copy never names a delegate
    exc = normalize(exception, marker=MARKER)
    assert exc.kind == calendar_pb2.ITEM_KIND_EXCEPTION
    assert utc(exc.recurrence_id) == dt.datetime(2026, 3, 9, 16, 0, tzinfo=dt.UTC)
    assert exc.subject == "Weekly status (moved: release day)"


def test_all_day_private_and_relative_monthly_keyword() -> None:
    trip, closing = items("getitem_all_day_private.xml")
    event = normalize(trip, marker=MARKER)
    assert event.all_day
    assert event.sensitivity == common_pb2.SENSITIVITY_PRIVATE
    moscow = ZoneInfo("Europe/Moscow")
    assert event.time_zone == "Europe/Moscow"
    assert utc(event.start).astimezone(moscow) == dt.datetime(2026, 5, 12, tzinfo=moscow)
    assert utc(event.end).astimezone(moscow) == dt.datetime(2026, 5, 14, tzinfo=moscow)  # two whole days
    assert not event.HasField("conference")
    series = normalize(closing, marker=MARKER)
    assert series.recurrence.WhichOneof("pattern") == "relative_monthly"
    assert series.recurrence.relative_monthly.days_of_week == common_pb2.DAY_OF_WEEK_WEEKDAY
    assert series.recurrence.relative_monthly.week_index == common_pb2.WEEK_INDEX_LAST
    assert (series.recurrence.start_date, series.recurrence.end_date) == ("2026-04-30", "2026-12-31")
    spec = series.conference  # keyword in the subject: conferenceDefaults
    assert spec.source == common_pb2.CONFERENCE_SOURCE_KEYWORD
    assert (spec.mode, spec.max_podiums, spec.recording_enabled) == (common_pb2.CONFERENCE_MODE_ALL_ON_SCREEN, 4, True)
    assert spec.access == common_pb2.CONFERENCE_ACCESS_PRIVATE


START = EWSDate(2031, 1, 6)


@pytest.mark.parametrize(
    ("pattern", "boundary", "expected"),
    [
        (DailyPattern(interval=3), NoEndPattern(start=START), {"daily": {"interval": 3}, "no_end": True}),
        (
            WeeklyPattern(interval=2, weekdays=[2, 5], first_day_of_week=1),
            NumberedPattern(start=START, number=8),
            {"weekly": {"interval": 2, "days_of_week": [2, 5], "first_day_of_week": 1}, "number_of_occurrences": 8},
        ),
        (
            AbsoluteMonthlyPattern(interval=1, day_of_month=31),
            EndDatePattern(start=START, end=EWSDate(2031, 12, 31)),
            {"absolute_monthly": {"interval": 1, "day_of_month": 31}, "end_date": "2031-12-31"},
        ),
        (
            RelativeMonthlyPattern(interval=2, weekday=10, week_number=1),
            NoEndPattern(start=START),
            {"relative_monthly": {"interval": 2, "days_of_week": 10, "week_index": 1}, "no_end": True},
        ),
        (
            AbsoluteYearlyPattern(day_of_month=29, month=2),
            NumberedPattern(start=START, number=3),
            {"absolute_yearly": {"month": 2, "day_of_month": 29}, "number_of_occurrences": 3},
        ),
        (
            RelativeYearlyPattern(weekday=5, week_number=5, month=11),
            NoEndPattern(start=START),
            {"relative_yearly": {"month": 11, "days_of_week": 5, "week_index": 5}, "no_end": True},
        ),
    ],
)
def test_every_ews_pattern_and_range(pattern: Any, boundary: Any, expected: dict[str, Any]) -> None:
    result = recurrence(Recurrence(pattern=pattern, boundary=boundary))
    expected_message = common_pb2.Recurrence(start_date="2031-01-06", **expected)
    assert result == expected_message


def test_task_regeneration_is_not_a_calendar_pattern() -> None:
    with pytest.raises(NormalizationError, match="DailyRegeneration"):
        recurrence(Recurrence(pattern=DailyRegeneration(interval=1), boundary=NoEndPattern(start=START)))


def test_broken_items_are_refused_with_the_field_named() -> None:
    (copy, _) = items("getitem_attendee_copy.xml")
    copy.uid = None
    with pytest.raises(NormalizationError, match="UID"):
        normalize(copy, marker=MARKER)
    (copy, _) = items("getitem_attendee_copy.xml")
    copy.end = copy.start - dt.timedelta(hours=1)
    with pytest.raises(NormalizationError, match="before Start"):
        normalize(copy, marker=MARKER)
    (master,) = items("getitem_recurring_master.xml")
    master.trueconf_meeting_marker = '{"mode": "karaoke"}'
    with pytest.raises(NormalizationError, match="mode 'karaoke' is unknown"):
        normalize(master, marker=MARKER)
    master.trueconf_meeting_marker = "not json"
    with pytest.raises(NormalizationError, match="not valid JSON"):
        normalize(master, marker=MARKER)


def test_delegate_is_named_on_the_organizers_copy() -> None:
    (master,) = items("getitem_recurring_master.xml")
    master.last_modified_name = "Ann Assistant"
    event = normalize(master, marker=MARKER)
    assert event.created_by_delegate == common_pb2.Person(name="Ann Assistant")
    master.last_modified_name = "Alfred Accept"  # an attendee's answer touches the organizer's copy too
    assert not normalize(master, marker=MARKER).HasField("created_by_delegate")

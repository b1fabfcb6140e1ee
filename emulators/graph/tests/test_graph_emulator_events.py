"""Events through msgraph-sdk: recurrence expansion with an exception and a cancelled occurrence, Prefer:
outlook.timezone, singleValueExtendedProperties round-trip, $select, attendee copies and responses."""

from __future__ import annotations

import datetime as dt
from typing import Any

from graph_emulator_support import graph_client
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.attendee import Attendee
from msgraph.generated.models.attendee_type import AttendeeType
from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
from msgraph.generated.models.day_of_week import DayOfWeek
from msgraph.generated.models.email_address import EmailAddress
from msgraph.generated.models.event import Event
from msgraph.generated.models.event_type import EventType
from msgraph.generated.models.patterned_recurrence import PatternedRecurrence
from msgraph.generated.models.recurrence_pattern import RecurrencePattern
from msgraph.generated.models.recurrence_pattern_type import RecurrencePatternType
from msgraph.generated.models.recurrence_range import RecurrenceRange
from msgraph.generated.models.recurrence_range_type import RecurrenceRangeType
from msgraph.generated.models.response_type import ResponseType
from msgraph.generated.models.single_value_legacy_extended_property import SingleValueLegacyExtendedProperty
from msgraph.generated.users.item.calendar_view.calendar_view_request_builder import CalendarViewRequestBuilder
from msgraph.generated.users.item.events.item.accept.accept_post_request_body import AcceptPostRequestBody
from msgraph.generated.users.item.events.item.decline.decline_post_request_body import DeclinePostRequestBody
from msgraph.generated.users.item.events.item.event_item_request_builder import EventItemRequestBuilder
from msgraph.generated.users.item.events.item.instances.instances_request_builder import InstancesRequestBuilder

from graph_emulator.testing import EmulatorProcess

MARKER_ID = "String {00020329-0000-0000-C000-000000000046} Name TrueConfConference"


def _view_config(
    start: str, end: str, zone: str | None = None
) -> RequestConfiguration[CalendarViewRequestBuilder.CalendarViewRequestBuilderGetQueryParameters]:
    config: RequestConfiguration[CalendarViewRequestBuilder.CalendarViewRequestBuilderGetQueryParameters] = (
        RequestConfiguration()
    )
    config.query_parameters = CalendarViewRequestBuilder.CalendarViewRequestBuilderGetQueryParameters(
        start_date_time=start, end_date_time=end, top=50
    )
    if zone:
        config.headers.add("Prefer", f'outlook.timezone="{zone}"')
    return config


async def test_weekly_series_expands_with_an_exception_and_a_cancelled_occurrence(emu: EmulatorProcess) -> None:
    client = graph_client(emu)
    user = client.users.by_user_id("alice@contoso.test")
    series = await user.events.post(
        Event(
            subject="weekly sync",
            start=DateTimeTimeZone(date_time="2032-01-05T09:00:00", time_zone="W. Europe Standard Time"),
            end=DateTimeTimeZone(date_time="2032-01-05T09:30:00", time_zone="W. Europe Standard Time"),
            recurrence=PatternedRecurrence(
                pattern=RecurrencePattern(
                    type=RecurrencePatternType.Weekly, interval=1, days_of_week=[DayOfWeek.Monday]
                ),
                range=RecurrenceRange(
                    type=RecurrenceRangeType.Numbered, start_date=dt.date(2032, 1, 5), number_of_occurrences=4
                ),
            ),
        )
    )
    assert series is not None and series.type == EventType.SeriesMaster and series.id
    view = await user.calendar_view.get(
        request_configuration=_view_config("2032-01-01T00:00:00Z", "2032-02-15T00:00:00Z")
    )
    assert view is not None and view.value is not None
    occurrences = [e for e in view.value if e.series_master_id == series.id]
    # 09:00 Berlin in winter is 08:00 UTC; four Mondays from 5 January.
    assert [(e.start.date_time if e.start else None) for e in occurrences] == [
        f"2032-01-{day:02d}T08:00:00.0000000" for day in (5, 12, 19, 26)
    ]
    assert {e.type for e in occurrences} == {EventType.Occurrence}
    second, third = occurrences[1], occurrences[2]
    assert second.id and third.id
    await user.events.by_event_id(second.id).patch(
        Event(
            subject="weekly sync (moved)",
            start=DateTimeTimeZone(date_time="2032-01-13T15:00:00", time_zone="UTC"),
            end=DateTimeTimeZone(date_time="2032-01-13T15:30:00", time_zone="UTC"),
        )
    )
    await user.events.by_event_id(third.id).delete()

    view = await user.calendar_view.get(
        request_configuration=_view_config("2032-01-01T00:00:00Z", "2032-02-15T00:00:00Z", "Tokyo Standard Time")
    )
    assert view is not None and view.value is not None
    mine = [e for e in view.value if e.series_master_id == series.id]
    assert [
        (e.type, e.subject, e.start.date_time if e.start else None, e.start.time_zone if e.start else None)
        for e in mine
    ] == [
        (EventType.Occurrence, "weekly sync", "2032-01-05T17:00:00.0000000", "Tokyo Standard Time"),
        (EventType.Exception, "weekly sync (moved)", "2032-01-14T00:00:00.0000000", "Tokyo Standard Time"),
        (EventType.Occurrence, "weekly sync", "2032-01-26T17:00:00.0000000", "Tokyo Standard Time"),
    ]
    assert mine[1].original_start == dt.datetime(2032, 1, 12, 8, 0, tzinfo=dt.UTC)
    # The master keeps its pattern and its own time zone.
    master = await user.events.by_event_id(series.id).get()
    assert master is not None and master.recurrence is not None and master.recurrence.pattern is not None
    assert master.recurrence.pattern.days_of_week == [DayOfWeek.Monday]
    assert master.original_start_time_zone == "W. Europe Standard Time"


async def test_instances_of_a_yearly_series_every_two_years_over_a_long_range_leave_the_cancelled_one_out(
    emu: EmulatorProcess,
) -> None:
    """event-list-instances (https://learn.microsoft.com/en-us/graph/api/event-list-instances): the occurrences and
    exceptions of a series master in the range, $select honoured; a cancelled occurrence is simply absent. A yearly
    pattern's interval counts years (https://learn.microsoft.com/en-us/graph/api/resources/recurrencepattern)."""
    client = graph_client(emu)
    user = client.users.by_user_id("carol@contoso.test")
    series = await user.events.post(
        Event(
            subject="biennial audit",
            start=DateTimeTimeZone(date_time="2030-03-11T10:00:00", time_zone="UTC"),
            end=DateTimeTimeZone(date_time="2030-03-11T11:00:00", time_zone="UTC"),
            recurrence=PatternedRecurrence(
                pattern=RecurrencePattern(
                    type=RecurrencePatternType.AbsoluteYearly, interval=2, month=3, day_of_month=11
                ),
                range=RecurrenceRange(
                    type=RecurrenceRangeType.Numbered, start_date=dt.date(2030, 1, 1), number_of_occurrences=4
                ),
            ),
        )
    )
    assert series is not None and series.id
    config: RequestConfiguration[InstancesRequestBuilder.InstancesRequestBuilderGetQueryParameters] = (
        RequestConfiguration()
    )
    config.query_parameters = InstancesRequestBuilder.InstancesRequestBuilderGetQueryParameters(
        start_date_time="2029-01-01T00:00:00Z", end_date_time="2038-01-01T00:00:00Z", select=["originalStart", "type"]
    )
    instances = await user.events.by_event_id(series.id).instances.get(request_configuration=config)
    assert instances is not None and instances.value is not None
    assert [i.original_start for i in instances.value] == [
        dt.datetime(year, 3, 11, 10, 0, tzinfo=dt.UTC) for year in (2030, 2032, 2034, 2036)
    ]
    assert all(i.subject is None and i.type == EventType.Occurrence for i in instances.value)
    third = instances.value[2].id
    assert third
    await user.events.by_event_id(third).delete()
    instances = await user.events.by_event_id(series.id).instances.get(request_configuration=config)
    assert instances is not None and instances.value is not None
    assert [i.original_start.year if i.original_start else None for i in instances.value] == [2030, 2032, 2036]


async def test_outlook_timezone_preference_applies_to_returned_times(emu: EmulatorProcess) -> None:
    client = graph_client(emu)
    user = client.users.by_user_id("bob@contoso.test")
    created = await user.events.post(
        Event(
            subject="zoned",
            start=DateTimeTimeZone(date_time="2032-07-01T12:00:00", time_zone="UTC"),
            end=DateTimeTimeZone(date_time="2032-07-01T13:00:00", time_zone="UTC"),
        )
    )
    assert created is not None and created.id
    config: RequestConfiguration[EventItemRequestBuilder.EventItemRequestBuilderGetQueryParameters] = (
        RequestConfiguration()
    )
    config.headers.add("Prefer", 'outlook.timezone="Pacific Standard Time"')
    fetched = await user.events.by_event_id(created.id).get(request_configuration=config)
    assert fetched is not None and fetched.start is not None and fetched.end is not None
    assert (fetched.start.date_time, fetched.start.time_zone) == (
        "2032-07-01T05:00:00.0000000",
        "Pacific Standard Time",
    )
    assert fetched.end.date_time == "2032-07-01T06:00:00.0000000"
    plain = await user.events.by_event_id(created.id).get()
    assert plain is not None and plain.start is not None
    assert (plain.start.date_time, plain.start.time_zone) == ("2032-07-01T12:00:00.0000000", "UTC")


async def test_extended_property_round_trip_and_select(emu: EmulatorProcess) -> None:
    client = graph_client(emu)
    user = client.users.by_user_id("carol@contoso.test")
    created = await user.events.post(
        Event(
            subject="with marker",
            start=DateTimeTimeZone(date_time="2032-02-02T10:00:00", time_zone="UTC"),
            end=DateTimeTimeZone(date_time="2032-02-02T11:00:00", time_zone="UTC"),
            single_value_extended_properties=[SingleValueLegacyExtendedProperty(id=MARKER_ID, value="conf-42")],
        )
    )
    assert created is not None and created.id
    assert created.single_value_extended_properties is None  # only returned when expanded
    config: RequestConfiguration[EventItemRequestBuilder.EventItemRequestBuilderGetQueryParameters] = (
        RequestConfiguration()
    )
    config.query_parameters = EventItemRequestBuilder.EventItemRequestBuilderGetQueryParameters(
        select=["subject"], expand=[f"singleValueExtendedProperties($filter=id eq '{MARKER_ID}')"]
    )
    fetched = await user.events.by_event_id(created.id).get(request_configuration=config)
    assert fetched is not None
    assert fetched.subject == "with marker"
    assert fetched.start is None  # not selected
    assert [(p.id, p.value) for p in fetched.single_value_extended_properties or []] == [(MARKER_ID, "conf-42")]


async def test_invitation_reaches_the_attendee_and_the_answer_reaches_the_organizer(emu: EmulatorProcess) -> None:
    client = graph_client(emu)
    alice, bob = client.users.by_user_id("alice@contoso.test"), client.users.by_user_id("bob@contoso.test")
    meeting = await alice.events.post(
        Event(
            subject="design review",
            start=DateTimeTimeZone(date_time="2032-03-03T10:00:00", time_zone="UTC"),
            end=DateTimeTimeZone(date_time="2032-03-03T11:00:00", time_zone="UTC"),
            attendees=[
                Attendee(
                    type=AttendeeType.Required, email_address=EmailAddress(address="bob@contoso.test", name="Bob Baker")
                )
            ],
        )
    )
    assert meeting is not None and meeting.id and meeting.i_cal_u_id
    view = await bob.calendar_view.get(
        request_configuration=_view_config("2032-03-03T00:00:00Z", "2032-03-04T00:00:00Z")
    )
    assert view is not None and view.value is not None
    copy = next(e for e in view.value if e.i_cal_u_id == meeting.i_cal_u_id)
    assert copy.is_organizer is False and copy.id
    assert copy.response_status is not None and copy.response_status.response == ResponseType.NotResponded
    await bob.events.by_event_id(copy.id).accept.post(AcceptPostRequestBody(comment="see you", send_response=True))
    organizer_view = await alice.events.by_event_id(meeting.id).get()
    assert organizer_view is not None and organizer_view.attendees
    status = organizer_view.attendees[0].status
    assert status is not None and status.response == ResponseType.Accepted


async def test_declined_copy_leaves_and_a_deleted_meeting_cancels_the_copies(emu: EmulatorProcess) -> None:
    client = graph_client(emu)
    alice = client.users.by_user_id("alice@contoso.test")
    bob, carol = client.users.by_user_id("bob@contoso.test"), client.users.by_user_id("carol@contoso.test")
    meeting = await alice.events.post(
        Event(
            subject="planning",
            start=DateTimeTimeZone(date_time="2032-04-04T10:00:00", time_zone="UTC"),
            end=DateTimeTimeZone(date_time="2032-04-04T11:00:00", time_zone="UTC"),
            attendees=[
                Attendee(type=AttendeeType.Required, email_address=EmailAddress(address="bob@contoso.test")),
                Attendee(type=AttendeeType.Optional, email_address=EmailAddress(address="carol@contoso.test")),
            ],
        )
    )
    assert meeting is not None and meeting.id
    window = _view_config("2032-04-04T00:00:00Z", "2032-04-05T00:00:00Z")

    async def copy_in(user: Any) -> Event | None:
        view = await user.calendar_view.get(request_configuration=window)
        assert view is not None and view.value is not None
        return next((e for e in view.value if e.i_cal_u_id == meeting.i_cal_u_id), None)

    carol_copy = await copy_in(carol)
    assert carol_copy is not None and carol_copy.id
    await carol.events.by_event_id(carol_copy.id).decline.post(DeclinePostRequestBody(send_response=True))
    assert await copy_in(carol) is None
    organizer_view = await alice.events.by_event_id(meeting.id).get()
    assert organizer_view is not None and organizer_view.attendees is not None
    assert {
        a.email_address.address: a.status.response for a in organizer_view.attendees if a.email_address and a.status
    } == {"bob@contoso.test": ResponseType.None_, "carol@contoso.test": ResponseType.Declined}

    await alice.events.by_event_id(meeting.id).delete()
    bob_copy = await copy_in(bob)
    assert bob_copy is not None
    assert bob_copy.is_cancelled is True and bob_copy.subject == "Canceled: planning"

"""calendarView delta driven by msgraph-sdk: paging to the deltaLink, incremental rounds, @removed, 410."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from graph_emulator_support import graph_client
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
from msgraph.generated.models.event import Event
from msgraph.generated.models.event_type import EventType
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.patterned_recurrence import PatternedRecurrence
from msgraph.generated.models.recurrence_pattern import RecurrencePattern
from msgraph.generated.models.recurrence_pattern_type import RecurrencePatternType
from msgraph.generated.models.recurrence_range import RecurrenceRange
from msgraph.generated.models.recurrence_range_type import RecurrenceRangeType
from msgraph.generated.users.item.calendar_view.delta.delta_request_builder import DeltaRequestBuilder
from msgraph.graph_service_client import GraphServiceClient

from graph_emulator.testing import TENANT_ID, EmulatorProcess

WINDOW = ("2031-03-01T00:00:00Z", "2031-04-01T00:00:00Z")


def _event(subject: str, day: int) -> Event:
    return Event(
        subject=subject,
        start=DateTimeTimeZone(date_time=f"2031-03-{day:02d}T09:00:00", time_zone="UTC"),
        end=DateTimeTimeZone(date_time=f"2031-03-{day:02d}T10:00:00", time_zone="UTC"),
    )


async def _round(
    client: GraphServiceClient, user: str, link: str | None, page_size: int
) -> tuple[list[Event], str, int]:
    """Follow one delta round to its deltaLink; returns (events, deltaLink, pages)."""
    config: RequestConfiguration[DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters] = RequestConfiguration()
    config.headers.add("Prefer", f"odata.maxpagesize={page_size}")
    builder = client.users.by_user_id(user).calendar_view.delta
    if link is None:
        config.query_parameters = DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(
            start_date_time=WINDOW[0], end_date_time=WINDOW[1]
        )
        page = await builder.get(request_configuration=config)
    else:
        page = await builder.with_url(link).get(request_configuration=config)
    events: list[Event] = []
    pages = 0
    while True:
        assert page is not None
        pages += 1
        events.extend(page.value or [])
        assert len(page.value or []) <= page_size
        if page.odata_delta_link:
            return events, page.odata_delta_link, pages
        assert page.odata_next_link, "a delta page has a nextLink or a deltaLink"
        page = await builder.with_url(page.odata_next_link).get(request_configuration=config)


def _removed(event: Event) -> Any:
    return (event.additional_data or {}).get("@removed")


async def test_full_round_pages_to_delta_link_then_increments(emu: EmulatorProcess) -> None:
    client = graph_client(emu)
    user = "carol@contoso.test"
    events = client.users.by_user_id(user).events
    created = [await events.post(_event(f"meeting {i}", i + 1)) for i in range(5)]
    outside = await events.post(
        Event(
            subject="april",
            start=DateTimeTimeZone(date_time="2031-04-02T09:00:00", time_zone="UTC"),
            end=DateTimeTimeZone(date_time="2031-04-02T10:00:00", time_zone="UTC"),
        )
    )
    assert outside is not None

    first, link, pages = await _round(client, user, None, page_size=2)
    assert pages == 3
    assert sorted(e.subject or "" for e in first) == [f"meeting {i}" for i in range(5)]
    assert all(_removed(e) is None for e in first)

    nothing, link, _ = await _round(client, user, link, page_size=2)
    assert nothing == []

    assert created[0] is not None and created[0].id and created[1] is not None and created[1].id
    await events.by_event_id(created[0].id).patch(Event(subject="meeting 0 moved"))
    await events.by_event_id(created[1].id).delete()
    added = await events.post(_event("meeting 5", 20))
    assert added is not None and added.id
    changes, link, _ = await _round(client, user, link, page_size=10)
    by_id = {e.id: e for e in changes}
    assert set(by_id) == {created[0].id, created[1].id, added.id}
    assert by_id[created[0].id].subject == "meeting 0 moved"
    assert _removed(by_id[created[1].id]) == {"reason": "deleted"}
    assert _removed(by_id[added.id]) is None

    # Moving an event out of the window is a removal for that window.
    await events.by_event_id(added.id).patch(
        Event(
            start=DateTimeTimeZone(date_time="2031-05-01T09:00:00", time_zone="UTC"),
            end=DateTimeTimeZone(date_time="2031-05-01T10:00:00", time_zone="UTC"),
        )
    )
    moved, _, _ = await _round(client, user, link, page_size=10)
    assert [(e.id, _removed(e)) for e in moved] == [(added.id, {"reason": "deleted"})]


async def test_expired_delta_token_answers_410_sync_state_not_found(emu: EmulatorProcess) -> None:
    client = graph_client(emu)
    user = "bob@contoso.test"
    await client.users.by_user_id(user).events.post(_event("kept", 3))
    _, link, _ = await _round(client, user, None, page_size=5)
    assert emu.control("POST", "/delta/expire", {"user": user})["expired"] >= 1
    with pytest.raises(ODataError) as caught:
        await _round(client, user, link, page_size=5)
    assert caught.value.response_status_code == 410
    assert caught.value.error is not None and caught.value.error.code == "syncStateNotFound"
    # The client starts over with a fresh round and gets everything again.
    again, _, _ = await _round(client, user, None, page_size=5)
    assert [e.subject for e in again] == ["kept"]


async def test_delta_expands_a_series_and_reports_its_exception_and_cancelled_occurrence(
    emu: EmulatorProcess,
) -> None:
    emu.control("POST", f"/tenants/{TENANT_ID}/users", {"userPrincipalName": "erin@contoso.test"})
    client = graph_client(emu)
    user = "erin@contoso.test"
    events = client.users.by_user_id(user).events
    series = await events.post(
        Event(
            subject="standup",
            start=DateTimeTimeZone(date_time="2031-03-02T09:00:00", time_zone="UTC"),
            end=DateTimeTimeZone(date_time="2031-03-02T09:15:00", time_zone="UTC"),
            recurrence=PatternedRecurrence(
                pattern=RecurrencePattern(type=RecurrencePatternType.Daily, interval=7),
                range=RecurrenceRange(type=RecurrenceRangeType.NoEnd, start_date=dt.date(2031, 3, 2)),
            ),
        )
    )
    assert series is not None and series.id
    first, link, _ = await _round(client, user, None, page_size=3)
    # Sundays in March 2031 from the 2nd: 2, 9, 16, 23, 30; the master itself is not part of a calendar view.
    assert [(e.type, e.start.date_time if e.start else None) for e in first] == [
        (EventType.Occurrence, f"2031-03-{day:02d}T09:00:00.0000000") for day in (2, 9, 16, 23, 30)
    ]
    assert {e.series_master_id for e in first} == {series.id}
    moved, dropped = first[1], first[3]
    assert moved.id and dropped.id
    await events.by_event_id(moved.id).patch(
        Event(subject="standup (long)", end=DateTimeTimeZone(date_time="2031-03-09T10:00:00", time_zone="UTC"))
    )
    await events.by_event_id(dropped.id).delete()
    changes, _, _ = await _round(client, user, link, page_size=10)
    by_id = {e.id: e for e in changes}
    assert by_id[moved.id].type == EventType.Exception and by_id[moved.id].subject == "standup (long)"
    assert _removed(by_id[dropped.id]) == {"reason": "deleted"}
    assert all(_removed(e) is None for e in changes if e.id != dropped.id)

"""The state file: events (a series with an exception and an extended property) survive a restart."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from graph_emulator_support import graph_client
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
from msgraph.generated.models.event import Event
from msgraph.generated.models.patterned_recurrence import PatternedRecurrence
from msgraph.generated.models.recurrence_pattern import RecurrencePattern
from msgraph.generated.models.recurrence_pattern_type import RecurrencePatternType
from msgraph.generated.models.recurrence_range import RecurrenceRange
from msgraph.generated.models.recurrence_range_type import RecurrenceRangeType
from msgraph.generated.users.item.calendar_view.calendar_view_request_builder import CalendarViewRequestBuilder

from graph_emulator.testing import build_config, start_emulator


def _view() -> RequestConfiguration[CalendarViewRequestBuilder.CalendarViewRequestBuilderGetQueryParameters]:
    config: RequestConfiguration[CalendarViewRequestBuilder.CalendarViewRequestBuilderGetQueryParameters] = (
        RequestConfiguration()
    )
    config.query_parameters = CalendarViewRequestBuilder.CalendarViewRequestBuilderGetQueryParameters(
        start_date_time="2037-05-01T00:00:00Z", end_date_time="2037-06-01T00:00:00Z", top=50
    )
    return config


async def test_events_survive_a_restart_with_the_state_file(tmp_path: Path) -> None:
    config = build_config(extra={"state_file": str(tmp_path / "graph-state.json")})
    with start_emulator(config) as emu:
        user = graph_client(emu).users.by_user_id("alice@contoso.test")
        series = await user.events.post(
            Event(
                subject="daily",
                start=DateTimeTimeZone(date_time="2037-05-04T08:00:00", time_zone="UTC"),
                end=DateTimeTimeZone(date_time="2037-05-04T08:15:00", time_zone="UTC"),
                recurrence=PatternedRecurrence(
                    pattern=RecurrencePattern(type=RecurrencePatternType.Daily, interval=1),
                    range=RecurrenceRange(
                        type=RecurrenceRangeType.EndDate, start_date=dt.date(2037, 5, 4), end_date=dt.date(2037, 5, 6)
                    ),
                ),
            )
        )
        assert series is not None and series.id
        before = await user.calendar_view.get(request_configuration=_view())
        assert before is not None and before.value is not None and len(before.value) == 3
        assert before.value[1].id
        await user.events.by_event_id(before.value[1].id).patch(Event(subject="daily (special)"))
        before = await user.calendar_view.get(request_configuration=_view())
        assert before is not None and before.value is not None
    assert (tmp_path / "graph-state.json").is_file()
    with start_emulator(config) as emu:
        user = graph_client(emu).users.by_user_id("alice@contoso.test")
        after = await user.calendar_view.get(request_configuration=_view())
        assert after is not None and after.value is not None
        assert [(e.id, e.type, e.subject, e.change_key) for e in after.value] == [
            (e.id, e.type, e.subject, e.change_key) for e in before.value
        ]
        assert [e.subject for e in after.value] == ["daily", "daily (special)", "daily"]

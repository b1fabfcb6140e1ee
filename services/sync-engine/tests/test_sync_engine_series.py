"""Recurring meetings at the engine level (guide §4.2.2 "Repeating event", §3.1.2 "cache"; docs/architecture.md §5.3):
the occurrences users see, the series' conference pointing at the next occurrence, every occurrence launched,
and the cache window rolling forward."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sync_engine_testkit import ANNA, BOB, T0, Harness, attendee, event, full_spec, mid, weekly

from sync_engine.ids import to_datetime, to_timestamp
from trueconf.calendar.v1 import calendar_pb2, commands_pb2, common_pb2

BERLIN = ZoneInfo("Europe/Berlin")
MASTER = calendar_pb2.ITEM_KIND_RECURRING_MASTER
MON, TUE, WED = common_pb2.DAY_OF_WEEK_MONDAY, common_pb2.DAY_OF_WEEK_TUESDAY, common_pb2.DAY_OF_WEEK_WEDNESDAY


def berlin(day: date, hour: int = 9, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=BERLIN).astimezone(UTC)


def local_days(occurrences: list[calendar_pb2.Occurrence]) -> list[str]:
    return [to_datetime(o.start).astimezone(BERLIN).strftime("%Y-%m-%d %H:%M") for o in occurrences]


def series(
    uid: str, first: datetime, recurrence: common_pb2.Recurrence, **changes: object
) -> calendar_pb2.CalendarEvent:
    return event(uid, start=first, kind=MASTER, recurrence=recurrence, **changes)  # type: ignore[arg-type]


async def test_recurrence_patterns_show_the_right_occurrences(harness: Harness) -> None:
    """Guide §4.2.2: daily/weekly/monthly/yearly, interval, end by date / after N / no end, modified and
    deleted occurrences, in the meeting's own time zone, inside the cache window (Jan 2 .. Jun 2, 2026)."""
    await harness.start_engine()
    weekly_until = weekly([MON], "2026-03-02", end_date="2026-03-30")
    daily_count = common_pb2.Recurrence(start_date="2026-03-03", number_of_occurrences=5)
    daily_count.daily.interval = 1
    monthly_no_end = common_pb2.Recurrence(start_date="2025-11-15", no_end=True)
    monthly_no_end.absolute_monthly.interval = 1
    monthly_no_end.absolute_monthly.day_of_month = 15
    second_tuesday = common_pb2.Recurrence(start_date="2026-01-01", end_date="2026-12-31")
    second_tuesday.relative_monthly.interval = 1
    second_tuesday.relative_monthly.days_of_week = TUE
    second_tuesday.relative_monthly.week_index = common_pb2.WEEK_INDEX_SECOND
    yearly = common_pb2.Recurrence(start_date="2020-03-05", no_end=True)
    yearly.absolute_yearly.month = 3
    yearly.absolute_yearly.day_of_month = 5
    last_friday_of_may = common_pb2.Recurrence(start_date="2021-05-01", no_end=True)
    last_friday_of_may.relative_yearly.month = 5
    last_friday_of_may.relative_yearly.days_of_week = common_pb2.DAY_OF_WEEK_FRIDAY
    last_friday_of_may.relative_yearly.week_index = common_pb2.WEEK_INDEX_LAST
    mon_wed = weekly([MON, WED], "2026-03-02", end_date="2026-03-18")
    fortnightly = weekly([TUE], "2026-02-03", number_of_occurrences=4)
    fortnightly.weekly.interval = 2
    moved = common_pb2.ModifiedOccurrence(item_id="exc-1", subject="Moved sync", location="Room 7")
    moved.original_start.CopyFrom(to_timestamp(berlin(date(2026, 3, 4), 13)))
    moved.start.CopyFrom(to_timestamp(berlin(date(2026, 3, 5), 10)))
    moved.end.CopyFrom(to_timestamp(berlin(date(2026, 3, 5), 10, 30)))

    await harness.upsert(ANNA, series("weekly-until", berlin(date(2026, 3, 2)), weekly_until))
    await harness.upsert(ANNA, series("daily-count", berlin(date(2026, 3, 3), 8), daily_count))
    await harness.upsert(ANNA, series("fortnightly", berlin(date(2026, 2, 3), 10), fortnightly))
    await harness.upsert(ANNA, series("monthly-no-end", berlin(date(2025, 11, 15), 11), monthly_no_end))
    await harness.upsert(ANNA, series("second-tuesday", berlin(date(2026, 1, 13), 14), second_tuesday))
    await harness.upsert(ANNA, series("yearly", berlin(date(2020, 3, 5), 12), yearly))
    await harness.upsert(ANNA, series("last-friday", berlin(date(2021, 5, 28), 16), last_friday_of_may))
    await harness.upsert(
        ANNA,
        series(
            "mon-wed",
            berlin(date(2026, 3, 2), 13),
            mon_wed,
            modified=[moved],
            deleted=[berlin(date(2026, 3, 9), 13)],
        ),
    )
    await harness.wait_command("calendar_upsert", 1, occurrence__uid="mon-wed")
    await harness.settle()
    shown: dict[str, list[calendar_pb2.Occurrence]] = defaultdict(list)
    for occurrence in await harness.events(ANNA, T0 - timedelta(days=365), T0 + timedelta(days=365)):
        shown[occurrence.uid].append(occurrence)

    assert local_days(shown["weekly-until"]) == [
        "2026-03-02 09:00",
        "2026-03-09 09:00",
        "2026-03-16 09:00",
        "2026-03-23 09:00",
        "2026-03-30 09:00",  # after the switch to summer time: still 09:00 in Berlin
    ]
    assert [to_datetime(o.start).hour for o in shown["weekly-until"]] == [8, 8, 8, 8, 7]
    assert local_days(shown["daily-count"]) == [f"2026-03-0{d} 08:00" for d in range(3, 8)]
    assert local_days(shown["fortnightly"]) == [
        "2026-02-03 10:00",
        "2026-02-17 10:00",
        "2026-03-03 10:00",
        "2026-03-17 10:00",
    ]
    assert local_days(shown["monthly-no-end"]) == [f"2026-0{m}-15 11:00" for m in range(1, 6)]
    assert local_days(shown["second-tuesday"]) == [
        "2026-01-13 14:00",
        "2026-02-10 14:00",
        "2026-03-10 14:00",
        "2026-04-14 14:00",
        "2026-05-12 14:00",
    ]
    assert local_days(shown["yearly"]) == ["2026-03-05 12:00"]
    assert local_days(shown["last-friday"]) == ["2026-05-29 16:00"]
    assert local_days(shown["mon-wed"]) == [
        "2026-03-02 13:00",
        "2026-03-05 10:00",  # the 4th, moved
        "2026-03-11 13:00",  # the 9th was deleted
        "2026-03-16 13:00",
        "2026-03-18 13:00",
    ]
    moved_occurrence = shown["mon-wed"][1]
    assert moved_occurrence.id == f"{mid('mon-wed')}@{int(berlin(date(2026, 3, 4), 13).timestamp())}"
    assert to_datetime(moved_occurrence.original_start) == berlin(date(2026, 3, 4), 13)
    assert (moved_occurrence.subject, moved_occurrence.location) == ("Moved sync", "Room 7")
    assert all(o.recurring for occurrences in shown.values() for o in occurrences)
    meeting = await harness.meeting("weekly-until")
    assert meeting.recurrence == weekly_until and len(meeting.occurrences) == 5

    # The organizer deletes one more occurrence of the weekly series: that occurrence disappears.
    await harness.upsert(
        ANNA,
        series("weekly-until", berlin(date(2026, 3, 2)), weekly_until, deleted=[berlin(date(2026, 3, 16))]),
    )
    [gone] = await harness.wait_command("calendar_delete", 1)
    assert gone.calendar_delete.occurrence_id == f"{mid('weekly-until')}@{int(berlin(date(2026, 3, 16)).timestamp())}"


async def test_series_conference_points_at_the_next_occurrence_and_every_occurrence_is_launched(
    harness: Harness,
) -> None:
    """docs/architecture.md §5.2: one conference per series, its schedule at the next occurrence; every occurrence
    launched."""
    await harness.start_engine()
    first = berlin(date(2026, 3, 2))  # 08:00 UTC, one hour after T0
    await harness.upsert(
        ANNA,
        series(
            "weekly-conf",
            first,
            weekly([MON], "2026-03-02", no_end=True),
            attendees=[attendee(BOB)],
            conference=full_spec(),
        ),
    )
    [create] = await harness.wait_command("conference_upsert", 1)
    assert to_datetime(create.conference_upsert.schedule.start) == first
    assert create.conference_upsert.schedule.duration_seconds == 1800
    await harness.result(create, conference_id="900")
    await harness.wait_command("calendar_upsert", 2, occurrence__conference__id="900")

    harness.clock.advance(first - T0)
    [run] = await harness.wait_command("conference_run", 1)
    assert to_datetime(run.conference_run.occurrence_start) == first
    harness.clock.advance(timedelta(minutes=31))  # the first occurrence is over: point at the next one
    [update] = await harness.wait_command("conference_upsert", 1, conference_id="900")
    second = berlin(date(2026, 3, 9))
    assert to_datetime(update.conference_upsert.schedule.start) == second
    assert update.conference_upsert.schedule.type == commands_pb2.SCHEDULE_TYPE_ONCE
    harness.clock.advance(second - harness.clock.now())
    runs = await harness.wait_command("conference_run", 2)
    assert [to_datetime(r.conference_run.occurrence_start) for r in runs] == [first, second]
    await harness.settle()
    assert {r.conference_run.conference_id for r in runs} == {"900"}


async def test_cache_window_rolls_forward_daily(harness: Harness) -> None:
    """Guide §3.1.2 cache.backward/forward: occurrences enter and leave the calendar as days pass."""
    await harness.start_engine(cache={"backward": 0, "forward": 0})  # the window is today only
    daily = common_pb2.Recurrence(start_date="2026-02-20", no_end=True)
    daily.daily.interval = 1
    await harness.upsert(ANNA, series("daily", berlin(date(2026, 2, 20), 15), daily))
    [today] = await harness.wait_command("calendar_upsert", 1)
    assert local_days([today.calendar_upsert.occurrence]) == ["2026-03-02 15:00"]
    await harness.settle()
    harness.clock.advance(timedelta(days=1))
    [_, tomorrow] = await harness.wait_command("calendar_upsert", 2)
    [left] = await harness.wait_command("calendar_delete", 1)
    assert local_days([tomorrow.calendar_upsert.occurrence]) == ["2026-03-03 15:00"]
    assert left.calendar_delete.occurrence_id == today.calendar_upsert.occurrence.id
    await harness.settle()
    assert local_days(await harness.events(ANNA, T0 - timedelta(days=30), T0 + timedelta(days=30))) == [
        "2026-03-03 15:00"
    ]


async def test_exception_items_and_occurrences_an_attendee_deleted(harness: Harness) -> None:
    """An occurrence edited on its own (an Exception item of the series) replaces that occurrence for everyone;
    an occurrence an attendee deleted from their own calendar disappears for that attendee only."""
    await harness.start_engine()
    first = berlin(date(2026, 3, 2))
    master = series(
        "with-exception", first, weekly([MON], "2026-03-02", number_of_occurrences=4), attendees=[attendee(BOB)]
    )
    await harness.upsert(ANNA, master)
    await harness.wait_command("calendar_upsert", 8)
    exception = event(
        "with-exception",
        start=berlin(date(2026, 3, 10), 11),
        kind=calendar_pb2.ITEM_KIND_EXCEPTION,
        subject="Moved by exception",
        attendees=[attendee(BOB)],
    )
    exception.item_id = "exception-item-1"
    exception.recurrence_id.CopyFrom(to_timestamp(berlin(date(2026, 3, 9))))
    await harness.upsert(ANNA, exception)
    moved_id = f"{mid('with-exception')}@{int(berlin(date(2026, 3, 9)).timestamp())}"
    moved = await harness.wait_command("calendar_upsert", 2, occurrence__subject="Moved by exception")
    assert sorted(c.calendar_upsert.user for c in moved) == [ANNA, BOB]
    assert {c.calendar_upsert.occurrence.id for c in moved} == {moved_id}
    assert {to_datetime(c.calendar_upsert.occurrence.start) for c in moved} == {berlin(date(2026, 3, 10), 11)}

    bob_copy = calendar_pb2.CalendarEvent()
    bob_copy.CopyFrom(master)
    bob_copy.my_response = common_pb2.RESPONSE_TYPE_ACCEPT
    bob_copy.deleted_occurrences.append(to_timestamp(berlin(date(2026, 3, 16))))
    await harness.upsert(BOB, bob_copy)
    [hidden] = await harness.wait_command("calendar_delete", 1)
    assert hidden.calendar_delete.user == BOB
    assert (
        hidden.calendar_delete.occurrence_id == f"{mid('with-exception')}@{int(berlin(date(2026, 3, 16)).timestamp())}"
    )
    await harness.settle()
    assert local_days(await harness.events(ANNA)) == [
        "2026-03-02 09:00",
        "2026-03-10 11:00",
        "2026-03-16 09:00",
        "2026-03-23 09:00",
    ]
    assert local_days(await harness.events(BOB)) == ["2026-03-02 09:00", "2026-03-10 11:00", "2026-03-23 09:00"]
    assert {o.my_response for o in await harness.events(BOB)} == {common_pb2.RESPONSE_TYPE_ACCEPT}

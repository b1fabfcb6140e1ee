"""Recurring meetings: every EWS pattern and range expanded through CalendarView in the item's time zone,
occurrence edits (exceptions) and deletions in organizer and attendee calendars."""

from __future__ import annotations

import datetime as dt

import pytest
from exchangelib import UTC, Attendee, CalendarItem, EWSDateTime, EWSTimeZone
from exchangelib.fields import (
    FRIDAY,
    JUNE,
    LAST,
    MONDAY,
    NOVEMBER,
    SECOND,
    THURSDAY,
    TUESDAY,
    WEEK_DAY,
)
from exchangelib.properties import Mailbox
from exchangelib.recurrence import (
    AbsoluteMonthlyPattern,
    AbsoluteYearlyPattern,
    DailyPattern,
    Recurrence,
    RelativeMonthlyPattern,
    RelativeYearlyPattern,
    WeeklyPattern,
)

from exchange_emulator.testing import EmulatorHandle

BERLIN = EWSTimeZone("Europe/Berlin")

CASES = [
    # pattern, range kwargs, first local start, expected local dates (09:00 Europe/Berlin each)
    (
        "daily-interval-2-numbered",
        DailyPattern(interval=2),
        {"number": 4},
        dt.date(2031, 3, 27),
        ["2031-03-27", "2031-03-29", "2031-03-31", "2031-04-02"],
    ),
    (
        "weekly-biweekly-mon-thu-enddate",
        WeeklyPattern(interval=2, weekdays=[MONDAY, THURSDAY], first_day_of_week=MONDAY),
        {"end": dt.date(2031, 4, 17)},
        dt.date(2031, 3, 17),
        ["2031-03-17", "2031-03-20", "2031-03-31", "2031-04-03", "2031-04-14", "2031-04-17"],
    ),
    (
        "absolute-monthly-31st",
        AbsoluteMonthlyPattern(interval=1, day_of_month=31),
        {"number": 4},
        dt.date(2031, 1, 31),
        ["2031-01-31", "2031-02-28", "2031-03-31", "2031-04-30"],
    ),
    (
        "relative-monthly-second-tuesday",
        RelativeMonthlyPattern(interval=1, weekday=TUESDAY, week_number=SECOND),
        {"number": 3},
        dt.date(2031, 1, 14),
        ["2031-01-14", "2031-02-11", "2031-03-11"],
    ),
    (
        "relative-monthly-last-weekday",
        RelativeMonthlyPattern(interval=1, weekday=WEEK_DAY, week_number=LAST),
        {"number": 2},
        dt.date(2031, 5, 30),
        ["2031-05-30", "2031-06-30"],
    ),
    (
        "absolute-yearly-noend",
        AbsoluteYearlyPattern(day_of_month=15, month=JUNE),
        {},
        dt.date(2031, 6, 15),
        ["2031-06-15", "2032-06-15", "2033-06-15"],
    ),
    (
        "relative-yearly-last-friday-november",
        RelativeYearlyPattern(weekday=FRIDAY, week_number=LAST, month=NOVEMBER),
        {"number": 2},
        dt.date(2031, 11, 28),
        ["2031-11-28", "2032-11-26"],
    ),
]


def _local(day: dt.date, hour: int = 9) -> EWSDateTime:
    return EWSDateTime(day.year, day.month, day.day, hour, 0, tzinfo=BERLIN)


@pytest.mark.parametrize(("name", "pattern", "rng", "first", "expected"), CASES, ids=[c[0] for c in CASES])
def test_pattern_expansion_through_calendar_view(
    emu: EmulatorHandle, account, mailboxes, name, pattern, rng, first, expected
) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    start = _local(first)
    item = CalendarItem(
        account=acc,
        folder=acc.calendar,
        subject=name,
        start=start,
        end=start + dt.timedelta(minutes=45),
        recurrence=Recurrence(pattern=pattern, start=first, **rng),
    )
    item.save()
    master = acc.calendar.get(id=item.id)
    assert master.type == "RecurringMaster"
    assert master.recurrence.pattern == pattern
    assert master.first_occurrence.start == _local(dt.date.fromisoformat(expected[0]))
    if rng:
        assert master.last_occurrence.start == _local(dt.date.fromisoformat(expected[-1]))
    else:
        assert master.last_occurrence is None
    view = list(acc.calendar.view(start=EWSDateTime(2031, 1, 1, tzinfo=UTC), end=EWSDateTime(2034, 1, 1, tzinfo=UTC)))
    starts = [o.start.astimezone(BERLIN) for o in view]
    assert [s.date().isoformat() for s in starts] == expected
    assert all((s.hour, s.minute) == (9, 0) for s in starts)  # wall clock kept across DST
    assert all(o.type == "Occurrence" and o.uid == master.uid for o in view)
    assert all(o.end - o.start == dt.timedelta(minutes=45) for o in view)
    # one occurrence fetched by its own ItemId
    occ = acc.calendar.get(id=view[-1].id)
    assert occ.type == "Occurrence" and occ.start == view[-1].start


def test_calendar_view_window_and_max_entries(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    start = _local(dt.date(2031, 3, 1))
    CalendarItem(
        account=acc,
        folder=acc.calendar,
        subject="daily",
        start=start,
        end=start + dt.timedelta(hours=1),
        recurrence=Recurrence(pattern=DailyPattern(interval=1), start=start.date()),
    ).save()
    single = _local(dt.date(2031, 3, 5), 12)
    CalendarItem(
        account=acc, folder=acc.calendar, subject="single", start=single, end=single + dt.timedelta(hours=1)
    ).save()
    win_start, win_end = _local(dt.date(2031, 3, 4)), _local(dt.date(2031, 3, 7))
    view = list(acc.calendar.view(start=win_start, end=win_end))
    assert [(v.subject, v.start.astimezone(BERLIN).day) for v in view] == [
        ("daily", 4),
        ("daily", 5),
        ("single", 5),
        ("daily", 6),
    ]
    limited = list(acc.calendar.view(start=win_start, end=win_end, max_items=2))
    assert len(limited) == 2


def test_occurrence_edit_and_delete_reach_attendees(emu: EmulatorHandle, account, mailboxes) -> None:
    org, bob = mailboxes("org", "bob")
    a_org, a_bob = account(org), account(bob)
    start = _local(dt.date(2031, 9, 1), 10)
    item = CalendarItem(
        account=a_org,
        folder=a_org.calendar,
        subject="Weekly sync",
        start=start,
        end=start + dt.timedelta(hours=1),
        recurrence=Recurrence(pattern=WeeklyPattern(interval=1, weekdays=[MONDAY]), start=start.date(), number=5),
        required_attendees=[Attendee(mailbox=Mailbox(email_address=bob))],
    )
    item.save(send_meeting_invitations="SendToAllAndSaveCopy")
    window = (EWSDateTime(2031, 8, 1, tzinfo=UTC), EWSDateTime(2031, 11, 1, tzinfo=UTC))
    occurrences = list(a_org.calendar.view(*window))
    assert len(occurrences) == 5
    # edit the second occurrence (moved by 2 hours, new subject)
    originals = [o.start for o in occurrences]
    second = occurrences[1]
    second.subject = "Weekly sync (special)"
    second.start = second.start + dt.timedelta(hours=2)
    second.end = second.end + dt.timedelta(hours=2)
    second.save(update_fields=["subject", "start", "end"], send_meeting_invitations="SendToAllAndSaveCopy")
    # delete the fourth one with cancellations
    occurrences[3].delete(send_meeting_cancellations="SendToAllAndSaveCopy")
    for acc in (a_org, a_bob):
        master = next(i for i in acc.calendar.all() if i.uid == occurrences[0].uid)
        assert master.type == "RecurringMaster"
        assert len(master.modified_occurrences) == 1
        assert master.modified_occurrences[0].start == originals[1] + dt.timedelta(hours=2)
        assert master.modified_occurrences[0].original_start == originals[1]
        assert [d.start for d in master.deleted_occurrences] == [originals[3]]
        view = list(acc.calendar.view(*window))
        assert len(view) == 4
        kinds = {v.subject: v.type for v in view}
        assert kinds["Weekly sync (special)"] == "Exception"
        exc = next(v for v in view if v.type == "Exception")
        full = acc.calendar.get(id=exc.id)
        assert full.original_start == originals[1]
        assert full.start == originals[1] + dt.timedelta(hours=2)
        assert full.recurrence_id == originals[1]


def test_occurrence_by_instance_index(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    start = _local(dt.date(2031, 10, 6))
    item = CalendarItem(
        account=acc,
        folder=acc.calendar,
        subject="indexed",
        start=start,
        end=start + dt.timedelta(hours=1),
        recurrence=Recurrence(pattern=DailyPattern(interval=1), start=start.date(), number=3),
    )
    item.save()
    third = item.occurrence(3)
    third.refresh()
    assert third.start == start + dt.timedelta(days=2)
    third.subject = "third changed"
    third.save(update_fields=["subject"])
    master = third.recurring_master()
    master.refresh()
    assert master.modified_occurrences[0].start == start + dt.timedelta(days=2)

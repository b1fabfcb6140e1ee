"""CalendarView bounds as the EWS reference states them ("CalendarView": items ending before StartDate and items
starting on or after EndDate are left out)."""

from __future__ import annotations

import datetime as dt

from exchangelib import UTC, CalendarItem, EWSDateTime
from exchangelib.recurrence import DailyPattern, Recurrence

from exchange_emulator.testing import EmulatorHandle

VIEW_START = EWSDateTime(2036, 6, 10, 12, tzinfo=UTC)
VIEW_END = EWSDateTime(2036, 6, 10, 14, tzinfo=UTC)


def _save(acc, subject: str, start: EWSDateTime, minutes: int, **kw) -> CalendarItem:
    item = CalendarItem(
        account=acc, folder=acc.calendar, subject=subject, start=start, end=start + dt.timedelta(minutes=minutes), **kw
    )
    item.save()
    return item


def test_calendar_view_bounds(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    _save(acc, "ends at view start", VIEW_START - dt.timedelta(hours=1), 60)
    _save(acc, "ends before view start", VIEW_START - dt.timedelta(hours=1), 59)
    _save(acc, "inside", VIEW_START + dt.timedelta(minutes=30), 30)
    _save(acc, "starts at view end", VIEW_END, 30)
    _save(acc, "zero length at view start", VIEW_START, 0)
    series_start = VIEW_START - dt.timedelta(days=2, hours=1)
    _save(
        acc,
        "daily ending at view start",
        series_start,
        60,
        recurrence=Recurrence(pattern=DailyPattern(interval=1), start=series_start.date(), number=5),
    )
    found = sorted(i.subject for i in acc.calendar.view(start=VIEW_START, end=VIEW_END))
    assert found == ["daily ending at view start", "ends at view start", "inside", "zero length at view start"]

"""Guide §4.2.2 "Repeating event" and the cache window, end to end."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from e2e_support import SEND, Product, email, local_time, wait_until
from exchangelib import CalendarItem
from exchangelib.properties import Attendee, Mailbox
from exchangelib.recurrence import (
    AbsoluteMonthlyPattern,
    DailyPattern,
    Recurrence,
    RelativeYearlyPattern,
    WeeklyPattern,
)

BERLIN = ZoneInfo("Europe/Berlin")


def series(product: Product, subject: str, start: Any, recurrence: Recurrence, attendee: str = "bob") -> Any:
    account = product.account("carol")
    item = CalendarItem(
        account=account,
        folder=account.calendar,
        subject=subject,
        start=start,
        end=start + timedelta(minutes=45),
        required_attendees=[Attendee(mailbox=Mailbox(email_address=email(attendee)))],
        recurrence=recurrence,
    )
    item.save(send_meeting_invitations=SEND)
    item.refresh()
    return item


def local_starts(events: list[dict[str, Any]]) -> list[datetime]:
    return sorted(datetime.fromisoformat(e["start"].replace("Z", "+00:00")).astimezone(BERLIN) for e in events)


def next_weekday(weekday: int, from_days: int = 1) -> Any:
    first = local_time(from_days, 10)
    return first + timedelta(days=(weekday - first.weekday()) % 7)


def test_4_2_2_weekly_every_monday_until_a_date(product: Product) -> None:
    monday = next_weekday(0)
    until = (monday + timedelta(weeks=5)).date()
    series(
        product,
        "Every Monday",
        monday,
        Recurrence(
            pattern=WeeklyPattern(interval=1, weekdays=[1], first_day_of_week=1), start=monday.date(), end=until
        ),
    )
    events = product.wait_events("bob", "Every Monday", lambda found: len(found) >= 6)
    starts = local_starts(events)
    assert len(starts) == 6
    assert all(s.weekday() == 0 and (s.hour, s.minute) == (10, 0) for s in starts), "Mondays 10:00 local, across DST"
    assert starts[-1].date() == until
    assert all(e["recurring"] for e in events)


def test_4_2_2_daily_ending_after_n_occurrences(product: Product) -> None:
    start = local_time(2, 8)
    series(product, "Daily five", start, Recurrence(pattern=DailyPattern(interval=1), start=start.date(), number=5))
    starts = local_starts(product.wait_events("bob", "Daily five", lambda found: len(found) >= 5))
    assert [s.date() for s in starts] == [start.date() + timedelta(days=i) for i in range(5)]


def test_4_2_2_monthly_without_end_stays_inside_the_forward_window(product: Product) -> None:
    start = local_time(1, 16)
    pattern = AbsoluteMonthlyPattern(interval=1, day_of_month=start.day if start.day <= 28 else 28)
    series(product, "Monthly report", start, Recurrence(pattern=pattern, start=start.date()))
    events = product.wait_events("bob", "Monthly report", lambda found: len(found) >= 3)
    starts = local_starts(events)
    horizon = datetime.now(BERLIN) + timedelta(days=4 * 31)
    assert 3 <= len(starts) <= 4, "cache.forward = 3 months"
    assert all(s < horizon for s in starts)
    assert all(s.day == pattern.day_of_month for s in starts)


def test_4_2_2_yearly_relative(product: Product) -> None:
    offset = 20
    while (local_time(offset, 9).day - 1) // 7 >= 4:  # "the fifth ..." does not exist as a relative pattern
        offset += 1
    day = local_time(offset, 9)
    pattern = RelativeYearlyPattern(month=day.month, week_number=(day.day - 1) // 7 + 1, weekday=day.isoweekday())
    series(product, "Yearly kickoff", day, Recurrence(pattern=pattern, start=day.date(), number=3))
    (event,) = product.wait_events("bob", "Yearly kickoff")
    assert local_starts([event])[0].date() == day.date(), "one a year: only this year's is in the window"


def test_4_2_2_edited_and_deleted_occurrences(product: Product) -> None:
    start = next_weekday(2, 1)  # a Wednesday
    item = series(
        product,
        "Wednesday sync",
        start,
        Recurrence(pattern=WeeklyPattern(interval=1, weekdays=[3]), start=start.date(), number=4),
    )
    product.wait_events("bob", "Wednesday sync", lambda found: len(found) == 4)
    second = item.occurrence(2)
    second.refresh()
    second.start, second.end = second.start + timedelta(hours=2), second.end + timedelta(hours=2)
    second.save(update_fields=["start", "end"], send_meeting_invitations=SEND)
    third = item.occurrence(3)
    third.refresh()
    third.delete(send_meeting_cancellations=SEND)

    def settled() -> list[datetime] | None:
        starts = local_starts(product.events("bob", "Wednesday sync"))
        return starts if len(starts) == 3 and starts[1].hour == 12 else None

    starts = wait_until(settled, 60, "the edited and deleted occurrences")
    assert [s.hour for s in starts] == [10, 12, 10]
    assert starts[2].date() == (start + timedelta(weeks=3)).date()


def test_3_1_2_cache_window_backward_and_forward(product: Product) -> None:
    account = product.account("alice")
    for subject, days in (("Far future", 150), ("Recent past", -10), ("Long ago", -75), ("Soon", 3)):
        start = local_time(days, 14)
        CalendarItem(
            account=account,
            folder=account.calendar,
            subject=subject,
            start=start,
            end=start + timedelta(hours=1),
            required_attendees=[Attendee(mailbox=Mailbox(email_address=email("bob")))],
        ).save(send_meeting_invitations=SEND)
    product.wait_events("bob", "Soon")
    product.wait_events("bob", "Recent past")
    assert product.events("bob", "Far future") == [], "beyond cache.forward (3 months)"
    assert product.events("bob", "Long ago") == [], "before cache.backward (1 month)"

"""MimeContent of calendar items as iCalendar (mime.py): what a GetItem answers parses as the item. The import
side (CreateItem with MimeContent only) is in test_exchange_emulator_raw_soap.py: exchangelib will not send an
item without Start and End."""

from __future__ import annotations

import datetime as dt

import icalendar
from exchangelib import UTC, Attendee, CalendarItem, EWSDateTime, Mailbox
from exchangelib.recurrence import DailyPattern, Recurrence


def test_get_item_answers_the_item_as_icalendar(account, mailboxes) -> None:
    owner, guest = mailboxes("mimeowner", "mimeguest")
    acc = account(owner)
    start = EWSDateTime(2031, 5, 6, 9, tzinfo=UTC)
    item = CalendarItem(
        account=acc,
        folder=acc.calendar,
        subject="Exported",
        location="Room 1",
        start=start,
        end=start + dt.timedelta(hours=1),
        required_attendees=[Attendee(mailbox=Mailbox(email_address=guest))],
        recurrence=Recurrence(pattern=DailyPattern(interval=1), start=start.date(), number=3),
    )
    item.save(send_meeting_invitations="SendToNone")
    (fetched,) = acc.fetch(ids=[item], only_fields=["mime_content", "uid"])
    calendar = icalendar.Calendar.from_ical(fetched.mime_content)
    (event,) = calendar.walk("VEVENT")
    assert str(event["uid"]) == fetched.uid
    assert str(event["summary"]) == "Exported" and str(event["location"]) == "Room 1"
    assert event["dtstart"].dt == dt.datetime(2031, 5, 6, 9, tzinfo=dt.UTC)
    assert str(event["attendee"]).lower() == f"mailto:{guest}"
    assert event["rrule"]["FREQ"] == ["DAILY"] and event["rrule"]["COUNT"] == [3]

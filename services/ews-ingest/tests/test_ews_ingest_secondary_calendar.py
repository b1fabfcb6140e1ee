"""A secondary calendar a client creates (Outlook's "New Calendar": CreateFolder under Calendar, class
IPF.Appointment) is not synced: ews-ingest reads each mailbox's default Calendar folder, and the other calendar - its
folder events on the Calendar subscription, its items, their changes, its deletion - leaves that sync undisturbed."""

from __future__ import annotations

import datetime as dt

from ews_ingest_support import ChangeCollector, Outlook, StreamingIngest, new_mailboxes, soon
from exchangelib import Attendee, CalendarItem
from exchangelib.folders import Calendar
from exchangelib.properties import Mailbox

from exchange_emulator.testing import EmulatorHandle
from trueconf.calendar.v1 import ingest_pb2

#: Named like the default folder itself (allowed: it has another parent), so that a client finding "the calendar" by
#: name instead of by DistinguishedFolderId would pick the wrong one.
SECONDARY = "Calendar"


def _secondary_calendar(outlook: Outlook, owner: str) -> Calendar:
    """What Outlook does: a calendar folder under Calendar, a meeting and an appointment in it."""
    account = outlook.account(owner)
    team: Calendar = Calendar(parent=account.calendar, name=SECONDARY).save()
    begin = soon(days=4)
    meeting = CalendarItem(
        account=account,
        folder=team,
        subject="secondary meeting @trueconf",
        start=begin,
        end=begin + dt.timedelta(hours=1),
        required_attendees=[Attendee(mailbox=Mailbox(email_address="guest@elsewhere.example.net"))],
    )
    meeting.save(send_meeting_invitations="SendToAllAndSaveCopy")
    CalendarItem(
        account=account, folder=team, subject="secondary appointment", start=begin, end=begin + dt.timedelta(hours=2)
    ).save(send_meeting_invitations="SendToNone")
    return team


def _change_and_drop(outlook: Outlook, owner: str, team: Calendar) -> None:
    (appointment,) = [i for i in team.all() if i.subject == "secondary appointment"]
    appointment.subject = "secondary appointment moved"
    appointment.start = appointment.start + dt.timedelta(hours=3)
    appointment.end = appointment.end + dt.timedelta(hours=3)
    appointment.save(update_fields=["subject", "start", "end"])
    team.delete()


async def test_a_secondary_calendar_does_not_disturb_the_default_one(
    emu: EmulatorHandle, collector: ChangeCollector, outlook: Outlook, streaming_ingest: StreamingIngest
) -> None:
    (owner,) = new_mailboxes(emu, "owner")
    await outlook.do(outlook.meeting, owner, "default calendar, before")
    async with streaming_ingest(owner) as h:
        await collector.wait(lambda c: c.event.subject == "default calendar, before", what="initial load")
        team = await outlook.do(_secondary_calendar, outlook, owner)
        assert [i.subject for i in await outlook.do(lambda: list(team.all()))] == [
            "secondary meeting @trueconf",
            "secondary appointment",
        ]  # the emulator holds them, in that folder
        notified = h.runtime.streams.stats.notifications
        await outlook.do(outlook.meeting, owner, "default calendar, after the secondary one")
        after = await collector.wait(lambda c: c.event.subject == "default calendar, after the secondary one")
        assert after.mailbox == owner
        assert h.runtime.streams.stats.notifications > notified  # it came by notification: the stream lives on
        await outlook.do(_change_and_drop, outlook, owner, team)
        await outlook.do(outlook.meeting, owner, "default calendar, last")
        await collector.wait(lambda c: c.event.subject == "default calendar, last")

        subjects = [c.event.subject for c in collector.of(owner)]
        # Published in order, each default-calendar meeting once; nothing of the secondary calendar at all.
        assert subjects == [
            "default calendar, before",
            "default calendar, after the secondary one",
            "default calendar, last",
        ], subjects
        entry = h.scheduler.entries[owner]
        assert entry.last_error == "" and entry.failures == 0
        assert entry.state == ingest_pb2.MAILBOX_STATE_SYNCING

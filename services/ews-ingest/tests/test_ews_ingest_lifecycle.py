"""End to end: meetings made through exchangelib as Outlook would (strict Exchange emulator) → ews-ingest →
JetStream CALENDAR (real nats-server). Create, update, reschedule, answers, recurrence edits, cancel, delete,
delegate, initial load (cache.autoSync) and the window."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable

from ews_ingest_support import (
    TCS_HOST,
    ChangeCollector,
    FakeLicensing,
    Outlook,
    ingest_config,
    new_mailboxes,
    provider_section,
    running_ingest,
    soon,
)
from exchangelib import EWSDateTime, EWSTimeZone
from exchangelib.folders import Calendar, DistinguishedFolderId, SingleFolderQuerySet
from exchangelib.properties import Mailbox
from exchangelib.recurrence import Recurrence, WeeklyPattern

from ews_ingest.conference_marker import register_marker_property
from exchange_emulator.testing import EmulatorHandle
from tccal.subjects import calendar_subject
from trueconf.calendar.v1 import calendar_pb2, common_pb2

Change = calendar_pb2.CalendarChange
BERLIN = EWSTimeZone("Europe/Berlin")


def upsert(mailbox: str, check: Callable[[calendar_pb2.CalendarEvent], bool]) -> Callable[[Change], bool]:
    return lambda c: c.mailbox == mailbox and c.type == calendar_pb2.CHANGE_TYPE_UPSERT and check(c.event)


def deleted(mailbox: str, item_id: str) -> Callable[[Change], bool]:
    return lambda c: c.mailbox == mailbox and c.type == calendar_pb2.CHANGE_TYPE_DELETE and c.item_id == item_id


def response_of(event: calendar_pb2.CalendarEvent, email: str) -> int:
    return next(a.response for a in event.attendees if a.person.email == email)


async def test_meeting_lifecycle(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    org, bob, carol = new_mailboxes(emu, "org", "bob", "carol")
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [org, bob, carol])])
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(org, bob, carol)
        await h.streamed()
        # create: organizer's copy, and the attendees' copies with their own answer
        item = await outlook.do(
            outlook.meeting, org, "Planning", attendees=[bob], optional=[carol], location="Room 1 @trueconf"
        )
        created = await collector.wait(upsert(org, lambda e: e.subject == "Planning"), what="organizer's copy")
        bob_copy = await collector.wait(upsert(bob, lambda e: e.subject == "Planning"), what="bob's copy")
        await collector.wait(upsert(carol, lambda e: e.subject == "Planning"), what="carol's copy")
        event = created.event
        assert created.item_id == item.id == event.item_id
        assert created.change_id == f"{org}/{item.id}/{event.change_key}"
        assert created.provider == "127.0.0.1"
        assert created.origin == calendar_pb2.CHANGE_ORIGIN_SYNC
        assert event.my_response == common_pb2.RESPONSE_TYPE_ORGANIZER
        assert event.organizer.email == org and event.is_meeting
        assert [(a.person.email, a.role) for a in event.attendees] == [
            (bob, common_pb2.ATTENDEE_ROLE_REQUIRED),
            (carol, common_pb2.ATTENDEE_ROLE_OPTIONAL),
        ]
        assert event.conference.source == common_pb2.CONFERENCE_SOURCE_KEYWORD
        assert (event.conference.mode, event.conference.max_podiums) == (common_pb2.CONFERENCE_MODE_ALL_ON_SCREEN, 4)
        assert bob_copy.event.uid == event.uid and bob_copy.item_id != item.id
        assert bob_copy.event.my_response == common_pb2.RESPONSE_TYPE_NO_RESPONSE_RECEIVED
        received = collector.received_for(lambda c: c.change_id == created.change_id)
        assert received is not None
        assert received.subject == calendar_subject("127.0.0.1", org)
        assert received.headers["Nats-Msg-Id"] == created.change_id

        # update subject and body
        item.subject, item.body = "Planning v2", "New agenda"
        await outlook.do(item.save, update_fields=["subject", "body"], send_meeting_invitations="SendToAllAndSaveCopy")
        updated = await collector.wait(upsert(org, lambda e: e.subject == "Planning v2"), what="update")
        assert updated.event.body == "New agenda"
        assert updated.event.change_key != event.change_key and updated.sequence > created.sequence
        await collector.wait(upsert(bob, lambda e: e.subject == "Planning v2"), what="update reaches bob")

        # reschedule by two hours
        new_start = item.start + dt.timedelta(hours=2)
        item.start, item.end = new_start, new_start + dt.timedelta(hours=1)
        await outlook.do(item.save, update_fields=["start", "end"], send_meeting_invitations="SendToAllAndSaveCopy")
        moved_at = int(new_start.timestamp())
        await collector.wait(upsert(org, lambda e: e.start.seconds == moved_at), what="reschedule (organizer)")
        moved = await collector.wait(upsert(bob, lambda e: e.start.seconds == moved_at), what="reschedule (bob)")
        assert moved.event.end.seconds - moved.event.start.seconds == 3600

        # answers: bob accepts, carol tentatively accepts
        copy = await outlook.do(outlook.copy_of, bob, event.uid)
        await outlook.do(copy.accept)
        await collector.wait(upsert(bob, lambda e: e.my_response == common_pb2.RESPONSE_TYPE_ACCEPT), what="accept")
        await collector.wait(
            upsert(org, lambda e: response_of(e, bob) == common_pb2.RESPONSE_TYPE_ACCEPT), what="organizer sees it"
        )
        carol_copy = await outlook.do(outlook.copy_of, carol, event.uid)
        await outlook.do(carol_copy.tentatively_accept)
        await collector.wait(
            upsert(org, lambda e: response_of(e, carol) == common_pb2.RESPONSE_TYPE_TENTATIVE), what="tentative"
        )

        # the attendee carol deletes her copy: a delete for her mailbox only
        carol_copy = await outlook.do(outlook.copy_of, carol, event.uid)
        carol_item_id = carol_copy.id
        await outlook.do(carol_copy.delete)  # exchangelib forgets the id of a deleted item
        gone = await collector.wait(deleted(carol, carol_item_id), what="carol's delete")
        assert gone.change_id == f"{carol}/{carol_item_id}/deleted"

        # the organizer cancels: organizer's item deleted, bob's copy cancelled
        organizer_item_id = item.id
        await outlook.do(item.cancel)
        await collector.wait(deleted(org, organizer_item_id), what="organizer's delete")
        cancelled = await collector.wait(upsert(bob, lambda e: e.cancelled), what="bob's copy cancelled")
        assert cancelled.event.uid == event.uid

        # sequences strictly increase per mailbox
        for mailbox in (org, bob, carol):
            sequences = [c.sequence for c in collector.of(mailbox)]
            assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences), mailbox


async def test_recurring_series_edits(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    org, bob = new_mailboxes(emu, "org", "bob")
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [org, bob])])
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(org, bob)
        await h.streamed()
        first = dt.date.today() + dt.timedelta(days=7)
        start = EWSDateTime(first.year, first.month, first.day, 9, 0, tzinfo=BERLIN)
        pattern = WeeklyPattern(interval=1, weekdays=[first.isoweekday()])
        series = await outlook.do(
            outlook.meeting,
            org,
            "Weekly sync",
            attendees=[bob],
            start=start,
            recurrence=Recurrence(pattern=pattern, start=first, number=6),
        )
        master = await collector.wait(upsert(org, lambda e: e.subject == "Weekly sync"), what="series")
        assert master.event.kind == calendar_pb2.ITEM_KIND_RECURRING_MASTER
        assert (master.event.time_zone, master.event.windows_time_zone) == ("Europe/Berlin", "W. Europe Standard Time")
        recurrence = master.event.recurrence
        assert recurrence.weekly.interval == 1 and recurrence.number_of_occurrences == 6
        assert recurrence.start_date == first.isoformat()

        def edit_second() -> None:
            occurrence = series.occurrence(2)
            occurrence.refresh()
            occurrence.subject = "Weekly sync (special)"
            occurrence.start = occurrence.start + dt.timedelta(hours=2)
            occurrence.end = occurrence.end + dt.timedelta(hours=2)
            occurrence.save(update_fields=["subject", "start", "end"], send_meeting_invitations="SendToAllAndSaveCopy")
            fourth = series.occurrence(4)
            fourth.refresh()
            fourth.delete(send_meeting_cancellations="SendToAllAndSaveCopy")

        await outlook.do(edit_second)

        def edited(event: calendar_pb2.CalendarEvent) -> bool:
            return len(event.modified_occurrences) == 1 and len(event.deleted_occurrences) == 1

        for mailbox in (org, bob):
            change = await collector.wait(upsert(mailbox, edited), what=f"series edit in {mailbox}")
            (special,) = change.event.modified_occurrences
            assert special.subject == "Weekly sync (special)"
            assert special.start.seconds - special.original_start.seconds == 7200
            week = 7 * 24 * 3600
            assert change.event.deleted_occurrences[0].seconds - change.event.start.seconds == 3 * week


async def test_delegate_creates_meeting_for_owner(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    boss, assistant, guest = new_mailboxes(emu, "boss", "assistant", "guest")
    emu.admin.add_delegate(boss, assistant, "Editor")
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [boss, guest])])
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(boss, guest)
        await h.streamed()

        def as_delegate() -> None:
            from exchangelib import Attendee, CalendarItem

            account = outlook.account(assistant)
            shared = SingleFolderQuerySet(
                account=account,
                folder=Calendar(
                    root=account.root,
                    _distinguished_id=DistinguishedFolderId(id="calendar", mailbox=Mailbox(email_address=boss)),
                ),
            ).resolve()
            begin = soon(days=5)
            CalendarItem(
                account=account,
                folder=shared,
                subject="Board review",
                start=begin,
                end=begin + dt.timedelta(hours=1),
                required_attendees=[Attendee(mailbox=Mailbox(email_address=guest))],
            ).save(send_meeting_invitations="SendToAllAndSaveCopy")

        await outlook.do(as_delegate)
        owners = await collector.wait(upsert(boss, lambda e: e.subject == "Board review"), what="boss's copy")
        assert owners.event.organizer.email == boss
        assert owners.event.my_response == common_pb2.RESPONSE_TYPE_ORGANIZER
        assert owners.event.created_by_delegate.name == "Assistant"
        guests = await collector.wait(upsert(guest, lambda e: e.subject == "Board review"), what="guest's copy")
        assert guests.event.organizer.email == boss
        assert not guests.event.HasField("created_by_delegate")


async def test_initial_load_skips_what_ended_before_the_window(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    (owner,) = new_mailboxes(emu, "owner")
    register_marker_property()
    marker = json.dumps({"mode": "S|L", "access": "private", "podiums": 3})
    await outlook.do(outlook.meeting, owner, "Next week", start=soon(days=7), trueconf_meeting_marker=marker)
    await outlook.do(outlook.meeting, owner, "Last week", start=soon(days=-7), location=f"https://{TCS_HOST}/c/77")
    await outlook.do(outlook.meeting, owner, "In two years", start=soon(days=730))
    await outlook.do(outlook.meeting, owner, "Half a year ago", start=soon(days=-180))
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [owner])])  # window: -1/+2 months
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(owner)
        # published and acked before the sync counts as done; the collector's delivery may trail a little
        await collector.wait(lambda c: len(collector.of(owner)) >= 3, what="initial load")
        await h.streamed()
        subjects = sorted(c.event.subject for c in collector.of(owner))
        # what ended before the window is history; what lies beyond it will enter it without ever changing again
        assert subjects == ["In two years", "Last week", "Next week"]
        assert {c.origin for c in collector.of(owner)} == {calendar_pb2.CHANGE_ORIGIN_INITIAL_LOAD}
        by_subject = {c.event.subject: c.event for c in collector.of(owner)}
        spec = by_subject["Next week"].conference
        assert (spec.source, spec.mode, spec.max_podiums) == (
            common_pb2.CONFERENCE_SOURCE_EXTENDED_PROPERTY,
            common_pb2.CONFERENCE_MODE_MODERATED,
            3,
        )
        linked = by_subject["Last week"].conference
        assert (linked.source, linked.existing_conference_id) == (common_pb2.CONFERENCE_SOURCE_JOIN_LINK, "77")
        # changes after the first pass are published whatever their date: the engine keeps its own window
        await h.streamed()
        await outlook.do(outlook.meeting, owner, "Far future, made now", start=soon(days=400))
        later = await collector.wait(upsert(owner, lambda e: e.subject == "Far future, made now"))
        assert later.origin == calendar_pb2.CHANGE_ORIGIN_SYNC


async def test_without_auto_sync_only_changes_from_now(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    (owner,) = new_mailboxes(emu, "owner")
    before = await outlook.do(outlook.meeting, owner, "Existing before start")
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [owner])], auto_sync=False)
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(owner)
        await h.streamed()
        assert h.scheduler.entries[owner].context.checkpoint.initial_done  # the baseline SyncState is taken
        await outlook.do(outlook.meeting, owner, "Made after start")
        await collector.wait(upsert(owner, lambda e: e.subject == "Made after start"))
        before.subject = "Existing, now edited"
        await outlook.do(before.save, update_fields=["subject"])
        await collector.wait(upsert(owner, lambda e: e.subject == "Existing, now edited"))
        assert [c.event.subject for c in collector.of(owner)] == ["Made after start", "Existing, now edited"]


async def test_an_icalendar_import_reaches_the_bus_like_any_meeting(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    """An item made by a CalDAV gateway or a .ics import: CreateItem with MimeContent alone and a UID that is not
    Outlook's. ews-ingest reads it like any other, attendees and UID included."""
    org, guest = new_mailboxes(emu, "icsorg", "icsguest")
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [org, guest])])
    day = soon(days=4)
    ics = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//CalDAV gateway//EN\r\nBEGIN:VEVENT\r\n"
        "UID:ics-import-1@caldav.example.org\r\nDTSTAMP:20300101T000000Z\r\n"
        f"DTSTART:{day:%Y%m%d}T100000Z\r\nDTEND:{day:%Y%m%d}T110000Z\r\nSUMMARY:From a .ics file\r\n"
        f"ATTENDEE;ROLE=REQ-PARTICIPANT;CN=Guest:mailto:{guest}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    create_from_ics = (
        '<m:CreateItem SendMeetingInvitations="SendToAllAndSaveCopy"><m:SavedItemFolderId>'
        '<t:DistinguishedFolderId Id="calendar"/></m:SavedItemFolderId><m:Items><t:CalendarItem>'
        f'<t:MimeContent CharacterSet="UTF-8">{base64.b64encode(ics.encode()).decode()}</t:MimeContent>'
        "</t:CalendarItem></m:Items></m:CreateItem>"
    )
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(org, guest)
        await h.streamed()
        answer = await outlook.do(emu.post_soap, create_from_ics, mailbox=org)
        assert answer.status_code == 200 and b'ResponseClass="Success"' in answer.content, answer.text
        for mailbox in (org, guest):  # the guest's copy arrives through transport, later
            change = await collector.wait(upsert(mailbox, lambda e: e.subject == "From a .ics file"), timeout=30)
            assert change.event.uid == "ics-import-1@caldav.example.org"
            assert guest in {a.person.email for a in change.event.attendees}

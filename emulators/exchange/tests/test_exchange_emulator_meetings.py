"""Meetings across mailboxes: invitations, attendee copies, responses, updates, cancellation, delegates,
extended properties — all written through exchangelib the way Outlook would."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from exchangelib import (
    UTC,
    Attendee,
    CalendarItem,
    EWSDateTime,
    EWSTimeZone,
    ExtendedProperty,
    HTMLBody,
)
from exchangelib.folders import Calendar, DistinguishedFolderId, SingleFolderQuerySet
from exchangelib.properties import Mailbox

from exchange_emulator.testing import EmulatorHandle

TZ = EWSTimeZone("Europe/Berlin")
TRUECONF_SET = "7f3a2a5e-44b4-4bd4-9f5e-2b8c7c8e0a11"


class TrueConfMeeting(ExtendedProperty):
    property_set_id = TRUECONF_SET
    property_name = "TrueConfMeeting"
    property_type = "String"


@pytest.fixture(autouse=True, scope="module")
def _register_property():
    CalendarItem.register("trueconf_meeting", TrueConfMeeting)
    yield
    CalendarItem.deregister("trueconf_meeting")


def _start(days: int = 10, hour: int = 10) -> EWSDateTime:
    base = dt.date.today() + dt.timedelta(days=days)
    return EWSDateTime(base.year, base.month, base.day, hour, 0, tzinfo=TZ)


def _copy(acc, uid: str) -> CalendarItem:
    found = [i for i in acc.calendar.all() if i.uid == uid]
    assert len(found) == 1, f"expected one item with UID {uid} in {acc.primary_smtp_address}, got {len(found)}"
    return found[0]


def _make_meeting(
    acc, attendees: list[str], optional: list[str] | None = None, subject: str = "Planning", **kwargs
) -> CalendarItem:
    start = kwargs.pop("start", _start())
    item = CalendarItem(
        account=acc,
        folder=acc.calendar,
        subject=subject,
        start=start,
        end=start + dt.timedelta(hours=1),
        body=HTMLBody("<p>Agenda</p>"),
        location="Room 42",
        required_attendees=[Attendee(mailbox=Mailbox(email_address=a)) for a in attendees],
        optional_attendees=[Attendee(mailbox=Mailbox(email_address=a)) for a in (optional or [])] or None,
        **kwargs,
    )
    item.save(send_meeting_invitations="SendToAllAndSaveCopy")
    item.refresh()
    return item


def test_invitation_creates_attendee_copies_with_same_uid(emu: EmulatorHandle, account, mailboxes) -> None:
    org, bob, carol = mailboxes("org", "bob", "carol")
    a_org, a_bob, a_carol = account(org), account(bob), account(carol)
    item = _make_meeting(a_org, [bob, "external@outside.example.net"], optional=[carol])
    assert item.is_meeting and item.meeting_request_was_sent
    assert item.my_response_type == "Organizer"
    assert item.organizer.email_address == org
    bob_copy = _copy(a_bob, item.uid)
    carol_copy = _copy(a_carol, item.uid)
    for copy in (bob_copy, carol_copy):
        assert copy.id != item.id
        assert copy.my_response_type == "NoResponseReceived"
        assert copy.organizer.email_address == org
        assert copy.subject == "Planning" and copy.location == "Room 42"
        assert copy.start == item.start and copy.end == item.end
        assert copy.is_meeting and not copy.is_cancelled
        assert copy.type == "Single"
    assert {a.mailbox.email_address for a in carol_copy.optional_attendees} == {carol}
    assert item.changekey != bob_copy.changekey
    assert item._start_timezone.key == "Europe/Berlin"


def test_send_to_none_creates_no_copies(emu: EmulatorHandle, account, mailboxes) -> None:
    org, bob = mailboxes("org", "bob")
    a_org = account(org)
    start = _start()
    item = CalendarItem(
        account=a_org,
        folder=a_org.calendar,
        subject="Draft",
        start=start,
        end=start + dt.timedelta(minutes=30),
        required_attendees=[Attendee(mailbox=Mailbox(email_address=bob))],
    )
    item.save(send_meeting_invitations="SendToNone")
    item.refresh()
    assert not item.meeting_request_was_sent
    assert emu.admin.items(bob) == []


@pytest.mark.parametrize(
    ("method", "expected"),
    [("accept", "Accept"), ("tentatively_accept", "Tentative"), ("decline", "Decline")],
)
def test_responses_update_the_organizer(emu: EmulatorHandle, account, mailboxes, method: str, expected: str) -> None:
    org, bob = mailboxes("org", "bob")
    a_org, a_bob = account(org), account(bob)
    item = _make_meeting(a_org, [bob])
    copy = _copy(a_bob, item.uid)
    getattr(copy, method)()
    item.refresh()
    (att,) = item.required_attendees
    assert att.response_type == expected
    assert att.last_response_time is not None
    bob_items = [i for i in a_bob.calendar.all() if i.uid == item.uid]
    if expected == "Decline":
        assert bob_items == []  # declining removes the meeting from the attendee's calendar
    else:
        assert bob_items[0].my_response_type == expected


def test_organizer_update_propagates(emu: EmulatorHandle, account, mailboxes) -> None:
    org, bob, carol = mailboxes("org", "bob", "carol")
    a_org, a_bob, a_carol = account(org), account(bob), account(carol)
    item = _make_meeting(a_org, [bob])
    _copy(a_bob, item.uid).accept()
    item.refresh()
    old_ck = item.changekey
    seq = item.appointment_sequence_number
    new_start = item.start + dt.timedelta(hours=2)
    item.start, item.end = new_start, new_start + dt.timedelta(hours=1)
    item.subject = "Planning (moved)"
    item.location = "Room 7"
    item.required_attendees = [*item.required_attendees, Attendee(mailbox=Mailbox(email_address=carol))]
    item.save(
        update_fields=["start", "end", "subject", "location", "required_attendees"],
        send_meeting_invitations="SendToAllAndSaveCopy",
    )
    item.refresh()
    assert item.changekey != old_ck
    assert item.appointment_sequence_number == seq + 1
    bob_copy = _copy(a_bob, item.uid)
    assert bob_copy.subject == "Planning (moved)" and bob_copy.location == "Room 7"
    assert bob_copy.start == new_start
    assert bob_copy.appointment_sequence_number == seq + 1
    carol_copy = _copy(a_carol, item.uid)
    assert carol_copy.start == new_start and carol_copy.my_response_type == "NoResponseReceived"


def test_update_with_send_to_none_does_not_propagate(emu: EmulatorHandle, account, mailboxes) -> None:
    org, bob = mailboxes("org", "bob")
    a_org, a_bob = account(org), account(bob)
    item = _make_meeting(a_org, [bob])
    item.subject = "Private note"
    item.save(update_fields=["subject"], send_meeting_invitations="SendToNone")
    assert _copy(a_bob, item.uid).subject == "Planning"


def test_organizer_delete_with_cancellations_cancels_copies(emu: EmulatorHandle, account, mailboxes) -> None:
    org, bob = mailboxes("org", "bob")
    a_org, a_bob = account(org), account(bob)
    item = _make_meeting(a_org, [bob])
    item.delete(send_meeting_cancellations="SendToAllAndSaveCopy")
    assert [i for i in a_org.calendar.all() if i.uid == item.uid] == []
    copy = _copy(a_bob, item.uid)
    assert copy.is_cancelled
    assert copy.subject == "Canceled: Planning"


def test_cancel_calendar_item(emu: EmulatorHandle, account, mailboxes) -> None:
    org, bob = mailboxes("org", "bob")
    a_org, a_bob = account(org), account(bob)
    item = _make_meeting(a_org, [bob])
    item.cancel(body="Not needed")
    copy = _copy(a_bob, item.uid)
    assert copy.is_cancelled and copy.subject.startswith("Canceled: ")
    assert [i for i in a_org.calendar.all() if i.uid == item.uid] == []


def test_attendee_delete_removes_only_their_copy(emu: EmulatorHandle, account, mailboxes) -> None:
    org, bob, carol = mailboxes("org", "bob", "carol")
    a_org, a_bob, a_carol = account(org), account(bob), account(carol)
    item = _make_meeting(a_org, [bob, carol])
    _copy(a_bob, item.uid).delete(send_meeting_cancellations="SendToAllAndSaveCopy")
    assert [i for i in a_bob.calendar.all() if i.uid == item.uid] == []
    assert not _copy(a_carol, item.uid).is_cancelled
    item.refresh()
    assert not item.is_cancelled and item.subject == "Planning"


def test_delegate_created_meeting_has_owner_as_organizer(emu: EmulatorHandle, account, mailboxes) -> None:
    boss, assistant, guest = mailboxes("boss", "assistant", "guest")
    emu.admin.add_delegate(boss, assistant, "Editor")
    a_assistant, a_guest, a_boss = account(assistant), account(guest), account(boss)
    shared = SingleFolderQuerySet(
        account=a_assistant,
        folder=Calendar(
            root=a_assistant.root,
            _distinguished_id=DistinguishedFolderId(id="calendar", mailbox=Mailbox(email_address=boss)),
        ),
    ).resolve()
    assert isinstance(shared, Calendar)
    start = _start(days=12)
    item = CalendarItem(
        account=a_assistant,
        folder=shared,
        subject="Board review",
        start=start,
        end=start + dt.timedelta(hours=1),
        required_attendees=[Attendee(mailbox=Mailbox(email_address=guest))],
    )
    item.save(send_meeting_invitations="SendToAllAndSaveCopy")
    in_boss = [i for i in a_boss.calendar.all() if i.subject == "Board review"]
    assert len(in_boss) == 1
    assert in_boss[0].organizer.email_address == boss
    assert in_boss[0].my_response_type == "Organizer"
    assert [i for i in a_assistant.calendar.all() if i.subject == "Board review"] == []
    assert _copy(a_guest, in_boss[0].uid).organizer.email_address == boss


def test_non_delegate_cannot_write_into_other_calendar(emu: EmulatorHandle, account, mailboxes) -> None:
    from exchangelib.errors import ErrorAccessDenied

    owner, stranger = mailboxes("owner", "stranger")
    a_stranger = account(stranger)
    result = SingleFolderQuerySet(
        account=a_stranger,
        folder=Calendar(
            root=a_stranger.root,
            _distinguished_id=DistinguishedFolderId(id="calendar", mailbox=Mailbox(email_address=owner)),
        ),
    ).resolve()
    assert isinstance(result, ErrorAccessDenied)
    start = _start()
    item = CalendarItem(
        account=a_stranger,
        folder=a_stranger.calendar,
        subject="x",
        start=start,
        end=start + dt.timedelta(hours=1),
    )
    item.save()
    from exchangelib.services import GetItem

    a_owner = account(owner)
    with pytest.raises(ErrorAccessDenied):
        list(GetItem(account=a_owner).call(items=[item], additional_fields=set(), shape="IdOnly"))


def test_extended_property_public_strings_guid(emu: EmulatorHandle, account, mailboxes) -> None:
    org, bob = mailboxes("org", "bob")
    a_org, a_bob = account(org), account(bob)
    marker = json.dumps({"access": "private", "mode": "S|L Auto", "podiums": 4, "pin": "1234"})
    item = _make_meeting(a_org, [bob], trueconf_meeting=marker)
    fetched = a_org.calendar.get(id=item.id)
    assert fetched.trueconf_meeting == marker
    assert _copy(a_bob, item.uid).trueconf_meeting == marker  # travels with the invitation
    fetched.trueconf_meeting = marker.replace("1234", "9999")
    fetched.save(update_fields=["trueconf_meeting"], send_meeting_invitations="SendToNone")
    assert a_org.calendar.get(id=item.id).trueconf_meeting == marker.replace("1234", "9999")
    fetched.trueconf_meeting = None
    fetched.save(update_fields=["trueconf_meeting"], send_meeting_invitations="SendToNone")
    assert a_org.calendar.get(id=item.id).trueconf_meeting is None
    stored = emu.admin.items(org)[0]
    assert "extended_properties" not in stored


def test_all_day_event_and_sensitivity(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    acc.default_timezone = TZ
    day = dt.date(2031, 1, 15)
    from exchangelib import EWSDate

    item = CalendarItem(
        account=acc,
        folder=acc.calendar,
        subject="Holiday",
        start=EWSDate.from_date(day),
        end=EWSDate.from_date(day),
        is_all_day=True,
        sensitivity="Private",
        legacy_free_busy_status="OOF",
    )
    item.save()
    got = acc.calendar.get(id=item.id)
    assert got.is_all_day and got.start == day and got.end == day
    assert got.sensitivity == "Private" and got.legacy_free_busy_status == "OOF"
    raw = emu.admin.items(owner)[0]
    assert (raw["start"], raw["end"]) == ("2031-01-14T23:00:00Z", "2031-01-15T23:00:00Z")  # local midnights


def test_get_item_returns_every_requested_property(emu: EmulatorHandle, account, mailboxes) -> None:
    org, bob = mailboxes("org", "bob")
    a_org = account(org)
    item = _make_meeting(a_org, [bob], categories=["Blue", "Work"], reminder_minutes_before_start=5)
    got = a_org.calendar.get(id=item.id)
    for name in (
        "subject",
        "body",
        "location",
        "start",
        "end",
        "uid",
        "organizer",
        "required_attendees",
        "datetime_created",
        "last_modified_time",
        "categories",
        "reminder_minutes_before_start",
        "legacy_free_busy_status",
        "type",
        "my_response_type",
        "appointment_sequence_number",
        "conversation_id",
        "text_body",
        "effective_rights",
        "culture",
        "importance",
    ):
        assert getattr(got, name) not in (None, ""), name
    assert got.categories == ["Blue", "Work"] and got.reminder_minutes_before_start == 5
    assert got.text_body.strip() == "Agenda"
    assert got.duration == "PT1H"


def test_utc_and_other_zones(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    for zone in ("America/New_York", "Asia/Tokyo", "UTC"):
        tz = EWSTimeZone(zone)
        start = EWSDateTime(2031, 7, 1, 9, 0, tzinfo=tz)
        item = CalendarItem(
            account=acc, folder=acc.calendar, subject=zone, start=start, end=start + dt.timedelta(hours=1)
        )
        item.save()
        got = acc.calendar.get(id=item.id)
        assert got._start_timezone.ms_id == tz.ms_id
        assert got.start.astimezone(UTC) == start.astimezone(UTC)

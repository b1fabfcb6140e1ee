"""SyncFolderItems (exchangelib sync_items), paging beyond 512 changes, FindItem paging and restrictions."""

from __future__ import annotations

import datetime as dt

from exchangelib import UTC, Attendee, CalendarItem, EWSDateTime
from exchangelib.errors import ErrorInvalidSyncStateData
from exchangelib.properties import Mailbox

from exchange_emulator.testing import EmulatorHandle


def _item(acc, subject: str, day: int = 1, **kw) -> CalendarItem:
    start = EWSDateTime(2032, 1, day, 9, tzinfo=UTC)
    return CalendarItem(
        account=acc,
        folder=acc.calendar,
        subject=subject,
        start=start,
        end=start + dt.timedelta(hours=1),
        **kw,
    )


def test_sync_create_update_delete(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    a, b, c = (_item(acc, n, i + 1) for i, n in enumerate("abc"))
    for it in (a, b, c):
        it.save()
    changes = list(acc.calendar.sync_items())
    assert sorted((kind, it.subject) for kind, it in changes) == [
        ("create", "a"),
        ("create", "b"),
        ("create", "c"),
    ]
    state = acc.calendar.item_sync_state
    assert state
    assert list(acc.calendar.sync_items(sync_state=state)) == []
    b.subject = "b2"
    b.save(update_fields=["subject"])
    c_id = c.id
    c.delete()
    d = _item(acc, "d", 5)
    d.save()
    changes = list(acc.calendar.sync_items(sync_state=state))
    kinds = [(kind, getattr(it, "subject", None) if kind != "delete" else it.id) for kind, it in changes]
    assert kinds == [("update", "b2"), ("delete", c_id), ("create", "d")]
    # an item created and deleted between two syncs is never reported
    state = acc.calendar.item_sync_state
    e = _item(acc, "e", 6)
    e.save()
    e.delete()
    assert list(acc.calendar.sync_items(sync_state=state)) == []


def test_sync_id_only_and_ignore(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    x, y = _item(acc, "x"), _item(acc, "y", 2)
    x.save()
    y.save()
    ids = [it.id for kind, it in acc.calendar.sync_items(only_fields=["id", "changekey"])]
    assert sorted(ids) == sorted([x.id, y.id])
    acc.calendar.item_sync_state = None
    ignored = list(acc.calendar.sync_items(ignore=[x]))
    assert [it.id for _, it in ignored] == [y.id]


def test_sync_state_is_validated(emu: EmulatorHandle, account, mailboxes) -> None:
    import pytest

    (owner,) = mailboxes("owner")
    acc = account(owner)
    with pytest.raises(ErrorInvalidSyncStateData):
        list(acc.calendar.sync_items(sync_state="bm90IGEgc3luYyBzdGF0ZQ=="))


def test_a_sync_state_dies_with_a_mailbox_move_or_another_store(emu: EmulatorHandle, account, mailboxes) -> None:
    """Exchange refuses a SyncState from before a move between databases, and so does the emulator; one that
    looks valid but belongs to another store (another emulator instance: another mailbox GUID) or points past the
    newest change is refused too. A fresh sync (no state) works at once."""
    import base64
    import gzip
    import struct
    import uuid

    import pytest

    (owner,) = mailboxes("owner")
    acc = account(owner)
    _item(acc, "before the move").save()
    list(acc.calendar.sync_items())
    state = acc.calendar.item_sync_state
    assert list(acc.calendar.sync_items(sync_state=state)) == []  # valid: nothing new
    raw = gzip.decompress(base64.b64decode(state))
    other_store = raw[:24] + uuid.uuid4().bytes + raw[40:]
    future = raw[:12] + struct.pack(">Q", struct.unpack(">Q", raw[12:20])[0] + 1000) + raw[20:]
    for forged in (other_store, future):
        with pytest.raises(ErrorInvalidSyncStateData):
            list(acc.calendar.sync_items(sync_state=base64.b64encode(gzip.compress(forged, mtime=0)).decode()))
    server = emu.admin.mailbox(owner)["server"]
    emu.admin.move_mailbox(owner, "EMU-MBX02" if server == "EMU-MBX01" else "EMU-MBX01")
    with pytest.raises(ErrorInvalidSyncStateData):
        list(acc.calendar.sync_items(sync_state=state))
    acc.calendar.item_sync_state = None
    assert [(k, i.subject) for k, i in acc.calendar.sync_items()] == [("create", "before the move")]


def test_attendee_sees_organizer_changes_in_sync(emu: EmulatorHandle, account, mailboxes) -> None:
    org, bob = mailboxes("org", "bob")
    a_org, a_bob = account(org), account(bob)
    list(a_bob.calendar.sync_items())
    state = a_bob.calendar.item_sync_state
    item = _item(a_org, "Team", required_attendees=[Attendee(mailbox=Mailbox(email_address=bob))])
    item.save(send_meeting_invitations="SendToAllAndSaveCopy")
    changes = list(a_bob.calendar.sync_items(sync_state=state))
    assert [(k, i.subject, i.my_response_type) for k, i in changes] == [("create", "Team", "NoResponseReceived")]
    state = a_bob.calendar.item_sync_state
    item.delete(send_meeting_cancellations="SendToAllAndSaveCopy")
    changes = list(a_bob.calendar.sync_items(sync_state=state))
    assert [(k, i.subject, i.is_cancelled) for k, i in changes] == [("update", "Canceled: Team", True)]


def test_sync_paging_beyond_512_changes(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    items = [_item(acc, f"bulk {n}", 1 + n % 28) for n in range(600)]
    results = acc.bulk_create(folder=acc.calendar, items=items)
    assert len(results) == 600 and all(r.id for r in results)
    before = emu.admin.requests()["operations"].get("SyncFolderItems", 0)
    changes = list(acc.calendar.sync_items(max_changes_returned=512, only_fields=["id", "changekey", "subject"]))
    after = emu.admin.requests()["operations"].get("SyncFolderItems", 0)
    assert len(changes) == 600
    assert len({it.id for _, it in changes}) == 600
    assert after - before == 2  # 512 + 88, IncludesLastItemInRange false then true
    assert list(acc.calendar.sync_items(sync_state=acc.calendar.item_sync_state)) == []


def test_find_item_paging_and_restrictions(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    acc.bulk_create(folder=acc.calendar, items=[_item(acc, f"p{n:03d}", 1 + n % 20) for n in range(130)])
    qs = acc.calendar.all()
    qs.page_size = 40
    assert len(list(qs)) == 130
    assert acc.calendar.all().count() == 130
    assert [i.subject for i in acc.calendar.filter(subject="p007")] == ["p007"]
    early = acc.calendar.filter(start__lt=EWSDateTime(2032, 1, 3, tzinfo=UTC))
    assert sorted({i.start.day for i in early}) == [1, 2]
    ordered = list(acc.calendar.all().order_by("-subject").only("subject")[:3])
    assert [i.subject for i in ordered] == ["p129", "p128", "p127"]

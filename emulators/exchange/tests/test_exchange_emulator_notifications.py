"""Pull subscriptions + GetEvents, streaming subscriptions + GetStreamingEvents (several subscriptions on one
connection, ConnectionTimeout, expiry, dropped streams), Unsubscribe."""

from __future__ import annotations

import base64
import datetime as dt
import threading
from typing import Any

import pytest
import requests
from exchange_emulator_support import SERVICE_PASSWORD, SERVICE_USER
from exchangelib import UTC, Attendee, CalendarItem, EWSDateTime
from exchangelib.errors import ErrorExpiredSubscription, ErrorSubscriptionNotFound
from exchangelib.properties import CreatedEvent, DeletedEvent, Mailbox, ModifiedEvent, StatusEvent

from exchange_emulator.testing import EmulatorHandle
from tccal_sandbox.testing import wait_for


class _Events:
    def __init__(self, notes: list[Any]) -> None:
        self.events = [e for n in notes for e in n.events]


def _get_events(acc, sub_id: str, watermark: str) -> _Events:
    return _Events(list(acc.calendar.get_events(sub_id, watermark)))


def _save(acc, subject: str, **kw) -> CalendarItem:
    start = EWSDateTime(2033, 2, 1, 9, tzinfo=UTC)
    item = CalendarItem(
        account=acc,
        folder=acc.calendar,
        subject=subject,
        start=start,
        end=start + dt.timedelta(hours=1),
        **kw,
    )
    item.save(send_meeting_invitations="SendToAllAndSaveCopy")
    return item


def test_pull_subscription_and_get_events(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    sub_id, watermark = acc.calendar.subscribe_to_pull()
    item = _save(acc, "pulled")
    note = _get_events(acc, sub_id, watermark)
    created = [e for e in note.events if isinstance(e, CreatedEvent)]
    assert [e.item_id.id for e in created] == [item.id]
    assert created[0].parent_folder_id.id == acc.calendar.id
    assert any(isinstance(e, ModifiedEvent) and e.folder_id is not None for e in note.events)
    watermark = note.events[-1].watermark
    item.subject = "pulled again"
    item.save(update_fields=["subject"])
    item_id = item.id
    item.delete()
    note = _get_events(acc, sub_id, watermark)
    kinds = [type(e) for e in note.events if getattr(e, "item_id", None) is not None]
    assert kinds == [ModifiedEvent, DeletedEvent]
    assert note.events[-1].watermark
    quiet = _get_events(acc, sub_id, note.events[-1].watermark)
    assert [type(e) for e in quiet.events] == [StatusEvent]
    assert acc.calendar.unsubscribe(sub_id) is True
    with pytest.raises(ErrorSubscriptionNotFound):
        _get_events(acc, sub_id, quiet.events[-1].watermark)
    assert item_id


def test_pull_subscription_sees_invitation_in_attendee_mailbox(emu: EmulatorHandle, account, mailboxes) -> None:
    org, bob = mailboxes("org", "bob")
    a_org, a_bob = account(org), account(bob)
    sub_id, watermark = a_bob.calendar.subscribe_to_pull(event_types=["CreatedEvent"])
    _save(a_org, "invite", required_attendees=[Attendee(mailbox=Mailbox(email_address=bob))])
    note = _get_events(a_bob, sub_id, watermark)
    (event,) = note.events
    assert isinstance(event, CreatedEvent)
    copy = a_bob.calendar.get(id=event.item_id.id)
    assert copy.subject == "invite" and copy.organizer.email_address == org


def test_expired_pull_subscription(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    sub_id, watermark = acc.calendar.subscribe_to_pull()
    emu.admin.expire_subscriptions(subscription_ids=[sub_id])
    with pytest.raises(ErrorExpiredSubscription):
        _get_events(acc, sub_id, watermark)


def _stream(acc, ids: list[str], out: dict[str, Any], **kw: Any) -> threading.Thread:
    def run() -> None:
        try:
            out["notifications"] = list(acc.calendar.get_streaming_events(ids, **kw))
        except Exception as exc:  # recorded for the assertions in the test thread
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _streams_open(emu: EmulatorHandle, ids: list[str]) -> bool:
    subs = {s["id"]: s for s in emu.admin.subscriptions()}
    return all(subs[i]["streaming_connections"] >= 1 for i in ids)


def test_streaming_many_subscriptions_one_connection(emu: EmulatorHandle, account, mailboxes) -> None:
    first, second = mailboxes("first", "second")
    emu.admin.move_mailbox(second, emu.admin.mailbox(first)["server"])  # one connection serves one server
    a1, a2 = account(first), account(second)
    s1 = a1.calendar.subscribe_to_streaming()
    s2 = a2.calendar.subscribe_to_streaming(event_types=["CreatedEvent"])
    out: dict[str, Any] = {}
    thread = _stream(a1, [s1, s2], out, connection_timeout=1, max_notifications_returned=2)
    wait_for(lambda: _streams_open(emu, [s1, s2]), what="streaming connection")
    i1 = _save(a1, "stream one")
    i2 = _save(a2, "stream two")
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert "error" not in out, out.get("error")
    notes = out["notifications"]
    by_sub = {n.subscription_id: n for n in notes}
    assert set(by_sub) == {s1, s2}
    assert i1.id in {e.item_id.id for e in by_sub[s1].events if isinstance(e, CreatedEvent)}
    assert [e.item_id.id for e in by_sub[s2].events] == [i2.id]


def test_streaming_connection_timeout_closes(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    sub_id = acc.calendar.subscribe_to_streaming()
    out: dict[str, Any] = {}
    # the emulator runs with a 2-second EWS minute: ConnectionTimeout=1 closes the stream with status Closed
    thread = _stream(acc, [sub_id], out, connection_timeout=1)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert out == {"notifications": []}


def test_streaming_subscription_expiry_is_reported(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    sub_id = acc.calendar.subscribe_to_streaming()
    out: dict[str, Any] = {}
    thread = _stream(acc, [sub_id], out, connection_timeout=5)
    wait_for(lambda: _streams_open(emu, [sub_id]), what="streaming connection")
    emu.admin.expire_subscriptions(subscription_ids=[sub_id])
    thread.join(timeout=20)
    assert isinstance(out.get("error"), ErrorSubscriptionNotFound)
    with pytest.raises(ErrorSubscriptionNotFound):
        list(acc.calendar.get_streaming_events([sub_id], connection_timeout=1))


def test_dropped_stream(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner, max_wait=1)
    sub_id = acc.calendar.subscribe_to_streaming()
    out: dict[str, Any] = {}
    thread = _stream(acc, [sub_id], out, connection_timeout=5, max_notifications_returned=1)
    wait_for(lambda: _streams_open(emu, [sub_id]), what="streaming connection")
    assert emu.admin.drop_streams(mailbox=owner) == 1
    thread.join(timeout=30)
    assert not thread.is_alive()
    # The subscription itself survives a dropped connection: a new GetStreamingEvents gets later events.
    out2: dict[str, Any] = {}
    thread = _stream(acc, [sub_id], out2, connection_timeout=1, max_notifications_returned=1)
    wait_for(lambda: _streams_open(emu, [sub_id]), what="second streaming connection")
    item = _save(acc, "after drop")
    thread.join(timeout=20)
    assert "error" not in out2, out2.get("error")
    assert item.id in {e.item_id.id for n in out2["notifications"] for e in n.events if getattr(e, "item_id", None)}


def test_drop_streams_fault_rule(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner, max_wait=1)
    sub_id = acc.calendar.subscribe_to_streaming()
    rule = emu.admin.add_fault(kind="drop_streams", mailbox=owner, count=1, now=False)
    assert rule["kind"] == "drop_streams"
    out: dict[str, Any] = {}
    thread = _stream(acc, [sub_id], out, connection_timeout=5)
    wait_for(lambda: _streams_open(emu, [sub_id]), what="streaming connection")
    _save(acc, "triggers the drop")
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert all(f["id"] != rule["id"] for f in emu.admin.get("/faults"))  # fired once


def _raw_stream(emu: EmulatorHandle, as_mailbox: str, ids: list[str], **headers: str) -> requests.Response:
    """GetStreamingEvents as raw SOAP with exactly the routing headers given (no client cookie jar)."""
    subscription_ids = "".join(f"<t:SubscriptionId>{i}</t:SubscriptionId>" for i in ids)
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
        'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
        '<s:Header><t:RequestServerVersion Version="Exchange2016"/><t:ExchangeImpersonation><t:ConnectingSID>'
        f"<t:PrimarySmtpAddress>{as_mailbox}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"
        f"</s:Header><s:Body><m:GetStreamingEvents><m:SubscriptionIds>{subscription_ids}</m:SubscriptionIds>"
        "<m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents></s:Body></s:Envelope>"
    )
    token = base64.b64encode(f"{SERVICE_USER}:{SERVICE_PASSWORD}".encode()).decode()
    return requests.post(
        emu.ews_url,
        data=envelope.encode(),
        timeout=30,
        headers={"Authorization": f"Basic {token}", "Content-Type": "text/xml; charset=utf-8", **headers},
    )


def _other_server(emu: EmulatorHandle, mailbox: str) -> str:
    return "EMU-MBX02" if emu.admin.mailbox(mailbox)["server"] == "EMU-MBX01" else "EMU-MBX01"


def test_a_subscription_is_found_only_on_its_mailbox_server(emu: EmulatorHandle, account, mailboxes) -> None:
    """Two mailboxes on two servers streamed behind one anchor - a group that ignored GroupingInformation - get
    ErrorSubscriptionNotFound for the other server's subscription, as on a multi-server Exchange; each streams
    from its own server, reached by its anchor or by the X-BackEndOverrideCookie its server set."""
    here, there = mailboxes("here", "there")
    emu.admin.move_mailbox(there, _other_server(emu, here))
    s_here = account(here).calendar.subscribe_to_streaming()
    s_there = account(there).calendar.subscribe_to_streaming()
    mixed = _raw_stream(emu, here, [s_here, s_there], **{"X-AnchorMailbox": here})
    assert b"ErrorSubscriptionNotFound" in mixed.content and s_there.encode() in mixed.content
    for mailbox, sub_id in ((here, s_here), (there, s_there)):
        alone = _raw_stream(emu, mailbox, [sub_id], **{"X-AnchorMailbox": mailbox, "X-PreferServerAffinity": "true"})
        assert b"ErrorSubscriptionNotFound" not in alone.content and b"Closed" in alone.content, alone.content
        cookie = alone.cookies["X-BackEndOverrideCookie"]
        assert cookie.split("~")[0] == emu.admin.mailbox(mailbox)["server"]
        # The cookie wins over the anchor: the other mailbox's anchor with this server's cookie still finds it.
        other = there if mailbox == here else here
        pinned = _raw_stream(
            emu, mailbox, [sub_id], **{"X-AnchorMailbox": other, "Cookie": f"X-BackEndOverrideCookie={cookie}"}
        )
        assert b"ErrorSubscriptionNotFound" not in pinned.content, pinned.content


def test_an_anchor_that_is_no_mailbox_is_refused(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    sub_id = account(owner).calendar.subscribe_to_streaming()
    answer = _raw_stream(emu, owner, [sub_id], **{"X-AnchorMailbox": "nobody@nowhere.test"})
    assert answer.status_code == 500 and b"ErrorNonExistentMailbox" in answer.content


def test_a_moved_mailbox_loses_its_subscriptions(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    sub_id = acc.calendar.subscribe_to_streaming()
    before = emu.admin.mailbox(owner)["server"]
    moved = emu.admin.move_mailbox(owner, _other_server(emu, owner))
    assert moved["server"] != before and moved["subscriptions_ended"] == 1
    gone = _raw_stream(emu, owner, [sub_id], **{"X-AnchorMailbox": owner})
    assert b"ErrorSubscriptionNotFound" in gone.content
    fresh = acc.calendar.subscribe_to_streaming()  # a new one, on the new server, works
    assert b"ErrorSubscriptionNotFound" not in _raw_stream(emu, owner, [fresh], **{"X-AnchorMailbox": owner}).content


def test_missed_events_end_the_subscription_with_error_missed_notification_events(
    emu: EmulatorHandle, account, mailboxes
) -> None:
    """An overflowing queue drops events and says so ("Handling notification-related errors in EWS"): on a pull
    subscription the next GetEvents, on an open stream at once; the subscription is gone afterwards."""
    from exchangelib.errors import ErrorMissedNotificationEvents

    (owner,) = mailboxes("overflow")
    acc = account(owner)
    pull_id, watermark = acc.calendar.subscribe_to_pull()
    bulk = acc.bulk_create(folder=acc.calendar, items=[_save_later(acc, f"flood {n}") for n in range(1001)])
    assert len(bulk) == 1001
    with pytest.raises(ErrorMissedNotificationEvents):
        _get_events(acc, pull_id, watermark)
    with pytest.raises((ErrorExpiredSubscription, ErrorSubscriptionNotFound)):
        _get_events(acc, pull_id, watermark)
    stream_id = acc.calendar.subscribe_to_streaming()
    out: dict[str, Any] = {}
    thread = _stream(acc, [stream_id], out, connection_timeout=5)
    wait_for(lambda: _streams_open(emu, [stream_id]), what="streaming connection")
    assert emu.admin.miss_events(subscription_ids=[stream_id]) == [stream_id]
    thread.join(timeout=20)
    assert isinstance(out.get("error"), ErrorMissedNotificationEvents), out


def _save_later(acc, subject: str) -> CalendarItem:
    start = EWSDateTime(2033, 3, 1, 9, tzinfo=UTC)
    return CalendarItem(
        account=acc, folder=acc.calendar, subject=subject, start=start, end=start + dt.timedelta(hours=1)
    )

"""GET /_emulator/owners: streaming connections and SyncFolderItems runs per mailbox at once - what says whether two
clients (two connector replicas) worked on one mailbox at the same time."""

from __future__ import annotations

import base64
import socket
from typing import Any
from urllib.parse import urlparse

from exchange_emulator.testing import EmulatorHandle
from tccal_sandbox.testing import wait_for

M = "http://schemas.microsoft.com/exchange/services/2006/messages"
SYNC_ONE = (
    "<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>"
    '<m:SyncFolderId><t:DistinguishedFolderId Id="calendar"/></m:SyncFolderId>'
    "<m:MaxChangesReturned>1</m:MaxChangesReturned></m:SyncFolderItems>"
)


def owners_of(emu: EmulatorHandle, mailbox: str) -> dict[str, Any]:
    report: dict[str, Any] = emu.admin.owners()["mailboxes"].get(mailbox, {})
    return report


def open_stream(emu: EmulatorHandle, mailbox: str, subscription: str, client: str = "replica-a") -> socket.socket:
    """A GetStreamingEvents connection on a plain socket (so the test can cut it as a killed process would), open
    once the first ConnectionStatus OK arrived."""
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="{M}" '
        'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
        '<s:Header><t:RequestServerVersion Version="Exchange2016"/><t:ExchangeImpersonation><t:ConnectingSID>'
        f"<t:PrimarySmtpAddress>{mailbox}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"
        "</s:Header><s:Body><m:GetStreamingEvents><m:SubscriptionIds>"
        f"<t:SubscriptionId>{subscription}</t:SubscriptionId></m:SubscriptionIds>"
        "<m:ConnectionTimeout>30</m:ConnectionTimeout></m:GetStreamingEvents></s:Body></s:Envelope>"
    ).encode()
    url = urlparse(emu.ews_url)
    account = emu.service_account
    token = base64.b64encode(f"{account.username}:{account.password}".encode()).decode()
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Basic {token}\r\n"
        f"User-Agent: {client}\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {len(envelope)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10)
    sock.sendall(head + envelope)
    received = b""
    while b"ConnectionStatus>OK" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"stream closed at once: {received[:500]!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    return sock


def test_two_streaming_connections_on_one_mailbox_are_seen_and_a_cut_one_stops_counting(
    emu: EmulatorHandle, account, mailboxes
) -> None:
    (owner,) = mailboxes("streamed-twice")
    acc = account(owner)
    first, second = acc.calendar.subscribe_to_streaming(), acc.calendar.subscribe_to_streaming()
    one = open_stream(emu, owner, first)
    two = open_stream(emu, owner, second)
    try:
        wait_for(lambda: owners_of(emu, owner).get("streams_now") == 2, 10, what="two open streams")
        assert owners_of(emu, owner)["streams_peak"] == 2
        assert owners_of(emu, owner)["stream_owners_peak"] == 1  # both from one client: not two owners
        third = open_stream(emu, owner, acc.calendar.subscribe_to_streaming(), client="replica-b")
        third.close()
        assert owners_of(emu, owner)["stream_owners_peak"] == 2  # another client streamed it meanwhile: two owners
        overlap = emu.admin.owners()["overlaps"][-1]
        assert overlap["mailbox"] == owner and overlap["clients"] == ["replica-a", "replica-b"]
        assert emu.admin.owners()["max_streams_per_mailbox"] >= 2
        one.close()  # the client is gone (kill -9 closes its sockets): counted out long before the 60 s timeout
        wait_for(lambda: owners_of(emu, owner).get("streams_now") == 1, 5, what="the cut stream counted out")
    finally:
        one.close()
        two.close()
    wait_for(lambda: owners_of(emu, owner).get("streams_now") == 0, 10, what="no stream left")
    assert owners_of(emu, owner)["streams_peak"] == 3  # the peak stays


def test_sync_runs_of_two_clients_at_once_are_seen_and_one_clients_run_is_not(
    emu: EmulatorHandle, account, mailboxes
) -> None:
    shared, alone = mailboxes("synced-twice", "synced-once")
    for mailbox in (shared, alone):
        for n in range(2):
            answer = emu.post_soap(
                '<m:CreateItem SendMeetingInvitations="SendToNone"><m:SavedItemFolderId>'
                '<t:DistinguishedFolderId Id="calendar"/></m:SavedItemFolderId><m:Items><t:CalendarItem>'
                f"<t:Subject>item {n}</t:Subject>"
                "<t:Start>2035-05-05T10:00:00Z</t:Start><t:End>2035-05-05T11:00:00Z</t:End>"
                "</t:CalendarItem></m:Items></m:CreateItem>",
                mailbox=mailbox,
            )
            assert answer.status_code == 200, answer.text[:500]

    def page(mailbox: str, client: str, state: str = "") -> tuple[str, bool]:
        body = (
            SYNC_ONE
            if not state
            else SYNC_ONE.replace("</m:SyncFolderId>", f"</m:SyncFolderId><m:SyncState>{state}</m:SyncState>")
        )
        answer = emu.post_soap(body, mailbox=mailbox, headers={"User-Agent": client})
        text = answer.text
        assert answer.status_code == 200 and "NoError" in text, text[:500]
        state = text.split("SyncState>")[1].split("<")[0]
        return state, "IncludesLastItemInRange>true<" in text

    page(shared, "replica-a")  # a's run is open (more pages to come) ...
    page(shared, "replica-b")  # ... when b starts its own: two at once
    report = owners_of(emu, shared)
    assert report["syncs_peak"] == 2 and report["sync_clients"] == ["replica-a", "replica-b"]

    state, last = page(alone, "replica-a")
    while not last:
        state, last = page(alone, "replica-a", state)
    page(alone, "replica-b")  # after a's run ended: one at a time
    assert owners_of(emu, alone)["syncs_peak"] == 1

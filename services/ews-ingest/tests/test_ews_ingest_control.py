"""Seats from LicensingService (served by the test over a real gRPC socket) changing while ews-ingest runs, the
control subjects (seats, on-demand, resync) and the IngestService gRPC API."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import json
import threading
import time
from typing import Any

import grpc
import nats
import pytest
from ews_ingest_support import (
    FAST,
    ChangeCollector,
    FakeLicensing,
    Outlook,
    ingest_config,
    new_mailboxes,
    provider_section,
    running_ingest,
)

from ews_ingest.api import POLICY, SERVICE_NAME, IngestApi
from ews_ingest.state import key_token
from exchange_emulator.testing import EmulatorHandle
from tccal.grpckit import GrpcServer
from tccal.subjects import INGEST_STATE_BUCKET, subject_token
from tccal_sandbox.embedded import free_port
from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import calendar_pb2, ingest_pb2, ingest_pb2_grpc


async def _state(h: object, mailbox: str, state: int) -> bool:
    entries = h.scheduler.entries  # type: ignore[attr-defined]
    return mailbox in entries and entries[mailbox].state == state


async def test_seat_changes_take_effect_without_restart(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    first, second = new_mailboxes(emu, "first", "second")
    await outlook.do(outlook.meeting, second, "waiting for a seat")
    licensing.capacity = 1
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [first, second])])
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(first)
        entry = h.scheduler.entries[second]
        assert entry.state == ingest_pb2.MAILBOX_STATE_NO_SEAT
        assert "seat limit reached" in entry.last_error
        asked = licensing.requests[0]
        assert [(m.mailbox, m.configured) for m in asked.mailboxes] == [(first, True), (second, True)]
        assert asked.providers == 1
        # a bigger license: told on the control subject, the second mailbox starts syncing
        licensing.capacity = None
        await h.bus.nc.publish("calendar.v1.control.seats", b"")
        change = await collector.wait(lambda c: c.event.subject == "waiting for a seat", what="second mailbox synced")
        assert change.mailbox == second
        await h.streamed(first, second)
        # the first loses its seat: it stops syncing, leaves its stream, says why
        licensing.denied = {first}
        await h.bus.nc.publish("calendar.v1.control.seats", b"")
        await wait_for_async(lambda: _state(h, first, ingest_pb2.MAILBOX_STATE_NO_SEAT), what="seat revoked")
        assert h.scheduler.entries[first].last_error == "refused by the test licensing"
        assert all(first not in g.members for gs in h.runtime.streams.groups.values() for g in gs)
        await outlook.do(outlook.meeting, first, "no seat, not published")
        await outlook.do(outlook.meeting, second, "still synced")
        await collector.wait(lambda c: c.event.subject == "still synced")
        assert all(c.event.subject != "no seat, not published" for c in collector.of(first))


async def test_licensing_starting_late(
    emu: EmulatorHandle, nats_url: str, collector: ChangeCollector, outlook: Outlook
) -> None:
    (owner,) = new_mailboxes(emu, "owner")
    await outlook.do(outlook.meeting, owner, "synced once licensing answers")
    port = free_port()
    config = ingest_config(nats_url, f"127.0.0.1:{port}", [provider_section(emu, [owner])])
    async with running_ingest(config) as h:
        await collector.start()
        entry = h.scheduler.entries[owner]
        await wait_for_async(lambda: _text(entry.last_error, "unreachable"), what="licensing unreachable")
        assert entry.state == ingest_pb2.MAILBOX_STATE_PENDING and not entry.seat
        late = FakeLicensing()
        await late.start(port)
        try:
            await collector.wait(lambda c: c.event.subject == "synced once licensing answers", timeout=30)
        finally:
            await late.stop()


async def _text(value: str, part: str) -> bool:
    return part in value


async def test_seats_end_with_their_lease_while_licensing_is_unreachable_and_come_back_with_it(
    emu: EmulatorHandle, nats_url: str, collector: ChangeCollector, outlook: Outlook
) -> None:
    """Issue #17: ews-ingest kept its seats forever while licensing was unreachable. Now a seat lasts its lease
    (3 s here, as licensing's answer says): licensing stopped, the mailbox stops syncing when the lease ends;
    licensing back, the seat is granted again and what was written meanwhile is synced."""
    (owner,) = new_mailboxes(emu, "leased")
    port = free_port()
    licensing = FakeLicensing()
    licensing.lease = dt.timedelta(seconds=3)
    await licensing.start(port)
    config = ingest_config(nats_url, f"127.0.0.1:{port}", [provider_section(emu, [owner])])
    try:
        async with running_ingest(config) as h:
            await collector.start()
            await h.synced(owner)
            await outlook.do(outlook.meeting, owner, "while licensing answers")
            await collector.wait(lambda c: c.event.subject == "while licensing answers")
            entry = h.scheduler.entries[owner]
            assert entry.seat

            await licensing.stop()  # licensing is gone: no renewal
            await wait_for_async(lambda: _state(h, owner, ingest_pb2.MAILBOX_STATE_NO_SEAT), what="seat lease ended")
            assert not entry.seat and "seat lease ended" in entry.last_error, entry.last_error
            assert all(owner not in g.members for gs in h.runtime.streams.groups.values() for g in gs)
            await outlook.do(outlook.meeting, owner, "written while the seat lapsed")

            licensing = FakeLicensing()
            licensing.lease = dt.timedelta(seconds=3)
            await licensing.start(port)  # licensing answers again: the seat comes back, syncing resumes
            await collector.wait(lambda c: c.event.subject == "written while the seat lapsed", timeout=30)
            assert entry.seat and entry.state != ingest_pb2.MAILBOX_STATE_NO_SEAT
    finally:
        await licensing.stop()


async def test_on_demand_mailbox(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    (configured,) = new_mailboxes(emu, "configured")
    domain = configured.split("@")[1]
    visitor = f"visitor@{domain}"
    emu.admin.add_mailbox(visitor, display_name="Visitor")
    await outlook.do(outlook.meeting, visitor, "visitor's meeting")
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [configured])])
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(configured)
        subject = f"calendar.v1.control.ondemand.{subject_token(visitor)}"
        reply = await h.bus.nc.request(subject, json.dumps({"mailbox": visitor}).encode(), timeout=15)
        answer = json.loads(reply.data)
        assert answer["accepted"] is True, answer
        change = await collector.wait(lambda c: c.event.subject == "visitor's meeting", what="on-demand sync")
        assert change.mailbox == visitor
        entry = h.scheduler.entries[visitor]
        assert not entry.configured
        assert (visitor, False) in [(m.mailbox, m.configured) for m in licensing.requests[-1].mailboxes]
        kv = await h.bus.key_value(INGEST_STATE_BUCKET)
        stored = json.loads((await kv.get(f"v1.ondemand.{key_token(visitor)}")).value or b"{}")
        assert stored["provider"] == "127.0.0.1"
        # nobody by that name: refused, with the reason
        stranger = f"stranger@{domain}"
        reply = await h.bus.nc.request(f"calendar.v1.control.ondemand.{subject_token(stranger)}", b"", timeout=15)
        answer = json.loads(reply.data)
        assert answer["accepted"] is False and "ErrorNonExistentMailbox" in answer["detail"]
    # after a restart the on-demand mailbox is remembered
    async with running_ingest(config) as h:
        await h.synced(configured, visitor)


async def test_on_demand_mailboxes_moved_to_a_graph_entry_are_dropped_at_start(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, caplog: pytest.LogCaptureFixture
) -> None:
    """Mailboxes ews-ingest remembered as on-demand, then moved to Exchange Online: once the config gives them to a
    Graph entry (in its `users`, or by its `domains`), ews-ingest no longer loads them, deletes their records and
    logs why - graph-ingest syncs them now."""
    (configured,) = new_mailboxes(emu, "moving-configured")
    domain = configured.split("@")[1]
    listed, claimed = f"moved-listed@{domain}", f"moved-claimed@{domain}"
    for visitor in (listed, claimed):
        emu.admin.add_mailbox(visitor, display_name=visitor)
    ews = provider_section(emu, [configured])
    config = ingest_config(nats_url, licensing.address, [ews])
    async with running_ingest(config) as h:
        await h.synced(configured)
        for visitor in (listed, claimed):
            reply = await h.bus.nc.request(f"calendar.v1.control.ondemand.{subject_token(visitor)}", b"", timeout=15)
            assert json.loads(reply.data)["accepted"] is True
    graph: dict[str, object] = {
        "type": "graph",
        "name": "m365",
        "tenantId": "6b4c1b7e-0f1d-4c55-9a3e-2f4b8c0d1e2f",
        "clientId": "0c1e4f0a-1b2c-4d3e-8f90-a1b2c3d4e5f6",
        "clientSecret": "app-secret",
        "users": [listed],
    }
    caplog.set_level("WARNING", logger="ews_ingest.runtime")
    async with running_ingest(ingest_config(nats_url, licensing.address, [ews, graph])) as h:
        await h.synced(configured, claimed)
        assert listed not in h.scheduler.entries
        kv = await h.bus.key_value(INGEST_STATE_BUCKET)
        assert await _stored(kv, listed) is None and await _stored(kv, claimed) is not None
    drops = [r for r in caplog.records if r.getMessage().startswith("on-demand mailbox dropped")]
    assert [(r.mailbox, r.graph_provider) for r in drops] == [(listed, "m365")]  # type: ignore[attr-defined]
    caplog.clear()
    by_domain = {**graph, "users": [], "domains": [domain]}
    async with running_ingest(ingest_config(nats_url, licensing.address, [ews, by_domain])) as h:
        await h.synced(configured)  # listed under the EWS entry: stays with EWS although its domain is claimed
        assert claimed not in h.scheduler.entries and listed not in h.scheduler.entries
        assert await _stored(await h.bus.key_value(INGEST_STATE_BUCKET), claimed) is None
    drops = [r for r in caplog.records if r.getMessage().startswith("on-demand mailbox dropped")]
    assert [(r.mailbox, r.graph_provider) for r in drops] == [(claimed, "m365")]  # type: ignore[attr-defined]


async def _stored(kv: object, mailbox: str) -> bytes | None:
    try:
        entry = await kv.get(f"v1.ondemand.{key_token(mailbox)}")  # type: ignore[attr-defined]
    except nats.js.errors.KeyNotFoundError:
        return None
    return bytes(entry.value or b"") or None


async def test_an_on_demand_request_at_start_up_is_answered_not_lost(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing
) -> None:
    """TrueConf asks for a user while ews-ingest starts (tcs-gateway sends the request again while nobody responds):
    the first request ews-ingest receives is answered. It subscribes once its first lease round is done; before,
    a request arriving between the subscription and the leases was received, ignored (no shard owned yet) and -
    tcs-gateway taking a received request as delivered - lost: that user was never synced."""
    (configured,) = new_mailboxes(emu, "configured")
    visitor = f"early@{configured.split('@')[1]}"
    emu.admin.add_mailbox(visitor, display_name="Early")
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [configured])])
    client = await nats.connect(nats_url)
    subject = f"calendar.v1.control.ondemand.{subject_token(visitor)}"

    async def ask_until_received() -> dict[str, object]:
        while True:
            try:
                reply = await client.request(subject, json.dumps({"mailbox": visitor}).encode(), timeout=30)
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.005)
                continue
            return dict(json.loads(reply.data))

    asking = asyncio.ensure_future(ask_until_received())
    try:
        async with running_ingest(config):
            answer = await asking  # a request received and ignored would end in nats' TimeoutError instead
            assert answer["mailbox"] == visitor and answer["accepted"] is True, answer
    finally:
        asking.cancel()
        await client.close()


async def test_an_on_demand_request_while_the_owner_renews_late_is_answered_not_lost(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing
) -> None:
    """The owner's lease renewal runs late at runtime (here its event loop stalls longer than the lease minus its
    margin, as CPU-bound work, a GC pause or a starved pod do): from that deadline until the next renewal nobody
    owns the mailbox's shard, so a request arriving then was received by every replica and answered by none -
    tcs-gateway takes a received request as delivered, and that user was never synced. The request is held and
    answered once the renewal succeeded."""
    (configured,) = new_mailboxes(emu, "late-configured")
    visitor = f"late-renewal@{configured.split('@')[1]}"
    emu.admin.add_mailbox(visitor, display_name="Late renewal")
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [configured])])
    tuning = dataclasses.replace(
        FAST, lease_seconds=3.0, lease_renew_seconds=0.5, lease_margin_seconds=1.0, lease_shards=4
    )
    subject = f"calendar.v1.control.ondemand.{subject_token(visitor)}"
    connected, go, sent = threading.Event(), threading.Event(), threading.Event()

    def ask() -> dict[str, Any]:
        """tcs-gateway's request, from another thread (this one's event loop is the one stalling)."""

        async def run() -> dict[str, Any]:
            client = await nats.connect(nats_url)
            try:
                inbox = client.new_inbox()
                replies = await client.subscribe(inbox, max_msgs=1)
                connected.set()
                await asyncio.to_thread(go.wait, 30)
                await client.publish(subject, json.dumps({"mailbox": visitor}).encode(), reply=inbox)
                await client.flush(timeout=10)  # the server has it, and so has ews-ingest's socket
                sent.set()
                reply = await replies.next_msg(timeout=30)
                return dict(json.loads(reply.data))
            finally:
                await client.close()

        return asyncio.run(run())

    async with running_ingest(config, tuning) as h:
        ownership = h.runtime.ownership
        await wait_for_async(lambda: ownership.owns(visitor), timeout=20, what="ews-ingest owns the visitor's shard")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            asking = pool.submit(ask)
            assert connected.wait(30)
            stalled_at = time.monotonic()
            go.set()
            assert sent.wait(30)
            # no renewal can run while the loop stalls: past the fencing deadline, still inside the lease's TTL
            deadline = stalled_at + tuning.lease_seconds - tuning.lease_margin_seconds
            time.sleep(max(deadline + 0.3 - time.monotonic(), 0.0))  # noqa: ASYNC251 - the stall is the fault
            assert not ownership.owns(visitor), "the renewal was not late: the test tests nothing"
            answer = await asyncio.wrap_future(asking)  # a request ignored would end in nats' TimeoutError instead
        assert answer["mailbox"] == visitor and answer["accepted"] is True, answer
        assert h.runtime.held.answered_late >= 1
        await h.synced(visitor)


async def test_a_burst_of_on_demand_mailboxes_shares_its_seat_requests(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    """TrueConf asks for 12 new users at once: every one is synced, with two AllocateSeats at most, not twelve.

    Counted, not timed: licensing holds its answers until all 12 on-demand requests have asked for a seat, so the
    request in flight and the one after it (which covers every mailbox asked for meanwhile) are all there may be,
    however slowly the 12 arrive."""
    (configured,) = new_mailboxes(emu, "burst-configured")
    domain = configured.split("@")[1]
    visitors = [f"burst-visitor{i}@{domain}" for i in range(12)]
    for visitor in visitors:
        emu.admin.add_mailbox(visitor, display_name=visitor)
        await outlook.do(outlook.meeting, visitor, f"meeting of {visitor}")
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [configured])])
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(configured)
        before, asked = licensing.calls, h.runtime.seats.asked
        licensing.hold = asyncio.Event()
        burst = asyncio.gather(
            *(h.bus.nc.request(f"calendar.v1.control.ondemand.{subject_token(v)}", b"", timeout=60) for v in visitors)
        )
        try:
            await wait_for_async(
                lambda: h.runtime.seats.asked >= asked + len(visitors), timeout=60, what="every visitor's seat request"
            )
        finally:
            licensing.hold.set()
        replies = await burst
        assert all(json.loads(r.data)["accepted"] for r in replies), [r.data for r in replies]
        assert 1 <= licensing.calls - before <= 2, licensing.calls - before
        assert set(visitors) <= {m.mailbox for m in licensing.requests[-1].mailboxes}
        for visitor in visitors:
            await collector.wait(lambda c, v=visitor: c.event.subject == f"meeting of {v}", what=visitor)  # type: ignore[misc]


async def test_resync_by_control_subject_and_grpc(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    owner, refused = new_mailboxes(emu, "owner", "refused")
    await outlook.do(outlook.meeting, owner, "one")
    await outlook.do(outlook.meeting, owner, "two")
    licensing.denied = {refused}
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [owner, refused])])
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(owner)
        await collector.wait(lambda c: len(collector.of(owner)) == 2, what="initial load")
        initial = collector.of(owner)
        # what sync-engine sends: a core NATS message carrying ResyncMailboxRequest
        request = ingest_pb2.ResyncMailboxRequest(mailbox=owner)
        nc = await nats.connect(nats_url)
        try:
            await nc.publish(f"calendar.v1.control.resync.{subject_token(owner)}", request.SerializeToString())
            await nc.flush()
        finally:
            await nc.close()

        def resynced(c: calendar_pb2.CalendarChange) -> bool:
            return c.mailbox == owner and c.origin == calendar_pb2.CHANGE_ORIGIN_RESYNC

        await collector.wait(lambda c: c.type == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END, what="resync")
        framed = [c for c in collector.of(owner) if resynced(c)]
        # a snapshot: BEGIN, every item, END with BEGIN's token (the engine deletes what it does not bring back)
        begin, *again, end = framed
        assert begin.type == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN
        assert end.resync.token == begin.resync.token != "" and list(end.resync.kept_item_ids) == []
        assert [c.sequence for c in framed] == sorted(c.sequence for c in framed)
        assert {c.type for c in again} == {calendar_pb2.CHANGE_TYPE_UPSERT}
        assert {c.item_id for c in again} == {c.item_id for c in initial}
        assert min(c.sequence for c in framed) > max(c.sequence for c in initial)
        assert all("/resync" in c.change_id for c in framed)  # not swallowed by JetStream's dedupe window

        # the gRPC API
        server = GrpcServer("127.0.0.1", 0, policy=POLICY)
        server.add(ingest_pb2_grpc.add_IngestServiceServicer_to_server, IngestApi(h.scheduler), SERVICE_NAME)
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = ingest_pb2_grpc.IngestServiceStub(channel)

                async def counted() -> bool:  # the counter moves right after each publish is acked
                    return bool(h.scheduler.entries[owner].changes_published == 4)

                await wait_for_async(counted, what="four changes counted")
                listed = await stub.ListMailboxes(ingest_pb2.ListMailboxesRequest())
                states = {m.mailbox: m for m in listed.mailboxes}
                assert states[owner].state == ingest_pb2.MAILBOX_STATE_SYNCING
                assert states[owner].credential == "svc-trueconf@example.com" and states[owner].configured
                assert states[owner].changes_published == 4 and states[owner].HasField("last_sync")
                assert states[refused].state == ingest_pb2.MAILBOX_STATE_NO_SEAT
                only = await stub.ListMailboxes(ingest_pb2.ListMailboxesRequest(filter="refused"))
                assert [m.mailbox for m in only.mailboxes] == [refused]
                everything = await stub.ResyncMailbox(ingest_pb2.ResyncMailboxRequest(mailbox=owner))
                assert everything.published == 2
                since = ingest_pb2.ResyncMailboxRequest(mailbox=owner)
                since.since.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
                assert (await stub.ResyncMailbox(since)).published == 0
                for mailbox, code in [
                    ("nobody@example.com", grpc.StatusCode.NOT_FOUND),
                    (refused, grpc.StatusCode.FAILED_PRECONDITION),
                    ("", grpc.StatusCode.INVALID_ARGUMENT),
                ]:
                    with pytest.raises(grpc.aio.AioRpcError) as failure:
                        await stub.ResyncMailbox(ingest_pb2.ResyncMailboxRequest(mailbox=mailbox))
                    assert failure.value.code() == code
        finally:
            await server.stop(0)


async def test_a_mailbox_of_a_graph_provider_is_left_to_graph_ingest(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing
) -> None:
    """A mailbox listed by a `"type": "graph"` provider is graph-ingest's: ews-ingest neither answers its control
    requests nor syncs it, even when its Exchange could serve it (hybrid), so one service answers and syncs it."""
    configured, online = new_mailboxes(emu, "configured", "online")
    graph = {
        "type": "graph",
        "tenantId": "00000000-0000-4000-8000-000000000001",
        "clientId": "00000000-0000-4000-8000-000000000002",
        "clientSecret": "app-secret",
        "users": [online],
    }
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [configured]), graph])
    client = await nats.connect(nats_url)
    try:
        async with running_ingest(config) as h:
            await h.synced(configured)
            subject = f"calendar.v1.control.ondemand.{subject_token(online)}"
            with pytest.raises(nats.errors.TimeoutError):  # received (ews-ingest subscribes to all), never answered
                await client.request(subject, json.dumps({"mailbox": online}).encode(), timeout=5)
            assert online not in h.scheduler.entries
            # the control: the same request for a mailbox of its own is answered
            mine = f"calendar.v1.control.ondemand.{subject_token(configured)}"
            reply = await client.request(mine, json.dumps({"mailbox": configured}).encode(), timeout=15)
            assert json.loads(reply.data)["accepted"] is True
    finally:
        await client.close()

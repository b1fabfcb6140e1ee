"""getCalendarList (docs/bridge-protocol.md §6.2): answered from SyncService; a mailbox not synced yet is asked
for on `calendar.v1.control.ondemand.<mailbox-key>`; SyncService trouble is reported and snapshots wait for it."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.msg import Msg
from tcs_gateway_testkit import (
    ADMIN_TOKEN,
    GATEWAY_CALLER,
    SERVER_ID,
    SyncServer,
    World,
    admin,
    bridge_state,
    calendar,
    occurrence,
    wait_connected,
)

from tccal.cache_window import cache_window
from tccal.grpckit import GrpcCaller, service_token
from tccal_sandbox.testing import wait_for_async
from tcs_gateway.bridge.ports import SyncUnavailableError
from tcs_gateway.ondemand import ondemand_subject
from tcs_gateway.sync_client import EventSource
from trueconf.calendar.v1 import commands_pb2, ingest_pb2


async def test_calendar_lists_and_on_demand_sync_requests(world: World) -> None:
    requests: list[Msg] = []

    async def collect(message: Msg) -> None:
        requests.append(message)

    await world.commands.bus.nc.subscribe("calendar.v1.control.ondemand.>", cb=collect)
    world.sync.fake.shown["bob@example.test"] = {"l1": occurrence("l1", attendees=[("bob@example.test", 4)])}
    world.sync.fake.seq["bob@example.test"] = 3
    gateway, tcs = await world.pair(users=["carol@example.test"])

    def mailboxes() -> list[str]:
        return sorted(ingest_pb2.ResyncMailboxRequest.FromString(m.data).mailbox for m in requests)

    async def alice_asked() -> bool:
        return mailboxes() == ["alice@example.test"]

    # alice has nothing yet (seq 0): asked for; bob is synced; carol is a configured user (synced anyway).
    await wait_for_async(alice_asked, what="the on-demand request for alice")
    assert requests[0].subject == ondemand_subject("alice@example.test")
    assert requests[0].subject == "calendar.v1.control.ondemand.alice@example%2Etest"
    assert requests[0].headers is not None and requests[0].headers["Tc-Server-Id"] == SERVER_ID
    assert [e["id"] for e in await calendar(tcs, "bob@example.test")] == ["l1"]
    reply: dict[str, Any] = (await admin(tcs, "POST", "/bridge/request-calendar", {"user": "dave@example.test"}))[
        "reply"
    ]
    assert reply["errorCode"] == 0 and reply["events"] == [] and reply["seq"] == 0
    await wait_for_async(lambda: _has(mailboxes, "dave@example.test"), what="the on-demand request for dave")
    await admin(tcs, "POST", "/bridge/request-calendar", {"user": "dave@example.test"})
    await asyncio.sleep(0.2)
    assert mailboxes().count("dave@example.test") == 1  # asked once, not on every list
    assert "dave@example.test" in gateway.gateway.store.asked_users(SERVER_ID)
    assert gateway.gateway.server_statuses().servers[0].users == 4

    # SyncService down: the list fails with INTERNAL_ERROR and a retry hint, the error is shown.
    world.sync.fake.unavailable = True
    failed = (await admin(tcs, "POST", "/bridge/request-calendar", {"user": "bob@example.test"}))["reply"]
    assert failed["errorCode"] == 8 and failed["retryAfterMs"] == 1000
    assert any("UNAVAILABLE" in e for e in gateway.gateway.server_statuses().servers[0].last_errors)
    # A reconnect while it is down: snapshots (and bob's pushes) wait until it is back.
    before = int((await bridge_state(tcs))["pushes_received"].get("calendar.snapshot", 0))
    await admin(tcs, "POST", "/bridge/drop", {"mode": "close", "code": 1000})
    await wait_connected(tcs, connections=2)
    push = world.commands.upsert_command("bob@example.test", occurrence("l2", attendees=[("bob@example.test", 4)]))
    await world.commands.publish(push)
    await wait_for_async(lambda: _queued(gateway), what="bob's push held back")
    assert int((await bridge_state(tcs))["pushes_received"].get("calendar.snapshot", 0)) == before
    world.sync.fake.unavailable = False
    result = await world.commands.result_of(push.command_id)
    assert result.status == commands_pb2.COMMAND_STATUS_OK
    await wait_for_async(lambda: _snapshots(tcs, before + 3), what="snapshots for alice, bob and carol")
    assert sorted(e["id"] for e in await calendar(tcs, "bob@example.test")) == ["l1", "l2"]
    # dave is served too (TCS asked for him), but this TrueConf Server has no such user: refused, and shown.
    errors = gateway.gateway.server_statuses().servers[0].last_errors
    assert any("snapshot of dave@example.test refused: 12" in e for e in errors)


async def test_a_new_user_is_asked_for_on_demand_while_sync_service_is_down(world: World) -> None:
    """SyncService is down (a first start, the sync-engine still coming up): TCS's lists fail, and TCS retries them
    only for a while. A user never served to this TrueConf Server is asked for on demand all the same (ews-ingest
    starts its sync without the sync-engine), once; a user listed before is not."""
    requests: list[str] = []

    async def collect(message: Msg) -> None:
        requests.append(ingest_pb2.ResyncMailboxRequest.FromString(message.data).mailbox)

    await world.commands.bus.nc.subscribe("calendar.v1.control.ondemand.>", cb=collect)
    world.sync.fake.seq["bob@example.test"] = 3
    gateway, tcs = await world.pair()
    await wait_for_async(lambda: _true("alice@example.test" in requests), what="the on-demand request for alice")
    await wait_for_async(
        lambda: _true(gateway.gateway.store.was_asked(SERVER_ID, "bob@example.test")), what="bob's list"
    )
    world.sync.fake.unavailable = True
    for _ in range(2):
        failed = (await admin(tcs, "POST", "/bridge/request-calendar", {"user": "erin@example.test"}))["reply"]
        assert failed["errorCode"] == 8 and failed["retryAfterMs"] == 1000
    await wait_for_async(lambda: _true("erin@example.test" in requests), what="the on-demand request for erin")
    failed = (await admin(tcs, "POST", "/bridge/request-calendar", {"user": "bob@example.test"}))["reply"]
    assert failed["errorCode"] == 8
    await asyncio.sleep(0.2)
    assert requests.count("erin@example.test") == 1  # asked once, not on every failed list
    assert "bob@example.test" not in requests  # listed before (synced, seq 3): not asked for


async def test_an_on_demand_request_waits_for_ews_ingest_to_subscribe(world: World) -> None:
    """TrueConf asks for alice's calendar before ews-ingest listens (start-up, restart): NATS has no responder, so
    the request is sent again until one subscribes, and its answer ends it (a core message would be lost)."""
    gateway, _tcs = await world.pair()
    ondemand = gateway.gateway.ondemand
    await wait_for_async(lambda: _true(ondemand.resent >= 1), what="a request resent for want of a responder")
    received: list[str] = []

    async def answer(message: Msg) -> None:
        mailbox = ingest_pb2.ResyncMailboxRequest.FromString(message.data).mailbox
        received.append(mailbox)
        await message.respond(json.dumps({"mailbox": mailbox, "accepted": True, "detail": "syncing"}).encode())

    await world.commands.bus.nc.subscribe("calendar.v1.control.ondemand.>", cb=answer)
    await wait_for_async(
        lambda: _true("alice@example.test" in received), timeout=15, what="the request reaching ews-ingest"
    )
    await wait_for_async(lambda: _true(not ondemand._deliveries), what="the delivery ended by the answer")
    assert received.count("alice@example.test") == 1


async def test_a_refused_request_is_sent_again_when_a_license_is_announced(world: World) -> None:
    """ews-ingest refuses alice (no license installed yet); TrueConf Server will not ask for her again, so the
    registration's announcement on `calendar.v1.control.seats` sends the request again at once - not after
    `ondemand_interval` (60 s) - and an accepted one is not sent again."""
    answers = {"alice@example.test": [False, True]}
    received: list[str] = []

    async def answer(message: Msg) -> None:
        mailbox = ingest_pb2.ResyncMailboxRequest.FromString(message.data).mailbox
        received.append(mailbox)
        accepted = answers[mailbox].pop(0) if answers.get(mailbox) else True
        detail = "syncing" if accepted else "no license is installed"
        await message.respond(json.dumps({"mailbox": mailbox, "accepted": accepted, "detail": detail}).encode())

    await world.commands.bus.nc.subscribe("calendar.v1.control.ondemand.>", cb=answer)
    gateway, _tcs = await world.pair()
    ondemand = gateway.gateway.ondemand
    assert ondemand.interval >= 60
    await wait_for_async(lambda: _true("alice@example.test" in ondemand.refused), what="alice refused")
    assert received.count("alice@example.test") == 1
    await world.commands.bus.nc.publish("calendar.v1.control.seats", b"")
    await wait_for_async(lambda: _true(received.count("alice@example.test") == 2), what="alice asked again")
    await wait_for_async(lambda: _true(not ondemand._deliveries), what="the second answer")
    assert ondemand.refused == {} and ondemand.asked_again == 1
    others = len(received) - 2  # the other users of the TrueConf Server, accepted at once
    await world.commands.bus.nc.publish("calendar.v1.control.seats", b"")
    await asyncio.sleep(0.3)
    assert received.count("alice@example.test") == 2  # accepted: not asked a third time
    assert len(received) - 2 == others


async def _true(value: bool) -> bool:
    return value


async def _has(mailboxes: Any, mailbox: str) -> bool:
    return mailbox in mailboxes()


async def _queued(gateway: Any) -> bool:
    return len(gateway.server().queue) == 1


async def _snapshots(tcs: Any, count: int) -> bool:
    return int((await bridge_state(tcs))["pushes_received"].get("calendar.snapshot", 0)) >= count


async def test_a_list_larger_than_grpc_default_4_mib_is_taken(sync: SyncServer) -> None:
    """10,000 occurrences in one user's window (~5 MiB): the 10,000-change fault run found every list and
    snapshot of such a user refused (RESOURCE_EXHAUSTED, 4 MiB) on every try, so the calendar never converged."""
    user = "bob@example.test"
    sync.fake.shown[user] = {
        f"m{n}": occurrence(f"m{n}", attendees=[(user, 4)], occurrence_id=f"m{n}") for n in range(10_000)
    }
    for shown in sync.fake.shown[user].values():
        shown.body = "Agenda. " * 60  # a real meeting body, as the engine keeps it
    sync.fake.seq[user] = 7
    assert sum(o.ByteSize() for o in sync.fake.shown[user].values()) > 4 * 1024 * 1024
    source = EventSource(sync.address, timeout=60, caller=GATEWAY_CALLER)
    try:
        window = cache_window(datetime.now(UTC), 1, 3)
        listed = await source.list_events(user, window.start, window.end)
    finally:
        await source.close()
    assert len(listed.occurrences) == 10_000 and listed.seq == 7


async def test_lists_are_asked_with_the_gateways_own_token(sync: SyncServer) -> None:
    """SyncService.ListEvents reveals a user's calendar: without tcs-gateway's token (or with another service's)
    the sync-engine refuses, and the gateway names the refusal."""
    user = "bob@example.test"
    sync.fake.shown[user] = {"m1": occurrence("m1", attendees=[(user, 4)], occurrence_id="m1")}
    window = cache_window(datetime.now(UTC), 1, 3)
    for caller, refused in (
        (GrpcCaller(), "UNAUTHENTICATED"),
        (GrpcCaller(service_token(ADMIN_TOKEN, "ews-ingest")), "PERMISSION_DENIED"),
        (GATEWAY_CALLER, None),
    ):
        source = EventSource(sync.address, timeout=10, caller=caller)
        try:
            if refused is None:
                assert [o.id for o in (await source.list_events(user, window.start, window.end)).occurrences] == ["m1"]
            else:
                with pytest.raises(SyncUnavailableError, match=refused):
                    await source.list_events(user, window.start, window.end)
        finally:
            await source.close()

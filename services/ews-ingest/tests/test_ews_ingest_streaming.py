"""Streaming notifications: latency (measured and reported, never asserted), grouping of subscriptions on
connections with affinity, catch-up after dropped streams and lost subscriptions, 30-minute connection renewal
(here one emulated minute), and the trace context of a published change."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from typing import Any

import pytest
from ews_ingest_support import (
    EMULATOR_CONFIG,
    FAST,
    ChangeCollector,
    FakeLicensing,
    Outlook,
    StreamingIngest,
    ingest_config,
    new_mailboxes,
    provider_section,
    running_ingest,
    streams_arrived,
)
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exchange_emulator.testing import EmulatorHandle, running_emulator
from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import calendar_pb2, ingest_pb2

SPANS = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _tracing() -> None:
    """Record spans (the process-wide provider can be set once; later modules reuse it)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(SPANS))


async def test_notification_latency(
    emu: EmulatorHandle, collector: ChangeCollector, outlook: Outlook, streaming_ingest: StreamingIngest
) -> None:
    (owner,) = new_mailboxes(emu, "owner")
    async with streaming_ingest(owner) as h:
        latencies = []
        for n in range(10):
            subject = f"latency probe {n}"
            await outlook.do(outlook.meeting, owner, subject)
            saved = time.monotonic()  # CreateItem answered: the change exists in Exchange
            await collector.wait(lambda c, s=subject: c.event.subject == s, what=subject)  # type: ignore[misc]
            arrived = collector.received_for(lambda c, s=subject: c.event.subject == s)  # type: ignore[misc]
            assert arrived is not None
            latencies.append(arrived.at - saved)
        assert h.runtime.streams.stats.notifications >= 10  # they came by notification, not by a periodic sync
        report = {
            "n": len(latencies),
            "median_ms": round(statistics.median(latencies) * 1000, 1),
            "max_ms": round(max(latencies) * 1000, 1),
            "min_ms": round(min(latencies) * 1000, 1),
        }
        print(f"\nstreaming latency, Exchange save -> JetStream: {report}")
        # the published change carries the trace of its mailbox sync
        received = collector.received_for(lambda c: c.event.subject == "latency probe 9")
        assert received is not None and received.headers.get("traceparent", "").startswith("00-")
        trace_id = received.headers["traceparent"].split("-")[1]
        syncs = [s for s in SPANS.get_finished_spans() if s.name == "sync mailbox"]
        assert any(f"{s.context.trace_id:032x}" == trace_id for s in syncs)
        assert all(s.attributes and s.attributes.get("calendar.mailbox") == owner for s in syncs)


async def test_groups_affinity_and_overflow_polling(
    emu: EmulatorHandle,
    licensing: FakeLicensing,
    collector: ChangeCollector,
    outlook: Outlook,
    streaming_ingest: StreamingIngest,
) -> None:
    mailboxes = new_mailboxes(emu, "m1", "m2", "m3", "m4", "m5")
    server = {m: (await outlook.do(emu.admin.mailbox, m))["server"] for m in mailboxes}
    # the emulator's two mailbox servers hold three and two of them; the three come first: placed one by one as they
    # come, they would take both stream slots (2 + 1) and leave the other two to polling. Grouped as a whole, two
    # full groups stream and one mailbox is polled, whatever order autodiscover answers in.
    mailboxes.sort(key=lambda m: list(server.values()).count(server[m]), reverse=True)
    tuning = dataclasses.replace(FAST, stream_group_size=2, streams_per_credential=2, poll_seconds=1.0)
    async with streaming_ingest(*mailboxes, tuning=tuning, connections=2, max_concurrency=4) as h:
        groups = [g for gs in h.runtime.streams.groups.values() for g in gs]
        assert sorted(len(g.members) for g in groups) == [2, 2]  # at most two subscriptions per connection
        for group in groups:
            assert group.affinity is not None and group.affinity.anchor == group.members[0]
            assert group.affinity.cookie  # X-BackEndOverrideCookie from Exchange, sent back by the group
        streamed = [m for g in groups for m in g.members]
        await streams_arrived(emu, h, exactly_one=True)
        (polled,) = [m for m in mailboxes if m not in streamed]
        assert not h.scheduler.entries[polled].streamed
        for mailbox in mailboxes:  # every mailbox gets its change, the fifth one by polling
            await outlook.do(outlook.meeting, mailbox, f"hello {mailbox}")
        for mailbox in mailboxes:
            await collector.wait(lambda c, m=mailbox: c.event.subject == f"hello {m}", what=mailbox)  # type: ignore[misc]
        # a streamed mailbox of the polled one's server loses its seat: the polled one takes its place on the stream
        # (a group's subscriptions live on one mailbox server: room in another server's group is no room for it)
        leaving = next(m for m in streamed if server[m] == server[polled])
        licensing.denied = {leaving}
        await h.bus.nc.publish("calendar.v1.control.seats", b"")
        await h.streamed(polled)
        assert h.scheduler.entries[polled].streamed and not h.scheduler.entries[leaving].streamed


async def test_streams_are_a_budget_apart_from_max_concurrency(
    emu: EmulatorHandle, collector: ChangeCollector, outlook: Outlook, streaming_ingest: StreamingIngest
) -> None:
    """Ten mailboxes on the emulator's two mailbox servers (five each), in groups of two on a credential with
    maxConcurrency 2: the groups follow autodiscover's GroupingInformation - every group's members on one server,
    so three groups a server - six streaming connections, none of them taken from the two for ordinary calls, and
    no mailbox left to polling."""
    mailboxes = new_mailboxes(emu, *(f"b{i}" for i in range(10)))
    tuning = dataclasses.replace(FAST, stream_group_size=2)
    async with streaming_ingest(*mailboxes, tuning=tuning, connections=6, max_concurrency=2) as h:
        pool = h.pool_of(mailboxes[0])
        assert pool.sync_slots == 2 and pool.stream_slots >= 6
        groups = [g for gs in h.runtime.streams.groups.values() for g in gs]
        assert sorted(len(g.members) for g in groups) == [1, 1, 2, 2, 2, 2]
        for group in groups:
            servers = {(await outlook.do(emu.admin.mailbox, m))["server"] for m in group.members}
            assert len(servers) == 1 and group.key.startswith(f"{servers.pop()}|"), group.label
        assert all(h.scheduler.entries[m].streamed for m in mailboxes)
        await streams_arrived(emu, h, exactly_one=True)
        for mailbox in mailboxes:
            await outlook.do(outlook.meeting, mailbox, f"streamed {mailbox}")
        for mailbox in mailboxes:
            await collector.wait(lambda c, m=mailbox: c.event.subject == f"streamed {m}", what=mailbox)  # type: ignore[misc]
        assert h.runtime.streams.stats.notifications >= len(mailboxes)


async def test_catch_up_after_drop_and_lost_subscription(
    emu: EmulatorHandle, collector: ChangeCollector, outlook: Outlook, streaming_ingest: StreamingIngest
) -> None:
    (owner,) = new_mailboxes(emu, "owner")
    async with streaming_ingest(owner) as h:
        stats = h.runtime.streams.stats
        # a dropped connection: reconnect, and a sync catches up whatever happened meanwhile
        catch_ups = stats.catch_ups
        assert await outlook.do(emu.admin.drop_streams, owner) == 1
        await wait_for_async(lambda: _at_least(stats.catch_ups, catch_ups + 1), what="catch-up after a drop")
        # a lost subscription, and a change made while ews-ingest subscribes again (Subscribe is slowed down so the
        # change surely happens before the new subscription exists: only the catch-up sync can find it)
        await outlook.do(emu.admin.add_fault, kind="latency", operation="Subscribe", latency_ms=1500, count=1)
        resubscribes = stats.resubscribes
        await outlook.do(emu.admin.expire_subscriptions, None, owner)
        await wait_for_async(lambda: _at_least(stats.resubscribes, resubscribes + 1), what="subscription lost")
        await outlook.do(outlook.meeting, owner, "made during the gap")
        await collector.wait(lambda c: c.event.subject == "made during the gap", what="caught-up change")
        await h.streamed()
        await outlook.do(outlook.meeting, owner, "after the gap")
        await collector.wait(lambda c: c.event.subject == "after the gap", what="notifications flow again")


async def _at_least(value: int, wanted: int) -> bool:
    return value >= wanted


async def test_connection_renewal(nats_url: str, licensing: FakeLicensing, collector: ChangeCollector) -> None:
    # A 1-second emulated minute: a ConnectionTimeout of one minute closes the stream every second.
    with running_emulator(EMULATOR_CONFIG, strict=True, extra_args=["--minute-seconds", "1"]) as emu:
        outlook = Outlook(emu)
        try:
            (owner,) = new_mailboxes(emu, "owner")
            tuning = dataclasses.replace(FAST, stream_minutes=1)
            config = ingest_config(nats_url, licensing.address, [provider_section(emu, [owner])])
            async with running_ingest(config, tuning) as h:
                await collector.start()
                await h.synced(owner)
                stats = h.runtime.streams.stats
                await wait_for_async(lambda: _at_least(stats.renewals, 1), what="a first renewal")
                catch_ups, syncs = stats.catch_ups, emu.admin.requests()["operations"].get("SyncFolderItems", 0)
                await wait_for_async(lambda: _at_least(stats.renewals, 4), what="renewed connections")
                assert stats.resubscribes == 0  # the subscription outlives its connections
                # a renewal announced with ConnectionStatus "Closed" loses nothing: no catch-up sync, no EWS call
                assert stats.catch_ups == catch_ups
                assert emu.admin.requests()["operations"].get("SyncFolderItems", 0) == syncs
                await outlook.do(outlook.meeting, owner, "across renewals")
                await collector.wait(lambda c: c.event.subject == "across renewals")
            assert emu.admin.violations() == []
        finally:
            outlook.close()
        await asyncio.sleep(0)


async def test_a_mailbox_moved_to_another_server_changes_group_and_keeps_streaming(
    emu: EmulatorHandle, collector: ChangeCollector, outlook: Outlook, streaming_ingest: StreamingIngest
) -> None:
    """A mailbox moves to another mailbox server (a database move): its subscription is gone there, the group
    subscribes again, autodiscover names the new server, the mailbox joins that server's group, is caught up and
    its later changes still arrive by notification."""
    mailboxes = new_mailboxes(emu, "mv1", "mv2", "mv3", "mv4")
    async with streaming_ingest(*mailboxes, connections=2) as h:  # one group per mailbox server

        def group_of(mailbox: str) -> Any:
            return next(g for gs in h.runtime.streams.groups.values() for g in gs if mailbox in g.members)

        mover = mailboxes[0]
        before = group_of(mover).key
        target = "EMU-MBX02" if before.startswith("EMU-MBX01|") else "EMU-MBX01"
        moved = await outlook.do(emu.admin.move_mailbox, mover, target)
        assert moved["subscriptions_ended"] == 1
        await outlook.do(outlook.meeting, mover, "made right after the move")
        await collector.wait(lambda c: c.event.subject == "made right after the move", what="the catch-up")

        async def relocated() -> bool:
            group = next((g for gs in h.runtime.streams.groups.values() for g in gs if mover in g.members), None)
            return group is not None and group.key.startswith(f"{target}|") and mover in group.subscriptions

        await wait_for_async(relocated, timeout=20, what="the mover in its new server's group")
        await h.streamed(mover)
        before_notes = h.runtime.streams.stats.notifications
        await outlook.do(outlook.meeting, mover, "made on the new server")
        await collector.wait(lambda c: c.event.subject == "made on the new server", what="the streamed change")
        assert h.runtime.streams.stats.notifications > before_notes


async def test_a_sync_state_lost_in_a_move_is_replaced_and_the_mailbox_read_again(
    emu: EmulatorHandle, collector: ChangeCollector, outlook: Outlook, streaming_ingest: StreamingIngest
) -> None:
    """After a move Exchange refuses the mailbox's SyncState (ErrorInvalidSyncStateData) - ews-ingest used to
    stop the mailbox until an admin resync. Now it starts again without one: the mailbox is read whole and
    published (origin RESYNC; the engine keeps what it has), later changes flow again, nothing is left failed."""
    (owner,) = new_mailboxes(emu, "state-mover")
    await outlook.do(outlook.meeting, owner, "there before the move")
    async with streaming_ingest(owner) as h:
        await collector.wait(lambda c: c.event.subject == "there before the move", what="the first sync")
        server = (await outlook.do(emu.admin.mailbox, owner))["server"]
        await outlook.do(emu.admin.move_mailbox, owner, "EMU-MBX02" if server == "EMU-MBX01" else "EMU-MBX01")
        await outlook.do(outlook.meeting, owner, "made after the move")
        await collector.wait(lambda c: c.event.subject == "made after the move", what="the change after the move")
        await collector.wait(
            lambda c: c.event.subject == "there before the move" and c.origin == calendar_pb2.CHANGE_ORIGIN_RESYNC,
            what="the mailbox read again whole",
        )
        entry = h.scheduler.entries[owner]
        assert entry.last_error == "" and entry.state != ingest_pb2.MAILBOX_STATE_ERROR
        assert entry.context is not None and entry.context.checkpoint.sync_state
        await outlook.do(outlook.meeting, owner, "and later still")
        await collector.wait(lambda c: c.event.subject == "and later still", what="an ordinary change afterwards")


async def test_missed_notification_events_bring_a_catch_up_and_a_new_subscription(
    emu: EmulatorHandle, collector: ChangeCollector, outlook: Outlook, streaming_ingest: StreamingIngest
) -> None:
    """Exchange drops a subscription's events and answers ErrorMissedNotificationEvents (driven through the
    emulator's overflow): the group subscribes again and catches the mailbox up with a sync, so a change whose
    notification was dropped still arrives, and later ones stream as before."""
    (owner,) = new_mailboxes(emu, "missed-events")
    async with streaming_ingest(owner) as h:
        stats = h.runtime.streams.stats
        catch_ups, resubscribed = stats.catch_ups, stats.subscriptions
        group = next(g for gs in h.runtime.streams.groups.values() for g in gs if owner in g.members)
        old = group.subscriptions[owner]
        await outlook.do(outlook.meeting, owner, "its notification is dropped")
        assert await outlook.do(emu.admin.miss_events, [old]) == [old]
        await collector.wait(lambda c: c.event.subject == "its notification is dropped", what="the dropped change")

        async def subscribed_again() -> bool:
            return group.subscriptions.get(owner) not in (None, old) and stats.catch_ups > catch_ups

        await wait_for_async(subscribed_again, timeout=20, what="a new subscription and a catch-up")
        assert stats.subscriptions > resubscribed
        await h.streamed(owner)
        await outlook.do(outlook.meeting, owner, "streams again")
        await collector.wait(lambda c: c.event.subject == "streams again", what="a change after the new subscription")

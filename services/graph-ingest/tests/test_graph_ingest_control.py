"""graph-ingest answers the core control subjects of its own mailboxes, as ews-ingest answers those of its own:
`calendar.v1.control.resync.<mailbox>` (sync-engine's ResyncMailbox, `tc-calendar resync USER [--from DATE]`) and
the request/reply `calendar.v1.control.ondemand.<mailbox>` (tcs-gateway). Requests are sent as those services
send them, through their own NATS identities; a mailbox of ews-ingest gets no answer from graph-ingest."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from ews_ingest_support import ChangeCollector
from google.protobuf.timestamp_pb2 import Timestamp
from graph_ingest_support import GraphWriter, SeatServer, graph_config, graph_provider, new_mailboxes, running_graph
from nats.errors import NoRespondersError
from nats.js.errors import KeyNotFoundError

from graph_emulator.testing import EmulatorProcess
from graph_ingest.state import key_token
from tccal.bus import Bus
from tccal.subjects import GRAPH_STATE_BUCKET, ondemand_subject, resync_subject
from tccal_sandbox.embedded import EmbeddedNats
from tccal_sandbox.testing import nats_settings
from trueconf.calendar.v1 import calendar_pb2, ingest_pb2

BEGIN = calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN
END = calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END


async def _connected(nats_server: EmbeddedNats, identity: str) -> Bus:
    bus = Bus(nats_settings(nats_server, identity))
    await bus.connect(attempts=1)
    return bus


@pytest.mark.parametrize("since", [None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)], ids=["whole", "from-date"])
async def test_a_resync_rereads_the_graph_mailbox_inside_a_resync_frame(
    emu: EmulatorProcess,
    nats_server: EmbeddedNats,
    seats: SeatServer,
    collector: ChangeCollector,
    writer: GraphWriter,
    since: dt.datetime | None,
) -> None:
    (mailbox,) = new_mailboxes(emu, "rostislav")
    events = [await writer.create(mailbox, f"Meeting {n}") for n in range(3)]
    config = graph_config(seats.address, [graph_provider(emu, [mailbox])])
    engine = await _connected(nats_server, "sync-engine")
    try:
        async with running_graph(config, nats_server) as graph:
            await collector.start()
            await graph.rounds(mailbox)
            await collector.wait(lambda c: c.item_id == events[-1]["id"], what="the initial load")
            request = ingest_pb2.ResyncMailboxRequest(mailbox=mailbox)
            if since is not None:  # `--from`: calendarView/delta has no such filter, the re-read is whole
                stamp = Timestamp()
                stamp.FromDatetime(since)
                request.since.CopyFrom(stamp)
            await engine.nc.publish(resync_subject(mailbox), request.SerializeToString())  # as sync_engine.resync
            await engine.nc.flush()
            end = await collector.wait(lambda c: c.mailbox == mailbox and c.type == END, what="MAILBOX_RESYNC_END")
            status = graph.status(mailbox)
            assert status.totals.snapshots == 1 and status.totals.token_resets == 0
            assert status.checkpoint is not None and not status.checkpoint.reread
    finally:
        await engine.close()
    changes = collector.of(mailbox)
    kinds = [c.type for c in changes]
    assert kinds.count(BEGIN) == 1 and kinds.count(END) == 1
    begin = kinds.index(BEGIN)
    framed = changes[begin + 1 : kinds.index(END)]
    assert changes[begin].resync.token == end.resync.token and end.resync.token.startswith("resync-")
    assert sorted(c.item_id for c in framed) == sorted(e["id"] for e in events)  # each read again, once
    assert {c.origin for c in framed} == {calendar_pb2.CHANGE_ORIGIN_RESYNC}
    assert len(changes) == 2 * len(events) + 2  # initial load, then the frame: published again, not deduplicated


async def test_an_on_demand_request_for_a_graph_mailbox_is_answered_and_its_events_published(
    emu: EmulatorProcess,
    nats_server: EmbeddedNats,
    seats: SeatServer,
    collector: ChangeCollector,
    writer: GraphWriter,
) -> None:
    seated, refused = new_mailboxes(emu, "svyatoslav", "yaroslav")
    seats.denied.add(refused)
    config = graph_config(seats.address, [graph_provider(emu, [seated, refused])])
    gateway = await _connected(nats_server, "tcs-gateway")
    try:
        async with running_graph(config, nats_server) as graph:
            await collector.start()
            await graph.rounds(seated)
            made = await writer.create(seated, "Asked for by TrueConf")
            rounds = graph.status(seated).rounds
            request = ingest_pb2.ResyncMailboxRequest(mailbox=seated).SerializeToString()
            reply = await gateway.nc.request(ondemand_subject(seated), request, timeout=30)  # as tcs_gateway.ondemand
            assert json.loads(reply.data) == {"mailbox": seated, "accepted": True, "detail": "syncing"}
            await graph.rounds(seated, rounds + 1)  # the round ran at once (polling waits an hour in FAST)
            arrived = await collector.wait(lambda c: c.item_id == made["id"], what="the event of the asked mailbox")
            assert arrived.mailbox == seated
            answered = seats.calls
            denied = ingest_pb2.ResyncMailboxRequest(mailbox=refused).SerializeToString()
            reply = await gateway.nc.request(ondemand_subject(refused), denied, timeout=30)
            assert json.loads(reply.data) == {
                "mailbox": refused,
                "accepted": False,
                "detail": "refused by the test licensing",
            }
            assert seats.calls > answered  # licensing was asked again before the refusal
    finally:
        await gateway.close()


async def test_a_request_for_a_mailbox_graph_ingest_does_not_serve_gets_no_answer_from_it(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer
) -> None:
    graph_user, ews_user = *new_mailboxes(emu, "vsevolod"), "ews-user@exchange.example.com"
    config = graph_config(seats.address, [graph_provider(emu, [graph_user])])
    gateway = await _connected(nats_server, "tcs-gateway")
    try:
        async with running_graph(config, nats_server) as graph:
            await graph.rounds(graph_user)
            payload = ingest_pb2.ResyncMailboxRequest(mailbox=ews_user).SerializeToString()
            with pytest.raises(NoRespondersError):  # nobody but ews-ingest would subscribe to that subject
                await gateway.nc.request(ondemand_subject(ews_user), payload, timeout=10)
            # the control: graph-ingest is subscribed and answers its own mailbox
            mine = ingest_pb2.ResyncMailboxRequest(mailbox=graph_user).SerializeToString()
            reply = await gateway.nc.request(ondemand_subject(graph_user), mine, timeout=30)
            assert json.loads(reply.data)["accepted"] is True
    finally:
        await gateway.close()


async def test_an_unlisted_mailbox_of_a_claimed_domain_is_synced_on_demand_remembered_and_dropped_with_its_domain(
    emu: EmulatorProcess,
    nats_server: EmbeddedNats,
    seats: SeatServer,
    collector: ChangeCollector,
    writer: GraphWriter,
) -> None:
    """TrueConf asks for a user no entry lists: the Graph entry whose `domains` hold its address's domain finds the
    mailbox in the tenant and syncs it on demand (seat asked for as not configured), as ews-ingest does for EWS; an
    address the tenant does not have is refused with Graph's reason. The mailbox is remembered over a restart and
    dropped once the config no longer claims its domain."""
    listed, visitor = new_mailboxes(emu, "ludmila", "visitor")
    stranger = f"nobody-{listed.split('@')[0]}@contoso.test"
    made = await writer.create(visitor, "The visitor's meeting")
    claiming = {**graph_provider(emu, [listed], name="m365"), "domains": ["contoso.test"]}
    config = graph_config(seats.address, [claiming])
    gateway = await _connected(nats_server, "tcs-gateway")
    try:
        async with running_graph(config, nats_server) as graph:
            await collector.start()
            await graph.rounds(listed)
            ask = ingest_pb2.ResyncMailboxRequest(mailbox=visitor).SerializeToString()
            reply = await gateway.nc.request(ondemand_subject(visitor), ask, timeout=30)  # as tcs_gateway.ondemand
            answer = json.loads(reply.data)
            assert (answer["mailbox"], answer["accepted"]) == (visitor, True), answer
            arrived = await collector.wait(lambda c: c.item_id == made["id"], what="the on-demand mailbox's event")
            assert (arrived.mailbox, arrived.provider) == (visitor, "m365")
            assert (visitor, False) in seats.last and (listed, True) in seats.last
            again = await gateway.nc.request(ondemand_subject(visitor), ask, timeout=30)  # now a known mailbox
            assert json.loads(again.data) == {"mailbox": visitor, "accepted": True, "detail": "syncing"}
            unknown = ingest_pb2.ResyncMailboxRequest(mailbox=stranger).SerializeToString()
            refused = json.loads((await gateway.nc.request(ondemand_subject(stranger), unknown, timeout=30)).data)
            assert refused["accepted"] is False and "not in the tenant" in refused["detail"]
            assert "ErrorInvalidUser" in refused["detail"]
            assert stranger not in graph.runtime.mailboxes
        async with running_graph(config, nats_server) as graph:  # remembered over a restart
            await graph.rounds(visitor)
        admin = await _connected(nats_server, "admin")
        kv = await admin.js.key_value(GRAPH_STATE_BUCKET)
        assert await kv.get(f"v1.ondemand.{key_token(visitor)}")
        async with running_graph(
            graph_config(seats.address, [graph_provider(emu, [listed], name="m365")]), nats_server
        ) as graph:
            assert visitor not in graph.runtime.mailboxes
            with pytest.raises(KeyNotFoundError):
                await kv.get(f"v1.ondemand.{key_token(visitor)}")
            with pytest.raises(NoRespondersError):  # no claimed domain: graph-ingest hears no unknown address
                await gateway.nc.request(ondemand_subject(stranger), unknown, timeout=10)
        await admin.close()
    finally:
        await gateway.close()

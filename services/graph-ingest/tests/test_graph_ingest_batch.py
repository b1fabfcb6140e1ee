"""$batch: the marker reads go 20 to a batch; throttled members are sent again alone, 404 members are gone, other
member errors are named; with maxConcurrency below Graph's four parallel members the batch runs fully sequential.

The emulator's Outlook limit is lowered to 2 concurrent requests per app and mailbox here, so a parallel batch whose
members Graph runs four at a time gets some members throttled (429 with Retry-After) while the others succeed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import pytest
from ews_ingest_support import ChangeCollector
from graph_ingest_support import (
    FAST,
    GraphWriter,
    SeatServer,
    graph_config,
    graph_provider,
    new_mailboxes,
    running_graph,
)

from graph_emulator.testing import READONLY_APP_ID, EmulatorProcess, build_config, start_emulator
from graph_ingest.batch import get_many
from graph_ingest.graph import GraphClient, GraphError
from graph_ingest.settings import GraphSettings
from tccal.config import Config
from tccal.secrets import reveal
from tccal_sandbox.embedded import EmbeddedNats
from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import common_pb2


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    config = build_config(extra={"throttling": {"concurrent_requests": 2, "requests_per_window": 10000}})
    with start_emulator(config) as handle:
        yield handle


@pytest.fixture
async def writer(emu: EmulatorProcess) -> AsyncIterator[GraphWriter]:
    client = GraphWriter(emu)
    yield client
    await client.close()


def _client(emu: EmulatorProcess, mailbox: str, max_concurrency: int) -> GraphClient:
    provider = {**graph_provider(emu, [mailbox]), "maxConcurrency": max_concurrency}
    config = Config.model_validate(graph_config("127.0.0.1:1", [provider]))
    settings = GraphSettings.from_config(config, lambda v: reveal(v, allow_plaintext=True), FAST)
    return GraphClient(settings.providers[0], FAST)


def _usage(emu: EmulatorProcess, mailbox: str) -> dict[str, int]:
    found = emu.control("GET", f"/mailboxes/{mailbox}")["requests"].get(READONLY_APP_ID)
    return dict(found or {"in_flight": 0, "throttled": 0, "max_in_flight": 0, "requests": 0})


async def test_marker_properties_of_a_round_are_read_twenty_to_a_batch(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    """45 events in delta pages of 5: 9 delta GETs and, per page, one $batch with its 5 marker reads — 18 requests
    where one GET per event made 54; the add-in's property still marks its event."""
    (mailbox,) = new_mailboxes(emu, "bea")
    created = [await writer.create(mailbox, f"Batched {n}") for n in range(44)]
    created.append(await writer.create(mailbox, "Add-in meeting", marker='{"mode": "PxP"}'))
    config = graph_config(seats.address, [graph_provider(emu, [mailbox])])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        status = await graph.rounds(mailbox, timeout=60)
        stats = graph.runtime.clients[status.provider].stats
        await wait_for_async(lambda: len(collector.of(mailbox)) == 45, timeout=20, what="every event")
    assert (stats.requests, stats.batches, stats.batch_members) == (9 + 9, 9, 45)
    assert {c.item_id for c in collector.of(mailbox)} == {e["id"] for e in created}
    (marked,) = [c for c in collector.of(mailbox) if c.event.HasField("conference")]
    assert marked.item_id == created[-1]["id"]
    assert marked.event.conference.source == common_pb2.CONFERENCE_SOURCE_EXTENDED_PROPERTY


async def test_throttled_members_are_sent_again_alone_and_deleted_events_answer_gone(
    emu: EmulatorProcess, writer: GraphWriter
) -> None:
    """Graph runs four members at once; with the mailbox's requests held and a limit of 2, two members are in
    flight and the other three answer 429: only those three are sent again (after Retry-After) and succeed."""
    (mailbox,) = new_mailboxes(emu, "cleo")
    events = [await writer.create(mailbox, f"Read {n}") for n in range(4)]
    gone = await writer.create(mailbox, "Deleted before the read")
    await writer.delete(mailbox, gone["id"])
    client = _client(emu, mailbox, 4)
    urls = {e["id"]: f"/users/{quote(mailbox)}/events/{e['id']}?$select=id,subject" for e in [*events, gone]}
    await client.tokens.token()
    emu.control("POST", f"/mailboxes/{mailbox}/hold", {})
    try:
        reading = asyncio.create_task(get_many(client, mailbox, urls))
        await wait_for_async(lambda: _usage(emu, mailbox)["in_flight"] == 2, timeout=20, what="two members held")
    finally:
        emu.control("POST", f"/mailboxes/{mailbox}/release", {})
    answers = await reading
    await client.close()
    assert {key: a.body.get("subject") for key, a in answers.items() if not a.gone} == {
        e["id"]: e["subject"] for e in events
    }
    assert answers[gone["id"]].gone
    usage = _usage(emu, mailbox)
    assert usage["throttled"] == client.stats.throttled >= 1
    # one batch of 5, then one batch of the throttled members only
    assert client.stats.batches == 2 and client.stats.batch_members == 5 + client.stats.throttled


async def test_batch_member_errors_are_named(emu: EmulatorProcess, writer: GraphWriter) -> None:
    (mailbox,) = new_mailboxes(emu, "dora")
    event = await writer.create(mailbox, "Fine")
    client = _client(emu, mailbox, 4)
    urls = {
        "good": f"/users/{quote(mailbox)}/events/{event['id']}",
        "bad": f"/users/{quote(mailbox)}/events?$filter=x",  # the emulator refuses $filter on events with 400
    }
    with pytest.raises(GraphError) as caught:
        await get_many(client, mailbox, urls)
    await client.close()
    assert caught.value.status == 400
    assert "$batch member" in str(caught.value) and "events?$filter=x" in str(caught.value)


async def test_below_four_slots_the_batch_runs_fully_sequential(emu: EmulatorProcess, writer: GraphWriter) -> None:
    """maxConcurrency 1: members depend each on the one before, one runs at a time; after a deleted event's 404 the
    members behind it answer 424 and are sent again."""
    (mailbox,) = new_mailboxes(emu, "edda")
    first = await writer.create(mailbox, "First")
    gone = await writer.create(mailbox, "Gone")
    await writer.delete(mailbox, gone["id"])
    last = await writer.create(mailbox, "Last")
    client = _client(emu, mailbox, 1)
    urls = {e["id"]: f"/users/{quote(mailbox)}/events/{e['id']}" for e in (first, gone, last)}
    answers = await get_many(client, mailbox, urls)
    await client.close()
    assert [answers[e["id"]].status for e in (first, gone, last)] == [200, 404, 200]
    assert answers[last["id"]].body["subject"] == "Last"
    assert client.stats.batches == 2 and client.stats.batch_members == 3 + 1  # "Last" again after its 424
    assert _usage(emu, mailbox)["max_in_flight"] == 1

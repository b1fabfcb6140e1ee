"""Graph's Outlook request limit (emulator set low): 429 with Retry-After is waited out through tccal.retry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from ews_ingest_support import ChangeCollector
from graph_ingest_support import GraphWriter, SeatServer, graph_config, graph_provider, new_mailboxes, running_graph

from graph_emulator.testing import READONLY_APP_ID, EmulatorProcess, build_config, start_emulator
from tccal_sandbox.embedded import EmbeddedNats
from tccal_sandbox.testing import wait_for_async


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """10 requests per 2-second window per app and mailbox: a first round of 12 events must be throttled."""
    config = build_config(extra={"throttling": {"requests_per_window": 10, "window_s": 2, "concurrent_requests": 4}})
    with start_emulator(config) as handle:
        yield handle


@pytest.fixture
async def writer(emu: EmulatorProcess) -> AsyncIterator[GraphWriter]:
    client = GraphWriter(emu)
    yield client
    await client.close()


async def test_throttled_requests_are_retried_after_retry_after_and_nothing_is_lost(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    (mailbox,) = new_mailboxes(emu, "lena")
    created = [await writer.create(mailbox, f"Throttled {n}") for n in range(12)]
    config = graph_config(seats.address, [graph_provider(emu, [mailbox])])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        status = await graph.rounds(mailbox, timeout=90)
        client = graph.runtime.clients[status.provider]
        assert client.stats.throttled > 0  # it was throttled (whole requests or $batch members) ...
        assert client.stats.waited_seconds > 0  # ... waited as told ...
        await wait_for_async(lambda: len(collector.of(mailbox)) == 12, timeout=20, what="every event")
    assert {c.item_id for c in collector.of(mailbox)} == {e["id"] for e in created}  # ... and lost nothing
    usage = emu.control("GET", f"/mailboxes/{mailbox}")["requests"][READONLY_APP_ID]
    assert usage["throttled"] == client.stats.throttled > 0  # every 429 the emulator sent was seen and retried

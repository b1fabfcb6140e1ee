"""Fixtures of the graph-ingest tests: a Graph emulator process per module, a seat server behind licensing's own
access policy, a JetStream collector of CalendarChanges, a Graph writer acting as another client, and `testbed`: all
of these together (GraphTestbed) for the tests that drive graph-ingest in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from ews_ingest_support import ChangeCollector
from graph_ingest_support import GraphTestbed, GraphWriter, NotifyEndpoint, SeatServer

from graph_emulator.testing import EmulatorProcess, build_config, start_emulator
from tccal_sandbox.embedded import EmbeddedNats


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with start_emulator(build_config()) as handle:
        yield handle


@pytest.fixture(scope="module")
def notify_endpoint(tmp_path_factory: pytest.TempPathFactory) -> NotifyEndpoint:
    """HTTPS material and a port for graph-ingest's change-notification receiver (one per test module)."""
    return NotifyEndpoint.create(tmp_path_factory.mktemp("notify-tls"))


@pytest.fixture
async def seats() -> AsyncIterator[SeatServer]:
    server = SeatServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def collector(nats_url: str) -> AsyncIterator[ChangeCollector]:
    found = ChangeCollector(nats_url)
    yield found
    await found.stop()


@pytest.fixture
async def writer(emu: EmulatorProcess) -> AsyncIterator[GraphWriter]:
    client = GraphWriter(emu)
    yield client
    await client.close()


@pytest.fixture
def testbed(
    emu: EmulatorProcess,
    nats_server: EmbeddedNats,
    seats: SeatServer,
    collector: ChangeCollector,
    writer: GraphWriter,
) -> GraphTestbed:
    return GraphTestbed(emu, nats_server, seats, collector, writer)

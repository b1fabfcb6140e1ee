"""Fixtures of the graph-ingest tests: a Graph emulator process per module, a seat server behind licensing's own
access policy, a JetStream collector of CalendarChanges, and a Graph writer acting as another client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from ews_ingest_support import ChangeCollector
from graph_ingest_support import GraphWriter, NotifyEndpoint, SeatServer

from graph_emulator.testing import EmulatorProcess, build_config, start_emulator
from graph_emulator.tls import self_signed_certificate
from tccal_sandbox.embedded import free_port


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with start_emulator(build_config()) as handle:
        yield handle


@pytest.fixture(scope="module")
def notify_endpoint(tmp_path_factory: pytest.TempPathFactory) -> NotifyEndpoint:
    """HTTPS material and a port for graph-ingest's change-notification receiver (one per test module)."""
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("notify-tls"))
    return NotifyEndpoint(str(cert), str(key), free_port())


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

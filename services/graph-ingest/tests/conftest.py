"""Fixtures of the graph-ingest tests: a Graph emulator process per module, a seat server behind licensing's own
access policy, a JetStream collector of CalendarChanges, and a Graph writer acting as another client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from ews_ingest_support import ChangeCollector
from graph_ingest_support import GraphWriter, SeatServer

from graph_emulator.testing import EmulatorProcess, build_config, start_emulator


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with start_emulator(build_config()) as handle:
        yield handle


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

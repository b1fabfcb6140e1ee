"""Fixtures of the ews-ingest tests: a strict Exchange emulator process per module, a LicensingService served by
the test over a real gRPC socket, a JetStream collector of CalendarChanges, Outlook-like exchangelib access, and
ews-ingest running over fresh mailboxes until they are synced and streaming."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from ews_ingest_support import (
    EMULATOR_CONFIG,
    FAST,
    ChangeCollector,
    FakeLicensing,
    Harness,
    Outlook,
    StreamingIngest,
    ingest_config,
    provider_section,
    running_ingest,
    streams_arrived,
)
from exchangelib.protocol import close_connections

from ews_ingest.settings import Tuning
from exchange_emulator.testing import EmulatorHandle, fail_on_new_violations, running_emulator


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorHandle]:
    """One strict emulator per test module; every test makes its own mailboxes."""
    with running_emulator(EMULATOR_CONFIG, strict=True, extra_args=["--heartbeat-seconds", "1"]) as handle:
        yield handle
    close_connections()


@pytest.fixture(autouse=True)
def _no_schema_violations(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test during which a strict emulator recorded an EWS schema violation."""
    yield from fail_on_new_violations(request)


@pytest.fixture
async def licensing() -> AsyncIterator[FakeLicensing]:
    fake = FakeLicensing()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def collector(nats_url: str) -> AsyncIterator[ChangeCollector]:
    found = ChangeCollector(nats_url)
    yield found
    await found.stop()


@pytest.fixture
def outlook(emu: EmulatorHandle) -> Iterator[Outlook]:
    client = Outlook(emu)
    yield client
    client.close()


@pytest.fixture
def streaming_ingest(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector
) -> StreamingIngest:
    """`async with streaming_ingest(*mailboxes) as h`: ews-ingest over those mailboxes of `emu` (one provider,
    `max_concurrency` connections per credential), publishing to `nats_url` with seats from `licensing`; inside, the
    collector is started, every mailbox has had its first sync and the streams (at least `connections`) are open, as
    the ingest and as Exchange see them."""

    @contextlib.asynccontextmanager
    async def run(
        *mailboxes: str, tuning: Tuning = FAST, connections: int = 1, max_concurrency: int = 4
    ) -> AsyncIterator[Harness]:
        section = provider_section(emu, list(mailboxes), max_concurrency=max_concurrency)
        async with running_ingest(ingest_config(nats_url, licensing.address, [section]), tuning) as h:
            await collector.start()
            await h.synced(*mailboxes)
            await h.streamed(connections=connections)
            await streams_arrived(emu, h)
            yield h

    return run

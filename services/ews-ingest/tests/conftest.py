"""Fixtures of the ews-ingest tests: a strict Exchange emulator process per module, a LicensingService served by
the test over a real gRPC socket, a JetStream collector of CalendarChanges, and Outlook-like exchangelib access."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from exchangelib.protocol import close_connections

from exchange_emulator.testing import EmulatorHandle, running_emulator

sys.path.insert(0, str(Path(__file__).parent))

from ews_ingest_support import EMULATOR_CONFIG, ChangeCollector, FakeLicensing, Outlook


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorHandle]:
    """One strict emulator per test module; every test makes its own mailboxes."""
    with running_emulator(EMULATOR_CONFIG, strict=True, extra_args=["--heartbeat-seconds", "1"]) as handle:
        yield handle
    close_connections()


@pytest.fixture(autouse=True)
def _no_schema_violations(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test during which a strict emulator recorded an EWS schema violation."""
    if "emu" not in request.fixturenames:
        yield
        return
    handle: EmulatorHandle = request.getfixturevalue("emu")
    before = len(handle.admin.violations())
    yield
    after = handle.admin.violations()
    if len(after) > before:
        pytest.fail(f"EWS schema violations during the test: {after[before:]}")


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

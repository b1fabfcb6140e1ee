"""One Graph emulator subprocess per test module (https with a self-signed certificate)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from graph_emulator_support import OPEN_CREDENTIALS

from graph_emulator.testing import EmulatorProcess, start_emulator


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with start_emulator() as handle:
        yield handle


@pytest.fixture(autouse=True)
async def close_credentials() -> AsyncIterator[None]:
    yield
    while OPEN_CREDENTIALS:
        await OPEN_CREDENTIALS.pop().close()

"""One Graph emulator subprocess per test module (https with a self-signed certificate)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from graph_emulator.testing import EmulatorProcess, start_emulator


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with start_emulator() as handle:
        yield handle

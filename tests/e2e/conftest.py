"""One running product shared by the scenario modules that need only the default configuration."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from e2e_support import Product, running_product


@pytest.fixture(scope="session")
def product() -> Iterator[Product]:
    """The sandbox as `make run` starts it (Standard license, autoSync, launchConference), without demo data."""
    with running_product() as running:
        yield running

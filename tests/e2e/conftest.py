"""One running product shared by the scenario modules that need only the default configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_support import Product, running_product


@pytest.fixture(scope="session")
def product() -> Iterator[Product]:
    """The sandbox as `make run` starts it (Standard license, autoSync, launchConference), without demo data."""
    with running_product() as running:
        yield running

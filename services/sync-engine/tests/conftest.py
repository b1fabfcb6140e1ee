"""Fixtures of the sync-engine tests (helpers live in sync_engine_testkit.py next to this file)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sync_engine_testkit import Harness


@pytest.fixture
async def harness(pg_dsn: str, nats_url: str) -> AsyncIterator[Harness]:
    world = await Harness(pg_dsn, nats_url).open()
    try:
        yield world
    finally:
        await world.close()

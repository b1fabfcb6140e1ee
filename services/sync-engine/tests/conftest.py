"""Fixtures of the sync-engine tests (helpers live in sync_engine_testkit.py next to this file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sync_engine_testkit import ANNA, BOB, CAROL, DAVE, Harness, SeatServer


@pytest.fixture
async def harness(pg_dsn: str, nats_url: str) -> AsyncIterator[Harness]:
    world = await Harness(pg_dsn, nats_url).open()
    try:
        yield world
    finally:
        await world.close()


@pytest.fixture
async def seat_server() -> AsyncIterator[SeatServer]:
    """licensing's ListSeats for engines that enforce seats (the service process always does): the test people
    seated for a day unless the test changes `seats`."""
    server = await SeatServer({who: timedelta(days=1) for who in (ANNA, BOB, CAROL, DAVE)}).start()
    try:
        yield server
    finally:
        await server.stop()

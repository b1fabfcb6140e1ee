"""Fixtures of the tcs-gateway tests (helpers live in tcs_gateway_testkit.py next to this file)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tcs_gateway_testkit import SyncServer, World


@pytest.fixture
async def sync() -> AsyncIterator[SyncServer]:
    server = await SyncServer().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def world(nats_url: str, sync: SyncServer) -> AsyncIterator[World]:
    opened = await World(nats_url, sync).open()
    try:
        yield opened
    finally:
        await opened.close()

"""pytest plugin for the whole repo (loaded with `-p tccal.testing`): embedded PostgreSQL and NATS, free ports,
an isolated machine key, and a bounded wait helper. Nothing here mocks PostgreSQL or NATS.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tccal.embedded import EmbeddedNats, EmbeddedPostgres, create_database, free_port

T = TypeVar("T")
__all__ = ["free_port", "wait_for", "wait_for_async"]


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


async def wait_for_async(
    predicate: Callable[[], Awaitable[T]], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def short_tmpdir(prefix: str) -> Path:
    """A short path (Unix socket paths are limited to ~100 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture(autouse=True)
def isolated_machine_key(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own machine key file (TC_CALENDAR_KEY_FILE), created on first use."""
    key_file = tmp_path_factory.mktemp("key") / "machine.key"
    monkeypatch.setenv("TC_CALENDAR_KEY_FILE", str(key_file))
    monkeypatch.delenv("TC_CALENDAR_KEY", raising=False)
    return key_file


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """One embedded PostgreSQL per test session; tests get their own database from `pg_dsn`."""
    directory = short_tmpdir("tcpg")
    server = EmbeddedPostgres(directory)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def pg_dsn(pg_server: EmbeddedPostgres) -> str:
    """A fresh, empty database for this test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await create_database(pg_server.dsn("postgres"), name)
    return pg_server.dsn(name)


@pytest.fixture
def nats_server() -> Iterator[EmbeddedNats]:
    """A fresh nats-server with JetStream for this test (streams never leak between tests)."""
    directory = short_tmpdir("tcnats")
    server = EmbeddedNats(directory)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


def repo_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "proto" / "trueconf").is_dir() and (parent / "libs").is_dir():
            return parent
    return Path(os.getcwd())

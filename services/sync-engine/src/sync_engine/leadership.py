"""One replica at a time: work that must not run in two engines at once runs while this engine holds a PostgreSQL
session advisory lock, on a pooled connection kept for as long as it leads.

The lock is taken with `pg_try_advisory_lock` (retried every `retry` seconds, so a stopping engine never blocks on
it) and watched: the connection is asked `SELECT 1` every `check` seconds, and when that fails (PostgreSQL
restarted, the connection cut) the lock is gone on the server too, so the work is told to stop at once (`until`) -
another engine may hold the lock a moment later. PostgreSQL drops a session lock when its connection ends, so an
engine killed with kill -9 hands the lock over as soon as the server sees the socket close (a host that vanishes:
after TCP keepalive, deploy/README.md "PostgreSQL high availability").

A session lock needs the same server session for its whole life: behind PgBouncer only in session pooling mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)


async def lead(
    pool: asyncpg.Pool,
    key: int,
    what: str,
    stop: asyncio.Event,
    work: Callable[[asyncio.Event], Awaitable[None]],
    *,
    retry: float = 1.0,
    check: float = 1.0,
    on_standby: Callable[[], None] | None = None,
    finish: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> None:
    """Wait until this engine holds the advisory lock `key` (or `stop`), then run `work(until)`; `until` is set
    when `stop` is, or when the lock's connection broke. Returns when `work` does (the lock released), at once when
    stopped before the lock was had. `on_standby` is called when another engine holds the lock at the first try.
    `finish` is called when `work` returned (not raised) with the lock's connection, the lock still held: what it
    writes there is written by the leader (a connection that broke holds no lock, and any call on it raises); it
    handles its own errors (the lock is released after it)."""
    async with pool.acquire() as connection:
        waiting_logged = False
        while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", key):
            if not waiting_logged:
                waiting_logged = True
                log.info(f"{what}: another engine leads; standing by")
                if on_standby is not None:
                    on_standby()
            if await _pause(stop, retry):
                return
        log.info(f"{what}: this engine leads")
        until = asyncio.Event()
        watcher = asyncio.create_task(_watch(connection, stop, until, check, what))
        worked = False
        try:
            await work(until)
            worked = True
        finally:
            watcher.cancel()  # (a SELECT 1 it had in flight is cancelled; asyncpg waits for that before the next)
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if worked and finish is not None and not connection.is_closed():
                await finish(connection)  # the watcher no longer uses the connection
            # A broken connection holds no lock (the pool has taken it back already: any call on it raises).
            with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
                if not connection.is_closed():
                    await connection.execute("SELECT pg_advisory_unlock($1)", key)


async def _watch(
    connection: asyncpg.Connection, stop: asyncio.Event, until: asyncio.Event, check: float, what: str
) -> None:
    try:
        while not await _pause(stop, check):
            await asyncio.wait_for(connection.fetchval("SELECT 1"), timeout=max(check, 1.0) * 3)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning(f"{what}: the lock's PostgreSQL connection broke; no longer leading", extra={"error": repr(exc)})
    until.set()


async def _pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` unless `stop` is set first; True when stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()

"""What every engine transaction works with: settings, the PostgreSQL pool, the bus, the clock, the tracer; the
moment (now and the cache window), a command batch, a workspace, and the runner that retries a transaction when
PostgreSQL is briefly unavailable or the transaction lost a race."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from sync_engine.outbox import Cause, CommandBatch
from sync_engine.reconcile import Moment
from sync_engine.settings import EngineSettings
from sync_engine.window import cache_window
from sync_engine.workspace import Workspace
from tccal import telemetry
from tccal.bus import Bus
from tccal.clock import Clock
from tccal.retry import backoff_delay

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors that mean "PostgreSQL is briefly unavailable or the transaction lost a race": retry it.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
)


class EngineContext:
    """One PostgreSQL pool and one NATS connection, shared by every part of the engine."""

    def __init__(self, settings: EngineSettings, pool: asyncpg.Pool, bus: Bus, clock: Clock) -> None:
        self.settings = settings
        self.pool = pool
        self.bus = bus
        self.clock = clock
        self.tracer = telemetry.tracer("sync_engine")

    def moment(self) -> Moment:
        now = self.clock.now()
        return Moment(now=now, window=cache_window(now, self.settings))

    def batch(self, cause: Cause) -> CommandBatch:
        return CommandBatch(cause=cause, calendar_servers=self.settings.calendar_servers)

    def workspace(self, connection: asyncpg.Connection) -> Workspace:
        return Workspace(connection, self.settings.configured_users)

    async def transaction(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        stop: asyncio.Event | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Run `work` in a transaction; transient failures (PostgreSQL down, deadlock) are retried with backoff
        until it succeeds or `stop` is set (then the last error is raised)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.pool.acquire() as connection, connection.transaction():
                    return await work(connection)
            except TRANSIENT_ERRORS as exc:
                if stop is not None and stop.is_set():
                    raise
                if stop is None and attempt >= 8:
                    raise
                delay = backoff_delay(attempt, base=0.1, cap=5.0)
                log.warning("transaction failed, retrying", extra={"attempt": attempt, "error": repr(exc)})
                if on_wait is not None:
                    await on_wait()
                await asyncio.sleep(delay)

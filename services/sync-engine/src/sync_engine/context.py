"""What every engine transaction works with: settings, the PostgreSQL pool, the bus, the clock, the tracer; the
moment (now and the cache window), a command batch, a workspace, and the runner that retries a transaction when
PostgreSQL cannot take it (unreachable, read-only, full: waits until it can, `faults.DatabaseHealth` says so) or
the transaction lost a race (`faults.classify` decides which)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg

from sync_engine.faults import DatabaseHealth, Fault, classify
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


class EngineContext:
    """One PostgreSQL pool and one NATS connection, shared by every part of the engine."""

    def __init__(
        self,
        settings: EngineSettings,
        pool: asyncpg.Pool,
        bus: Bus,
        clock: Clock,
        health: DatabaseHealth | None = None,
        *,
        seats_enforced: bool = False,
    ) -> None:
        self.settings = settings
        #: Only mailboxes holding a licensing seat count (seats.py); off only for an engine built in-process
        #: without a seat source (tests of everything else).
        self.seats_enforced = seats_enforced
        self.health = health or DatabaseHealth()
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
        seats_at = self.clock.now() if self.seats_enforced else None
        return Workspace(connection, self.settings.configured_users, seats_at)

    async def transaction(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        stop: asyncio.Event | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Run `work` in a transaction, retrying with backoff (`tccal.retry.backoff_delay`) what `faults.classify`
        does not blame on the data:

        * an infrastructure fault (PostgreSQL unreachable, read-only, full) is retried until PostgreSQL takes the
          transaction, `health` reporting the wait, `on_wait` called before each pause (the consumers tell
          JetStream the messages are still in progress, so they stay un-acked and are never dead-lettered);
        * a lost race (deadlock, serialization) is retried the same way.

        The error is raised when it is the data's (`Fault.DATA`), when `stop` is set, or, for a caller without
        `stop` (the API, the scheduler's ticks), after 8 attempts."""
        attempt = 0
        while True:
            attempt += 1
            try:
                if attempt == 1 or on_wait is None:
                    async with self.pool.acquire() as connection, connection.transaction():
                        result = await work(connection)
                else:  # a retry may hang longer than JetStream's ack wait (a connect timing out): keep telling it
                    async with (
                        _in_progress_meanwhile(on_wait),
                        self.pool.acquire() as connection,
                        connection.transaction(),
                    ):
                        result = await work(connection)
            except Exception as exc:
                fault = classify(exc)
                if fault is Fault.DATA:
                    raise
                if fault is Fault.INFRASTRUCTURE:
                    self.health.failed(exc, fault)
                if stop is not None and stop.is_set():
                    raise
                if stop is None and attempt >= 8:
                    raise
                delay = backoff_delay(attempt, base=0.1, cap=5.0)
                if fault is Fault.RACE:
                    log.warning("transaction lost a race, retrying", extra={"attempt": attempt, "error": repr(exc)})
                if on_wait is not None:
                    try:
                        await on_wait()
                    except Exception as wait_error:  # NATS away too: the message is redelivered, never lost
                        log.debug("could not extend the messages' ack wait", extra={"error": repr(wait_error)})
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                continue
            self.health.succeeded()
            return result


#: While a retry runs, the messages' ack wait (30 s) is extended this often.
IN_PROGRESS_EVERY = 10.0


@contextlib.asynccontextmanager
async def _in_progress_meanwhile(on_wait: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    async def keep() -> None:
        while True:
            await asyncio.sleep(IN_PROGRESS_EVERY)
            try:
                await on_wait()
            except Exception as error:  # NATS away too: the message is redelivered, never lost
                log.debug("could not extend the messages' ack wait", extra={"error": repr(error)})

    keeper = asyncio.create_task(keep())
    try:
        yield
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper

"""Everything one engine process runs, over a connected pool and bus: the two consumers, the outbox relay,
the launch scheduler (with series re-pointing), the daily window roll and the seats (`SyncEngine`); and its
start inside a tccal ServiceApp: wait for PostgreSQL and NATS, migrate, then run (`SyncEngineService`).

`__main__` builds one SyncEngineService; tests build a SyncEngine directly around a pool and a Bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from sync_engine.api import SyncApi
from sync_engine.bus import CalendarTurns, consume_calendar_leading, consume_results
from sync_engine.engine import Engine
from sync_engine.faults import DatabaseHealth, Fault, classify
from sync_engine.migrate import migrate
from sync_engine.relay import Relay
from sync_engine.seats import POLL_SECONDS, SeatKeeper, SeatSource
from sync_engine.settings import EngineSettings
from tccal.bus import Bus
from tccal.clock import Clock
from tccal.db import Database

log = logging.getLogger(__name__)


class SyncEngine:
    """The engine's components; `run(stop)` runs them until `stop` is set.

    With `seats` (always, in the service process) only mailboxes holding a licensing seat count (seats.py), and
    nothing is decided before licensing has answered once; without it (an engine built in-process by tests of
    everything else) every mailbox counts as seated."""

    def __init__(
        self,
        settings: EngineSettings,
        pool: asyncpg.Pool,
        bus: Bus,
        clock: Clock,
        *,
        seats: SeatSource | None = None,
        seat_poll: float = POLL_SECONDS,
        tick: float = 0.5,
        roll_check: float = 5.0,
        health: DatabaseHealth | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.bus = bus
        self.clock = clock
        self.health = health or DatabaseHealth()
        self.engine = Engine(settings, pool, bus, clock, self.health, seats_enforced=seats is not None)
        self.seats = SeatKeeper(self.engine.context, seats) if seats is not None else None
        self.seat_poll = seat_poll
        self.relay = Relay(pool, bus, clock, health=self.health)
        self.calendar_turns = CalendarTurns()
        self.tick = tick
        self.roll_check = roll_check

    async def migrate(self) -> None:
        async with self.pool.acquire() as connection:
            await migrate(connection)

    def loops(self) -> list[Callable[[asyncio.Event], Awaitable[None]]]:
        """The loops that decide (they wait for the first seat answer), then those that do not."""
        return [self.run_calendar, self.run_results, self.run_scheduler, self.run_roll, self.relay.run]

    async def run(self, stop: asyncio.Event) -> None:
        if self.seats is None:
            await asyncio.gather(*(loop(stop) for loop in self.loops()))
            return
        deciding, rest = self.loops()[:4], self.loops()[4:]

        async def decide_once_seats_are_known() -> None:
            if await self._seats_known(stop):
                await asyncio.gather(*(loop(stop) for loop in deciding))

        try:
            await asyncio.gather(self.run_seats(stop), decide_once_seats_are_known(), *(loop(stop) for loop in rest))
        finally:
            await self.seats.source.close()

    async def _seats_known(self, stop: asyncio.Event) -> bool:
        """Wait until licensing has answered once (ever); False if stopped first."""
        assert self.seats is not None
        waiting_logged = False
        while not stop.is_set():
            try:
                answered = await self.seats.answered()
                # the read went through: a wait this task began on PostgreSQL is over (this task goes on to run
                # the deciding loops, so left waiting it would hold "postgres-writes" down for good)
                self.health.succeeded()
                if answered:
                    return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc, "reading the seat state failed")
            if not waiting_logged:
                waiting_logged = True
                log.warning("waiting for licensing's first ListSeats answer before deciding anything")
            await _pause(stop, min(self.seat_poll, 1.0))
        return False

    async def run_seats(self, stop: asyncio.Event) -> None:
        """Ask licensing for the seats and bring the shown state in line, every `seat_poll` seconds."""
        assert self.seats is not None
        while not stop.is_set():
            try:
                await self.seats.round()
                self.health.succeeded()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc, "seat round failed")
            await _pause(stop, self.seat_poll)

    async def run_calendar(self, stop: asyncio.Event) -> None:
        """Consume calendar changes while this engine leads their consumption (bus.py: one engine at a time)."""
        await _forever(
            stop,
            "calendar consumer",
            lambda: consume_calendar_leading(self.engine, self.bus, self.pool, stop, self.calendar_turns),
        )

    async def run_results(self, stop: asyncio.Event) -> None:
        await _forever(stop, "results consumer", lambda: consume_results(self.engine, self.bus, stop))

    async def run_scheduler(self, stop: asyncio.Event) -> None:
        """Launch due occurrences and re-point series conferences; the app clock says what is due, and it is
        looked at every `tick` seconds of real time (so a test's FakeClock drives it)."""
        while not stop.is_set():
            try:
                while await self.engine.launch_due() and not stop.is_set():
                    pass
                await self.engine.repoint_series()
                self.health.succeeded()  # a tick that failed on PostgreSQL before went through now
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc, "launch scheduler tick failed")
            await _pause(stop, self.tick)

    async def run_roll(self, stop: asyncio.Event) -> None:
        """Re-expand every meeting when the cache window moves (checked every `roll_check` seconds)."""
        while not stop.is_set():
            try:
                await self.engine.roll_window()
                self.health.succeeded()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc, "cache window roll failed")
            await _pause(stop, self.roll_check)

    def _failed(self, exc: Exception, what: str) -> None:
        """A loop's tick failed: PostgreSQL's trouble is reported by `health` (once per interval, not per tick);
        anything else is logged with its stack."""
        if classify(exc) is Fault.INFRASTRUCTURE:
            self.health.failed(exc)
        else:
            log.exception(what)


class SyncEngineService:
    """The engine in a service process: readiness "schema" fails until the migrations are applied; `run(stop)`
    waits until NATS and PostgreSQL are connected, migrates, hands the engine to the API and runs it."""

    def __init__(
        self, settings: EngineSettings, database: Database, bus: Bus, clock: Clock, api: SyncApi, seats: SeatSource
    ) -> None:
        self.settings = settings
        self.seats = seats
        self.database = database
        self.bus = bus
        self.clock = clock
        self.api = api
        self.migrated = asyncio.Event()
        #: Readiness "postgres-writes": red while PostgreSQL cannot take the engine's writes (faults.py).
        self.health = DatabaseHealth()

    async def schema_ready(self) -> None:
        if not self.migrated.is_set():
            raise ConnectionError("schema migrations not applied yet")

    async def run(self, stop: asyncio.Event) -> None:
        while not self.bus.connected or not _connected(self.database):
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        engine = SyncEngine(
            self.settings, self.database.pool, self.bus, self.clock, seats=self.seats, health=self.health
        )
        await engine.migrate()
        # Everything built so far (modules, config, clients) lives as long as the process: kept out of the cyclic
        # collector, whose full passes otherwise re-scan it while batches allocate (a quarter of a batch's CPU).
        gc.freeze()
        # A batch allocates tens of thousands of short-lived objects, freed by reference counting: a young
        # collection every 100,000 allocations instead of every 700 (cyclic garbage waits a few MB longer).
        gc.set_threshold(100_000, 50, 100)
        self.migrated.set()
        self.api.engine = engine.engine
        await engine.run(stop)


def _connected(database: Database) -> bool:
    try:
        getattr(database, "pool")  # noqa: B009 - raises until the pool exists
    except ConnectionError:
        return False
    return True


async def _forever(stop: asyncio.Event, name: str, run: Callable[[], Awaitable[None]]) -> None:
    while not stop.is_set():
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; restarting", name)
            await _pause(stop, 1.0)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)

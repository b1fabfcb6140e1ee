"""Work only one engine may do at a time, on a real PostgreSQL: the calendar consumer's leadership (leadership.py)
and the seat answers several replicas store (seats.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
from sync_engine_testkit import ANNA, T0, Harness

from sync_engine.context import EngineContext
from sync_engine.leadership import lead
from sync_engine.migrate import migrate
from sync_engine.seats import SeatKeeper
from sync_engine.settings import EngineSettings
from tccal.clock import FakeClock
from tccal_sandbox.testing import wait_for_async

KEY = 0x7463746573746C64


@contextlib.asynccontextmanager
async def engine_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    try:
        yield pool
    finally:
        await pool.close()


class Contender:
    """One engine asking to lead: `running` while its work runs."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.stop = asyncio.Event()
        self.running = False
        self.runs = 0
        self.task: asyncio.Task[None] | None = None

    async def work(self, until: asyncio.Event) -> None:
        self.running = True
        self.runs += 1
        try:
            await until.wait()
        finally:
            self.running = False

    async def run(self) -> None:
        """Ask again whenever the leadership ended, as the engine's loops do (runtime._forever)."""
        while not self.stop.is_set():
            await lead(self.pool, KEY, "test work", self.stop, self.work, retry=0.1, check=0.1)

    def start(self) -> Contender:
        self.task = asyncio.create_task(self.run())
        return self

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)


async def test_one_engine_leads_and_another_takes_over_when_its_session_is_cut(pg_dsn: str) -> None:
    async with engine_pool(pg_dsn) as first_pool, engine_pool(pg_dsn) as second_pool, engine_pool(pg_dsn) as admin:
        first = Contender(first_pool).start()
        await wait_for_async(lambda: first.running, what="the first engine leading")
        second = Contender(second_pool).start()
        await asyncio.sleep(0.5)  # five tries of the second
        assert first.running and not second.running

        # PostgreSQL ends the leader's session (a failover, a network cut): the lock is gone, so is the leadership
        holder = await admin.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
            " AND classid::bigint = $1 AND objid::bigint = $2",
            KEY >> 32,
            KEY & 0xFFFF_FFFF,
        )
        assert holder is not None
        await admin.execute("SELECT pg_terminate_backend($1)", holder)
        await wait_for_async(lambda: second.running or first.runs > 1, what="another leadership")
        await wait_for_async(lambda: not (first.running and second.running), what="one leader")
        assert [first.running, second.running].count(True) == 1

        # a leader that stops hands over at once
        leader, other = (first, second) if first.running else (second, first)
        await leader.close()
        await wait_for_async(lambda: other.running, what="the other engine leading")
        await other.close()
        assert not other.running


async def test_a_seat_answer_asked_before_the_stored_one_is_not_stored_over_it(pg_dsn: str, harness: Harness) -> None:
    """Two replicas ask licensing; the one that asked first gets its answer last (ANNA still seated then): that
    answer must not bring back the seat the later answer already took away."""

    class Answer:
        def __init__(self, seats: dict[str, timedelta], hold: bool) -> None:
            self.seats = seats
            self.released = asyncio.Event()
            if not hold:
                self.released.set()
            self.asked = asyncio.Event()

        async def leases(self) -> dict[str, timedelta]:
            self.asked.set()
            await self.released.wait()
            return self.seats

        async def close(self) -> None:
            return None

    settings = EngineSettings.from_config(harness.config())
    async with engine_pool(pg_dsn) as pool:
        async with pool.acquire() as connection:
            await migrate(connection)
        earlier = FakeClock(T0)
        later = FakeClock(T0 + timedelta(seconds=1))
        slow = Answer({ANNA: timedelta(hours=1)}, hold=True)
        first = SeatKeeper(EngineContext(settings, pool, harness.bus, earlier, seats_enforced=True), slow)
        second = SeatKeeper(
            EngineContext(settings, pool, harness.bus, later, seats_enforced=True), Answer({}, hold=False)
        )
        pending = asyncio.create_task(first.refresh())
        await slow.asked.wait()
        assert await second.refresh()  # asked later, stored first: no seat for ANNA
        slow.released.set()
        assert await pending  # answered, but older than what is stored
        lease = await pool.fetchval("SELECT lease_until FROM seats WHERE mailbox = $1", ANNA)
        assert lease is None or lease <= T0 + timedelta(seconds=1), lease
        stored = await pool.fetchval("SELECT value FROM engine_state WHERE key = 'seats_asked_at'")
        assert stored == later.now().isoformat()

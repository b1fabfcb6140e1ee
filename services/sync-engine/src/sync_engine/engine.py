"""The sync-engine's transactions (and the API's reads), one object for the consumers, the scheduler loops and
the API. Each transaction is one PostgreSQL transaction whose decisions go to the outbox in that same transaction
(the relay publishes them); each lives in the module of its responsibility:

| part | module | does |
|---|---|---|
| `changes` | `changes` | apply a batch of calendar changes (mailbox-set lock, mailbox adds, item writes, reconcile) |
| `results` | `results` | apply a command result (ok, retry with backoff, superseded, failed; a confirmed create) |
| `scheduler` | `scheduler` | launch due conferences; re-point series conferences (`recompute`) |
| `roll` | `roll` | the daily cache window roll (`recompute` of every meeting) |
| `resync` | `resync` | clear a mailbox for a resync and ask ews-ingest for its items |
| `queries` | `queries` | the reads SyncService answers from (no transaction of the engine's own) |

All share one `context.EngineContext` (settings, pool, bus, clock, tracer, the retrying transaction runner).

Locking (no cycles): a batch of changes takes the mailbox-set lock (exclusive if it adds mailboxes, else shared),
locks its mailbox rows, then its item rows, then the meetings it touches (advisory locks, sorted), and allocates
per-user seqs last (users sorted). Results lock their outbox row, then the
meeting. The scheduler takes due launch rows with FOR UPDATE SKIP LOCKED and only *tries* the meeting lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

import asyncpg

from sync_engine.changes import ChangeApplier
from sync_engine.context import EngineContext
from sync_engine.faults import DatabaseHealth
from sync_engine.queries import ReadQueries
from sync_engine.results import ResultApplier
from sync_engine.resync import MailboxResync
from sync_engine.roll import WindowRoll
from sync_engine.scheduler import LaunchScheduler
from sync_engine.settings import EngineSettings
from tccal.bus import Bus
from tccal.clock import Clock
from trueconf.calendar.v1 import calendar_pb2, commands_pb2


class Engine:
    """The decisions of the sync-engine, over one PostgreSQL pool and one NATS connection."""

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
        self.context = EngineContext(settings, pool, bus, clock, health, seats_enforced=seats_enforced)
        self.health = self.context.health
        self.settings = settings
        self.pool = pool
        self.bus = bus
        self.clock = clock
        self.changes = ChangeApplier(self.context)
        self.results = ResultApplier(self.context)
        self.scheduler = LaunchScheduler(self.context)
        self.roll = WindowRoll(self.context)
        self.resync = MailboxResync(self.context)
        self.queries = ReadQueries(pool)

    async def apply_change(
        self,
        change: calendar_pb2.CalendarChange,
        headers: Mapping[str, str] | None = None,
        *,
        stop: asyncio.Event | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Apply one change; True if it changed the state, False if it was stale (or malformed, and logged)."""
        return await self.changes.apply_change(change, headers, stop=stop, on_wait=on_wait)

    async def apply_changes(
        self,
        changes: Sequence[tuple[calendar_pb2.CalendarChange, Mapping[str, str] | None]],
        *,
        stop: asyncio.Event | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> list[bool]:
        """Apply changes in stream order in one transaction (see ChangeApplier.apply_changes)."""
        return await self.changes.apply_changes(changes, stop=stop, on_wait=on_wait)

    async def apply_result(
        self,
        result: commands_pb2.TcsCommandResult,
        headers: Mapping[str, str] | None = None,
        *,
        stop: asyncio.Event | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        await self.results.apply_result(result, headers, stop=stop, on_wait=on_wait)

    async def launch_due(self) -> int:
        """Launch every due occurrence (at most 100 per call); returns how many rows it settled."""
        return await self.scheduler.launch_due()

    async def repoint_series(self) -> int:
        """Point series conferences whose scheduled occurrence has passed at their next occurrence."""
        return await self.scheduler.repoint_series()

    async def roll_window(self) -> bool:
        """Re-expand every meeting when the cache window moved; True if it ran."""
        return await self.roll.roll_window()

    async def resync_mailbox(self, mailbox: str) -> None:
        """Ask ews-ingest to read the mailbox again whole, as a snapshot (see MailboxResync)."""
        await self.resync.resync_mailbox(mailbox)

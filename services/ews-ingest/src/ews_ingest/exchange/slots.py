"""Which EWS call takes a free connection first.

A credential's `maxConcurrency` connections are handed out by `RankedSlots`: a waiting call of a live change (a
notification's sync of a mailbox already synced, `LIVE`) takes the next free connection before any waiting call of
bulk work (first syncs, catch-ups, safety syncs, subscriptions: `ORDINARY`), first come first served within a rank.
The number of calls on the wire never exceeds the slots, so Exchange's EWSMaxConcurrency budget is kept; only the
order of the queue in front of it changes. Bulk work cannot starve: live calls exist only while changes happen.

The rank of a call is taken from the context (`call_rank`), set by the scheduler for the whole sync of a live
change, so the call sites in between (mailbox_sync, the pool) need not pass it along.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools

#: A live single-item change of a mailbox already synced.
LIVE = 0
#: Everything else: whole-mailbox syncs, catch-ups, safety syncs and polls, subscriptions, on-demand probes.
ORDINARY = 1
call_rank: contextvars.ContextVar[int] = contextvars.ContextVar("ews_call_rank", default=ORDINARY)


class RankedSlots:
    """`size` slots; waiters are served lowest rank first, in arrival order within a rank."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"RankedSlots size {size} must be at least 1")
        self._free = size
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    def locked(self) -> bool:
        """No slot is free: the next caller waits."""
        return self._free == 0

    async def acquire(self, rank: int) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (rank, next(self._arrivals), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():  # a cancelled waiter left its entry behind
                waiter.set_result(None)
                return
        self._free += 1

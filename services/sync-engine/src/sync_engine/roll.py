"""The daily window roll: when the cache window moves (a new day, or new cache settings), every meeting is
re-expanded so that occurrences entering the window are pushed and those leaving it are removed; settled launches
and outbox rows older than the window are deleted. One engine at a time (a session advisory lock), and the
window is looked at again under the lock, so two engines never roll the same window."""

from __future__ import annotations

import logging

from sync_engine.calendar_history import prune_outbox
from sync_engine.context import EngineContext
from sync_engine.recompute import recompute_meeting
from sync_engine.window import window_key

log = logging.getLogger(__name__)

ROLL_LOCK_KEY = int.from_bytes(b"tcsyncrl", "big") & 0x7FFF_FFFF_FFFF_FFFF


class WindowRoll:
    """Moves the engine's state to the current cache window (runtime.SyncEngine.run_roll checks it)."""

    def __init__(self, context: EngineContext) -> None:
        self.context = context

    async def roll_window(self) -> bool:
        """When the cache window moved (a new day, or new cache settings), re-expand every meeting so that
        occurrences entering the window are pushed and those leaving it are removed. True if it ran."""
        moment = self.context.moment()
        key = window_key(moment.window)
        async with self.context.pool.acquire() as connection:
            stored = await connection.fetchval("SELECT value FROM engine_state WHERE key = 'cache_window'")
            if stored == key:
                return False
            if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", ROLL_LOCK_KEY):
                return False
            try:
                # another engine may have rolled while this one waited for the lock: look again under it
                if await connection.fetchval("SELECT value FROM engine_state WHERE key = 'cache_window'") == key:
                    return False
                log.info("cache window moved; re-expanding meetings", extra={"window": key, "was": stored})
                meetings = [
                    str(r["meeting_id"])
                    for r in await connection.fetch("SELECT meeting_id FROM meetings ORDER BY meeting_id")
                ]
                for meeting in meetings:
                    await recompute_meeting(self.context, meeting)
                await connection.execute(
                    "DELETE FROM launches WHERE end_at < $1 AND state <> 'planned'", moment.window.start
                )
                await prune_outbox(connection, moment.window.start)
                await connection.execute(
                    "INSERT INTO engine_state (key, value) VALUES ('cache_window', $1)"
                    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    key,
                )
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", ROLL_LOCK_KEY)
        return True

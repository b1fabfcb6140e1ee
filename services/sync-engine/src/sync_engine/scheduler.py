"""The launch scheduler's transactions: launch due occurrences (launchConference) and re-point series conferences
at their next occurrence.

Locking: due launch rows are taken with FOR UPDATE SKIP LOCKED, and the meeting lock is only *tried* (a meeting
being re-planned right now is looked at again on the next tick), so two engines never launch an occurrence twice
and the scheduler never waits behind a batch of changes.
"""

from __future__ import annotations

import logging

import asyncpg

from sync_engine.context import EngineContext
from sync_engine.metrics import METRICS
from sync_engine.outbox import Cause, run_target
from sync_engine.recompute import recompute_meeting
from sync_engine.reconcile import next_conference_command, run_command, try_lock_meeting

log = logging.getLogger(__name__)


class LaunchScheduler:
    """Due launches and series re-pointing, looked at on every scheduler tick (runtime.SyncEngine.run_scheduler)."""

    def __init__(self, context: EngineContext) -> None:
        self.context = context

    async def launch_due(self) -> int:
        """Launch every due occurrence (at most 100 per call); returns how many rows it settled."""
        return await self.context.transaction(self._launch_due)

    async def _launch_due(self, connection: asyncpg.Connection) -> int:
        now = self.context.clock.now()
        # Due rows whose conference exists (or that are over): one still waiting for its conference must not
        # hold back the others. A `missed` row that the clock now says is still on was marked under a wall clock
        # that ran ahead (a bad NTP step, a wrong manual setting) and is due again: a jump of the clock never
        # cancels a launch for good.
        rows = await connection.fetch(
            "SELECT l.occurrence_id, l.meeting_id, l.start_at, l.end_at FROM launches l"
            " LEFT JOIN conferences c ON c.meeting_id = l.meeting_id"
            " WHERE l.start_at <= $1 AND ("
            "  (l.state = 'planned' AND (l.end_at <= $1 OR (c.state = 'created' AND c.conference_id <> '')))"
            "  OR (l.state = 'missed' AND l.end_at > $1 AND c.state = 'created' AND c.conference_id <> ''))"
            " ORDER BY l.start_at, l.occurrence_id LIMIT 100 FOR UPDATE OF l SKIP LOCKED",
            now,
        )
        settled = 0
        batch = self.context.batch(Cause(created_at=now))
        for row in rows:
            occurrence = str(row["occurrence_id"])
            meeting = str(row["meeting_id"])
            if row["end_at"] <= now:
                await connection.execute("UPDATE launches SET state = 'missed' WHERE occurrence_id = $1", occurrence)
                METRICS.launches.add(1, {"outcome": "missed"})
                log.warning("occurrence finished before it could be launched", extra={"occurrence_id": occurrence})
                settled += 1
                continue
            if not await try_lock_meeting(connection, meeting):
                continue  # being re-planned right now; looked at again on the next tick
            conference = await connection.fetchrow(
                "SELECT server_id, state, conference_id, run_invitations FROM conferences WHERE meeting_id = $1",
                meeting,
            )
            if conference is None or conference["state"] != "created" or not conference["conference_id"]:
                continue  # no conference yet: launched as soon as it exists, while the occurrence is on
            counter = await next_conference_command(connection, meeting)
            server = str(conference["server_id"])
            command = run_command(
                meeting,
                str(conference["conference_id"]),
                row["start_at"],
                bytes(conference["run_invitations"]) if conference["run_invitations"] is not None else None,
                self.context.settings.temporal_conf_participants_mode,
            )
            batch.conference("conference_run", server, meeting, counter, command, target=run_target(occurrence))
            await connection.execute(
                "UPDATE launches SET state = 'launched', launched_at = $2, command_id = $3 WHERE occurrence_id = $1",
                occurrence,
                now,
                f"{server}/conference/{meeting}/{counter}",
            )
            await connection.execute("UPDATE conferences SET last_launch = $2 WHERE meeting_id = $1", meeting, now)
            METRICS.launches.add(1, {"outcome": "launched"})
            log.info("conference launched", extra={"occurrence_id": occurrence, "meeting_id": meeting})
            settled += 1
        await batch.flush(connection)
        return settled

    async def repoint_series(self) -> int:
        """Point series conferences whose scheduled occurrence has passed at their next occurrence."""
        now = self.context.clock.now()
        async with self.context.pool.acquire() as connection:
            rows = await connection.fetch(
                "SELECT meeting_id FROM conferences WHERE repoint_at <= $1 AND state IN ('created', 'pending')"
                " ORDER BY meeting_id LIMIT 100",
                now,
            )
        for row in rows:
            await recompute_meeting(self.context, str(row["meeting_id"]), clear_repoint_before=now)
        return len(rows)

"""One meeting recomputed in its own transaction: used when time, not a change, moves it (series re-pointing,
the window roll)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from sync_engine.context import EngineContext
from sync_engine.outbox import Cause
from sync_engine.reconcile import lock_meetings, reconcile_meeting


async def recompute_meeting(
    context: EngineContext, meeting: str, *, clear_repoint_before: datetime | None = None
) -> None:
    """Recompute one meeting in its own transaction (window roll, re-pointing)."""

    async def work(connection: asyncpg.Connection) -> None:
        await lock_meetings(connection, [meeting])
        workspace = context.workspace(connection)
        await workspace.load([meeting])
        moment = context.moment()
        batch = context.batch(Cause(created_at=moment.now))
        await reconcile_meeting(workspace, context.settings, meeting, batch, moment)
        rows = workspace.meetings.get(meeting)
        conference = rows.conference if rows is not None else None
        if (
            rows is not None
            and conference is not None
            and clear_repoint_before is not None
            and conference.repoint_at is not None
            and conference.repoint_at <= clear_repoint_before
        ):
            conference.repoint_at = None
            workspace.conference_changed(rows)
        await batch.flush(connection, workspace.take_writes())

    await context.transaction(work)

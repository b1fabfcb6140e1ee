"""What changed in a user's calendar since a push seq, for incremental lists (SyncService.ListEvents `incremental`,
docs/bridge-protocol.md §6.2 "Changes since a sequence").

Every push for a user has a seq of its own (consecutive per user, `user_seq`). A `shown` row carries the seq of the
push that last changed it, so the occurrences changed since seq S are the user's rows with a seq above S. What was
removed since S is in the outbox: every calendar_delete command (target `calendar:<user>:<occurrence id>`, the seq
in its payload). The daily roll prunes settled outbox rows older than the cache window; `prune_outbox` records per
user the highest seq of a pruned calendar_delete (`calendar_history_floor`), so that a since-seq below it is
answered with the whole list rather than a list of changes missing a removal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from trueconf.calendar.v1 import calendar_pb2, commands_pb2

#: Settled rows older than the window go; per user, the highest seq among the pruned calendar_delete rows is kept.
#: A first attempt's seq is in its chain id (`<server>/calendar/<user>/<seq>`); a retry got a later seq that only
#: its payload holds, so a pruned retry raises the floor to the user's current seq (retries are rare).
PRUNE_OUTBOX = """
WITH gone AS (
    DELETE FROM outbox WHERE status IN ('ok', 'recovered', 'superseded', 'retried') AND created_at < $1
    RETURNING kind, chain_id, attempt
), removals AS (
    SELECT m[1] AS user_email, max(m[2]::bigint) AS seq, bool_or(attempt > 1) AS retried
    FROM gone, regexp_match(chain_id, '^[^/]*/calendar/(.*)/([0-9]+)$') AS m
    WHERE kind = 'calendar_delete' AND m IS NOT NULL
    GROUP BY m[1]
)
INSERT INTO calendar_history_floor (user_email, seq)
SELECT r.user_email, CASE WHEN r.retried THEN greatest(r.seq, coalesce(u.seq, 0)) ELSE r.seq END
FROM removals r LEFT JOIN user_seq u USING (user_email)
ON CONFLICT (user_email) DO UPDATE SET seq = greatest(calendar_history_floor.seq, EXCLUDED.seq)
"""

#: The user's calendar_delete commands (one row per TrueConf Server and attempt) after a seq, found by target
#: prefix; a first attempt's seq is read from its command id, a retry's (rare) from its payload by the caller.
_REMOVALS = (
    "SELECT payload FROM outbox WHERE kind = 'calendar_delete' AND target ~>=~ $1 AND target ~<~ $2"
    " AND (attempt > 1 OR substring(command_id from '/([0-9]+)$')::bigint > $3)"
)
_CHANGED = (
    "SELECT occurrence_id, occurrence,"
    " ((start_at < $4 AND end_at > $3) OR (start_at = end_at AND start_at >= $3 AND start_at < $4)) AS inside"
    " FROM shown WHERE user_email = $1 AND seq > $2 ORDER BY start_at, occurrence_id"
)


async def prune_outbox(connection: asyncpg.Connection, before: datetime) -> None:
    """Delete settled outbox rows created before `before`, remembering how far each user's removals are known."""
    await connection.execute(PRUNE_OUTBOX, before)


async def history_floor(connection: asyncpg.Connection, user: str) -> int:
    """The lowest since-seq whose changes are all known for `user` (0: all of them)."""
    return int(await connection.fetchval("SELECT seq FROM calendar_history_floor WHERE user_email = $1", user) or 0)


@dataclass
class Changes:
    """The changes of a user's calendar in a window since a seq: occurrences to store (by start) and ids to remove."""

    changed: list[calendar_pb2.Occurrence] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _prefix_range(user: str) -> tuple[str, str]:
    """The byte-wise range of targets `calendar:<user>:…` (':' is followed by ';')."""
    return f"calendar:{user}:", f"calendar:{user};"


async def changes_since(
    connection: asyncpg.Connection, user: str, since_seq: int, start: datetime, end: datetime
) -> Changes:
    """What changed for `user` in `[start, end)` after `since_seq` (the caller checked the history floor)."""
    changes = Changes()
    removed: set[str] = set()
    kept: set[str] = set()
    for row in await connection.fetch(_CHANGED, user, since_seq, start, end):
        if row["inside"]:
            changes.changed.append(calendar_pb2.Occurrence.FromString(bytes(row["occurrence"])))
            kept.add(str(row["occurrence_id"]))
        else:  # moved out of the window since: TCS drops its copy from the window
            removed.add(str(row["occurrence_id"]))
    low, high = _prefix_range(user)
    for row in await connection.fetch(_REMOVALS, low, high, since_seq):
        command = commands_pb2.TcsCommand.FromString(bytes(row["payload"]))
        delete = command.calendar_delete
        if delete.user == user and delete.seq > since_seq and delete.occurrence_id not in kept:
            removed.add(delete.occurrence_id)
    changes.removed = sorted(removed)
    return changes

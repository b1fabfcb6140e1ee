"""The reads SyncService answers from: what a user's TrueConf calendar shows, a meeting, the conferences, the
commands. Each returns the sync.proto response; validating the request is the API's job."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from sync_engine.calendar_history import changes_since, history_floor
from sync_engine.ids import set_timestamp
from trueconf.calendar.v1 import calendar_pb2, commands_pb2, sync_pb2

_CONFERENCE_STATES = {
    "pending": sync_pb2.CONFERENCE_STATE_PENDING,
    "created": sync_pb2.CONFERENCE_STATE_CREATED,
    "deleted": sync_pb2.CONFERENCE_STATE_DELETED,
    "failed": sync_pb2.CONFERENCE_STATE_FAILED,
}


class ReadQueries:
    """Read-only queries over the engine's pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def list_events(
        self, user: str, start: datetime, end: datetime, since_seq: int = 0, *, incremental: bool = False
    ) -> sync_pb2.ListEventsResponse:
        """The occurrences `user`'s calendar shows between `start` and `end`, and the seq the list is current at;
        with `since_seq` (the caller holds the list as of that seq) and the user's seq not above it, only
        `unchanged` and the seq. With `incremental` too, and the history reaching back to `since_seq`, only what
        changed since (calendar_history.py); when it does not, the whole list with `history_from`."""
        async with self.pool.acquire() as connection, connection.transaction(isolation="repeatable_read"):
            # one snapshot: the list and the seq it is current at (a push with a higher seq is newer than it)
            seq = int(await connection.fetchval("SELECT seq FROM user_seq WHERE user_email = $1", user) or 0)
            if since_seq and seq <= since_seq:
                return sync_pb2.ListEventsResponse(seq=seq, unchanged=True)
            floor = await history_floor(connection, user) if since_seq and incremental else 0
            if since_seq and incremental and since_seq >= floor:
                changes = await changes_since(connection, user, since_seq, start, end)
                response = sync_pb2.ListEventsResponse(seq=seq, incremental=True, removed=changes.removed)
                response.occurrences.extend(changes.changed)
                return response
            rows = await connection.fetch(
                "SELECT occurrence FROM shown WHERE user_email = $1"
                " AND ((start_at < $3 AND end_at > $2) OR (start_at = end_at AND start_at >= $2 AND start_at < $3))"
                " ORDER BY start_at, occurrence_id",
                user,
                start,
                end,
            )
        response = sync_pb2.ListEventsResponse(seq=seq, history_from=floor)
        for row in rows:
            response.occurrences.append(calendar_pb2.Occurrence.FromString(bytes(row["occurrence"])))
        return response

    async def get_meeting(self, meeting: str) -> sync_pb2.Meeting | None:
        """The meeting's snapshot with its occurrences in the window; None if there is no such meeting."""
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow("SELECT snapshot FROM meetings WHERE meeting_id = $1", meeting)
            occurrences = await connection.fetch(
                "SELECT occurrence FROM occurrences WHERE meeting_id = $1 ORDER BY start_at, occurrence_id", meeting
            )
        if row is None or row["snapshot"] is None:
            return None
        result = sync_pb2.Meeting.FromString(bytes(row["snapshot"]))
        for occurrence in occurrences:
            result.occurrences.append(calendar_pb2.Occurrence.FromString(bytes(occurrence["occurrence"])))
        return result

    async def list_conferences(self) -> sync_pb2.ListConferencesResponse:
        async with self.pool.acquire() as connection:
            rows = await connection.fetch(
                "SELECT c.*, (SELECT min(start_at) FROM launches l WHERE l.meeting_id = c.meeting_id"
                " AND l.state = 'planned') AS next_launch FROM conferences c ORDER BY c.meeting_id"
            )
        response = sync_pb2.ListConferencesResponse()
        for row in rows:
            info = response.conferences.add(
                meeting_id=row["meeting_id"],
                server_id=row["server_id"],
                state=_CONFERENCE_STATES.get(str(row["state"]), sync_pb2.CONFERENCE_STATE_UNSPECIFIED),
                topic=row["topic"],
                owner=row["owner"],
                last_error=row["last_error"],
            )
            if row["conference_id"]:
                info.conference.id = row["conference_id"]
                info.conference.url = row["url"]
            if row["next_launch"] is not None:
                set_timestamp(info.next_launch, row["next_launch"])
            if row["last_launch"] is not None:
                set_timestamp(info.last_launch, row["last_launch"])
        return response

    async def list_commands(self, statuses: Sequence[str], limit: int) -> sync_pb2.ListCommandsResponse:
        """Up to `limit` outbox commands in one of `statuses`, oldest first, with the time of their next attempt."""
        async with self.pool.acquire() as connection:
            rows = await connection.fetch(
                "SELECT o.payload, o.status, o.result_status, o.last_error, o.attempt,"
                " (SELECT r.available_at FROM outbox r WHERE r.chain_id = o.chain_id AND r.attempt = o.attempt + 1"
                "  ORDER BY r.id LIMIT 1) AS next_attempt"
                " FROM outbox o WHERE o.status = ANY($1::text[]) ORDER BY o.id LIMIT $2",
                statuses,
                limit,
            )
        response = sync_pb2.ListCommandsResponse()
        for row in rows:
            info = response.commands.add(
                status=commands_pb2.CommandStatus.ValueType(int(row["result_status"])),
                last_error=row["last_error"],
                attempts=int(row["attempt"]),
            )
            info.command.ParseFromString(bytes(row["payload"]))
            if row["next_attempt"] is not None:
                set_timestamp(info.next_attempt, row["next_attempt"])
        return response

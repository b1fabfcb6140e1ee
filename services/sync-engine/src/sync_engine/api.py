"""SyncService (sync.proto): what TrueConf apps show, meetings, conferences, commands; ResyncMailbox (admin)."""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
import grpc
import nats.errors

from sync_engine.engine import Engine
from sync_engine.ids import meeting_id as meeting_id_of
from sync_engine.ids import set_timestamp, to_datetime
from trueconf.calendar.v1 import calendar_pb2, commands_pb2, sync_pb2, sync_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "trueconf.calendar.v1.SyncService"
ADMIN_METHODS = frozenset({f"/{SERVICE_NAME}/ResyncMailbox"})
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_CONFERENCE_STATES = {
    "pending": sync_pb2.CONFERENCE_STATE_PENDING,
    "created": sync_pb2.CONFERENCE_STATE_CREATED,
    "deleted": sync_pb2.CONFERENCE_STATE_DELETED,
    "failed": sync_pb2.CONFERENCE_STATE_FAILED,
}
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Context = grpc.aio.ServicerContext[Any, Any]


class SyncApi(sync_pb2_grpc.SyncServiceServicer):
    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine

    async def _engine(self, context: Context) -> Engine:
        if self.engine is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "sync-engine is starting (PostgreSQL/NATS not ready)")
            raise AssertionError("unreachable")
        return self.engine

    async def ListEvents(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.ListEventsRequest, context: Context
    ) -> sync_pb2.ListEventsResponse:
        engine = await self._engine(context)
        user = request.user.strip().lower()
        if not _EMAIL.fullmatch(user):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"user {request.user!r} is not an e-mail address")
        if not request.HasField("from") or not request.HasField("to"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "from and to are required")
        start = to_datetime(getattr(request, "from"))
        end = to_datetime(request.to)
        if end < start:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"to ({end.isoformat()}) is before from ({start.isoformat()})"
            )
        async with engine.pool.acquire() as connection, connection.transaction(isolation="repeatable_read"):
            # one snapshot: the list and the seq it is current at (a push with a higher seq is newer than it)
            rows = await connection.fetch(
                "SELECT occurrence FROM shown WHERE user_email = $1"
                " AND ((start_at < $3 AND end_at > $2) OR (start_at = end_at AND start_at >= $2 AND start_at < $3))"
                " ORDER BY start_at, occurrence_id",
                user,
                start,
                end,
            )
            seq = await connection.fetchval("SELECT seq FROM user_seq WHERE user_email = $1", user)
        response = sync_pb2.ListEventsResponse(seq=int(seq or 0))
        for row in rows:
            response.occurrences.append(calendar_pb2.Occurrence.FromString(bytes(row["occurrence"])))
        return response

    async def GetMeeting(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.GetMeetingRequest, context: Context
    ) -> sync_pb2.Meeting:
        engine = await self._engine(context)
        key = request.WhichOneof("key")
        if key is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "meeting_id or uid is required")
        meeting = request.meeting_id if key == "meeting_id" else meeting_id_of(request.uid)
        async with engine.pool.acquire() as connection:
            row = await connection.fetchrow("SELECT snapshot FROM meetings WHERE meeting_id = $1", meeting)
            occurrences = await connection.fetch(
                "SELECT occurrence FROM occurrences WHERE meeting_id = $1 ORDER BY start_at, occurrence_id", meeting
            )
        if row is None or row["snapshot"] is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no meeting {getattr(request, key)!r}")
        assert row is not None
        result = sync_pb2.Meeting.FromString(bytes(row["snapshot"]))
        for occurrence in occurrences:
            result.occurrences.append(calendar_pb2.Occurrence.FromString(bytes(occurrence["occurrence"])))
        return result

    async def ListConferences(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.ListConferencesRequest, context: Context
    ) -> sync_pb2.ListConferencesResponse:
        engine = await self._engine(context)
        async with engine.pool.acquire() as connection:
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

    async def ListCommands(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.ListCommandsRequest, context: Context
    ) -> sync_pb2.ListCommandsResponse:
        engine = await self._engine(context)
        if request.limit < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit must not be negative, got {request.limit}")
        limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)
        if request.filter == sync_pb2.COMMAND_FILTER_FAILED:
            statuses = ["retrying", "failed"]
        elif request.filter == sync_pb2.COMMAND_FILTER_PENDING:
            statuses = ["pending", "published"]
        else:
            statuses = ["pending", "published", "retrying", "failed"]
        async with engine.pool.acquire() as connection:
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

    async def ResyncMailbox(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.SyncResyncMailboxRequest, context: Context
    ) -> sync_pb2.SyncResyncMailboxResponse:
        engine = await self._engine(context)
        mailbox = request.mailbox.strip().lower()
        if not _EMAIL.fullmatch(mailbox):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"mailbox {request.mailbox!r} is not an e-mail address"
            )
        try:
            await engine.resync_mailbox(mailbox)
        except (OSError, asyncpg.PostgresError, ConnectionError, RuntimeError, nats.errors.Error) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"resync of {mailbox} could not be requested: {exc}")
        return sync_pb2.SyncResyncMailboxResponse(published=1)

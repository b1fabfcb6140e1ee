"""SyncService (sync.proto): what TrueConf apps show, meetings, conferences, commands; ResyncMailbox,
ListDeadLetters and ReplayDeadLetters (admin). Validates each request and answers it from `queries.ReadQueries`
(reads), `Engine.resync_mailbox` or `deadletters.DeadLetters`."""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
import grpc
import nats.errors

from sync_engine.deadletters import DeadLetter, DeadLetters, UnknownDeadLetterError
from sync_engine.engine import Engine
from sync_engine.ids import meeting_id as meeting_id_of
from sync_engine.ids import to_datetime, to_timestamp
from tccal.grpckit import AccessPolicy
from trueconf.calendar.v1 import sync_pb2, sync_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "trueconf.calendar.v1.SyncService"
#: Who may call what (docs/architecture.md §4.1): nothing is open; tcs-gateway may list a user's events (snapshots,
#: getCalendarList); everything else - meetings, conferences with their links and PINs, commands, resync - is for
#: administrators.
POLICY = AccessPolicy(callers={f"/{SERVICE_NAME}/ListEvents": frozenset({"tcs-gateway"})})
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
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
        return await engine.queries.list_events(
            user, start, end, since_seq=int(request.since_seq), incremental=request.incremental
        )

    async def GetMeeting(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.GetMeetingRequest, context: Context
    ) -> sync_pb2.Meeting:
        engine = await self._engine(context)
        key = request.WhichOneof("key")
        if key is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "meeting_id or uid is required")
        meeting = request.meeting_id if key == "meeting_id" else meeting_id_of(request.uid)
        result = await engine.queries.get_meeting(meeting)
        if result is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no meeting {getattr(request, key)!r}")
        assert result is not None
        return result

    async def ListConferences(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.ListConferencesRequest, context: Context
    ) -> sync_pb2.ListConferencesResponse:
        engine = await self._engine(context)
        return await engine.queries.list_conferences()

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
        return await engine.queries.list_commands(statuses, limit)

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

    async def ListDeadLetters(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.ListDeadLettersRequest, context: Context
    ) -> sync_pb2.ListDeadLettersResponse:
        engine = await self._engine(context)
        if request.limit < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit must not be negative, got {request.limit}")
        try:
            letters, total = await DeadLetters(engine.bus).listing(min(request.limit or DEFAULT_LIMIT, MAX_LIMIT))
        except (OSError, RuntimeError, nats.errors.Error) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"dead letters could not be read from NATS: {exc!r}")
            raise AssertionError("unreachable") from exc
        return sync_pb2.ListDeadLettersResponse(dead_letters=[_dead_letter(one) for one in letters], total=total)

    async def ReplayDeadLetters(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.ReplayDeadLettersRequest, context: Context
    ) -> sync_pb2.ReplayDeadLettersResponse:
        engine = await self._engine(context)
        if request.all and request.ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give ids or all, not both")
        if not request.all and not request.ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give the ids to replay, or all")
        try:
            replayed, failed = await DeadLetters(engine.bus, engine).replay(None if request.all else list(request.ids))
        except UnknownDeadLetterError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise AssertionError("unreachable") from exc
        except (OSError, RuntimeError, nats.errors.Error) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"dead letters could not be replayed: {exc!r}")
            raise AssertionError("unreachable") from exc
        return sync_pb2.ReplayDeadLettersResponse(
            replayed=[_dead_letter(one) for one in replayed], failed=[_dead_letter(one) for one in failed]
        )


def _dead_letter(letter: DeadLetter) -> sync_pb2.DeadLetter:
    message = sync_pb2.DeadLetter(
        id=letter.id,
        stream=letter.stream,
        durable=letter.durable,
        subject=letter.subject,
        mailbox=letter.mailbox,
        reason=letter.reason,
        message_id=letter.message_id,
    )
    if letter.at is not None:
        message.dead_lettered_at.CopyFrom(to_timestamp(letter.at))
    return message

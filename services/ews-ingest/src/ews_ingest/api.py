"""IngestService (gRPC): the mailboxes ews-ingest knows with their state, resync, the connectivity check of a
mailbox (connectivity.py) and the first sync's progress (progress.py); administrators only."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc

from ews_ingest.connectivity import test_mailbox
from ews_ingest.exchange.errors import describe
from ews_ingest.progress import SyncProgressTracker, export_metrics
from ews_ingest.scheduler import Scheduler, UnknownMailboxError
from tccal.grpckit import AccessPolicy
from trueconf.calendar.v1 import ingest_pb2, ingest_pb2_grpc

SERVICE_NAME = "trueconf.calendar.v1.IngestService"
#: Who may call what (docs/architecture.md §4.1): nothing is open, no other service calls IngestService - every
#: method is for administrators (mailboxes, their errors, resync).
POLICY = AccessPolicy()


class IngestApi(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, scheduler: Scheduler, *, metrics: bool = True) -> None:
        self.scheduler = scheduler
        self.progress = SyncProgressTracker(scheduler)
        if metrics:
            export_metrics(self.progress)

    async def ListMailboxes(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.ListMailboxesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.ListMailboxesResponse:
        text = request.filter.strip().lower()
        entries = sorted(self.scheduler.entries.values(), key=lambda e: (e.provider, e.mailbox))
        return ingest_pb2.ListMailboxesResponse(
            mailboxes=[e.status() for e in entries if not text or text in e.mailbox]
        )

    async def ResyncMailbox(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.ResyncMailboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.ResyncMailboxResponse:
        mailbox = request.mailbox.strip().lower()
        if not mailbox:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "mailbox is empty: name the mailbox to resync")
        since = request.since.ToDatetime(tzinfo=dt.UTC) if request.HasField("since") else None
        try:
            published = await self.scheduler.resync(mailbox, since)
        except UnknownMailboxError:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"mailbox {mailbox!r} is not synced by ews-ingest (see ListMailboxes)"
            )
        except PermissionError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Exception as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"resync of {mailbox} failed: {describe(exc)}")
        return ingest_pb2.ResyncMailboxResponse(published=published)

    async def TestMailbox(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.TestMailboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.TestMailboxResponse:
        mailbox = request.mailbox.strip().lower()
        if "@" not in mailbox:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"mailbox {request.mailbox!r} is not an address (user@domain)"
            )
        try:
            return await test_mailbox(self.scheduler, mailbox)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        raise AssertionError("unreachable")

    async def GetSyncProgress(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.GetSyncProgressRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.SyncProgress:
        return self.progress.snapshot()

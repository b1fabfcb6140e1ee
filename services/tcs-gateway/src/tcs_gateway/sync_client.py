"""The sync-engine's SyncService.ListEvents, reached over gRPC: the bridge's `CalendarSource`
(bridge/ports.py), also used by the command consumer.

ListEvents answers the user's occurrences in `[from, to)` and `seq`, the user's latest push number when the list
was read; bridge/payloads.py makes snapshots and getCalendarList answers of it. With `since_seq` (a getCalendarList
with `sinceSeq`) it answers only `unchanged` when the user's seq is not above it, and with `incremental` only the
changes since it when the engine still knows them all.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tccal.grpckit import GrpcCaller
from tcs_gateway.bridge.ports import SyncUnavailableError, UserList
from trueconf.calendar.v1 import sync_pb2, sync_pb2_grpc

#: Largest ListEvents answer taken. A user's whole cache window comes in one answer (~500 bytes an occurrence),
#: and gRPC's default of 4 MiB refused every list of a user with more than ~8,000 occurrences in the window
#: (RESOURCE_EXHAUSTED on each try): that user's calendar could never be listed or snapshotted again.
MAX_LIST_BYTES = 256 * 1024 * 1024


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


class EventSource:
    """SyncService of the sync-engine, reached over gRPC; the caller's trace continues in the call."""

    def __init__(self, address: str, timeout: float, caller: GrpcCaller | None = None) -> None:
        self.address = address
        self.caller = caller or GrpcCaller()
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: sync_pb2_grpc.SyncServiceAsyncStub | None = None

    def _ensure(self) -> sync_pb2_grpc.SyncServiceAsyncStub:
        if self._stub is None:
            self._channel = self.caller.aio_channel(
                self.address, options=[("grpc.max_receive_message_length", MAX_LIST_BYTES)]
            )
            self._stub = sync_pb2_grpc.SyncServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None
            self._stub = None

    async def list_events(
        self, user: str, window_from: datetime, window_to: datetime, since_seq: int = 0, *, incremental: bool = False
    ) -> UserList:
        request = sync_pb2.ListEventsRequest(
            user=user, to=_stamp(window_to), since_seq=max(0, since_seq), incremental=incremental
        )
        getattr(request, "from").CopyFrom(_stamp(window_from))
        try:
            response = await self._ensure().ListEvents(
                request, timeout=self.timeout, metadata=tuple(self.caller.metadata())
            )
        except grpc.aio.AioRpcError as exc:
            raise SyncUnavailableError(
                f"SyncService.ListEvents({user}) at {self.address} failed: {exc.code().name} {exc.details()}"
            ) from exc
        return UserList(
            list(response.occurrences),
            int(response.seq),
            bool(response.unchanged),
            incremental=bool(response.incremental),
            removed=list(response.removed),
            history_from=int(response.history_from),
        )

"""A user's calendar from the sync-engine (SyncService.ListEvents) as a `calendar.snapshot` or a getCalendarList
answer, and the connector's cache window.

ListEvents answers the user's occurrences in `[from, to)` and `seq`, the user's latest push number when the list
was read: a snapshot built from it supersedes every push up to that number (bridge/events.py explains how
the wire `seq` is drawn from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tccal.cache_window import CacheWindow
from tccal.grpckit import client_metadata
from tcs_gateway.bridge.events import build_event, chunk_events, fit_event, overlaps
from tcs_gateway.bridge.framing import encoded_size, format_instant
from trueconf.calendar.v1 import calendar_pb2, sync_pb2, sync_pb2_grpc

#: Room left in a frame for the envelope and the snapshot's own fields.
_ENVELOPE_ROOM = 2048

#: Largest ListEvents answer taken. A user's whole cache window comes in one answer (~500 bytes an occurrence),
#: and gRPC's default of 4 MiB refused every list of a user with more than ~8,000 occurrences in the window
#: (RESOURCE_EXHAUSTED on each try): that user's calendar could never be listed or snapshotted again.
MAX_LIST_BYTES = 256 * 1024 * 1024


class SyncUnavailableError(RuntimeError):
    """SyncService could not answer (the message says why)."""


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


@dataclass(frozen=True)
class UserList:
    occurrences: list[calendar_pb2.Occurrence]
    seq: int


class EventSource:
    """SyncService of the sync-engine, reached over gRPC; the caller's trace continues in the call."""

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: sync_pb2_grpc.SyncServiceAsyncStub | None = None

    def _ensure(self) -> sync_pb2_grpc.SyncServiceAsyncStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self.address, options=[("grpc.max_receive_message_length", MAX_LIST_BYTES)]
            )
            self._stub = sync_pb2_grpc.SyncServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None
            self._stub = None

    async def list_events(self, user: str, window_from: datetime, window_to: datetime) -> UserList:
        request = sync_pb2.ListEventsRequest(user=user, to=_stamp(window_to))
        getattr(request, "from").CopyFrom(_stamp(window_from))
        try:
            response = await self._ensure().ListEvents(request, timeout=self.timeout, metadata=tuple(client_metadata()))
        except grpc.aio.AioRpcError as exc:
            raise SyncUnavailableError(
                f"SyncService.ListEvents({user}) at {self.address} failed: {exc.code().name} {exc.details()}"
            ) from exc
        return UserList(list(response.occurrences), int(response.seq))


def events_for(
    occurrences: list[calendar_pb2.Occurrence],
    user: str,
    seq: int,
    window: CacheWindow,
    *,
    server_host: str,
    budget: int,
) -> list[dict[str, Any]]:
    """The user's events inside the window, each id once, sorted by start, each stamped with `seq`."""
    found: dict[str, dict[str, Any]] = {}
    for occurrence in occurrences:
        event = fit_event(build_event(occurrence, user, seq, server_host=server_host), budget, user)
        if overlaps(event, window.start, window.end):
            found[event["id"]] = event
    return sorted(found.values(), key=lambda e: (e["start"], e["id"]))


def snapshot_payloads(
    user: str,
    seq: int,
    window: CacheWindow,
    events: list[dict[str, Any]],
    max_frame_bytes: int,
) -> list[dict[str, Any]]:
    """The `calendar.snapshot` payloads (chunks) of one snapshot."""
    budget = max_frame_bytes - _ENVELOPE_ROOM - encoded_size(user)
    chunks = chunk_events(events, budget)
    return [
        {
            "user": user,
            "seq": seq,
            "from": format_instant(window.start),
            "to": format_instant(window.end),
            "chunkIndex": index,
            "chunkCount": len(chunks),
            "events": chunk,
        }
        for index, chunk in enumerate(chunks)
    ]


def event_budget(max_frame_bytes: int) -> int:
    return max_frame_bytes - _ENVELOPE_ROOM

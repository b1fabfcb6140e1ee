"""What the bridge needs from the rest of the gateway, stated here so that bridge/ imports nothing of
tcs_gateway outside itself but `tcs_gateway.settings` (README.md, "Import rule").

The gateway hands in the implementations through `SessionContext`: `tcs_gateway.sync_client.EventSource`
(SyncService.ListEvents over gRPC) as `CalendarSource`, `tcs_gateway.state.StateStore` (JetStream KV) as
`UserStateStore`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from trueconf.calendar.v1 import calendar_pb2


class SyncUnavailableError(RuntimeError):
    """SyncService could not answer (the message says why)."""


@dataclass(frozen=True)
class UserList:
    """A user's occurrences in a window and `seq`, the user's latest push number when the list was read;
    `unchanged` (no occurrences) when the caller's `since_seq` was not below `seq`; `incremental` when only the
    occurrences changed since `since_seq` are given, with `removed` the ids gone from the window since;
    `history_from` (incremental asked, whole list given) the lowest since_seq changes are known from."""

    occurrences: list[calendar_pb2.Occurrence]
    seq: int
    unchanged: bool = False
    incremental: bool = False
    removed: list[str] = field(default_factory=list)
    history_from: int = 0


class CalendarSource(Protocol):
    """The users' calendars (the sync-engine's SyncService.ListEvents)."""

    async def list_events(
        self, user: str, window_from: datetime, window_to: datetime, since_seq: int = 0, *, incremental: bool = False
    ) -> UserList:
        """The user's occurrences in `[window_from, window_to)` - none, `unchanged`, when `since_seq` (the engine
        seq the caller holds the list at, 0: none) is not below the user's seq; with `incremental`, only the changes
        since `since_seq` when they are all known; SyncUnavailableError when it cannot answer."""
        ...


class UserStateStore(Protocol):
    """Per server and user, kept across restarts: whether TCS asked for the user, the last snapshot seq."""

    @property
    def loaded(self) -> asyncio.Event:
        """Set once the stored state is read."""
        ...

    def asked_users(self, server_id: str) -> list[str]: ...

    def was_asked(self, server_id: str, user: str) -> bool:
        """Whether `server_id` has asked for `user` before (a list of it succeeded)."""
        ...

    async def refresh(self, server_id: str) -> None:
        """Read the server's stored state again (another replica may have served it since this one started)."""
        ...

    def mark_asked(self, server_id: str, user: str) -> bool:
        """Remember that `server_id` asked for `user`; True when this is new."""
        ...

    def snapshot_seq(self, server_id: str, user: str) -> int: ...

    def set_snapshot_seq(self, server_id: str, user: str, seq: int) -> None: ...

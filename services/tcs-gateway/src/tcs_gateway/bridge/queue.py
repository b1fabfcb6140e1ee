"""The outbound queue of one TrueConf Server: calendar pushes waiting to be sent or acknowledged.

It lives as long as the gateway process, across connections. Each entry holds the JetStream message of its
command, which stays unacknowledged (kept alive with in-progress heartbeats) until TCS acknowledged the push,
a snapshot superseded it, or it failed for good — so the stream itself is the durable queue: a gateway that
dies loses nothing, and its successor gets the messages again. The queue is bounded; the command consumer stops
pulling while it is full.

A full queue first gives up the pushes that can only wait for their user's snapshot (one being built, or one
written and not yet acknowledged; ServerState.relieve): they are answered SUPERSEDED and their messages acked, and
the user is owed a snapshot read after them, sent until TCS acknowledges one (on the next connection if need be;
every connection starts with the served users' snapshots, so a gateway that dies owing one loses nothing either).
So a full queue holds only pushes that can go out, and one user whose snapshot keeps failing — refused, never
acknowledged, or its calendar unreadable — cannot hold back the other users and the conference commands, which
come through the same consumer.

Per user, pushes go out in engine order (lowest seq first); a push that has to wait (retryAfterMs) holds back
the later pushes of its user.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from opentelemetry.context import Context


@dataclass
class PendingPush:
    command_id: str
    user: str
    engine_seq: int
    method: str
    payload: dict[str, Any]
    message: Msg | None
    context: Context | None = None
    meeting_id: str = ""
    #: When the change or decision behind the command happened (Unix time, the command's created_at).
    caused_at: float | None = None
    created: float = field(default_factory=time.monotonic)
    not_before: float = 0.0
    in_flight: bool = False
    attempts: int = 0
    extra_messages: list[Msg] = field(default_factory=list)

    @property
    def wire_seq(self) -> int:
        return int(self.payload["seq"])

    def messages(self) -> list[Msg]:
        found = [] if self.message is None else [self.message]
        return found + self.extra_messages


class PushQueue:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: dict[str, PendingPush] = {}
        self.changed = asyncio.Event()
        self.space = asyncio.Event()
        self.space.set()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._items

    def get(self, command_id: str) -> PendingPush | None:
        return self._items.get(command_id)

    def items(self) -> list[PendingPush]:
        return list(self._items.values())

    @property
    def free(self) -> int:
        return max(0, self.capacity - len(self._items))

    def _update_space(self) -> None:
        if len(self._items) < self.capacity:
            self.space.set()
        else:
            self.space.clear()

    def add(self, item: PendingPush) -> PendingPush:
        """Queue a push; a command already queued (a redelivery) keeps its place and takes the new message."""
        existing = self._items.get(item.command_id)
        if existing is not None:
            if item.message is not None:
                if existing.message is not None:
                    existing.extra_messages.append(existing.message)
                existing.message = item.message
            return existing
        self._items[item.command_id] = item
        self._update_space()
        self.changed.set()
        return item

    def remove(self, item: PendingPush) -> None:
        if self._items.get(item.command_id) is item:
            del self._items[item.command_id]
            self._update_space()
            self.changed.set()

    def requeue(self, item: PendingPush, not_before: float = 0.0) -> None:
        item.in_flight = False
        item.not_before = not_before
        self.changed.set()

    def take(
        self, now: float, blocked: Callable[[str], bool], covered: Callable[[str], int] | None = None
    ) -> PendingPush | None:
        """The next push to send: queued, due, its user not blocked, the lowest seq of its user, and not covered
        by a snapshot already sent (`covered(user)`: engine seq up to which a sent snapshot holds everything)."""
        heads: dict[str, PendingPush] = {}
        for item in self._items.values():
            if item.in_flight:
                continue
            if covered is not None and item.engine_seq <= covered(item.user):
                continue
            head = heads.get(item.user)
            if head is None or item.engine_seq < head.engine_seq:
                heads[item.user] = item
        chosen: PendingPush | None = None
        for item in heads.values():
            if item.not_before > now or blocked(item.user):
                continue
            if chosen is None or item.created < chosen.created:
                chosen = item
        if chosen is not None:
            chosen.in_flight = True
            chosen.attempts += 1
        return chosen

    def next_due(self, now: float) -> float | None:
        """Seconds until a waiting push becomes due (None: none is waiting)."""
        waits = [item.not_before - now for item in self._items.values() if not item.in_flight and item.not_before > now]
        return max(0.0, min(waits)) if waits else None

    def queued_for(self, user: str) -> list[PendingPush]:
        return [item for item in self._items.values() if item.user == user and not item.in_flight]

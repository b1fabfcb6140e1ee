"""What the gateway knows about each TrueConf Server it serves, connected or not: its outbound queue, the
current bridge session, the users it serves, and status for GatewayService."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tcs_gateway.bridge.metrics import METRICS
from tcs_gateway.bridge.ports import UserStateStore
from tcs_gateway.bridge.pushes import PUSHES
from tcs_gateway.bridge.queue import PendingPush, PushQueue
from tcs_gateway.settings import GatewaySettings, ServerSettings
from trueconf.calendar.v1 import commands_pb2

if TYPE_CHECKING:
    from tcs_gateway.bridge.session import Session

log = logging.getLogger(__name__)

PushDone = Callable[[PendingPush, "commands_pb2.CommandStatus.ValueType", str], Coroutine[Any, Any, None]]


class ServerState:
    def __init__(self, server: ServerSettings, settings: GatewaySettings, store: UserStateStore) -> None:
        self.server = server
        self.settings = settings
        self.store = store
        self.queue = PushQueue(settings.queue_capacity)
        self.session: Session | None = None
        self.connected_since: datetime | None = None
        self.last_seen: datetime | None = None
        self.peer = ""
        self.errors: collections.deque[str] = collections.deque(maxlen=10)
        #: Engine seq per user up to which an acknowledged snapshot made TCS current.
        self.covered: dict[str, int] = {}
        #: Highest engine seq written to TCS per user (a lower one arriving later would be stale).
        self.max_sent: dict[str, int] = {}
        #: Per user, the engine seq a snapshot must reach before TCS holds every change of the user: pushes up to it
        #: were superseded unsent to make room in a full queue (`relieve`). Kept across connections.
        self.owed: dict[str, int] = {}
        self.on_push_done: PushDone | None = None
        #: Called when a session attaches or detaches (the server's lease, tcs_gateway.server_lease, looks again).
        self.on_session_change: Callable[[], None] | None = None
        self._completions: set[asyncio.Task[None]] = set()
        METRICS.bridge_connected.set(0, {"server": self.id})

    @property
    def id(self) -> str:
        return self.server.id

    def served_users(self) -> list[str]:
        users = set(self.settings.configured_users)
        users.update(self.store.asked_users(self.server.id))
        return sorted(users)

    def record_error(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.errors.appendleft(f"{stamp} {text}"[:1000])

    def seen(self) -> None:
        self.last_seen = datetime.now(UTC)

    # ------------------------------------------------------------------ pushes
    def finish(self, item: PendingPush, status: commands_pb2.CommandStatus.ValueType, error: str = "") -> None:
        """The push is done (acknowledged, superseded or failed for good): drop it and report it."""
        self.queue.remove(item)
        if status == commands_pb2.COMMAND_STATUS_OK and item.caused_at is not None:
            METRICS.record_propagation(item.caused_at, self.id)
        if self.on_push_done is None:
            return
        task = asyncio.get_running_loop().create_task(self.on_push_done(item, status, error))
        self._completions.add(task)
        task.add_done_callback(self._completions.discard)

    def supersede(self, user: str, engine_seq: int) -> int:
        """An acknowledged snapshot made TCS current up to `engine_seq`: queued pushes up to it are done, and a
        snapshot owed up to it is paid."""
        if engine_seq > self.covered.get(user, 0):
            self.covered[user] = engine_seq
        if 0 < self.owed.get(user, 0) <= engine_seq:
            del self.owed[user]
        done = [item for item in self.queue.queued_for(user) if item.engine_seq <= engine_seq]
        for item in done:
            self.finish(item, commands_pb2.COMMAND_STATUS_OK)
        return len(done)

    def relieve(self) -> int:
        """The queue is full: give up the queued pushes that can only wait for their user's snapshot (one being
        built, or one written and not yet acknowledged), so that one user whose snapshot keeps failing cannot hold
        back every other user and the conference commands behind a full queue. Each is answered SUPERSEDED and its
        user owed a snapshot read after it, sent on this connection or the next until one is acknowledged.

        Only served users' pushes are given up: every connection of TCS starts with their snapshots (or, with
        `catchUp: "lists"`, with TCS asking their lists), so a gateway that dies owing one loses nothing either."""
        session = self.session
        if session is None or not session.authenticated:
            return 0
        waiting = [item for item in self.queue.items() if not item.in_flight and session.snapshots.holds_back(item)]
        if waiting:
            served = set(self.served_users())
            waiting = [item for item in waiting if item.user in served]
        for item in waiting:
            self.owed[item.user] = max(self.owed.get(item.user, 0), item.engine_seq)
            PUSHES.add(1, {"method": item.method, "outcome": "superseded"})
            self.finish(
                item,
                commands_pb2.COMMAND_STATUS_SUPERSEDED,
                f"not pushed: the queue of {self.id} was full while the push waited for a snapshot of {item.user},"
                " which carries its change instead",
            )
        if waiting:
            users = sorted({item.user for item in waiting})
            log.warning(
                "queue full: pushes waiting for their user's snapshot superseded by it",
                extra={"server": self.id, "pushes": len(waiting), "users": users[:20]},
            )
        return len(waiting)

    def is_covered(self, item: PendingPush) -> bool:
        return item.engine_seq <= self.covered.get(item.user, 0)

    async def drain_completions(self, timeout: float) -> None:
        if self._completions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*list(self._completions), return_exceptions=True), timeout=timeout
                )

    # ------------------------------------------------------------------ sessions
    async def attach(self, session: Session) -> None:
        """`session` authenticated as this server; an older connection is closed with 4005 first."""
        old = self.session
        if old is not None and old is not session:
            log.warning(
                "server id authenticated on a new connection; closing the older one (4005). Two TrueConf Servers "
                "sharing one server id keep replacing each other: check their configuration",
                extra={"server": self.id, "old_peer": old.peer, "new_peer": session.peer},
            )
            self.record_error(f"replaced connection from {old.peer} by {session.peer} (4005)")
            await old.replace()
        self.session = session
        self.peer = session.peer
        self.connected_since = datetime.now(UTC)
        self.seen()
        METRICS.bridge_connected.set(1, {"server": self.id})
        if self.on_session_change is not None:
            self.on_session_change()

    def detach(self, session: Session, unacknowledged: list[PendingPush]) -> None:
        """The connection of `session` is gone; its unacknowledged pushes are queued again (resent later)."""
        if self.session is session:
            self.session = None
            self.connected_since = None
            METRICS.bridge_connected.set(0, {"server": self.id})
            if self.on_session_change is not None:
                self.on_session_change()
        for item in unacknowledged:
            self.queue.requeue(item)
        if unacknowledged:
            log.info(
                "connection lost with pushes unacknowledged; they are resent after the reconnect",
                extra={"server": self.id, "pushes": len(unacknowledged)},
            )

"""One WebSocket connection of a TrueConf Server (docs/bridge-protocol.md §2–§4, §9).

Lifecycle: `auth` (version, whitelist, secret — in that order), then a snapshot of every served user, then the
server's queued pushes; getCalendarList and ping any time after. Pushes and snapshot chunks share the
in-flight window TCS announced (`maxInFlight`); replies free it.

Ordering per user. A push's `seq` must not be overtaken: while a user's snapshot is being built (from the
moment SyncService is asked until its frames are written) no push of that user is sent, and a push that has
to be resent after a later push of its user already went out is replaced by a fresh snapshot of that user.

`Session` reads the frames, dispatches them and owns the connection's tasks and its end; the parts are
channel.py (frames, requests and their replies), auth.py, calendar_list.py, liveness.py (timers, ping),
snapshots.py and pushes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tcs_gateway.bridge.auth import Authenticator
from tcs_gateway.bridge.calendar_list import CalendarLists
from tcs_gateway.bridge.channel import Channel, ConnectionClosedError, log
from tcs_gateway.bridge.framing import (
    MAX_ID,
    PUSH_METHODS,
    REPLY,
    REQUEST,
    CloseCode,
    ErrorCode,
    FrameValidator,
    error_payload,
    parse_frame_text,
)
from tcs_gateway.bridge.guard import NO_AUTH, BridgeGuard
from tcs_gateway.bridge.liveness import Liveness
from tcs_gateway.bridge.ports import CalendarSource, UserStateStore
from tcs_gateway.bridge.pushes import PushSender
from tcs_gateway.bridge.servers import ServerState
from tcs_gateway.bridge.snapshots import SnapshotSender
from tcs_gateway.settings import DEFAULT_MAX_IN_FLIGHT, GatewaySettings

__all__ = ["ConnectionClosedError", "ListHook", "Session", "SessionContext"]

ListHook = Callable[[ServerState, str, int], Awaitable[None]]


@dataclass
class SessionContext:
    """What every session of the bridge shares."""

    settings: GatewaySettings
    servers: dict[str, ServerState]
    store: UserStateStore
    source: CalendarSource
    validator: FrameValidator
    on_list: ListHook | None = None
    sessions: set[Session] = field(default_factory=set)
    #: Limits on unauthenticated peers; the BridgeServer makes one when none is given.
    guard: BridgeGuard | None = None


class Session:
    def __init__(
        self, ws: web.WebSocketResponse, peer: str, context: SessionContext, *, address: str | None = None
    ) -> None:
        self.ws = ws
        self.peer = peer
        #: The remote IP address (peer without the port): what guard.py counts and backs off.
        self.address = address if address is not None else peer.rsplit(":", 1)[0]
        #: Called once when `auth` succeeds (the server stops counting the connection as unauthenticated).
        self.on_authenticated: Callable[[], None] | None = None
        self.context = context
        self.settings = context.settings
        self.session_id = str(uuid.uuid4())
        self.opened_at = time.monotonic()
        self.last_rx = self.opened_at
        self.authenticated = False
        self.server: ServerState | None = None
        self.max_in_flight = DEFAULT_MAX_IN_FLIGHT
        #: `auth` asked for `catchUp: "lists"` (protocol revision 1.3): no catch-up snapshots on this connection.
        self.catch_up_by_lists = False
        #: TCS's in-flight window (sized at auth), shared by pushes and snapshot chunks; replies free it.
        self.slots = asyncio.Semaphore(DEFAULT_MAX_IN_FLIGHT)
        self.finished = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.channel = Channel(ws, peer, context.validator)
        self.liveness = Liveness(self)
        self.auth = Authenticator(self)
        self.lists = CalendarLists(self)
        self.snapshots = SnapshotSender(self)
        self.pushes = PushSender(self)

    # ------------------------------------------------------------------ lifecycle
    @property
    def closing(self) -> bool:
        return self.channel.closing

    def server_id(self) -> str:
        return self.server.id if self.server is not None else ""

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"bridge-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run(self) -> None:
        self._spawn(self.liveness.watchdog(), "watchdog")
        try:
            while True:
                message = await self.ws.receive()
                if message.type == aiohttp.WSMsgType.TEXT:
                    self.last_rx = time.monotonic()
                    if self.server is not None:
                        self.server.seen()
                    try:
                        await self._on_text(message.data)
                    except ConnectionClosedError:
                        break
                    except Exception:  # a defect in handling one frame must not end the connection
                        log.exception("bridge frame handling failed", extra={"peer": self.peer})
                elif message.type == aiohttp.WSMsgType.BINARY:
                    self.last_rx = time.monotonic()
                    await self.close(CloseCode.UNSUPPORTED_DATA, "binary frames are not part of the protocol")
                    break
                elif message.type == aiohttp.WSMsgType.ERROR:
                    log.log(
                        logging.INFO if self.authenticated else logging.DEBUG,
                        "bridge connection error",
                        extra={"peer": self.peer, "error": repr(self.ws.exception())},
                    )
                    break
                else:
                    break
        finally:
            await self._cleanup()

    def start_delivery(self) -> None:
        """Authenticated: snapshots of every served user, then the server's queued pushes."""
        self._spawn(self.snapshots.catch_up(), "catch-up")
        self._spawn(self.pushes.run(), "pusher")
        for index in range(max(1, self.settings.snapshot_concurrency)):
            self._spawn(self.snapshots.worker(), f"snapshot-{index}")

    def request_snapshot(self, user: str) -> None:
        """Send `user` a fresh snapshot; the user's pushes wait until its frames are written."""
        self.snapshots.request(user)

    async def close(self, code: int, reason: str) -> None:
        if self.channel.closing:
            return
        self.channel.close_code = int(code)
        # An unauthenticated connection is not logged line by line (guard.py counts and summarises refusals).
        log.log(
            logging.INFO if self.authenticated else logging.DEBUG,
            "closing bridge connection",
            extra={
                "peer": self.peer,
                "server": self.server.id if self.server else "",
                "code": int(code),
                "reason": reason,
            },
        )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=int(code), message=reason.encode("utf-8")[:120]), 5.0)

    async def replace(self) -> None:
        """Another connection authenticated with this server id: close with 4005 and wait until cleaned up."""
        await self.close(CloseCode.REPLACED, "replaced by a newer connection of the same server id")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), 10.0)

    async def _cleanup(self) -> None:
        if self.channel.close_code is None:
            self.channel.close_code = int(self.ws.close_code or 1006)
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        unacknowledged = self.channel.abandon()
        if self.server is not None:
            self.server.detach(self, unacknowledged)
            code = self.channel.close_code
            if code not in (CloseCode.GOING_AWAY, CloseCode.NORMAL, CloseCode.REPLACED):
                self.server.record_error(f"connection from {self.peer} closed with {code}")
        self.context.sessions.discard(self)
        self.finished.set()
        if self.server is None and self.channel.close_code == CloseCode.AUTH_TIMEOUT and self.context.guard:
            self.context.guard.note(self.address, NO_AUTH)
        log.log(
            logging.INFO if self.server is not None else logging.DEBUG,
            "bridge connection ended",
            extra={"peer": self.peer, "server": self.server.id if self.server else "", "code": self.channel.close_code},
        )

    # ------------------------------------------------------------------ receiving
    async def _on_text(self, data: str) -> None:
        channel = self.channel
        frame, malformed = parse_frame_text(data)
        if malformed is not None:
            await channel.reply(0, error_payload(ErrorCode.MALFORMED_FRAME, malformed))
            return
        if not isinstance(frame, dict):
            await channel.reply(
                0, error_payload(ErrorCode.MALFORMED_FRAME, f"frame is a JSON {type(frame).__name__}, not an object")
            )
            return
        raw_id = frame.get("id")
        readable = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) and raw_id > 0 else 0
        if readable > MAX_ID:
            readable = 0
        kind = frame.get("type")
        if kind == REPLY and not isinstance(kind, bool):
            channel.on_reply(frame)
            return
        if kind != REQUEST or isinstance(kind, bool):
            description = f"type {kind!r} is neither 1 (request) nor 2 (reply)"
            await channel.reply(readable, error_payload(ErrorCode.MALFORMED_FRAME, description))
            return
        problem = channel.validator.problem(frame, "requestFrame", relative_to_payload=False)
        if problem is not None:
            await channel.reply(readable, error_payload(ErrorCode.MALFORMED_FRAME, problem.message))
            return
        method: str = frame["method"]
        frame_id: int = frame["id"]
        if method == "ping":
            await self.liveness.answer_ping(frame)
        elif method == "auth":
            await self.auth.handle(frame)
        elif method == "getCalendarList":
            if not self.authenticated:
                await self._not_authenticated(frame_id, method)
            else:
                self._spawn(self.lists.handle(frame), "getCalendarList")
        elif method in PUSH_METHODS:
            description = f"{method} is sent by the gateway to TrueConf Server, not served by the gateway"
            await channel.reply(frame_id, error_payload(ErrorCode.UNKNOWN_METHOD, description))
        else:
            description = f"method {method!r} is unknown; the gateway serves auth, getCalendarList and ping"
            await channel.reply(frame_id, error_payload(ErrorCode.UNKNOWN_METHOD, description))

    async def _not_authenticated(self, frame_id: int, method: str) -> None:
        await self.channel.reply(
            frame_id, error_payload(ErrorCode.NOT_AUTHENTICATED, f"{method} before a successful auth")
        )

"""One WebSocket connection of a TrueConf Server (docs/bridge-protocol.md §2–§4, §9).

Lifecycle: `auth` (version, whitelist, secret — in that order), then a snapshot of every served user, then the
server's queued pushes; getCalendarList and ping any time after. Pushes and snapshot chunks share the
in-flight window TCS announced (`maxInFlight`); replies free it.

Ordering per user. A push's `seq` must not be overtaken: while a user's snapshot is being built (from the
moment SyncService is asked until its frames are written) no push of that user is sent, and a push that has
to be resent after a later push of its user already went out is replaced by a fresh snapshot of that user.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry import trace

from tccal import telemetry
from tccal.cache_window import CacheWindow, cache_window
from tcs_gateway.bridge.events import list_seq, snapshot_seq
from tcs_gateway.bridge.framing import (
    MAX_ID,
    PUSH_METHODS,
    REPLY,
    REQUEST,
    CloseCode,
    ErrorCode,
    FrameValidator,
    encode,
    error_payload,
    format_instant,
    parse_instant,
    reply_frame,
    request_frame,
)
from tcs_gateway.bridge.payloads import event_budget, events_for, snapshot_payloads
from tcs_gateway.bridge.ports import CalendarSource, SyncUnavailableError, UserStateStore
from tcs_gateway.bridge.queue import PendingPush
from tcs_gateway.bridge.servers import ServerState
from tcs_gateway.settings import (
    DEFAULT_MAX_IN_FLIGHT,
    MAX_IN_FLIGHT_CAP,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    GatewaySettings,
)
from trueconf.calendar.v1 import commands_pb2

log = logging.getLogger(__name__)
_tracer = telemetry.tracer("tcs_gateway.bridge")
_METER = telemetry.meter("tcs_gateway")
_PUSHES = _METER.create_counter(
    "tcs_gateway_pushes", unit="1", description="Calendar pushes sent to TrueConf Servers, by method and outcome."
)
MAX_WINDOW = timedelta(days=400)
LIST_CONCURRENCY = 8

ListHook = Callable[[ServerState, str, int], Awaitable[None]]


class ConnectionClosedError(Exception):
    pass


@dataclass
class _Outstanding:
    method: str
    sent_at: float
    on_reply: Callable[[dict[str, Any]], None]
    on_lost: Callable[[], None] | None = None
    item: PendingPush | None = None


@dataclass
class _SnapshotTracker:
    user: str
    engine_seq: int
    seq: int
    chunks: int
    span: trace.Span
    acked: int = 0
    failed: bool = False


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


class Session:
    def __init__(self, ws: web.WebSocketResponse, peer: str, context: SessionContext) -> None:
        self.ws = ws
        self.peer = peer
        self.context = context
        self.settings = context.settings
        self.session_id = str(uuid.uuid4())
        self.opened_at = time.monotonic()
        self.last_rx = self.opened_at
        self.authenticated = False
        self.server: ServerState | None = None
        self.max_in_flight = DEFAULT_MAX_IN_FLIGHT
        self.finished = asyncio.Event()
        self._next_id = 0
        self._outstanding: dict[int, _Outstanding] = {}
        self._slots = asyncio.Semaphore(DEFAULT_MAX_IN_FLIGHT)
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: int | None = None
        self._blocked: set[str] = set()
        #: Engine seq per user that a snapshot written on this connection covers (its ack is awaited).
        self._sent_cover: dict[str, int] = {}
        self._snapshot_pending: set[str] = set()
        self._snapshot_queue: asyncio.Queue[str] = asyncio.Queue()
        self._catchup_ready = asyncio.Event()
        self._ping_outstanding = False
        self._last_ping = 0.0
        self._lists = asyncio.Semaphore(LIST_CONCURRENCY)

    # ------------------------------------------------------------------ lifecycle
    @property
    def closing(self) -> bool:
        return self._closing is not None

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"bridge-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run(self) -> None:
        self._spawn(self._watchdog(), "watchdog")
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
                    log.info("bridge connection error", extra={"peer": self.peer, "error": repr(self.ws.exception())})
                    break
                else:
                    break
        finally:
            await self._cleanup()

    async def close(self, code: int, reason: str) -> None:
        if self._closing is not None:
            return
        self._closing = int(code)
        log.info(
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
        if self._closing is None:
            self._closing = int(self.ws.close_code or 1006)
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        unacknowledged: list[PendingPush] = []
        for entry in self._outstanding.values():
            if entry.item is not None:
                unacknowledged.append(entry.item)
            if entry.on_lost is not None:
                entry.on_lost()
        self._outstanding.clear()
        if self.server is not None:
            self.server.detach(self, unacknowledged)
            code = self._closing
            if code not in (CloseCode.GOING_AWAY, CloseCode.NORMAL, CloseCode.REPLACED):
                self.server.record_error(f"connection from {self.peer} closed with {code}")
        self.context.sessions.discard(self)
        self.finished.set()
        log.info(
            "bridge connection ended",
            extra={"peer": self.peer, "server": self.server.id if self.server else "", "code": self._closing},
        )

    # ------------------------------------------------------------------ sending
    async def _send(self, frame: dict[str, Any]) -> None:
        text = encode(frame)
        if self.ws.closed:
            raise ConnectionClosedError("connection closed")
        async with self._send_lock:
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                raise ConnectionClosedError(str(exc)) from exc

    async def _reply(self, frame_id: int, payload: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosedError):
            await self._send(reply_frame(frame_id, payload))

    async def _request(
        self,
        method: str,
        payload: dict[str, Any],
        on_reply: Callable[[dict[str, Any]], None],
        *,
        on_lost: Callable[[], None] | None = None,
        item: PendingPush | None = None,
    ) -> int:
        if self.closing:
            raise ConnectionClosedError("connection closing")
        self._next_id += 1
        frame_id = self._next_id
        self._outstanding[frame_id] = _Outstanding(method, time.monotonic(), on_reply, on_lost, item)
        try:
            await self._send(request_frame(frame_id, method, payload))
        except ConnectionClosedError:
            self._outstanding.pop(frame_id, None)
            raise
        return frame_id

    # ------------------------------------------------------------------ receiving
    async def _on_text(self, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError as exc:
            await self._reply(0, error_payload(ErrorCode.MALFORMED_FRAME, f"frame is not JSON: {exc}"))
            return
        if not isinstance(frame, dict):
            await self._reply(
                0, error_payload(ErrorCode.MALFORMED_FRAME, f"frame is a JSON {type(frame).__name__}, not an object")
            )
            return
        raw_id = frame.get("id")
        readable = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) and raw_id > 0 else 0
        if readable > MAX_ID:
            readable = 0
        kind = frame.get("type")
        if kind == REPLY and not isinstance(kind, bool):
            self._on_reply(frame)
            return
        if kind != REQUEST or isinstance(kind, bool):
            description = f"type {kind!r} is neither 1 (request) nor 2 (reply)"
            await self._reply(readable, error_payload(ErrorCode.MALFORMED_FRAME, description))
            return
        problem = self.context.validator.problem(frame, "requestFrame", relative_to_payload=False)
        if problem is not None:
            await self._reply(readable, error_payload(ErrorCode.MALFORMED_FRAME, problem.message))
            return
        method: str = frame["method"]
        frame_id: int = frame["id"]
        if method == "ping":
            await self._on_ping(frame)
        elif method == "auth":
            await self._on_auth(frame)
        elif method == "getCalendarList":
            if not self.authenticated:
                await self._not_authenticated(frame_id, method)
            else:
                self._spawn(self._calendar_list_guarded(frame), "getCalendarList")
        elif method in PUSH_METHODS:
            description = f"{method} is sent by the gateway to TrueConf Server, not served by the gateway"
            await self._reply(frame_id, error_payload(ErrorCode.UNKNOWN_METHOD, description))
        else:
            description = f"method {method!r} is unknown; the gateway serves auth, getCalendarList and ping"
            await self._reply(frame_id, error_payload(ErrorCode.UNKNOWN_METHOD, description))

    async def _not_authenticated(self, frame_id: int, method: str) -> None:
        await self._reply(frame_id, error_payload(ErrorCode.NOT_AUTHENTICATED, f"{method} before a successful auth"))

    def _on_reply(self, frame: dict[str, Any]) -> None:
        bare = set(frame) == {"type", "id"}
        if bare:
            # A bare acknowledgement, {"type": 2, "id": N}: what TrueConf's own chatbot client library shows the
            # server answering; read as success (docs/bridge-protocol.md §2, "Bare acknowledgement").
            frame = {**frame, "payload": {"errorCode": 0}}
        problem = self.context.validator.problem(frame, "replyFrame", relative_to_payload=False)
        raw_id = frame.get("id")
        entry = self._outstanding.get(raw_id) if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
        payload = frame.get("payload")
        if problem is not None and (entry is None or not isinstance(payload, dict)):
            log.warning("malformed reply ignored", extra={"peer": self.peer, "problem": problem.message})
            return
        if entry is None:
            log.debug("reply to no open request ignored", extra={"peer": self.peer, "id": raw_id})
            return
        assert isinstance(raw_id, int) and isinstance(payload, dict)
        del self._outstanding[raw_id]
        if problem is None and not bare and self.context.validator.has(f"{entry.method}.reply"):
            detail = self.context.validator.problem(frame, f"{entry.method}.reply")
            if detail is not None:
                log.warning(
                    "reply does not follow the protocol",
                    extra={"peer": self.peer, "method": entry.method, "problem": detail.message},
                )
        entry.on_reply(payload)

    async def _on_ping(self, frame: dict[str, Any]) -> None:
        problem = self.context.validator.problem(frame, "ping.request")
        if problem is not None:
            await self._reply(
                frame["id"], error_payload(ErrorCode.INVALID_PAYLOAD, problem.message, field=problem.field)
            )
            return
        await self._reply(frame["id"], {"errorCode": 0, "ts": format_instant(datetime.now(UTC))})

    # ------------------------------------------------------------------ auth
    async def _on_auth(self, frame: dict[str, Any]) -> None:
        frame_id: int = frame["id"]
        if self.authenticated:
            await self._reply(
                frame_id,
                error_payload(
                    ErrorCode.ALREADY_AUTHENTICATED, f"this connection is already authenticated as {self._server_id()}"
                ),
            )
            return
        problem = self.context.validator.problem(frame, "auth.request")
        if problem is not None:
            await self._reply(frame_id, error_payload(ErrorCode.INVALID_PAYLOAD, problem.message, field=problem.field))
            return
        payload: dict[str, Any] = frame["payload"]
        server_id: str = payload["serverId"]
        version: int = payload["protocolVersion"]
        if version not in SUPPORTED_VERSIONS:
            await self._refuse(
                frame_id,
                error_payload(
                    ErrorCode.UNSUPPORTED_PROTOCOL_VERSION,
                    f"protocolVersion {version} is not supported",
                    supported_versions=SUPPORTED_VERSIONS,
                ),
                CloseCode.UNSUPPORTED_VERSION,
                server_id,
            )
            return
        if not self.settings.is_whitelisted(server_id):
            await self._refuse(
                frame_id,
                error_payload(
                    ErrorCode.SERVER_NOT_WHITELISTED, f"server id {server_id} is not listed in productWhitelist.tcs"
                ),
                CloseCode.NOT_WHITELISTED,
                server_id,
            )
            return
        state = self.context.servers.get(server_id.lower())
        expected = state.server.secret if state is not None else ""
        presented = str(payload["secret"])
        matches = hmac.compare_digest(presented.encode("utf-8"), (expected or "\x00" * 16).encode("utf-8"))
        if state is None or not expected or not matches:
            description = (
                f"secret for {server_id} does not match"
                if state is not None
                else f"no secret is configured for {server_id} (tcs.servers)"
            )
            await self._refuse(
                frame_id, error_payload(ErrorCode.BAD_SECRET, description), CloseCode.AUTH_FAILED, server_id
            )
            return
        announced = payload.get("maxInFlight", DEFAULT_MAX_IN_FLIGHT)
        self.max_in_flight = max(1, min(int(announced), MAX_IN_FLIGHT_CAP))
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self.authenticated = True
        self.server = state
        await state.attach(self)
        window = cache_window(
            datetime.now(UTC), self.settings.window_backward_months, self.settings.window_forward_months
        )
        await self._reply(
            frame_id,
            {
                "errorCode": 0,
                "protocolVersion": PROTOCOL_VERSION,
                "sessionId": self.session_id,
                "gatewayId": self.settings.gateway_id,
                "limits": {
                    "maxFrameBytes": self.settings.max_frame_bytes,
                    "maxInFlight": self.max_in_flight,
                    "pingIntervalSec": max(1, round(self.settings.ping_interval)),
                    "replyTimeoutSec": max(1, round(self.settings.reply_timeout)),
                },
                "window": {"from": format_instant(window.start), "to": format_instant(window.end)},
            },
        )
        log.info(
            "TrueConf Server authenticated",
            extra={
                "server": state.id,
                "peer": self.peer,
                "session": self.session_id,
                "server_version": str(payload.get("serverVersion", "")),
                "max_in_flight": self.max_in_flight,
            },
        )
        self._spawn(self._catch_up(), "catch-up")
        self._spawn(self._pusher(), "pusher")
        for index in range(max(1, self.settings.snapshot_concurrency)):
            self._spawn(self._snapshot_worker(), f"snapshot-{index}")

    async def _refuse(self, frame_id: int, payload: dict[str, Any], code: CloseCode, server_id: str) -> None:
        log.warning(
            "TrueConf Server refused",
            extra={"peer": self.peer, "server": server_id, "error": payload["errorDescription"], "code": int(code)},
        )
        known = self.context.servers.get(server_id.lower())
        if known is not None:
            known.record_error(f"auth from {self.peer} refused: {payload['errorDescription']}")
        await self._reply(frame_id, payload)
        await self.close(code, str(payload.get("errorName", "refused")))

    def _server_id(self) -> str:
        return self.server.id if self.server is not None else ""

    # ------------------------------------------------------------------ getCalendarList
    async def _calendar_list_guarded(self, frame: dict[str, Any]) -> None:
        try:
            await self._on_calendar_list(frame)
        except Exception as exc:  # answer rather than leave TCS waiting for the reply timeout
            log.exception("getCalendarList failed", extra={"peer": self.peer})
            await self._reply(
                frame["id"],
                error_payload(ErrorCode.INTERNAL_ERROR, f"getCalendarList failed: {exc!r}", retry_after_ms=1000),
            )

    async def _on_calendar_list(self, frame: dict[str, Any]) -> None:
        frame_id: int = frame["id"]
        problem = self.context.validator.problem(frame, "getCalendarList.request")
        if problem is not None:
            await self._reply(frame_id, error_payload(ErrorCode.INVALID_PAYLOAD, problem.message, field=problem.field))
            return
        payload: dict[str, Any] = frame["payload"]
        window_from = parse_instant(payload["from"])
        window_to = parse_instant(payload["to"])
        if not window_from < window_to:
            await self._reply(
                frame_id,
                error_payload(
                    ErrorCode.INVALID_PAYLOAD, f"to {payload['to']} is not after from {payload['from']}", field="to"
                ),
            )
            return
        if window_to - window_from > MAX_WINDOW:
            await self._reply(
                frame_id,
                error_payload(
                    ErrorCode.INVALID_PAYLOAD,
                    f"window {payload['from']} – {payload['to']} is longer than 400 days",
                    field="to",
                ),
            )
            return
        server = self.server
        assert server is not None
        user = str(payload["user"]).lower()
        async with self._lists:
            try:
                listed = await self.context.source.list_events(user, window_from, window_to)
            except SyncUnavailableError as exc:
                server.record_error(f"getCalendarList {user}: {exc}")
                log.warning("failed to getCalendarList", extra={"server": server.id, "user": user, "error": str(exc)})
                await self._reply(frame_id, error_payload(ErrorCode.INTERNAL_ERROR, str(exc), retry_after_ms=1000))
                return
        seq = list_seq(listed.seq, self.context.store.snapshot_seq(server.id, user))
        events = events_for(
            listed.occurrences,
            user,
            seq,
            CacheWindow(window_from, window_to),
            server_host=server.server.host,
            budget=event_budget(self.settings.max_frame_bytes),
        )
        answer = {
            "errorCode": 0,
            "user": payload["user"],
            "from": payload["from"],
            "to": payload["to"],
            "seq": seq,
            "events": events,
        }
        if len(encode(reply_frame(frame_id, answer)).encode("utf-8")) > self.settings.max_frame_bytes:
            await self._reply(
                frame_id,
                error_payload(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"{len(events)} events of {user} do not fit in {self.settings.max_frame_bytes} bytes; "
                    "ask for a narrower window",
                ),
            )
            return
        await self._reply(frame_id, answer)
        if self.context.store.mark_asked(server.id, user):
            log.info("TrueConf Server asked for a new user's calendar", extra={"server": server.id, "user": user})
        if self.context.on_list is not None:
            await self.context.on_list(server, user, listed.seq)

    # ------------------------------------------------------------------ snapshots
    def request_snapshot(self, user: str) -> None:
        """Send `user` a fresh snapshot; the user's pushes wait until its frames are written."""
        if self.closing or not self.authenticated or user in self._snapshot_pending:
            return
        self._snapshot_pending.add(user)
        self._blocked.add(user)
        self._snapshot_queue.put_nowait(user)

    async def _catch_up(self) -> None:
        await self.context.store.loaded.wait()
        server = self.server
        assert server is not None
        users = server.served_users()
        for user in users:
            self.request_snapshot(user)
        self._catchup_ready.set()
        log.info("sending snapshots", extra={"server": server.id, "users": len(users)})

    async def _snapshot_worker(self) -> None:
        server = self.server
        assert server is not None
        while not self.closing:
            user = await self._snapshot_queue.get()
            try:
                await self._snapshot(user)
            except ConnectionClosedError:
                return
            except Exception as exc:  # one user's snapshot must not stop the others
                log.exception("snapshot failed", extra={"server": server.id, "user": user})
                server.record_error(f"snapshot of {user} failed: {exc!r}")
            finally:
                self._snapshot_pending.discard(user)
                self._blocked.discard(user)
                server.queue.changed.set()

    async def _snapshot(self, user: str) -> None:
        server = self.server
        assert server is not None
        delay = 0.5
        while True:
            if self.closing:
                raise ConnectionClosedError("connection closing")
            window = cache_window(
                datetime.now(UTC), self.settings.window_backward_months, self.settings.window_forward_months
            )
            try:
                listed = await self.context.source.list_events(user, window.start, window.end)
                break
            except SyncUnavailableError as exc:
                server.record_error(f"snapshot of {user}: {exc}")
                log.warning("failed to getCalendarList", extra={"server": server.id, "user": user, "error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        store = self.context.store
        seq = snapshot_seq(listed.seq, store.snapshot_seq(server.id, user))
        store.set_snapshot_seq(server.id, user, seq)
        events = events_for(
            listed.occurrences,
            user,
            seq,
            window,
            server_host=server.server.host,
            budget=event_budget(self.settings.max_frame_bytes),
        )
        payloads = snapshot_payloads(user, seq, window, events, self.settings.max_frame_bytes)
        span = _tracer.start_span(
            "bridge snapshot",
            kind=trace.SpanKind.PRODUCER,
            attributes={"tcs.server": server.id, "tcs.user": user, "tcs.seq": seq, "tcs.events": len(events)},
        )
        tracker = _SnapshotTracker(user, listed.seq, seq, len(payloads), span)
        for payload in payloads:
            await self._slots.acquire()
            try:
                await self._request(
                    "calendar.snapshot",
                    payload,
                    functools.partial(self._snapshot_reply, tracker),
                    on_lost=functools.partial(self._snapshot_lost, tracker),
                )
            except BaseException:
                self._slots.release()
                raise
            _PUSHES.add(1, {"method": "calendar.snapshot", "outcome": "sent"})
        if not tracker.failed and listed.seq > self._sent_cover.get(user, 0):
            # Pushes up to listed.seq need not go out: the snapshot just written holds them. They stay queued
            # until it is acknowledged (then they are done) or refused (then a new snapshot, or they go out).
            self._sent_cover[user] = listed.seq

    def _snapshot_lost(self, tracker: _SnapshotTracker) -> None:
        self._slots.release()
        if not tracker.failed:
            tracker.failed = True
            tracker.span.set_status(trace.Status(trace.StatusCode.ERROR, "connection lost"))
            tracker.span.end()

    def _snapshot_reply(self, tracker: _SnapshotTracker, payload: dict[str, Any]) -> None:
        self._slots.release()
        server = self.server
        assert server is not None
        if tracker.failed:
            return
        code = payload.get("errorCode")
        if code == 0:
            tracker.acked += 1
            if tracker.acked == tracker.chunks:
                superseded = server.supersede(tracker.user, tracker.engine_seq)
                tracker.span.set_attribute("tcs.superseded_pushes", superseded)
                tracker.span.end()
            return
        tracker.failed = True
        description = str(payload.get("errorDescription", ""))
        tracker.span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code} {description}"))
        tracker.span.end()
        if code in (ErrorCode.OVERLOADED, ErrorCode.INTERNAL_ERROR):
            delay = _retry_delay(payload, 1)
            asyncio.get_running_loop().call_later(delay, self.request_snapshot, tracker.user)
            return
        if self._sent_cover.get(tracker.user, 0) <= tracker.engine_seq:
            self._sent_cover.pop(tracker.user, None)  # the queued pushes go out after all
            server.queue.changed.set()
        server.record_error(f"snapshot of {tracker.user} refused: {code} {description}")
        log.error(
            "TrueConf Server refused a snapshot",
            extra={"server": server.id, "user": tracker.user, "code": code, "error": description},
        )

    # ------------------------------------------------------------------ pushes
    def _is_blocked(self, user: str) -> bool:
        return user in self._blocked

    def _covered_by_sent_snapshot(self, user: str) -> int:
        return self._sent_cover.get(user, 0)

    async def _pusher(self) -> None:
        await self._catchup_ready.wait()
        server = self.server
        assert server is not None
        while not self.closing:
            item = await self._next_push()
            if item is None:
                return
            if server.is_covered(item):
                server.finish(item, commands_pb2.COMMAND_STATUS_OK)
                continue
            # The slot is taken after the push is chosen, so a waiting pusher never holds a slot a snapshot needs.
            slot = False
            sent = False
            try:
                await self._slots.acquire()
                slot = True
                if self._is_blocked(item.user) or item.engine_seq <= self._covered_by_sent_snapshot(item.user):
                    continue  # a snapshot of its user started meanwhile: the push waits (or is superseded)
                await self._send_push(item)
                sent = True
            except ConnectionClosedError:
                return
            finally:
                if not sent:
                    if slot:
                        self._slots.release()
                    if item.in_flight:
                        server.queue.requeue(item)

    async def _next_push(self) -> PendingPush | None:
        server = self.server
        assert server is not None
        queue = server.queue
        while not self.closing:
            queue.changed.clear()
            now = time.monotonic()
            item = queue.take(now, self._is_blocked, self._covered_by_sent_snapshot)
            if item is not None:
                return item
            wait = queue.next_due(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.changed.wait(), timeout=wait if wait is not None else 5.0)
        return None

    async def _send_push(self, item: PendingPush) -> None:
        server = self.server
        assert server is not None
        span = _tracer.start_span(
            f"bridge push {item.method}",
            context=item.context,
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "tcs.server": server.id,
                "tcs.user": item.user,
                "tcs.seq": item.wire_seq,
                "tcs.command_id": item.command_id,
                "tcs.attempt": item.attempts,
            },
        )

        def on_lost() -> None:
            self._slots.release()
            span.set_status(trace.Status(trace.StatusCode.ERROR, "connection lost before the acknowledgement"))
            span.end()

        try:
            await self._request(
                item.method, item.payload, lambda reply: self._push_reply(item, span, reply), on_lost=on_lost, item=item
            )
        except ConnectionClosedError:
            span.set_status(trace.Status(trace.StatusCode.ERROR, "connection closed before sending"))
            span.end()
            server.queue.requeue(item)
            raise
        if item.engine_seq > server.max_sent.get(item.user, 0):
            server.max_sent[item.user] = item.engine_seq

    def _push_reply(self, item: PendingPush, span: trace.Span, payload: dict[str, Any]) -> None:
        self._slots.release()
        server = self.server
        assert server is not None
        code = payload.get("errorCode")
        if code == 0:
            applied = payload.get("applied")
            outcome = "acknowledged" if applied is None else "applied" if applied else "ignored"
            if applied is not None:
                span.set_attribute("tcs.applied", bool(applied))
            span.end()
            _PUSHES.add(1, {"method": item.method, "outcome": outcome})
            server.finish(item, commands_pb2.COMMAND_STATUS_OK)
            return
        description = str(payload.get("errorDescription", "no description"))
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code} {description}"))
        span.end()
        if not isinstance(code, int) or code in (ErrorCode.OVERLOADED, ErrorCode.INTERNAL_ERROR):
            _PUSHES.add(1, {"method": item.method, "outcome": "retry"})
            delay = _retry_delay(payload, item.attempts)
            if item.engine_seq < server.max_sent.get(item.user, 0):
                # A later push of this user is already out: resending this one would be stale. A fresh
                # snapshot supersedes it.
                self.request_snapshot(item.user)
            server.queue.requeue(item, time.monotonic() + delay)
            return
        _PUSHES.add(1, {"method": item.method, "outcome": "refused"})
        name = str(payload.get("errorName", ""))
        text = f"TrueConf Server {server.id} refused {item.method} for {item.user}: {code} {name} {description}"
        field_name = payload.get("field")
        if field_name:
            text += f" (field {field_name})"
        server.record_error(text)
        log.error(
            "push refused",
            extra={"server": server.id, "user": item.user, "method": item.method, "code": code, "error": description},
        )
        server.finish(item, commands_pb2.COMMAND_STATUS_PERMANENT_ERROR, text)

    # ------------------------------------------------------------------ liveness
    async def _watchdog(self) -> None:
        settings = self.settings
        tick = max(0.05, min(1.0, settings.auth_timeout / 4, settings.ping_interval / 4, settings.reply_timeout / 4))
        while not self.closing:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if not self.authenticated and now - self.opened_at > settings.auth_timeout:
                await self.close(CloseCode.AUTH_TIMEOUT, f"no successful auth within {settings.auth_timeout:g} s")
                return
            silence = now - self.last_rx
            if silence > 2 * settings.ping_interval:
                await self.close(CloseCode.TIMEOUT, f"no frame for {silence:.0f} s")
                return
            timed_out = [o for o in self._outstanding.values() if now - o.sent_at > settings.reply_timeout]
            if timed_out:
                await self.close(
                    CloseCode.TIMEOUT, f"no reply to {timed_out[0].method} within {settings.reply_timeout:g} s"
                )
                return
            if (
                self.authenticated
                and silence >= settings.ping_interval
                and not self._ping_outstanding
                and now - self._last_ping >= settings.ping_interval
            ):
                self._ping_outstanding = True
                self._last_ping = now
                try:
                    await self._request(
                        "ping", {"ts": format_instant(datetime.now(UTC))}, self._on_pong, on_lost=self._on_pong_lost
                    )
                except ConnectionClosedError:
                    self._ping_outstanding = False

    def _on_pong(self, payload: dict[str, Any]) -> None:
        self._ping_outstanding = False

    def _on_pong_lost(self) -> None:
        self._ping_outstanding = False


def _retry_delay(payload: dict[str, Any], attempts: int) -> float:
    retry = payload.get("retryAfterMs")
    if isinstance(retry, int) and not isinstance(retry, bool) and retry >= 0:
        return min(retry / 1000.0, 3600.0)
    return float(min(60.0, 2 ** max(0, attempts - 1)))

"""The TrueConf Server side of the calendar bridge: a WebSocket client of the connector's tcs-gateway.

It authenticates, asks getCalendarList for every user of its directory, keeps every user's calendar
exactly as received, acknowledges pushes, reconnects with backoff, and exposes knobs to misbehave
(drop, delay/refuse/withhold acknowledgements, stay away) so a gateway can be tested against it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp

from .calendar import CalendarStore, check_event, check_event_list, check_window, format_instant
from .conferences import Directory
from .config import EmulatorConfig
from .protocol import (
    MAX_WINDOW_DAYS,
    PROTOCOL_VERSION,
    PUSH_METHODS,
    REPLY,
    REQUEST,
    CloseCode,
    ErrorCode,
    error_payload,
    reply_frame,
    request_frame,
)
from .schema import FrameValidator, Problem

log = logging.getLogger("trueconf_emulator.bridge")

AckMode = Literal["normal", "refuse", "withhold"]
ACK_MODES: tuple[AckMode, ...] = ("normal", "refuse", "withhold")
_MAX_RETAINED_ERRORS = 200
_LIST_CONCURRENCY = 8
_STALE_LIST_ATTEMPTS = 3
#: How often a calendar list of the connect-time round is asked again after an error carrying retryAfterMs.
_LIST_RETRIES = 10


def _now_text() -> str:
    return format_instant(datetime.now(UTC))


@dataclass
class AckPolicy:
    """How pushes are acknowledged. `refuse` replies `error_code` and does not apply the push;
    `withhold` applies it and never replies (a lost acknowledgement)."""

    mode: AckMode = "normal"
    delay_ms: int = 0
    error_code: int = int(ErrorCode.OVERLOADED)
    retry_after_ms: int = 1000


@dataclass
class ReplyResult:
    payload: dict[str, Any]
    problem: Problem | None


class ConnectionClosedError(Exception):
    pass


@dataclass
class _Connection:
    ws: aiohttp.ClientWebSocketResponse
    opened_at: float
    last_rx: float
    next_request_id: int = 0
    authenticated: bool = False
    authenticated_at: float | None = None
    pending: dict[int, tuple[str, asyncio.Future[ReplyResult]]] = field(default_factory=dict)
    unacked: set[int] = field(default_factory=set)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed_by_us: tuple[int, str] | None = None
    max_in_flight: int = 64

    def new_id(self) -> int:
        self.next_request_id += 1
        return self.next_request_id

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class BridgeClient:
    def __init__(
        self,
        config: EmulatorConfig,
        validator: FrameValidator,
        store: CalendarStore,
        directory: Directory,
    ) -> None:
        self._config = config
        self._validator = validator
        self._store = store
        self._directory = directory
        self._url = config.gateway_url
        self._fallback_urls = list(config.gateway_fallback_urls)
        #: The URL of the current (or last) connection: gateway_url or one of gateway_fallback_urls.
        self._connected_url: str | None = None
        self._server_id = config.server_id
        self._secret = config.secret
        self.ack_policy = AckPolicy()
        self._enabled = True
        self._shutdown = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._conn: _Connection | None = None
        self._state = "idle"
        self._session_info: dict[str, Any] | None = None
        self._last_error: str | None = None
        self._last_close: dict[str, Any] | None = None
        self._close_history: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self._protocol_errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=_MAX_RETAINED_ERRORS)
        self._protocol_error_count = 0
        self._list_errors: dict[str, dict[str, Any]] = {}
        self._counters: collections.Counter[str] = collections.Counter()
        self._pushes: collections.Counter[str] = collections.Counter()
        self._requests_sent: collections.Counter[str] = collections.Counter()
        self._requests_received: collections.Counter[str] = collections.Counter()
        #: The largest frame received from the gateway, in UTF-8 bytes (inspection: `largest_frame_bytes`).
        self._largest_frame = 0

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bridge-client")

    async def shutdown(self) -> None:
        self._shutdown = True
        self._wake.set()
        conn = self._conn
        if conn is not None and not conn.ws.closed:
            conn.closed_by_us = (int(CloseCode.GOING_AWAY), "emulator shutting down")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=CloseCode.GOING_AWAY, message=b"shutting down"), 5)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._session is not None:
            await self._session.close()
        self._state = "shut down"

    # ----------------------------------------------------------------- admin knobs
    async def drop(self, mode: str = "abort", code: int = int(CloseCode.GOING_AWAY)) -> bool:
        """Drop the current connection; the client reconnects with backoff. False if not connected."""
        conn = self._conn
        if conn is None or conn.ws.closed:
            return False
        self._counters["drops"] += 1
        if mode == "abort":
            sock = conn.ws.get_extra_info("socket")
            conn.closed_by_us = (1006, "dropped by admin (connection aborted, no close frame)")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            else:  # pragma: no cover - aiohttp always exposes the socket of an open connection
                await conn.ws.close(code=CloseCode.GOING_AWAY)
        else:
            conn.closed_by_us = (code, "dropped by admin")
            await conn.ws.close(code=code, message=b"dropped by admin")
        return True

    async def stay_away(self) -> None:
        """Disconnect (close 1001) and do not reconnect until resume()."""
        self._enabled = False
        conn = self._conn
        if conn is not None and not conn.ws.closed:
            conn.closed_by_us = (int(CloseCode.GOING_AWAY), "staying away (admin)")
            await conn.ws.close(code=CloseCode.GOING_AWAY, message=b"going away")
        self._wake.set()

    def resume(self) -> None:
        self._enabled = True
        self._wake.set()

    async def set_target(
        self,
        url: str | None,
        server_id: str | None,
        secret: str | None,
        *,
        fallback_urls: list[str] | None = None,
    ) -> None:
        if url is not None:
            self._url = url
        if fallback_urls is not None:
            self._fallback_urls = list(fallback_urls)
        if server_id is not None:
            self._server_id = server_id
        if secret is not None:
            self._secret = secret
        conn = self._conn
        if conn is not None and not conn.ws.closed:
            conn.closed_by_us = (int(CloseCode.GOING_AWAY), "target changed (admin)")
            await conn.ws.close(code=CloseCode.GOING_AWAY, message=b"reconnecting")
        self._wake.set()

    async def request_calendar(self, user: str, window_from: str | None, window_to: str | None) -> dict[str, Any]:
        conn = self._conn
        if conn is None or not conn.authenticated or conn.ws.closed:
            raise ConnectionClosedError("the bridge is not connected and authenticated")
        default_from, default_to = self.default_window()
        return await self._list_calendar(conn, user.lower(), window_from or default_from, window_to or default_to)

    def clear(self) -> None:
        self._store.clear()
        self._protocol_errors.clear()
        self._list_errors.clear()

    # ----------------------------------------------------------------- inspection
    def inspect(self) -> dict[str, Any]:
        conn = self._conn
        pushes = dict(self._pushes)
        pushes["total"] = sum(self._pushes.values())
        counters = self._counters
        return {
            "state": self._state,
            "gateway_url": self._url,
            "gateway_fallback_urls": list(self._fallback_urls),
            "connected_url": self._connected_url,
            "server_id": self._server_id,
            "enabled": self._enabled,
            "session": self._session_info,
            "connect_attempts": counters["connect_attempts"],
            "connections": counters["connections"],
            "authenticated_connections": counters["authenticated_connections"],
            "auth_failures": counters["auth_failures"],
            "drops": counters["drops"],
            "last_error": self._last_error,
            "last_close": self._last_close,
            "close_history": list(self._close_history),
            "pushes_received": pushes,
            "pushes_applied": counters["pushes_applied"],
            "duplicates_ignored": counters["duplicates_ignored"],
            "stale_ignored": counters["stale_ignored"],
            "invalid_pushes": counters["invalid_pushes"],
            "malformed_frames": counters["malformed_frames"],
            "acks_sent": counters["acks_sent"],
            "acks_pending": len(conn.unacked) if conn is not None else 0,
            "acks_refused": counters["acks_refused"],
            "acks_withheld": counters["acks_withheld"],
            "acks_lost": counters["acks_lost"],
            "window_rejections": counters["window_rejections"],
            "largest_frame_bytes": self._largest_frame,
            "requests_sent": dict(self._requests_sent),
            "requests_received": dict(self._requests_received),
            "calendar_lists": {
                "applied": counters["lists_applied"],
                "stale": counters["lists_stale"],
                "errors": counters["lists_errors"],
                "invalid": counters["lists_invalid"],
                "pages": counters["list_pages"],
                "unchanged": counters["lists_unchanged"],
                "incremental": counters["lists_incremental"],
                "incremental_events": counters["incremental_events"],
                "incremental_removed": counters["incremental_removed"],
                "incremental_refused": counters["lists_refused"],
                "whole_history": counters["lists_whole_history"],
            },
            "calendar_list_errors": dict(self._list_errors),
            "ack_policy": asdict(self.ack_policy),
            "users": self._store.summary(),
            "protocol_error_count": self._protocol_error_count,
            "protocol_errors": list(self._protocol_errors),
        }

    def default_window(self) -> tuple[str, str]:
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start = midnight - timedelta(days=self._config.window_days_back)
        end = midnight + timedelta(days=self._config.window_days_forward)
        return format_instant(start), format_instant(end)

    # ----------------------------------------------------------------- connection loop
    async def _run(self) -> None:
        delay = self._config.reconnect_initial
        while not self._shutdown:
            if self._url is None or not self._enabled:
                self._state = "idle" if self._url is None else "stopped"
                await self._wake.wait()
                self._wake.clear()
                continue
            self._state = "connecting"
            self._counters["connect_attempts"] += 1
            authenticated_for = 0.0
            for url in [self._url, *self._fallback_urls]:
                connections = self._counters["connections"]
                try:
                    authenticated_for = await self._connect_once(url)
                except asyncio.CancelledError:
                    raise
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    log.info("bridge connection to %s failed: %s", url, self._last_error)
                except Exception as exc:  # keep the emulator alive whatever a gateway does
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("bridge connection loop error")
                if self._counters["connections"] != connections or self._shutdown:
                    break  # it connected (and the connection ended): start again from gateway_url after the pause
            if self._shutdown:
                break
            if authenticated_for >= 60:
                delay = self._config.reconnect_initial
            if not self._enabled:
                continue
            self._state = "backoff"
            pause = delay * random.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=pause)
            self._wake.clear()
            delay = min(delay * 2, self._config.reconnect_max)

    def _ssl_option(self, url: str) -> ssl.SSLContext | bool:
        if not url.startswith("wss://"):
            return True
        if self._config.gateway_ca_file:
            return ssl.create_default_context(cafile=self._config.gateway_ca_file)
        return self._config.gateway_tls_verify

    async def _connect_once(self, url: str) -> float:
        assert self._session is not None
        async with self._session.ws_connect(
            url,
            max_msg_size=max(self._config.max_frame_bytes * 16, 16 * 1024 * 1024),
            autoclose=True,
            autoping=True,
            ssl=self._ssl_option(url),
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        ) as ws:
            self._counters["connections"] += 1
            self._connected_url = url
            now = time.monotonic()
            conn = _Connection(ws=ws, opened_at=now, last_rx=now, max_in_flight=self._config.max_in_flight)
            self._conn = conn
            try:
                return await self._serve(conn)
            finally:
                self._conn = None
                self._finish(conn)

    def _finish(self, conn: _Connection) -> None:
        for _method, future in conn.pending.values():
            if not future.done():
                future.set_exception(ConnectionClosedError("connection closed"))
        conn.pending.clear()
        lost = len(conn.unacked)
        if lost:
            self._counters["acks_lost"] += lost
        conn.unacked.clear()
        self._store.discard_pending_snapshots()
        if conn.closed_by_us is not None:
            code, reason = conn.closed_by_us
            initiator = "emulator"
        elif conn.ws.close_code is not None:
            code, reason, initiator = conn.ws.close_code, "", "gateway"
        else:
            code, reason, initiator = 1006, "connection lost without a close frame", "network"
        self._last_close = {"code": code, "reason": reason, "initiator": initiator, "at": _now_text()}
        self._close_history.append(self._last_close)
        self._session_info = None
        log.info("bridge connection closed: code %s by %s %s", code, initiator, reason)

    async def _serve(self, conn: _Connection) -> float:
        reader = conn.spawn(self._read_loop(conn))
        try:
            self._state = "authenticating"
            payload: dict[str, Any] = {
                "serverId": self._server_id,
                "secret": self._secret,
                "protocolVersion": PROTOCOL_VERSION,
                "serverVersion": self._config.server_version,
                "maxInFlight": self._config.max_in_flight,
            }
            if self._config.catch_up == "lists":
                # Revision 1.3 (docs/bridge-protocol.md §3 step 3): no catch-up snapshots, this server asks every
                # directory user's list right after auth, with sinceSeq + incremental for the windows it holds.
                payload["catchUp"] = "lists"
            try:
                result = await self._call(conn, "auth", payload)
            except ConnectionClosedError:
                return 0.0
            if result is None:
                return 0.0
            if result.problem is not None or result.payload.get("errorCode") != 0:
                self._counters["auth_failures"] += 1
                self._last_error = f"auth refused: {json.dumps(result.payload)[:500]}"
                self._state = "auth failed"
                # The gateway closes the socket after an auth error; give it a moment, then close.
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(reader), timeout=5)
                return 0.0
            conn.authenticated = True
            conn.authenticated_at = time.monotonic()
            limits = result.payload.get("limits", {})
            if isinstance(limits, dict) and isinstance(limits.get("maxInFlight"), int):
                conn.max_in_flight = min(self._config.max_in_flight, limits["maxInFlight"])
            self._session_info = result.payload
            self._counters["authenticated_connections"] += 1
            self._state = "connected"
            log.info("bridge authenticated to %s as %s", self._connected_url, self._server_id)
            conn.spawn(self._pinger(conn))
            conn.spawn(self._initial_lists(conn))
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            return time.monotonic() - conn.authenticated_at
        finally:
            for task in list(conn.tasks):
                task.cancel()
            if conn.tasks:
                await asyncio.gather(*conn.tasks, return_exceptions=True)
            if not conn.ws.closed:
                # A close of ours may be under way (an admin drop wakes the reader first): send its code, not 1000.
                code = conn.closed_by_us[0] if conn.closed_by_us and conn.closed_by_us[0] != 1006 else 1000
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=code)

    # ----------------------------------------------------------------- sending
    async def _send(self, conn: _Connection, frame: dict[str, Any], definition: str) -> None:
        problem = self._validator.problem(frame, definition)
        if problem is not None:
            # A bug of the emulator itself: make it visible rather than sending garbage.
            self._protocol_error("emulator", "invalid_outgoing_frame", problem.message, frame)
            log.error("emulator built an invalid %s frame: %s", definition, problem.message)
        text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
        async with conn.send_lock:
            await conn.ws.send_str(text)

    async def _reply(self, conn: _Connection, method: str | None, frame_id: int, payload: dict[str, Any]) -> None:
        definition = f"{method}.reply" if method is not None and frame_id > 0 else "replyFrame"
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            await self._send(conn, reply_frame(frame_id, payload), definition)

    async def _call(
        self, conn: _Connection, method: str, payload: dict[str, Any], timeout: float | None = None
    ) -> ReplyResult | None:
        """Send a request and wait for its reply. None on timeout (the connection is then closed)."""
        frame_id = conn.new_id()
        future: asyncio.Future[ReplyResult] = asyncio.get_running_loop().create_future()
        conn.pending[frame_id] = (method, future)
        self._requests_sent[method] += 1
        try:
            await self._send(conn, request_frame(frame_id, method, payload), f"{method}.request")
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            conn.pending.pop(frame_id, None)
            raise ConnectionClosedError(str(exc)) from exc
        wait = timeout if timeout is not None else self._config.reply_timeout
        try:
            return await asyncio.wait_for(future, timeout=wait)
        except TimeoutError:
            conn.pending.pop(frame_id, None)
            self._protocol_error("gateway", "reply_timeout", f"no reply to {method} id {frame_id} within {wait} s")
            if not conn.ws.closed:
                conn.closed_by_us = (int(CloseCode.TIMEOUT), f"no reply to {method} within {wait} s")
                await conn.ws.close(code=CloseCode.TIMEOUT, message=b"reply timeout")
            return None

    # ----------------------------------------------------------------- receiving
    async def _read_loop(self, conn: _Connection) -> None:
        try:
            await self._read_frames(conn)
        finally:
            # Unblock every caller waiting for a reply on this connection.
            for _method, future in conn.pending.values():
                if not future.done():
                    future.set_exception(ConnectionClosedError("connection closed"))
            conn.pending.clear()

    async def _read_frames(self, conn: _Connection) -> None:
        ws = conn.ws
        silence = 2 * self._config.ping_interval
        while True:
            if conn.closed_by_us is not None:
                # A close of ours is under way: receive() on a closing socket would close it again with 1000
                # before our own code is sent.
                return
            try:
                message = await ws.receive(timeout=silence)
            except TimeoutError:
                self._protocol_error("gateway", "silence", f"no frame for {silence} s")
                conn.closed_by_us = (int(CloseCode.TIMEOUT), f"no frame for {silence} s")
                await ws.close(code=CloseCode.TIMEOUT, message=b"peer unresponsive")
                return
            conn.last_rx = time.monotonic()
            if message.type == aiohttp.WSMsgType.TEXT:
                if not await self._on_text(conn, message.data):
                    return
            elif message.type == aiohttp.WSMsgType.BINARY:
                self._counters["malformed_frames"] += 1
                self._protocol_error("gateway", "binary_frame", f"binary frame of {len(message.data)} bytes")
                conn.closed_by_us = (int(CloseCode.UNSUPPORTED_DATA), "binary frame")
                await ws.close(code=CloseCode.UNSUPPORTED_DATA, message=b"text frames only")
                return
            elif message.type == aiohttp.WSMsgType.ERROR:
                self._last_error = f"websocket error: {ws.exception()!r}"
                return
            else:  # CLOSE, CLOSING, CLOSED
                return

    async def _on_text(self, conn: _Connection, data: str) -> bool:
        size = len(data.encode("utf-8"))
        self._largest_frame = max(self._largest_frame, size)
        if size > self._config.max_frame_bytes:
            self._counters["malformed_frames"] += 1
            self._protocol_error(
                "gateway", "frame_too_large", f"frame of {size} bytes exceeds {self._config.max_frame_bytes}"
            )
            conn.closed_by_us = (int(CloseCode.FRAME_TOO_LARGE), f"frame of {size} bytes")
            await conn.ws.close(code=CloseCode.FRAME_TOO_LARGE, message=b"frame too large")
            return False
        try:
            frame = json.loads(data)
        except ValueError as exc:
            await self._malformed(conn, 0, f"frame is not JSON: {exc}", data)
            return True
        if not isinstance(frame, dict):
            await self._malformed(conn, 0, f"frame is a JSON {type(frame).__name__}, not an object", data)
            return True
        frame_type = frame.get("type")
        raw_id = frame.get("id")
        readable_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) and raw_id > 0 else 0
        if frame_type == REPLY:
            self._on_reply(conn, frame)
            return True
        if frame_type != REQUEST:
            await self._malformed(conn, readable_id, f"type: {frame_type!r} is neither 1 nor 2", data)
            return True
        problem = self._validator.problem(frame, "requestFrame", relative_to_payload=False)
        if problem is not None:
            await self._malformed(conn, readable_id, problem.message, data)
            return True
        await self._on_request(conn, frame)
        return True

    async def _malformed(self, conn: _Connection, frame_id: int, description: str, data: str) -> None:
        self._counters["malformed_frames"] += 1
        self._protocol_error("gateway", "malformed_frame", description, data[:300])
        await self._reply(conn, None, frame_id, error_payload(ErrorCode.MALFORMED_FRAME, description))

    def _on_reply(self, conn: _Connection, frame: dict[str, Any]) -> None:
        problem = self._validator.problem(frame, "replyFrame", relative_to_payload=False)
        if problem is not None:
            self._counters["malformed_frames"] += 1
            self._protocol_error("gateway", "malformed_reply", problem.message, frame)
            return
        entry = conn.pending.pop(frame["id"], None)
        if entry is None:
            self._protocol_error("gateway", "unexpected_reply", f"reply id {frame['id']} answers no open request")
            return
        method, future = entry
        problem = self._validator.problem(frame, f"{method}.reply")
        if problem is not None:
            self._protocol_error("gateway", "invalid_reply", f"{method} reply: {problem.message}", frame)
        elif method == "auth" and frame["payload"]["errorCode"] == 0:
            # Authenticated from this very frame on: the gateway may push right behind its auth reply.
            conn.authenticated = True
        if not future.done():
            future.set_result(ReplyResult(payload=frame["payload"], problem=problem))

    async def _on_request(self, conn: _Connection, frame: dict[str, Any]) -> None:
        method: str = frame["method"]
        frame_id: int = frame["id"]
        self._requests_received[method] += 1
        if method == "ping":
            problem = self._validator.problem(frame, "ping.request")
            if problem is not None:
                await self._invalid(conn, method, frame_id, problem, frame)
                return
            await self._reply(conn, method, frame_id, {"errorCode": 0, "ts": _now_text()})
            return
        if method not in PUSH_METHODS:
            served = ", ".join((*PUSH_METHODS, "ping"))
            description = f"method {method!r} is not served by TrueConf Server (it serves {served})"
            self._protocol_error("gateway", "unknown_method", description)
            await self._reply(conn, None, frame_id, error_payload(ErrorCode.UNKNOWN_METHOD, description))
            return
        if not conn.authenticated:
            description = f"{method} before a successful auth"
            self._protocol_error("gateway", "not_authenticated", description)
            await self._reply(conn, method, frame_id, error_payload(ErrorCode.NOT_AUTHENTICATED, description))
            return
        problem = self._validator.problem(frame, f"{method}.request")
        if problem is None:
            problem = self._check_push(method, frame["payload"])
        if problem is not None:
            self._counters["invalid_pushes"] += 1
            await self._invalid(conn, method, frame_id, problem, frame)
            return
        payload: dict[str, Any] = frame["payload"]
        user = payload["user"].lower()
        if self._directory.by_email(user) is None:
            description = f"user {user!r} is not a user of TrueConf Server {self._server_id}"
            self._protocol_error("gateway", "unknown_user", description)
            await self._reply(conn, method, frame_id, error_payload(ErrorCode.UNKNOWN_USER, description, field="user"))
            return
        self._pushes[method] += 1
        policy = self.ack_policy
        if policy.mode == "refuse":
            self._counters["acks_refused"] += 1
            code = ErrorCode(policy.error_code)
            retry = policy.retry_after_ms if code in (ErrorCode.OVERLOADED, ErrorCode.INTERNAL_ERROR) else None
            await self._reply(
                conn,
                method,
                frame_id,
                error_payload(code, f"acknowledgement refused by the emulator ({code.name})", retry_after_ms=retry),
            )
            return
        if len(conn.unacked) >= conn.max_in_flight:
            self._counters["window_rejections"] += 1
            description = f"{len(conn.unacked)} pushes already waiting for acknowledgement"
            self._protocol_error("gateway", "window_exceeded", description)
            await self._reply(
                conn,
                method,
                frame_id,
                error_payload(ErrorCode.OVERLOADED, description, retry_after_ms=max(policy.delay_ms, 100)),
            )
            return
        outcome = self._store.apply_push(method, payload)
        if outcome.applied:
            self._counters["pushes_applied"] += 1
        elif outcome.duplicate:
            self._counters["duplicates_ignored"] += 1
        elif outcome.stale:
            self._counters["stale_ignored"] += 1
        ack = {"errorCode": 0, "applied": outcome.applied, "seq": outcome.last_seq}
        if policy.mode == "withhold":
            self._counters["acks_withheld"] += 1
            conn.unacked.add(frame_id)
            return
        if policy.delay_ms > 0:
            conn.unacked.add(frame_id)
            conn.spawn(self._delayed_ack(conn, method, frame_id, ack, policy.delay_ms / 1000))
            return
        await self._reply(conn, method, frame_id, ack)
        self._counters["acks_sent"] += 1

    async def _delayed_ack(
        self, conn: _Connection, method: str, frame_id: int, ack: dict[str, Any], delay: float
    ) -> None:
        await asyncio.sleep(delay)
        if conn.ws.closed or frame_id not in conn.unacked:
            return
        await self._reply(conn, method, frame_id, ack)
        conn.unacked.discard(frame_id)
        self._counters["acks_sent"] += 1

    async def _invalid(
        self, conn: _Connection, method: str, frame_id: int, problem: Problem, frame: dict[str, Any]
    ) -> None:
        self._protocol_error("gateway", "invalid_payload", f"{method}: {problem.message}", frame)
        await self._reply(
            conn,
            method,
            frame_id,
            error_payload(ErrorCode.INVALID_PAYLOAD, problem.message, field=problem.field),
        )

    def _check_push(self, method: str, payload: dict[str, Any]) -> Problem | None:
        user = payload["user"].lower()
        if method in ("calendar.upsert", "calendar.cancel"):
            event = payload["event"]
            if event["seq"] != payload["seq"]:
                return Problem("event.seq", f"event.seq {event['seq']} differs from the push's seq {payload['seq']}")
            return check_event(event, user, "event")
        if method == "calendar.snapshot":
            window = check_window(payload["from"], payload["to"])
            if isinstance(window, Problem):
                return window
            problem = check_event_list(payload["events"], user, window, "events")
            if problem is not None:
                return problem
            for index, event in enumerate(payload["events"]):
                if event["seq"] > payload["seq"]:
                    return Problem(
                        f"events[{index}].seq",
                        f"events[{index}].seq {event['seq']} is above the snapshot's seq {payload['seq']}",
                    )
            return self._store.check_snapshot_chunk(payload)
        return None

    # ----------------------------------------------------------------- calendar lists
    async def _initial_lists(self, conn: _Connection) -> None:
        window_from, window_to = self.default_window()
        limit = asyncio.Semaphore(_LIST_CONCURRENCY)

        async def one(email: str) -> None:
            # An error reply with retryAfterMs (8 INTERNAL_ERROR, 9 OVERLOADED: "how long to wait before
            # resending", docs/bridge-protocol.md §2) is asked again after that long, as long as the connection
            # lasts - a gateway whose sync-engine is still starting answers 8 with retryAfterMs.
            for _attempt in range(_LIST_RETRIES):
                async with limit:
                    try:
                        outcome = await self._list_calendar(conn, email, window_from, window_to)
                    except ConnectionClosedError:
                        return
                retry_ms = outcome.get("retryAfterMs") if outcome.get("errorCode") else None
                if not isinstance(retry_ms, int) or retry_ms <= 0 or conn.ws.closed:
                    return
                await asyncio.sleep(retry_ms / 1000)

        await asyncio.gather(*(one(email.lower()) for email in self._directory.emails()))

    async def _list_calendar(self, conn: _Connection, user: str, window_from: str, window_to: str) -> dict[str, Any]:
        window = check_window(window_from, window_to)
        if isinstance(window, Problem):
            raise ValueError(window.message)
        if window[1] - window[0] > timedelta(days=MAX_WINDOW_DAYS):
            raise ValueError(f"window {window_from} – {window_to} is longer than {MAX_WINDOW_DAYS} days")
        outcome: dict[str, Any] = {}
        for _attempt in range(_STALE_LIST_ATTEMPTS):
            request: dict[str, Any] = {"user": user, "from": window_from, "to": window_to}
            since = self._store.holds_window(user, window_from, window_to)
            if since > 0:  # after a reconnect too: only what changed since is asked for (§6.2)
                request["sinceSeq"] = since
                request["incremental"] = True
            payload = await self._list_pages(conn, request)
            if payload.get("errorCode") != 0:
                return payload
            self._list_errors.pop(user, None)
            if payload.get("unchanged"):  # what this TCS holds is current (§6.2 "Since a sequence")
                self._counters["lists_applied"] += 1
                self._counters["lists_unchanged"] += 1
                return payload
            if payload.get("incremental"):
                outcome_of_changes = self._apply_changes(user, window, (window_from, window_to), payload)
                if outcome_of_changes == "applied":
                    return payload
                outcome = payload
                continue
            if payload.get("wholeBecause") is not None:
                self._counters["lists_whole_history"] += 1
            if self._store.apply_list(user, window, payload["seq"], payload["events"], (window_from, window_to)):
                self._counters["lists_applied"] += 1
                return payload
            self._counters["lists_stale"] += 1
            self._protocol_error(
                "gateway",
                "stale_calendar_list",
                f"getCalendarList reply for {user} has seq {payload['seq']} below lastSeq "
                f"{self._store.last_seq(user)}; asking again",
            )
            outcome = payload
        return outcome

    def _apply_changes(
        self, user: str, window: tuple[datetime, datetime], window_text: tuple[str, str], payload: dict[str, Any]
    ) -> str:
        """Apply an incremental answer strictly (§6.2 "Changes since a sequence"): onto the window held as of its
        `sinceSeq`, else refused - the window is then asked for whole."""
        outcome = self._store.apply_changes(
            user, window, window_text, payload["sinceSeq"], payload["seq"], payload["removed"], payload["events"]
        )
        if outcome == "applied":
            self._counters["lists_applied"] += 1
            self._counters["lists_incremental"] += 1
            self._counters["incremental_events"] += len(payload["events"])
            self._counters["incremental_removed"] += len(payload["removed"])
        elif outcome == "stale":
            self._counters["lists_stale"] += 1
            self._protocol_error(
                "gateway",
                "stale_calendar_list",
                f"incremental getCalendarList reply for {user} has seq {payload['seq']} below lastSeq "
                f"{self._store.last_seq(user)}; asking again",
            )
        else:
            self._counters["lists_refused"] += 1
            self._store.forget_window(user, window_text)
            self._protocol_error(
                "gateway",
                "unknown_base",
                f"incremental getCalendarList reply for {user} is based on sinceSeq {payload['sinceSeq']}, which "
                f"this TCS does not hold the window at (lastSeq {self._store.last_seq(user)}); asking for it whole",
            )
        return outcome

    async def _list_pages(self, conn: _Connection, request: dict[str, Any]) -> dict[str, Any]:
        """Every page of one list (docs/bridge-protocol.md §6.2 "Pages"): page 0, then page 1 … pageCount−1 of
        its listId. The answer: page 0's payload with the events of all pages, or what went wrong."""
        user = request["user"]
        first: dict[str, Any] | None = None
        events: list[dict[str, Any]] = []
        removed: list[str] = []
        ids: set[str] = set()
        page = 0
        while first is None or page < first["pageCount"]:
            asked = dict(request, page=page) if first is None else dict(request, page=page, listId=first["listId"])
            result = await self._call(conn, "getCalendarList", asked)
            if result is None:
                return {"emulator": "no reply within the reply timeout"}
            payload = result.payload
            if result.problem is not None:
                self._counters["lists_invalid"] += 1
                return {"emulator": f"invalid reply: {result.problem.message}", "reply": payload}
            if payload["errorCode"] != 0:
                self._counters["lists_errors"] += 1
                self._list_errors[user] = payload
                return payload
            problem = self._check_list_reply(asked, payload) or self._check_page(asked, first, page, payload, ids)
            if problem is not None:
                self._counters["lists_invalid"] += 1
                self._protocol_error("gateway", "invalid_reply", f"getCalendarList reply: {problem.message}", payload)
                return {"emulator": f"invalid reply: {problem.message}", "reply": payload}
            self._counters["list_pages"] += 1
            ids.update(event["id"] for event in payload["events"])
            ids.update(payload.get("removed", []))
            events.extend(payload["events"])
            removed.extend(payload.get("removed", []))
            if first is None:
                first = payload
            page += 1
        if "removed" in first:
            return dict(first, events=events, removed=removed)
        return dict(first, events=events)

    @staticmethod
    def _check_page(
        request: dict[str, Any], first: dict[str, Any] | None, page: int, payload: dict[str, Any], ids: set[str]
    ) -> Problem | None:
        """A page answers the page asked, of the same list as page 0, and repeats no event of an earlier page."""
        if "page" not in payload:
            return Problem("page", "the reply to a request with page has no page, listId and pageCount")
        if payload.get("unchanged") and ("sinceSeq" not in request or payload["events"]):
            return Problem("unchanged", "unchanged answers a request with sinceSeq, with no events")
        if payload.get("unchanged") and payload["seq"] > request["sinceSeq"]:
            return Problem("seq", f"seq {payload['seq']} of an unchanged list is above sinceSeq {request['sinceSeq']}")
        if payload["page"] != page:
            return Problem("page", f"page {payload['page']} answers a request for page {page}")
        if first is not None:
            for name in ("listId", "pageCount", "seq", "incremental", "sinceSeq", "wholeBecause"):
                if payload.get(name) != first.get(name):
                    return Problem(name, f"{name} {payload.get(name)!r} differs from {first.get(name)!r} of page 0")
        elif payload["page"] >= payload["pageCount"]:
            return Problem("page", f"page {payload['page']} is not below pageCount {payload['pageCount']}")
        for index, event_id in enumerate(payload.get("removed", [])):
            if event_id in ids:
                return Problem(f"removed[{index}]", f"removed[{index}] {event_id!r} came in an earlier page")
        for index, event in enumerate(payload["events"]):
            if event["id"] in ids:
                return Problem(f"events[{index}].id", f"events[{index}].id {event['id']!r} came in an earlier page")
        return None

    @staticmethod
    def _check_changes(request: dict[str, Any], payload: dict[str, Any]) -> Problem | None:
        """An incremental answer (or a whole one saying why) answers a request with `incremental`, is based on the
        sinceSeq asked, and holds only events changed since, none of them also removed (§6.2)."""
        if "incremental" not in payload:
            if request.get("incremental") and not payload.get("unchanged"):
                return Problem(
                    "incremental", "the answer to a request with incremental says neither incremental nor unchanged"
                )
            return None
        if not request.get("incremental"):
            return Problem("incremental", "incremental in the answer to a request without incremental")
        if not payload["incremental"]:
            return None
        if payload["sinceSeq"] != request["sinceSeq"]:
            return Problem(
                "sinceSeq", f"sinceSeq {payload['sinceSeq']} differs from the requested {request['sinceSeq']}"
            )
        removed = set(payload["removed"])
        if len(removed) != len(payload["removed"]):
            return Problem("removed", "an id is removed twice")
        for index, event in enumerate(payload["events"]):
            if event["seq"] <= payload["sinceSeq"]:
                return Problem(
                    f"events[{index}].seq",
                    f"events[{index}].seq {event['seq']} is not above sinceSeq {payload['sinceSeq']}: not a change",
                )
            if event["id"] in removed:
                return Problem(f"events[{index}].id", f"events[{index}].id {event['id']!r} is also removed")
        return None

    def _check_list_reply(self, request: dict[str, Any], payload: dict[str, Any]) -> Problem | None:
        problem = self._check_changes(request, payload)
        if problem is not None:
            return problem
        for name in ("user", "from", "to"):
            expected = request[name]
            got = payload[name]
            same = got.lower() == expected.lower() if name == "user" else got == expected
            if not same:
                return Problem(name, f"{name} {got!r} differs from the requested {expected!r}")
        window = check_window(payload["from"], payload["to"])
        if isinstance(window, Problem):
            return window
        problem = check_event_list(payload["events"], request["user"], window, "events")
        if problem is not None:
            return problem
        for index, event in enumerate(payload["events"]):
            if event["seq"] > payload["seq"]:
                return Problem(
                    f"events[{index}].seq",
                    f"events[{index}].seq {event['seq']} is above the reply's seq {payload['seq']}",
                )
        return None

    # ----------------------------------------------------------------- liveness
    async def _pinger(self, conn: _Connection) -> None:
        interval = self._config.ping_interval
        while not conn.ws.closed:
            idle = time.monotonic() - conn.last_rx
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            try:
                await self._call(conn, "ping", {"ts": _now_text()})
            except ConnectionClosedError:
                return
            await asyncio.sleep(interval)

    # ----------------------------------------------------------------- bookkeeping
    def _protocol_error(self, side: str, kind: str, detail: str, frame: Any = None) -> None:
        self._protocol_error_count += 1
        entry: dict[str, Any] = {"at": _now_text(), "by": side, "kind": kind, "detail": detail}
        if frame is not None:
            text = frame if isinstance(frame, str) else json.dumps(frame, ensure_ascii=False)
            entry["frame"] = _redact(text)[:1000]
        self._protocol_errors.append(entry)
        log.warning("bridge protocol error (%s, %s): %s", side, kind, detail)


def _redact(text: str) -> str:
    """Never keep a secret in the inspection log."""
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict) and isinstance(data.get("payload"), dict) and "secret" in data["payload"]:
        data["payload"]["secret"] = "***"
        return json.dumps(data, ensure_ascii=False)
    return text

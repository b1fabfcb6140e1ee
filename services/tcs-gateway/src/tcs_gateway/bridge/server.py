"""The bridge's WebSocket server on `wsPort` (ws:// or, with tcs.tlsCertFile/tlsKeyFile, wss://).

Only the bridge path upgrades (anything else is 404, other methods 405). Frames larger than maxFrameBytes are
refused while being read — before they are buffered — and the connection is closed with 4009. At shutdown every
connection is closed with 1001 (going away).

Unauthenticated peers (guard.py, docs/bridge-protocol.md §11): every accepted TCP connection is counted against
its remote address until it authenticates; one over a cap is closed at once — RFC 6455 §4.1 (note on
simultaneous connections): "Servers can refuse to accept connections from hosts/IP addresses with an excessive
number of existing connections". The whole upgrade request must arrive within `handshake_timeout` (an inactive
connection's timeout, RFC 9112 §9.5): that is aiohttp's `keepalive_timeout`, which aiohttp arms when a
connection is accepted and which closes it if no complete request has arrived by then (a slowloris trickling
its headers included); after a response it is the idle time of a keep-alive connection, which refusals do not
keep (they send `Connection: close`, RFC 9112 §9.6). Failed auths are backed off per (address, claimed server id),
so the upgrade itself, which names no server, is not refused for them; the `auth` frame is (auth.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.web_protocol import RequestHandler

from tcs_gateway.bridge.framing import CloseCode
from tcs_gateway.bridge.guard import BridgeGuard
from tcs_gateway.bridge.session import Session, SessionContext

log = logging.getLogger(__name__)


class BridgeSocket(web.WebSocketResponse):
    """aiohttp closes an oversized message with 1009; the protocol says 4009."""

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG:
            code = int(CloseCode.FRAME_TOO_LARGE)
            message = b"frame exceeds maxFrameBytes"
        return await super().close(code=code, message=message, drain=drain)


def peer_address(transport: asyncio.BaseTransport | None) -> tuple[str, str]:
    """(address, "address:port") of a connection's remote end; ("unknown", "unknown") when it has none."""
    if transport is not None:
        name = transport.get_extra_info("peername")
        if isinstance(name, tuple) and len(name) >= 2:
            return str(name[0]), f"{name[0]}:{name[1]}"
    return "unknown", "unknown"


class GuardedServer(web.Server):
    """aiohttp's low-level server, counting every accepted connection against its address (BridgeGuard.admit)
    until `promote` (authenticated) or its end; a connection over a cap is closed as it is accepted, before aiohttp
    reads a byte of it."""

    def __init__(self, handler: Any, guard: BridgeGuard, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.guard = guard
        self._unauthenticated: dict[RequestHandler, str] = {}

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        address, _ = peer_address(transport)
        if self.guard.admit(address) is not None:
            transport.abort()
            return
        self._unauthenticated[handler] = address

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self.promote(handler)
        super().connection_lost(handler, exc)

    def promote(self, handler: RequestHandler) -> None:
        """The connection authenticated (or ended): it no longer counts as unauthenticated."""
        address = self._unauthenticated.pop(handler, None)
        if address is not None:
            self.guard.release(address)


class BridgeServer:
    def __init__(self, context: SessionContext) -> None:
        self.context = context
        self.settings = context.settings
        if context.guard is None:
            context.guard = BridgeGuard(context.settings)
        self.guard: BridgeGuard = context.guard
        self._runner: web.ServerRunner | None = None
        self._server: GuardedServer | None = None
        self._guard_task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0
        self.accepting = True

    @property
    def scheme(self) -> str:
        return "wss" if self.settings.tls_cert_file else "ws"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.settings.ws_host}:{self.port}{self.settings.bridge_path}"

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert_file or not self.settings.tls_key_file:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.tls_cert_file, self.settings.tls_key_file)
        return context

    async def start(self) -> int:
        # keepalive_timeout doubles as the handshake timeout: see the module's docstring.
        self._server = GuardedServer(
            self._handle, self.guard, access_log=None, keepalive_timeout=self.settings.handshake_timeout
        )
        self._runner = web.ServerRunner(self._server, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        self._guard_task = asyncio.get_running_loop().create_task(self.guard.run(), name="bridge-guard")
        site = web.TCPSite(self._runner, self.settings.ws_host, self.settings.ws_port, ssl_context=self._ssl_context())
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.settings.ws_port
        log.info("calendar bridge listening", extra={"url": self.url})
        return self.port

    @staticmethod
    def _refusal(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
        response = web.Response(status=status, text=text, headers=headers)
        response.force_close()  # Connection: close — a refused peer does not keep the connection
        return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        address, peer = peer_address(request.transport)
        if request.path != self.settings.bridge_path:
            return self._refusal(404, "not found")
        if request.method not in ("GET", "HEAD"):
            return self._refusal(405, f"{self.settings.bridge_path} is a WebSocket endpoint", {"Allow": "GET"})
        if not self.accepting:
            return self._refusal(503, "the gateway is shutting down")
        ws = BridgeSocket(max_msg_size=self.settings.max_frame_bytes + 1, compress=False, autoping=True, heartbeat=None)
        if not ws.can_prepare(request).ok:
            return self._refusal(400, f"{self.settings.bridge_path} is a WebSocket endpoint")
        await ws.prepare(request)
        session = Session(ws, peer, self.context, address=address)
        server, handler = self._server, request.protocol
        if server is not None:
            session.on_authenticated = lambda: server.promote(handler)
        self.context.sessions.add(session)
        log.debug("bridge connection opened", extra={"peer": peer, "session": session.session_id})
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await session.run()
        finally:
            if task is not None:
                self._handlers.discard(task)
        return ws

    async def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "gateway shutting down") -> None:
        self.accepting = False
        sessions = list(self.context.sessions)
        await asyncio.gather(*(s.close(code, reason) for s in sessions), return_exceptions=True)
        for session in sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.finished.wait(), 5.0)

    async def stop(self) -> None:
        await self.close_all()
        if self._guard_task is not None:
            self._guard_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._guard_task
            self._guard_task = None
            self.guard.flush()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

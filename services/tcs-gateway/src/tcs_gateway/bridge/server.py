"""The bridge's WebSocket server on `wsPort` (ws:// or, with tcs.tlsCertFile/tlsKeyFile, wss://).

Only the bridge path upgrades (anything else is 404). Frames larger than maxFrameBytes are refused while being
read — before they are buffered — and the connection is closed with 4009. At shutdown every connection is
closed with 1001 (going away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from aiohttp import WSCloseCode, web

from tcs_gateway.bridge.framing import CloseCode
from tcs_gateway.bridge.session import Session, SessionContext

log = logging.getLogger(__name__)


class BridgeSocket(web.WebSocketResponse):
    """aiohttp closes an oversized message with 1009; the protocol says 4009."""

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG:
            code = int(CloseCode.FRAME_TOO_LARGE)
            message = b"frame exceeds maxFrameBytes"
        return await super().close(code=code, message=message, drain=drain)


class BridgeServer:
    def __init__(self, context: SessionContext) -> None:
        self.context = context
        self.settings = context.settings
        self._runner: web.AppRunner | None = None
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
        app = web.Application()
        app.router.add_get(self.settings.bridge_path, self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.ws_host, self.settings.ws_port, ssl_context=self._ssl_context())
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.settings.ws_port
        log.info("calendar bridge listening", extra={"url": self.url})
        return self.port

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = f"{request.remote}" if request.remote else "unknown"
        if request.transport is not None:
            address = request.transport.get_extra_info("peername")
            if isinstance(address, tuple) and len(address) >= 2:
                peer = f"{address[0]}:{address[1]}"
        if not self.accepting:
            return web.Response(status=503, text="the gateway is shutting down")
        unauthenticated = sum(1 for s in self.context.sessions if not s.authenticated)
        if unauthenticated >= self.settings.max_unauthenticated:
            log.warning("too many unauthenticated bridge connections; refusing", extra={"peer": peer})
            return web.Response(status=503, text="too many unauthenticated connections")
        ws = BridgeSocket(max_msg_size=self.settings.max_frame_bytes + 1, compress=False, autoping=True, heartbeat=None)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text=f"{self.settings.bridge_path} is a WebSocket endpoint")
        await ws.prepare(request)
        session = Session(ws, peer, self.context)
        self.context.sessions.add(session)
        log.info("bridge connection opened", extra={"peer": peer, "session": session.session_id})
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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

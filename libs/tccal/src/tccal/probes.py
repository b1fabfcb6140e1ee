"""Readiness bookkeeping and the HTTP side port: /healthz (alive), /readyz (dependencies), /metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)
Check = Callable[[], Awaitable[None]]


class Readiness:
    """Named dependency checks; ready when every check passes (a check raises to say why not)."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.checks: dict[str, Check] = {}
        self.timeout = timeout
        self.listeners: list[Callable[[bool, dict[str, str]], Awaitable[None]]] = []
        self.ready: bool | None = None

    def add(self, name: str, check: Check) -> None:
        self.checks[name] = check

    async def evaluate(self) -> dict[str, str]:
        async def run(check: Check) -> str:
            try:
                await asyncio.wait_for(check(), self.timeout)
            except Exception as exc:  # any failure means not ready; the text says why
                return f"down: {exc!r}"
            return "ok"

        names = list(self.checks)
        results = dict(zip(names, await asyncio.gather(*(run(self.checks[n]) for n in names)), strict=True))
        ready = all(v == "ok" for v in results.values())
        if ready != self.ready:
            self.ready = ready
            for listener in self.listeners:
                await listener(ready, results)
        return results


class ProbeServer:
    def __init__(self, service: str, host: str, port: int, readiness: Readiness) -> None:
        self.service = service
        self.host = host
        self.requested_port = port
        self.port = 0
        self.readiness = readiness
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.requested_port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"service": self.service, "status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await self.readiness.evaluate()
        ready = all(v == "ok" for v in checks.values())
        return web.json_response(
            {"service": self.service, "ready": ready, "checks": checks}, status=200 if ready else 503
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

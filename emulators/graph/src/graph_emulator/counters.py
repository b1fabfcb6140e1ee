"""Counts of the HTTP requests the emulator answered, for benchmarks (GET /_emulator/requests): not part of Graph.

`http` counts requests as they arrive on the wire — `token` (the identity platform's token endpoint), `graph` (one
Graph v1.0 request) and `batch` (one `POST /$batch`, however many members); `operations` counts every Graph
operation the emulator ran, batch members included, by method and handler (e.g. `GET calendar_view_delta`). The
control API itself is not counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestCounter:
    def __init__(self) -> None:
        self.http: Counter[str] = Counter()
        self.operations: Counter[str] = Counter()

    @staticmethod
    def kind(path: str) -> str | None:
        """What a request path is: `token`, `batch`, `graph`, or None for the control API and discovery."""
        if path.startswith("/_emulator/"):
            return None
        if path == "/v1.0/$batch":
            return "batch"
        if path.startswith("/v1.0/"):
            return "graph"
        if path.endswith("/oauth2/v2.0/token"):
            return "token"
        return None

    def operation(self, method: str, handler_name: str) -> None:
        self.operations[f"{method} {handler_name.strip('_')}"] += 1

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        kind = self.kind(request.path)
        if kind is not None:
            self.http[kind] += 1
        return await handler(request)

    def snapshot(self) -> dict[str, object]:
        return {
            "total": sum(self.http.values()),
            "http": dict(sorted(self.http.items())),
            "operations": dict(sorted(self.operations.items())),
        }

"""The emulator's HTTPS server: token endpoint, Graph v1.0, $batch and the test control API."""

from __future__ import annotations

import json
import logging
import ssl
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import MultiDict

from . import persistence
from .auth import TokenIssuer
from .batch import run_batch
from .config import EmulatorConfig, TenantConfig, UserConfig
from .control import ControlApi
from .counters import RequestCounter
from .delta import DeltaTokens
from .errors import GraphError, bad_request
from .graph_api import GraphApi, GraphRequest, GraphResponse
from .store import Mailbox, Store
from .subscriptions import Subscriptions
from .throttle import Throttle
from .timefmt import parse_prefer
from .tls import self_signed_certificate

log = logging.getLogger(__name__)


def _response(result: GraphResponse) -> web.Response:
    if result.body is None:
        return web.Response(status=result.status, headers=result.headers)
    return web.Response(
        status=result.status, text=json.dumps(result.body), content_type="application/json", headers=result.headers
    )


class GraphEmulator:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.tenants: dict[str, TenantConfig] = {}
        self.store = Store()
        self.issuer = TokenIssuer(self.tenants, config.token_lifetime_s)
        self.throttle = Throttle(config.throttling)
        self.counter = RequestCounter()
        self.delta = DeltaTokens(config.delta)
        self.subscriptions = Subscriptions(config.subscriptions, self.store)
        self.api = GraphApi(self.store, self.delta, self.subscriptions, config.delta.default_page_size)
        for tenant in config.tenants:
            self.add_tenant(tenant)
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.ca_file = ""

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    def add_tenant(self, tenant: TenantConfig) -> None:
        users, tenant.users = tenant.users, []
        self.tenants[tenant.id] = tenant
        for user in users:
            self.add_user(tenant, user)

    def add_user(self, tenant: TenantConfig, user: UserConfig) -> None:
        self.store.add_mailbox(Mailbox(user.id, tenant.id, user.user_principal_name, user.display_name))
        tenant.users.append(user)

    # ----------------------------------------------------------------- Graph
    async def execute(self, request: GraphRequest) -> GraphResponse:
        handler, match = self.api.route(request.method, request.path)
        self.counter.operation(request.method, getattr(handler, "__name__", "handler"))
        mailbox = self.api.mailbox_for(request, match)
        if mailbox is None:
            return await handler(request, None, match)
        async with self.throttle.slot(request.token.client_id, mailbox.id):
            return await handler(request, mailbox, match)

    async def _graph_request(self, request: web.Request) -> GraphRequest:
        token = self.issuer.check(request)
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    raise bad_request(f"Unable to read JSON request payload: {exc}") from exc
        return GraphRequest(
            method=request.method,
            path="/" + request.match_info.get("tail", "$batch"),
            query=MultiDict(request.query),
            headers=request.headers,
            prefer=parse_prefer(request.headers.getall("Prefer", [])),
            body=body,
            token=token,
            base_url=f"{request.scheme}://{request.host}/v1.0",
        )

    async def graph(self, request: web.Request) -> web.Response:
        try:
            return _response(await self.execute(await self._graph_request(request)))
        except GraphError as exc:
            log.info("%s %s → %s %s: %s", request.method, request.path_qs, exc.status, exc.code, exc.message)
            return exc.response()

    async def batch(self, request: web.Request) -> web.Response:
        try:
            outer = await self._graph_request(request)
            result = await run_batch(outer.body, outer.token, outer.base_url, self.execute)
        except GraphError as exc:
            log.info("POST $batch → %s %s: %s", exc.status, exc.code, exc.message)
            return exc.response()
        return web.Response(text=json.dumps(result), content_type="application/json")

    # ----------------------------------------------------------------- lifecycle
    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024, middlewares=[self.counter.middleware])
        app.add_routes(
            [
                web.post("/{tenant}/oauth2/v2.0/token", self.issuer.token_endpoint),
                web.get("/{tenant}/v2.0/.well-known/openid-configuration", self.issuer.openid_configuration),
                web.post("/v1.0/$batch", self.batch),
                *ControlApi(self).routes(),
                web.route("*", "/v1.0/{tail:.+}", self.graph),
            ]
        )
        return app

    def _ssl_context(self) -> ssl.SSLContext:
        if self.config.tls_cert_file and self.config.tls_key_file:
            cert, key = Path(self.config.tls_cert_file), Path(self.config.tls_key_file)
        else:
            directory = Path(self.config.ready_file).parent if self.config.ready_file else Path(tempfile.mkdtemp())
            cert, key = self_signed_certificate(directory, self.config.host)
        self.ca_file = str(cert)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context

    async def start(self) -> None:
        if self.config.state_file:
            loaded = persistence.load(self.store, self.config.state_file)
            log.info("loaded %d events from %s", loaded, self.config.state_file)
        await self.subscriptions.start()
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.host, self.config.port, ssl_context=self._ssl_context())
        await site.start()
        server = site._server
        assert server is not None and server.sockets, "the site did not bind"  # type: ignore[attr-defined]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        base = f"https://{self.config.host}:{self.port}"
        log.info("Graph emulator listening on %s", base)
        if self.config.ready_file:
            ready = {
                "base_url": base,
                "graph_url": f"{base}/v1.0",
                "authority": base,
                "control_url": f"{base}/_emulator",
                "ca_file": self.ca_file,
                "tenants": [
                    {
                        "id": t.id,
                        "apps": [a.client_id for a in t.apps],
                        "users": [{"id": u.id, "userPrincipalName": u.user_principal_name} for u in t.users],
                    }
                    for t in self.tenants.values()
                ],
            }
            path = Path(self.config.ready_file)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(ready, indent=2), encoding="utf-8")
            tmp.replace(path)

    async def stop(self) -> None:
        await self.subscriptions.stop()
        if self.config.state_file:
            persistence.save(self.store, self.config.state_file)
        if self.runner is not None:
            await self.runner.cleanup()

"""GatewayService.TestServer: does a TrueConf Server work with the connector, and if not, what is wrong - step by
step, with the gateway's own configuration and secrets (`tc-calendar test trueconf` needs none of its own).

Steps per server: dns, tcp, tls (REST API v4 host; tls skipped for http), oauth (a fresh client-credentials token
for tcs.servers[].clientId), rest-api (one authorized read: GET /users?page_size=1), bridge (TrueConf Server holds
its calendar-bridge WebSocket to wsPort) and bridge-ping (it answers a ping on it now, within PING_TIMEOUT).
The REST steps and the bridge steps are independent: a failed REST step skips only the REST steps after it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from tccal.connectivity import STEP_TIMEOUT, Checklist, StepFailedError, connect, handshake, resolve
from tccal.http_client import traced_session, url_template
from tcs_gateway.bridge.channel import ConnectionClosedError
from tcs_gateway.bridge.framing import format_instant
from tcs_gateway.rest.http import RestError, TokenManager
from tcs_gateway.settings import ServerSettings
from trueconf.calendar.v1 import gateway_pb2

if TYPE_CHECKING:
    from tcs_gateway.bridge.servers import ServerState
    from tcs_gateway.runtime import Gateway

#: Seconds TrueConf Server has to answer the check's ping on the bridge.
PING_TIMEOUT = 5.0


async def test_servers(gateway: Gateway, server_id: str) -> gateway_pb2.TestServerResponse:
    """Check `server_id` (every server of tcs.servers when empty); LookupError names an unknown id."""
    settings = gateway.settings
    wanted = [s for s in settings.servers if not server_id or s.key == server_id.strip().lower()]
    if server_id and not wanted:
        known = ", ".join(s.id for s in settings.servers) or "none"
        raise LookupError(f"no TrueConf Server {server_id!r} in tcs.servers (configured: {known})")
    response = gateway_pb2.TestServerResponse()
    async with traced_session() as http:
        for server in wanted:
            index = settings.servers.index(server)
            checks = await _test_one(gateway, server, f"tcs.servers[{index}]", http)
            response.servers.add(server_id=server.id, steps=checks.steps)
    return response


async def _test_one(gateway: Gateway, server: ServerSettings, key: str, http: aiohttp.ClientSession) -> Checklist:
    rest = Checklist()
    url = urlsplit(server.rest_url)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    await rest.run("dns", lambda: resolve(host, port, f"{key}.restUrl"))
    await rest.run("tcp", lambda: connect(host, port, f"{key}.restUrl"))
    if url.scheme == "https":
        await rest.run("tls", lambda: handshake(host, port, verify=server.verify_tls, verify_key=f"{key}.verifyTls"))
    else:
        rest.skip("tls", f"{key}.restUrl is http: the OAuth2 client secret goes unencrypted")
    token = ""

    async def oauth() -> str:
        nonlocal token
        tokens = TokenManager(server, http, STEP_TIMEOUT)
        try:
            token = await tokens.token()
        except RestError as exc:
            if exc.retryable:
                raise StepFailedError(
                    str(exc),
                    "TrueConf Server does not answer at its OAuth2 token endpoint: check that it runs and is not "
                    f"overloaded, and that {key}.restUrl names it",
                ) from None
            raise StepFailedError(
                str(exc),
                f"create an OAuth2 application in TrueConf Server (API -> OAuth2 applications) and put its client id "
                f"and secret (encrypted with `tc-calendar hash-pass`) in {key}.clientId / {key}.clientSecret",
            ) from None
        return f"client {server.client_id!r} got a token at {tokens.url}"

    await rest.run("oauth", oauth)
    await rest.run("rest-api", lambda: _read_users(server, token, http, key, STEP_TIMEOUT))
    state = gateway.servers.get(server.key)
    checks = Checklist(list(rest.steps))
    bridge = Checklist()
    await bridge.run("bridge", lambda: _connected(gateway, server, state, key))
    await bridge.run("bridge-ping", lambda: _ping(state))
    checks.steps.extend(bridge.steps)
    return checks


async def _read_users(server: ServerSettings, token: str, http: aiohttp.ClientSession, key: str, timeout: float) -> str:
    url = f"{server.rest_url}/users"
    try:
        with url_template("/users"):
            async with http.get(
                url,
                params={"page_size": "1"},
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                ssl=server.verify_tls,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as answer:
                status = answer.status
                text = (await answer.text())[:300]
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise StepFailedError(f"GET {url} failed: {exc!r}", f"check {key}.restUrl (https://<server>/api/v4)") from None
    if status in (401, 403):
        raise StepFailedError(
            f"GET {url} answered {status}: {text}",
            f"give the OAuth2 application of {key}.clientId the scopes the connector needs (users, conferences)",
        )
    if status == 404:
        raise StepFailedError(
            f"GET {url} answered 404: no REST API v4 there",
            f"{key}.restUrl must end in /api/v4 (TrueConf Server 5.5.3 or newer)",
        )
    if status >= 400:
        raise StepFailedError(f"GET {url} answered {status}: {text}", "see TrueConf Server's logs")
    return f"GET /users answered {status}"


async def _connected(gateway: Gateway, server: ServerSettings, state: ServerState | None, key: str) -> str:
    settings = gateway.settings
    scheme = "wss" if settings.tls_cert_file else "ws"
    where = f"{scheme}://<this host>:{settings.ws_port}{settings.bridge_path}"
    if not settings.is_whitelisted(server.id):
        raise StepFailedError(
            f"{server.id} is not in productWhitelist.tcs: its connections are refused",
            f"add {server.id!r} to productWhitelist.tcs",
        )
    if state is None or state.session is None:
        last = f"; last error: {state.errors[0]}" if state is not None and state.errors else ""
        raise StepFailedError(
            f"TrueConf Server {server.id} is not connected to the calendar bridge{last}",
            f"in TrueConf Server's calendar integration, set the connector address to {where} with the secret of "
            f"{key}.secret, and check that TrueConf Server can reach wsPort {settings.ws_port} of this machine",
        )
    since = state.connected_since.strftime("%Y-%m-%dT%H:%M:%SZ") if state.connected_since else "?"
    return f"connected from {state.peer} since {since}"


async def _ping(state: ServerState | None) -> str:
    session = state.session if state is not None else None
    if session is None:
        raise StepFailedError("not connected", "see the bridge step")
    answered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def on_reply(payload: dict[str, Any]) -> None:
        if not answered.done():
            answered.set_result(payload)

    def on_lost() -> None:
        if not answered.done():
            answered.set_exception(ConnectionClosedError("the connection closed"))

    sent = asyncio.get_running_loop().time()
    try:
        await session.channel.request("ping", {"ts": format_instant(datetime.now(UTC))}, on_reply, on_lost=on_lost)
        payload = await asyncio.wait_for(answered, PING_TIMEOUT)
    except TimeoutError:
        raise StepFailedError(
            f"no answer to a ping within {PING_TIMEOUT:g} s on the connection from {session.peer}",
            "TrueConf Server holds the connection but does not answer: check that it runs (and is not overloaded); "
            "the gateway drops a silent connection after 2 x its ping interval",
        ) from None
    except ConnectionClosedError as exc:
        raise StepFailedError(f"the bridge connection closed during the ping: {exc}", "see the bridge step") from None
    waited = (asyncio.get_running_loop().time() - sent) * 1000
    code = payload.get("errorCode", 0)
    if code:
        raise StepFailedError(f"ping answered errorCode {code}", "see TrueConf Server's logs")
    return f"ping answered in {waited:.0f} ms"

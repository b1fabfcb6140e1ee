"""Wiring: one HTTP server for the REST API, the OAuth2 token endpoint, inspection and the admin API,
plus the bridge client; the ready-file."""

from __future__ import annotations

import json
import logging
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from .bridge import ACK_MODES, BridgeClient, ConnectionClosedError
from .calendar import CalendarStore
from .config import SERVER_ID_RE, ConfigError, EmulatorConfig, parse_user
from .faults import FaultRuleError
from .protocol import ErrorCode
from .rest import RestState, add_routes, rest_middleware
from .schema import FrameValidator, load_schema

log = logging.getLogger("trueconf_emulator")

ADMIN_ENDPOINTS = {
    "POST /admin/bridge/drop": "drop the bridge connection now: {mode: abort|close, code}",
    "GET|PUT /admin/bridge/acks": "acknowledgement policy: {mode: normal|refuse|withhold, delay_ms, error_code, "
    "retry_after_ms}",
    "POST /admin/bridge/disconnect": "close with 1001 and stay away",
    "POST /admin/bridge/connect": "resume connecting (after disconnect) and connect now",
    "PUT /admin/bridge/target": "{gateway_url, gateway_fallback_urls, server_id, secret}; reconnects",
    "POST /admin/bridge/request-calendar": "{user, from?, to?}: send getCalendarList now, returns the reply",
    "GET|POST|DELETE /admin/faults": "REST fault rules: {method, path, status, retry_after, latency_ms, count, rate}",
    "DELETE /admin/faults/{id}": "remove one rule",
    "POST /admin/tokens/expire": "expire every issued access token now",
    "PUT /admin/oauth": "{token_lifetime}: lifetime of tokens issued from now on",
    "POST /admin/users": "add a user to the directory: {id, email, display_name, login_name}",
    "POST /admin/reset": "{conferences, rest_log, faults, calendars}: clear state (all but calendars by default)",
}
INSPECT_ENDPOINTS = {
    "GET /inspect/calendars": "users with calendars: {email: {events, last_seq}}",
    "GET /inspect/calendars/{email}": "the events that user's TrueConf apps show, sorted by start (?prefix=<subject>)",
    "GET /inspect/conferences": "every conference (?prefix=<topic>)",
    "GET /inspect/conferences/{id}": "one conference",
    "GET /inspect/bridge": "bridge connection state and counters",
    "GET /inspect/rest-log": "every REST call: method, path, status (?since=<seq>)",
    "GET /inspect/users": "the user directory",
    "GET /inspect/config": "configuration without secrets",
}


def _admin_error(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _admin_body(request: web.Request) -> dict[str, Any]:
    text = await request.text()
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"body is not JSON: {exc}"}), content_type="application/json"
        ) from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body must be a JSON object"}), content_type="application/json"
        )
    return data


def _unknown_keys(body: dict[str, Any], allowed: set[str]) -> str | None:
    unknown = sorted(set(body) - allowed)
    return f"unknown field {unknown[0]!r}; allowed: {sorted(allowed)}" if unknown else None


def _int_field(body: dict[str, Any], name: str, minimum: int, maximum: int) -> int | str | None:
    if name not in body:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        return f"{name} {value!r} must be an integer {minimum}..{maximum}"
    return value


class Emulator:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.validator = FrameValidator(load_schema(config.schema_path))
        self.store = CalendarStore()
        self.rest = RestState(config)
        self.bridge = BridgeClient(config, self.validator, self.store, self.rest.directory)
        self.app = web.Application(middlewares=[rest_middleware(self.rest)])
        self.app["rest_state"] = self.rest
        add_routes(self.app)
        self._add_inspect_routes()
        self._add_admin_routes()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> dict[str, Any]:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        context: ssl.SSLContext | None = None
        if self.config.tls_cert_file and self.config.tls_key_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.config.tls_cert_file, self.config.tls_key_file)
        site = web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=context)
        await site.start()
        addresses = self._runner.addresses
        port = addresses[0][1] if addresses else self.config.port
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        self.base_url = f"{'https' if context else 'http'}://{host}:{port}"
        await self.bridge.start()
        ready = self.ready_info(port)
        if self.config.ready_file:
            write_ready_file(Path(self.config.ready_file), ready)
        log.info("TrueConf emulator ready at %s (server id %s)", self.base_url, self.config.server_id)
        return ready

    async def stop(self) -> None:
        await self.bridge.shutdown()
        self.rest.save()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.config.ready_file:
            remove_ready_file(Path(self.config.ready_file))

    def ready_info(self, port: int) -> dict[str, Any]:
        return {
            "server_id": self.config.server_id,
            "server_host": self.config.server_host,
            "base_url": self.base_url,
            "rest_url": f"{self.base_url}/api/v4",
            "token_url": f"{self.base_url}/oauth2/v1/token",
            "inspect_url": f"{self.base_url}/inspect",
            "admin_url": f"{self.base_url}/admin",
            "port": port,
            "pid": os.getpid(),
            "gateway_url": self.config.gateway_url,
            "oauth": {
                "client_id": self.config.client_id,
                "client_secret": self.config.client_secret,
                "token_lifetime": self.config.token_lifetime,
            },
        }

    # ------------------------------------------------------------------ inspection
    def _add_inspect_routes(self) -> None:
        router = self.app.router

        async def index(request: web.Request) -> web.Response:
            return web.json_response(INSPECT_ENDPOINTS)

        async def calendars(request: web.Request) -> web.Response:
            return web.json_response(self.store.summary())

        async def calendar(request: web.Request) -> web.Response:
            return web.json_response(self.store.view(request.match_info["email"], request.query.get("prefix", "")))

        async def conferences(request: web.Request) -> web.Response:
            prefix = request.query.get("prefix", "")
            return web.json_response(
                [
                    self.rest.view(conference)
                    for conference in self.rest.conferences.values()
                    if conference.topic.startswith(prefix)
                ]
            )

        async def conference(request: web.Request) -> web.Response:
            found = self.rest.conferences.get(request.match_info["conference_id"])
            if found is None:
                return _admin_error(f"no conference {request.match_info['conference_id']!r}", 404)
            return web.json_response(self.rest.view(found))

        async def bridge(request: web.Request) -> web.Response:
            return web.json_response(self.bridge.inspect())

        async def rest_log(request: web.Request) -> web.Response:
            since_raw = request.query.get("since", "0")
            if not since_raw.isdigit():
                return _admin_error(f"since {since_raw!r} must be a non-negative integer")
            since = int(since_raw)
            return web.json_response([entry for entry in self.rest.log if entry["seq"] > since])

        async def users(request: web.Request) -> web.Response:
            return web.json_response([self.rest.directory.view(user) for user in self.rest.directory.all()])

        async def config(request: web.Request) -> web.Response:
            return web.json_response(self.config.public_view())

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        router.add_get("/inspect", index)
        router.add_get("/inspect/calendars", calendars)
        router.add_get("/inspect/calendars/{email}", calendar)
        router.add_get("/inspect/conferences", conferences)
        router.add_get("/inspect/conferences/{conference_id}", conference)
        router.add_get("/inspect/bridge", bridge)
        router.add_get("/inspect/rest-log", rest_log)
        router.add_get("/inspect/users", users)
        router.add_get("/inspect/config", config)
        router.add_get("/healthz", healthz)

    # ------------------------------------------------------------------ admin
    def _add_admin_routes(self) -> None:
        router = self.app.router
        bridge = self.bridge

        async def index(request: web.Request) -> web.Response:
            return web.json_response(ADMIN_ENDPOINTS)

        async def drop(request: web.Request) -> web.Response:
            body = await _admin_body(request)
            problem = _unknown_keys(body, {"mode", "code"})
            if problem:
                return _admin_error(problem)
            mode = body.get("mode", "abort")
            if mode not in ("abort", "close"):
                return _admin_error(f"mode {mode!r} must be 'abort' (no close frame) or 'close'")
            code = _int_field(body, "code", 1000, 4999)
            if isinstance(code, str):
                return _admin_error(code)
            dropped = await bridge.drop(mode, code if code is not None else 1001)
            if not dropped:
                return _admin_error("the bridge is not connected", 409)
            return web.json_response({"dropped": True, "mode": mode})

        async def get_acks(request: web.Request) -> web.Response:
            return web.json_response(bridge.inspect()["ack_policy"])

        async def put_acks(request: web.Request) -> web.Response:
            body = await _admin_body(request)
            problem = _unknown_keys(body, {"mode", "delay_ms", "error_code", "retry_after_ms"})
            if problem:
                return _admin_error(problem)
            policy = bridge.ack_policy
            mode = body.get("mode", policy.mode)
            if mode not in ACK_MODES:
                return _admin_error(f"mode {mode!r} must be one of {list(ACK_MODES)}")
            delay = _int_field(body, "delay_ms", 0, 600_000)
            error_code = _int_field(body, "error_code", 1, max(int(code) for code in ErrorCode))
            retry = _int_field(body, "retry_after_ms", 0, 3_600_000)
            for value in (delay, error_code, retry):
                if isinstance(value, str):
                    return _admin_error(value)
            policy.mode = mode
            if isinstance(delay, int):
                policy.delay_ms = delay
            if isinstance(error_code, int):
                policy.error_code = error_code
            if isinstance(retry, int):
                policy.retry_after_ms = retry
            return web.json_response(bridge.inspect()["ack_policy"])

        async def disconnect(request: web.Request) -> web.Response:
            await bridge.stay_away()
            return web.json_response({"state": "stopped"})

        async def connect(request: web.Request) -> web.Response:
            bridge.resume()
            return web.json_response({"state": "connecting"})

        async def target(request: web.Request) -> web.Response:
            body = await _admin_body(request)
            problem = _unknown_keys(body, {"gateway_url", "gateway_fallback_urls", "server_id", "secret"})
            if problem:
                return _admin_error(problem)
            url = body.get("gateway_url")
            if url is not None and (not isinstance(url, str) or not url.startswith(("ws://", "wss://"))):
                return _admin_error(f"gateway_url {url!r} must be a ws:// or wss:// URL")
            server_id = body.get("server_id")
            if server_id is not None and (not isinstance(server_id, str) or not SERVER_ID_RE.match(server_id)):
                return _admin_error(f"server_id {server_id!r} must look like name#vcs")
            secret = body.get("secret")
            if secret is not None and (not isinstance(secret, str) or not secret):
                return _admin_error("secret must be a non-empty string")
            fallbacks = body.get("gateway_fallback_urls")
            if fallbacks is not None and (
                not isinstance(fallbacks, list)
                or not all(isinstance(u, str) and u.startswith(("ws://", "wss://")) for u in fallbacks)
            ):
                return _admin_error(f"gateway_fallback_urls {fallbacks!r} must be a list of ws:// or wss:// URLs")
            await bridge.set_target(url, server_id, secret, fallback_urls=fallbacks)
            return web.json_response(
                {
                    "gateway_url": url,
                    "gateway_fallback_urls": fallbacks,
                    "server_id": server_id,
                    "secret_changed": secret is not None,
                }
            )

        async def request_calendar(request: web.Request) -> web.Response:
            body = await _admin_body(request)
            problem = _unknown_keys(body, {"user", "from", "to"})
            if problem:
                return _admin_error(problem)
            user = body.get("user")
            if not isinstance(user, str) or "@" not in user:
                return _admin_error(f"user {user!r} must be an e-mail address")
            window_from, window_to = body.get("from"), body.get("to")
            for name, value in (("from", window_from), ("to", window_to)):
                if value is not None and not isinstance(value, str):
                    return _admin_error(f"{name} {value!r} must be an ISO 8601 UTC instant")
            try:
                reply = await bridge.request_calendar(user, window_from, window_to)
            except ConnectionClosedError as exc:
                return _admin_error(str(exc), 409)
            except ValueError as exc:
                return _admin_error(str(exc))
            return web.json_response({"reply": reply})

        async def list_faults(request: web.Request) -> web.Response:
            return web.json_response([rule.view() for rule in self.rest.faults.rules()])

        async def add_fault(request: web.Request) -> web.Response:
            body = await _admin_body(request)
            try:
                rule = self.rest.faults.add(body)
            except FaultRuleError as exc:
                return _admin_error(str(exc))
            return web.json_response(rule.view(), status=201)

        async def clear_faults(request: web.Request) -> web.Response:
            self.rest.faults.clear()
            return web.json_response({"cleared": True})

        async def delete_fault(request: web.Request) -> web.Response:
            raw = request.match_info["rule_id"]
            if not raw.isdigit() or not self.rest.faults.remove(int(raw)):
                return _admin_error(f"no fault rule {raw!r}", 404)
            return web.json_response({"deleted": int(raw)})

        async def expire_tokens(request: web.Request) -> web.Response:
            return web.json_response({"expired": self.rest.expire_tokens()})

        async def put_oauth(request: web.Request) -> web.Response:
            body = await _admin_body(request)
            problem = _unknown_keys(body, {"token_lifetime"})
            if problem:
                return _admin_error(problem)
            lifetime = _int_field(body, "token_lifetime", 1, 31_536_000)
            if isinstance(lifetime, str):
                return _admin_error(lifetime)
            if isinstance(lifetime, int):
                self.rest.token_lifetime = lifetime
            return web.json_response({"token_lifetime": self.rest.token_lifetime})

        async def add_user(request: web.Request) -> web.Response:
            body = await _admin_body(request)
            try:
                user = parse_user(body, "user")
                self.rest.directory.add(user)
            except (ConfigError, ValueError) as exc:
                return _admin_error(str(exc))
            return web.json_response(self.rest.directory.view(user), status=201)

        async def reset(request: web.Request) -> web.Response:
            body = await _admin_body(request)
            allowed = {"conferences", "rest_log", "faults", "calendars"}
            problem = _unknown_keys(body, allowed)
            if problem:
                return _admin_error(problem)
            for key, value in body.items():
                if not isinstance(value, bool):
                    return _admin_error(f"{key} {value!r} must be true or false")
            if body.get("conferences", True):
                self.rest.conferences.clear()
                self.rest.external_ids.clear()
                self.rest.save()
            if body.get("rest_log", True):
                self.rest.log.clear()
            if body.get("faults", True):
                self.rest.faults.clear()
            if body.get("calendars", False):
                bridge.clear()
            return web.json_response({"reset": True})

        router.add_get("/admin", index)
        router.add_post("/admin/bridge/drop", drop)
        router.add_get("/admin/bridge/acks", get_acks)
        router.add_put("/admin/bridge/acks", put_acks)
        router.add_post("/admin/bridge/disconnect", disconnect)
        router.add_post("/admin/bridge/connect", connect)
        router.add_put("/admin/bridge/target", target)
        router.add_post("/admin/bridge/request-calendar", request_calendar)
        router.add_get("/admin/faults", list_faults)
        router.add_post("/admin/faults", add_fault)
        router.add_delete("/admin/faults", clear_faults)
        router.add_delete("/admin/faults/{rule_id}", delete_fault)
        router.add_post("/admin/tokens/expire", expire_tokens)
        router.add_put("/admin/oauth", put_oauth)
        router.add_post("/admin/users", add_user)
        router.add_post("/admin/reset", reset)


def remove_ready_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def write_ready_file(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".ready-", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2)
    os.replace(temporary, path)

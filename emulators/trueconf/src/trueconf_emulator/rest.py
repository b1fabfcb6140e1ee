"""TrueConf Server REST API v4 as the connector uses it: OAuth2 client credentials, users, conferences,
run/stop, invitations. Every call is logged for inspection and may be hit by injected faults."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from .conferences import (
    ApiError,
    Conference,
    Directory,
    Invitation,
    timestamp_text,
    validate_create,
    validate_invitation,
    validate_patch,
)
from .config import EmulatorConfig
from .faults import FaultDecision, FaultInjector
from .persistence import ConferenceFile

SCOPES = (
    "conferences conferences:read conferences:write conferences.invitations conferences.participants users users:read"
)
REST_LOG_LIMIT = 10_000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RestState:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.directory = Directory(config.users, config.server_host)
        self.token_lifetime = config.token_lifetime
        self.tokens: dict[str, float] = {}
        self.conferences: dict[str, Conference] = {}
        self.external_ids: dict[str, str] = {}
        self.faults = FaultInjector()
        self.log: list[dict[str, Any]] = []
        self._log_seq = 0
        self.state_file = ConferenceFile(Path(config.state_file)) if config.state_file else None
        saved = self.state_file.load() if self.state_file else None
        if saved is not None:
            self.conferences.update(saved["conferences"])
            self.external_ids.update(saved["external_ids"])

    def save(self) -> None:
        """Write the conferences through to the state file (when there is one)."""
        if self.state_file is not None:
            self.state_file.save(self.conferences, self.external_ids)

    # ------------------------------------------------------------------ tokens
    def issue_token(self) -> tuple[str, int]:
        token = secrets.token_hex(20)
        self.tokens[token] = time.time() + self.token_lifetime
        return token, self.token_lifetime

    def expire_tokens(self) -> int:
        now = time.time()
        count = 0
        for token, expiry in self.tokens.items():
            if expiry > now:
                self.tokens[token] = now
                count += 1
        return count

    # ------------------------------------------------------------------ log
    def record(self, entry: dict[str, Any]) -> None:
        self._log_seq += 1
        entry["seq"] = self._log_seq
        self.log.append(entry)
        if len(self.log) > REST_LOG_LIMIT:
            del self.log[: len(self.log) - REST_LOG_LIMIT]

    def reset(self) -> None:
        self.conferences.clear()
        self.external_ids.clear()
        self.faults.clear()
        self.log.clear()

    def conference(self, conference_id: str) -> Conference:
        conference = self.conferences.get(conference_id)
        if conference is None:
            raise ApiError(
                404, f"conference {conference_id!r} not found", "conferenceNotFound", "conference_id", "path"
            )
        return conference

    def view(self, conference: Conference) -> dict[str, Any]:
        return conference.view(self.config.server_host)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        data, status=status, headers=headers, dumps=lambda obj: json.dumps(obj, ensure_ascii=False)
    )


def _api_error(error: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return _json(error.body(), status=error.status, headers=headers)


async def _body(request: web.Request) -> Any:
    text = await request.text()
    if not text.strip():
        raise ApiError(400, "the request body must be a JSON object", "invalidBody", "body")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", "parseError", "body") from exc


def _redacted_body(text: str, content_type: str) -> Any:
    if not text:
        return None
    data: Any
    try:
        data = json.loads(text)
    except ValueError:
        if content_type == "application/x-www-form-urlencoded":
            data = dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
        else:
            return text[:2000]
    if isinstance(data, dict):
        for key in ("client_secret", "password", "secret", "refresh_token"):
            if key in data:
                data[key] = "***"
    return data


# ------------------------------------------------------------------------------ middleware
#: Where a token is asked for: TrueConf's API reference and, under the API, where its own clients ask.
TOKEN_PATHS = frozenset({"/oauth2/v1/token", "/api/v4/oauth2/token"})


def rest_middleware(state: RestState) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not (path.startswith("/api/") or path.startswith("/oauth2/")):
            return await handler(request)
        started = time.monotonic()
        text = ""
        if request.can_read_body:
            raw = await request.read()
            text = raw.decode("utf-8", errors="replace")
        decision = state.faults.decide(request.method, path)
        if decision.latency_ms:
            await asyncio.sleep(decision.latency_ms / 1000)
        response: web.StreamResponse
        if decision.status is not None:
            response = _fault_response(decision)
        else:
            response = await _dispatch(state, request, handler)
            if request.method != "GET" and path.startswith("/api/"):
                state.save()
        state.record(
            {
                "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "method": request.method,
                "path": path,
                "query": dict(request.query),
                "status": response.status,
                "injected": decision.status,
                "injected_latency_ms": decision.latency_ms,
                "fault_rules": list(decision.rule_ids),
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                "request_body": _redacted_body(text, request.content_type),
            }
        )
        return response

    return middleware


def _fault_response(decision: FaultDecision) -> web.Response:
    status = decision.status or 500
    reasons = {
        429: ("Too Many Requests", "rateLimitExceeded"),
        500: ("Internal Server Error", "internalError"),
        502: ("Bad Gateway", "badGateway"),
        503: ("Service Unavailable", "serviceUnavailable"),
        504: ("Gateway Timeout", "gatewayTimeout"),
    }
    message, reason = reasons.get(status, ("Injected error", "injectedError"))
    reason = decision.reason or reason
    headers = {"Retry-After": str(decision.retry_after)} if decision.retry_after is not None else None
    return _api_error(ApiError(status, message, reason), headers)


async def _dispatch(state: RestState, request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.path.startswith("/api/") and request.path not in TOKEN_PATHS:
            _authorize(state, request)
        return await handler(request)
    except ApiError as error:
        headers = None
        if error.status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="TrueConf Server", error="invalid_token"'}
        return _api_error(error, headers)
    except web.HTTPMethodNotAllowed as exc:
        return _api_error(
            ApiError(405, f"method {request.method} is not allowed on {request.path}", "methodNotAllowed"),
            {"Allow": ", ".join(sorted(exc.allowed_methods))},
        )
    except web.HTTPNotFound:
        return _api_error(ApiError(404, "Not Found", "routeNotFound"))


def _authorize(state: RestState, request: web.Request) -> None:
    header = request.headers.get("Authorization", "")
    token: str | None = None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "Authorization header must be 'Bearer <access token>'", "invalidAuthorization")
        token = value.strip()
    elif "access_token" in request.query:
        token = request.query["access_token"]
    if not token:
        raise ApiError(401, "authorization required: pass an OAuth2 access token", "authorizationRequired")
    expiry = state.tokens.get(token)
    if expiry is None:
        raise ApiError(401, "the access token is invalid", "invalidToken")
    if time.time() >= expiry:
        raise ApiError(401, "the access token has expired", "tokenExpired")


# ------------------------------------------------------------------------------ OAuth2
def _oauth_error(error: str, description: str, status: int = 400) -> web.Response:
    return _json({"error": error, "error_description": description}, status=status)


async def token_endpoint(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    text = await request.text()
    fields: dict[str, Any] = {}
    if request.content_type == "application/json":
        try:
            parsed = json.loads(text) if text.strip() else {}
        except ValueError:
            return _oauth_error("invalid_request", "the request body is not valid JSON")
        if not isinstance(parsed, dict):
            return _oauth_error("invalid_request", "the request body must be a JSON object")
        fields = parsed
    else:
        fields = dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
    client_id = fields.get("client_id")
    client_secret = fields.get("client_secret")
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return _oauth_error("invalid_client", "the Basic authorization header is malformed")
        basic_id, _, basic_secret = decoded.partition(":")
        client_id = urllib.parse.unquote(basic_id)
        client_secret = urllib.parse.unquote(basic_secret)
    grant_type = fields.get("grant_type")
    if not grant_type:
        return _oauth_error("invalid_request", "The grant type was not specified in the request")
    if grant_type != "client_credentials":
        return _oauth_error("unsupported_grant_type", f'Grant type "{grant_type}" not supported')
    if not client_id:
        return _oauth_error("invalid_client", "Client credentials were not found in the headers or body")
    config = state.config
    if not (
        isinstance(client_id, str)
        and isinstance(client_secret, str)
        and secrets.compare_digest(client_id, config.client_id)
        and secrets.compare_digest(client_secret, config.client_secret)
    ):
        return _oauth_error("invalid_client", "The client credentials are invalid")
    token, lifetime = state.issue_token()
    return _json({"access_token": token, "expires_in": lifetime, "token_type": "Bearer", "scope": SCOPES})


# ------------------------------------------------------------------------------ users
def _page_params(request: web.Request, page_name: str) -> tuple[int, int]:
    def number(name: str, default: int, maximum: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or not 1 <= int(raw) <= maximum:
            raise ApiError(400, f"{name}: {raw!r} must be an integer 1..{maximum}", "invalidValue", name, "query")
        return int(raw)

    return number(page_name, 1, 1_000_000), number("page_size", 100, 1000)


async def list_users(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    allowed = {"email", "login_name", "display_name", "page_id", "page_size"}
    for name in request.query:
        if name not in allowed and name != "access_token":
            raise ApiError(400, f"{name}: unknown query parameter", "unknownParameter", name, "query")
    users = state.directory.all()
    for name in ("email", "login_name", "display_name"):
        needle = request.query.get(name)
        if needle:
            users = [user for user in users if needle.lower() in getattr(user, name).lower()]
    page, size = _page_params(request, "page_id")
    chunk = users[(page - 1) * size : page * size]
    next_page = page + 1 if page * size < len(users) else -1
    return _json({"users": [state.directory.view(user) for user in chunk], "next_page_id": next_page})


async def get_user(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    reference = request.match_info["user_id"]
    user = state.directory.resolve(reference)
    if user is None:
        raise ApiError(404, f"user {reference!r} not found", "userNotFound", "user_id", "path")
    return _json({"user": state.directory.view(user)})


# ------------------------------------------------------------------------------ conferences
async def list_conferences(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    allowed = {"state", "owner", "external_id", "page", "page_size"}
    for name in request.query:
        if name not in allowed and name != "access_token":
            raise ApiError(400, f"{name}: unknown query parameter", "unknownParameter", name, "query")
    items = list(state.conferences.values())
    for name in ("state", "owner", "external_id"):
        value = request.query.get(name)
        if value is not None:
            items = [conference for conference in items if getattr(conference, name) == value]
    page, size = _page_params(request, "page")
    chunk = items[(page - 1) * size : page * size]
    return _json({"conferences": [state.view(conference) for conference in chunk], "results": len(items)})


async def create_conference(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    body = await _body(request)
    external_id = body.get("external_id") if isinstance(body, dict) else None
    if isinstance(external_id, str) and external_id in state.external_ids:
        existing = state.conferences.get(state.external_ids[external_id])
        if existing is not None:
            return _json({"conference": state.view(existing)}, headers={"Idempotent-Replayed": "true"})
    conference = validate_create(body, state.directory, state.config.mode_limits, set(state.conferences))
    state.conferences[conference.id] = conference
    if conference.external_id is not None:
        state.external_ids[conference.external_id] = conference.id
    return _json({"conference": state.view(conference)})


async def get_conference(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    conference = state.conference(request.match_info["conference_id"])
    return _json({"conference": state.view(conference)})


async def patch_conference(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    current = state.conference(request.match_info["conference_id"])
    body = await _body(request)
    updated = validate_patch(body, current, state.directory, state.config.mode_limits)
    state.conferences[updated.id] = updated
    return _json({"conference": state.view(updated)})


async def delete_conference(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    conference = state.conference(request.match_info["conference_id"])
    del state.conferences[conference.id]
    if conference.external_id is not None:
        state.external_ids.pop(conference.external_id, None)
    conference.state = "stopped"
    conference.session_id = None
    return _json({"conference": state.view(conference)})


async def run_conference(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    conference = state.conference(request.match_info["conference_id"])
    if conference.state == "running":
        raise ApiError(
            400,
            f"conference {conference.id!r} is already running",
            "conferenceIsAlreadyRunning",
            "conference_id",
            "path",
        )
    conference.state = "running"
    conference.runs += 1
    conference.session_id = f"{secrets.token_hex(8)}@{state.config.server_host}#vcs"
    conference.session_started_at = int(time.time())
    return _json({"state": "running"})


async def stop_conference(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    conference = state.conference(request.match_info["conference_id"])
    if conference.state != "running":
        raise ApiError(
            400, f"conference {conference.id!r} is not running", "conferenceIsNotRunning", "conference_id", "path"
        )
    conference.state = "stopped"
    conference.session_id = None
    conference.session_started_at = None
    return _json({"state": "stopped"})


async def list_participants(request: web.Request) -> web.StreamResponse:
    """Who is connected to a conference's session: `{"list": [...], "cnt": n}` (trueconf-server-mcp's
    ParticipantListOutput; trueconf-eraser reads `list`). Nobody joins an emulated conference, so the list is
    empty; an unknown conference is 404 like every conference route."""
    state: RestState = request.app["rest_state"]
    state.conference(request.match_info["conference_id"])
    return _json({"list": [], "cnt": 0})


async def list_sessions(request: web.Request) -> web.StreamResponse:
    """Running conference sessions: `{"conference_sessions": [{"id", "conference_id", "start_time"}]}`, the
    shape trueconf-eraser's build_session_start_map reads (start_time as an ISO 8601 string)."""
    state: RestState = request.app["rest_state"]
    sessions = [
        {
            "id": conference.session_id,
            "conference_id": conference.id,
            "start_time": timestamp_text(conference.session_started_at or conference.updated_at),
        }
        for conference in state.conferences.values()
        if conference.state == "running"
    ]
    return _json({"conference_sessions": sessions})


async def get_server(request: web.Request) -> web.StreamResponse:
    """`GET /api/v4/server`: trueconf-server-mcp's health check calls it and needs only a 2xx answer."""
    state: RestState = request.app["rest_state"]
    config = state.config
    return _json({"server": {"id": config.server_id, "name": config.server_host, "version": config.server_version}})


# ------------------------------------------------------------------------------ invitations
def _find_invitation(state: RestState, conference: Conference, reference: str) -> Invitation | None:
    user = state.directory.resolve(reference)
    key = user.id if user is not None else reference.lower()
    for invitation in conference.invitations:
        if invitation.key() == key or invitation.id == reference:
            return invitation
    return None


async def list_invitations(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    conference = state.conference(request.match_info["conference_id"])
    return _json({"invitations": [invitation.view() for invitation in conference.invitations]})


async def add_invitation(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    conference = state.conference(request.match_info["conference_id"])
    body = _unwrapped(await _body(request), "invitation")
    if isinstance(body, dict):
        # TrueConf's InvitationAddEntity has id and display_name only; is_moderator is accepted and dropped.
        body = {key: value for key, value in body.items() if key != "is_moderator"}
    invitation = validate_invitation(
        body, "", conference.access, state.directory, allowed=frozenset({"id", "display_name"})
    )
    if _find_invitation(state, conference, invitation.id) is not None:
        raise ApiError(409, f"id: {invitation.id!r} is already invited", "invitationAlreadyExists", "id")
    if len(conference.invitations) >= conference.max_participants:
        raise ApiError(
            400,
            f"id: the conference already has {conference.max_participants} invitations (max_participants)",
            "tooManyInvitations",
            "id",
        )
    conference.invitations.append(invitation)
    conference.updated_at = int(time.time())
    return _json({"invitation": invitation.view()})


async def get_invitation(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    conference = state.conference(request.match_info["conference_id"])
    invitation = _require_invitation(state, conference, request.match_info["participant_id"])
    return _json({"invitation": invitation.view()})


async def update_invitation(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    conference = state.conference(request.match_info["conference_id"])
    invitation = _require_invitation(state, conference, request.match_info["participant_id"])
    body = _unwrapped(await _body(request), "invitation")
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", "invalidBody", "body")
    for key in body:
        if key != "display_name":
            raise ApiError(400, f"{key}: unknown field; allowed fields are ['display_name']", "unknownField", key)
    if "display_name" in body:
        value = body["display_name"]
        if not isinstance(value, str) or not 1 <= len(value) <= 256:
            raise ApiError(400, "display_name: expected a string of 1..256 characters", "invalidValue", "display_name")
        invitation.display_name = value
    return _json({"invitation": invitation.view()})


async def delete_invitation(request: web.Request) -> web.StreamResponse:
    state: RestState = request.app["rest_state"]
    conference = state.conference(request.match_info["conference_id"])
    invitation = _require_invitation(state, conference, request.match_info["participant_id"])
    conference.invitations.remove(invitation)
    conference.updated_at = int(time.time())
    return _json({"invitation": invitation.view()})


def _unwrapped(body: Any, envelope: str) -> Any:
    """trueconf-server-mcp sends invitations as `{"invitation": {...}}`, TrueConf's API reference as the bare
    object; no public document settles which the server wants, so both are accepted (README, REST API v4)."""
    if isinstance(body, dict) and set(body) == {envelope} and isinstance(body[envelope], dict):
        return body[envelope]
    return body


def _require_invitation(state: RestState, conference: Conference, reference: str) -> Invitation:
    invitation = _find_invitation(state, conference, reference)
    if invitation is None:
        raise ApiError(
            404,
            f"{reference!r} is not invited to conference {conference.id!r}",
            "invitationNotFound",
            "participant_id",
            "path",
        )
    return invitation


def add_routes(app: web.Application) -> None:
    router = app.router
    for path in sorted(TOKEN_PATHS):  # the second is where trueconf-eraser and trueconf-server-mcp ask
        router.add_post(path, token_endpoint)
    router.add_get("/api/v4/server", get_server)
    router.add_get("/api/v4/sessions", list_sessions)
    router.add_get("/api/v4/users", list_users)
    router.add_get("/api/v4/users/{user_id}", get_user)
    router.add_get("/api/v4/conferences", list_conferences)
    router.add_post("/api/v4/conferences", create_conference)
    router.add_get("/api/v4/conferences/{conference_id}", get_conference)
    router.add_patch("/api/v4/conferences/{conference_id}", patch_conference)
    router.add_delete("/api/v4/conferences/{conference_id}", delete_conference)
    router.add_post("/api/v4/conferences/{conference_id}/run", run_conference)
    router.add_post("/api/v4/conferences/{conference_id}/stop", stop_conference)
    router.add_get("/api/v4/conferences/{conference_id}/participants", list_participants)
    router.add_get("/api/v4/conferences/{conference_id}/invitations", list_invitations)
    router.add_post("/api/v4/conferences/{conference_id}/invitations", add_invitation)
    router.add_get("/api/v4/conferences/{conference_id}/invitations/{participant_id}", get_invitation)
    router.add_put("/api/v4/conferences/{conference_id}/invitations/{participant_id}", update_invitation)
    router.add_delete("/api/v4/conferences/{conference_id}/invitations/{participant_id}", delete_invitation)

"""Microsoft identity platform client-credentials tokens and their check on every Graph call.

- Token request/response and errors: https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow
  (POST /{tenant}/oauth2/v2.0/token, grant_type=client_credentials, scope=https://graph.microsoft.com/.default;
  answer token_type, expires_in, access_token; errors `{"error", "error_description": "AADSTS...", "error_codes"}`).
- Certificate credentials (client_assertion instead of client_secret): client_assertion.py.
- AADSTS codes: https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes (7000215 invalid client
  secret, 7000216 secret missing, 700016 application not found in the directory, 90002 tenant not found,
  1002012 / 70011 invalid scope, 70003 unsupported grant type).
- Graph's answer to a missing, unknown or expired bearer token: 401 InvalidAuthenticationToken; to a token without
  the permission: 403 ErrorAccessDenied (https://learn.microsoft.com/en-us/graph/errors,
  https://learn.microsoft.com/en-us/graph/api/user-list-events#permissions).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from . import client_assertion
from .config import AppRegistration, TenantConfig
from .errors import GraphError

GRAPH_DEFAULT_SCOPE = "https://graph.microsoft.com/.default"
READ_PERMISSIONS = frozenset({"Calendars.Read", "Calendars.ReadWrite"})
WRITE_PERMISSIONS = frozenset({"Calendars.ReadWrite"})


@dataclass
class IssuedToken:
    tenant_id: str
    client_id: str
    permissions: frozenset[str]
    expires_at: float


def _aad_error(status: int, error: str, code: int, description: str) -> web.Response:
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    body = {
        "error": error,
        "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\n"
        f"Timestamp: {now}",
        "error_codes": [code],
        "timestamp": now,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


class TokenIssuer:
    def __init__(self, tenants: dict[str, TenantConfig], lifetime_s: int) -> None:
        self.tenants = tenants
        self.lifetime_s = lifetime_s
        self.tokens: dict[str, IssuedToken] = {}
        self.issued = 0

    def app(self, tenant_id: str, client_id: str) -> AppRegistration | None:
        tenant = self.tenants.get(tenant_id)
        return next((a for a in tenant.apps if a.client_id == client_id), None) if tenant else None

    async def token_endpoint(self, request: web.Request) -> web.Response:
        tenant_id = request.match_info["tenant"]
        form = await request.post()
        grant, client_id = str(form.get("grant_type", "")), str(form.get("client_id", ""))
        secret, scope = form.get("client_secret"), str(form.get("scope", ""))
        if tenant_id not in self.tenants:
            return _aad_error(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant_id}' not found. Check to make sure you "
                "have the correct tenant ID and are signing into the correct cloud.",
            )
        if grant != "client_credentials":
            return _aad_error(
                400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant}'."
            )
        app = self.app(tenant_id, client_id)
        if app is None:
            return _aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant_id}'.",
            )
        assertion = form.get("client_assertion")
        if assertion is not None and secret is None:
            token_endpoint = f"{request.scheme}://{request.host}/{tenant_id}/oauth2/v2.0/token"
            try:
                client_assertion.verify(
                    str(assertion),
                    str(form.get("client_assertion_type", "")),
                    client_id=client_id,
                    token_endpoint=token_endpoint,
                    certificates=app.certificates,
                )
            except client_assertion.AssertionRefusedError as refused:
                return _aad_error(refused.status, refused.error, refused.code, refused.description)
        elif secret is None:
            return _aad_error(
                401,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
            )
        elif not app.client_secret or not secrets.compare_digest(str(secret), app.client_secret):
            return _aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being "
                "sent in the request is the client secret value, not the client secret ID, for a secret "
                f"added to app '{client_id}'.",
            )
        if scope.split() != [GRAPH_DEFAULT_SCOPE]:
            return _aad_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. "
                "Client credential flows must have a scope value with /.default suffixed to the "
                "resource identifier (application ID URI).",
            )
        token = secrets.token_urlsafe(48)
        self.tokens[token] = IssuedToken(tenant_id, client_id, app.permissions, time.time() + self.lifetime_s)
        self.issued += 1
        body = {
            "token_type": "Bearer",
            "expires_in": self.lifetime_s,
            "ext_expires_in": self.lifetime_s,
            "access_token": token,
        }
        return web.Response(text=json.dumps(body), content_type="application/json")

    async def openid_configuration(self, request: web.Request) -> web.Response:
        """OpenID discovery document of the tenant (what MSAL reads before asking for a token)."""
        tenant_id = request.match_info["tenant"]
        base = f"{request.scheme}://{request.host}/{tenant_id}"
        body = {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "issuer": f"https://login.microsoftonline.com/{tenant_id}/v2.0",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
        }
        return web.Response(text=json.dumps(body), content_type="application/json")

    def check(self, request: web.Request) -> IssuedToken:
        header = request.headers.get("Authorization", "")
        if not header:
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        scheme, _, value = header.partition(" ")
        issued = self.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if issued is None:
            raise GraphError(
                401, "InvalidAuthenticationToken", "IDX14100: JWT is not well formed, there are no dots (.)."
            )
        if issued.expires_at <= time.time():
            raise GraphError(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.")
        return issued

    def expire_all(self) -> int:
        for issued in self.tokens.values():
            issued.expires_at = 0.0
        return len(self.tokens)


def require(token: IssuedToken, permissions: frozenset[str]) -> None:
    if not token.permissions & permissions:
        raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")


def snapshot(token: IssuedToken) -> dict[str, Any]:
    return {"tenant": token.tenant_id, "client_id": token.client_id, "permissions": sorted(token.permissions)}

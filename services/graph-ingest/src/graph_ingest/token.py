"""App-only access tokens for Microsoft Graph: MSAL's client credentials flow against the configured authority.

One MSAL ConfidentialClientApplication per provider entry. A token is kept until five minutes before it expires
(`expires_in` of the token answer) and then asked for again; a Graph 401 drops it at once (`invalidate`). MSAL is
synchronous (requests), so it runs in a worker thread. A refusal (wrong secret, unknown app or tenant) raises
GraphAuthError naming the calendarProviders entry and the AADSTS code: the operator sees which setting to fix.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msal
import requests

from graph_ingest.settings import GraphProviderSettings

#: A token is renewed this long before it expires.
EARLY_RENEWAL_SECONDS = 300.0


class GraphAuthError(RuntimeError):
    """The identity platform refused the provider's credentials (no retry helps until the config changes)."""


class _CaSession(requests.Session):
    """requests as MSAL's http_client, verifying with the configured CA bundle: passed on each request, because
    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's `verify` otherwise."""

    def __init__(self, ca_file: str) -> None:
        super().__init__()
        self.ca_file = ca_file

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("verify") in (None, True):
            kwargs["verify"] = self.ca_file
        return super().request(method, url, *args, **kwargs)


class TokenSource:
    def __init__(self, provider: GraphProviderSettings, timeout: float = 60.0) -> None:
        self.provider = provider
        self.timeout = timeout
        self._app: msal.ConfidentialClientApplication | None = None
        self._token = ""
        self._expires = 0.0
        self._lock = asyncio.Lock()
        #: Tokens obtained from the identity platform (not from the cache).
        self.acquired = 0

    def _application(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            p = self.provider
            try:
                self._app = msal.ConfidentialClientApplication(
                    p.client_id,
                    client_credential=_client_credential(p),
                    authority=p.authority_url,
                    http_client=_CaSession(p.ca_file) if p.ca_file else None,
                    timeout=self.timeout,
                    # A configured authority (sovereign cloud, a test emulator) is taken as given, not looked up
                    # in Microsoft's instance discovery.
                    instance_discovery=False,
                )
            except ValueError as exc:
                raise GraphAuthError(f"{p.key} ({p.name}): authority {p.authority_url} is unusable: {exc}") from exc
        return self._app

    def invalidate(self) -> None:
        """Graph refused the token (401): ask for a new one next time. MSAL would hand out the same token from its
        own cache until `expires_in` ends, so that cache is emptied too."""
        self._token, self._expires = "", 0.0
        if self._app is not None:
            self._app.token_cache = msal.TokenCache()

    async def token(self) -> str:
        async with self._lock:
            if self._token and time.monotonic() < self._expires - EARLY_RENEWAL_SECONDS:
                return self._token
            result = await asyncio.to_thread(self._acquire)
            self._token = str(result["access_token"])
            self._expires = time.monotonic() + float(result.get("expires_in", 3599))
            self.acquired += 1
            return self._token

    def _acquire(self) -> dict[str, Any]:
        p = self.provider
        app = self._application()
        result: dict[str, Any] = app.acquire_token_for_client(scopes=[p.scope])
        if "access_token" in result:
            return result
        error = str(result.get("error", "unknown_error"))
        description = str(result.get("error_description", "")).splitlines()[0] if result else ""
        hint = {
            "invalid_client": f"check {p.credential_key} ({_credential_hint(p)})",
            "unauthorized_client": f"check {p.key}.clientId (no such app in tenant {p.tenant_id})",
            "invalid_request": f"check {p.key}.tenantId",
            "invalid_scope": f"check {p.key}.graphUrl / cloud",
        }.get(error, f"check {p.key}")
        raise GraphAuthError(
            f"{p.key} ({p.name}): the identity platform at {p.authority_url} refused an app-only token for client "
            f"{p.client_id}: {error}: {description} - {hint}"
        )


def _client_credential(p: GraphProviderSettings) -> str | dict[str, str]:
    """The client secret, or MSAL's certificate credential: the private key signs a client assertion (RFC 7523)
    whose header carries the certificate (`x5c`) and its SHA-256 thumbprint (`x5t#S256`, PS256), as the identity
    platform documents (https://learn.microsoft.com/en-us/entra/identity-platform/certificate-credentials)."""
    if p.client_certificate is None:
        return p.client_secret
    return {"private_key": p.private_key, "public_certificate": p.client_certificate.pem}


def _credential_hint(p: GraphProviderSettings) -> str:
    if p.client_certificate is None:
        return "wrong or expired secret"
    return (
        f"is the certificate with thumbprint {p.client_certificate.thumbprint} (valid until "
        f"{p.client_certificate.not_after}) uploaded to app {p.client_id}?"
    )

"""HTTP(S) client of the registration server (protocol in services/licensing/README.md).

``POST {url}/api/v1/register`` ``{"key", "installation_fingerprint", "product_version"}``
→ ``{"license": <signed envelope>}``;
``POST {url}/api/v1/check`` ``{"license_id", "key_sha256", "installation_fingerprint", "nonce"}``
→ ``{"receipt": {...}, "signature": {...}}``.
Refusals are ``{"error": "<code>", "message": "..."}`` with a 4xx status; anything that prevents
an answer (connection, TLS, timeout, 5xx) is
:class:`~licensing.errors.RegistrationUnreachableError`.
"""

from __future__ import annotations

import json
import ssl
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from licensing.errors import (
    ForeignInstallationError,
    KeyInUseError,
    KeyRevokedError,
    LicenseExpiredError,
    LicensingError,
    MalformedKeyError,
    RegistrationProtocolError,
    RegistrationUnreachableError,
    UnknownKeyError,
)
from tccal.http_client import traced_session, url_template

# Error codes of the registration API → refusal classes of the connector.
SERVER_ERRORS: dict[str, type[LicensingError]] = {
    "malformed_key": MalformedKeyError,
    "unknown_key": UnknownKeyError,
    "unknown_license": UnknownKeyError,
    "key_in_use": KeyInUseError,
    "key_expired": LicenseExpiredError,
    "key_revoked": KeyRevokedError,
    "foreign_installation": ForeignInstallationError,
}


def validate_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"registration server URL {url!r} must be http(s)://host[:port]")
    return url.rstrip("/")


class RegistrationClient:
    def __init__(self, url: str, timeout: float = 10.0, ca_file: str | None = None) -> None:
        self.url = validate_url(url)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl: ssl.SSLContext | bool = True
        if ca_file:
            self._ssl = ssl.create_default_context(cafile=ca_file)

    async def register(self, key: str, fingerprint: str, product_version: str) -> dict[str, Any]:
        """Ask for a license for ``key`` bound to ``fingerprint``; returns the (unverified) envelope."""
        answer = await self._post(
            "/api/v1/register",
            {"key": key, "installation_fingerprint": fingerprint, "product_version": product_version},
        )
        envelope = answer.get("license")
        if not isinstance(envelope, dict):
            raise RegistrationProtocolError(f"the registration server {self.url} answered without a license")
        return envelope

    async def check(self, license_id: str, key_sha256: str, fingerprint: str, nonce: str) -> dict[str, Any]:
        """Confirm a license online; returns the (unverified) signed receipt."""
        return await self._post(
            "/api/v1/check",
            {
                "license_id": license_id,
                "key_sha256": key_sha256,
                "installation_fingerprint": fingerprint,
                "nonce": nonce,
            },
        )

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.url + path
        try:
            with url_template(path):
                async with (
                    traced_session(timeout=self._timeout) as session,
                    session.post(url, json=body, ssl=self._ssl) as resp,
                ):
                    status = resp.status
                    raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            raise RegistrationUnreachableError(f"the registration server {self.url} is unreachable: {detail}") from None
        if status >= 500:
            raise RegistrationUnreachableError(
                f"the registration server {self.url} is unavailable (HTTP {status} for {path})"
            )
        try:
            answer = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            answer = None
        if not isinstance(answer, dict):
            raise RegistrationProtocolError(
                f"the server at {self.url} does not speak the registration API "
                f"(HTTP {status}, non-JSON answer to {path})"
            )
        if status == 200:
            return answer
        code = answer.get("error")
        message = answer.get("message")
        if not isinstance(code, str) or not isinstance(message, str):
            raise RegistrationProtocolError(
                f"the registration server {self.url} refused {path} with HTTP {status} but gave no reason"
            )
        cls = SERVER_ERRORS.get(code, RegistrationProtocolError)
        raise cls(f"the registration server refused: {message}")

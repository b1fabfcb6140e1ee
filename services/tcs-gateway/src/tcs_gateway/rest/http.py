"""HTTP core for TrueConf Server REST API v4: OAuth2 client-credentials tokens and retried requests.

- A token is fetched from `https://<server>/oauth2/v1/token` (TrueConf's API reference) or, where that path is
  404, from `https://<server>/api/v4/oauth2/token` (where TrueConf's own clients ask), and refreshed before it
  expires (10 % of its lifetime, at most 60 s, ahead). A 401, or a 403 naming the token (`invalidToken`,
  `tokenExpired`, `invalid_token`: some servers answer a bad token so), is retried once with a fresh token.
- 429 (after its Retry-After) and 5xx, timeouts and connection errors are retried with the shared backoff
  helper (tccal.retry); when the attempts are used up the error is `retryable`.
- Every other answer is returned to the caller, which decides what 400/404/409 mean for its operation.
Each attempt is a client span, child of the current one (the command being executed), made by OpenTelemetry's
aiohttp-client instrumentation of the session (tccal.http_client) and named after the route ("GET /users/{id}").
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tccal import telemetry
from tccal.http_client import url_template
from tccal.retry import retry_async
from tcs_gateway.settings import GatewaySettings, ServerSettings

log = logging.getLogger(__name__)
_METER = telemetry.meter("tcs_gateway")
_REQUESTS = _METER.create_counter(
    "tcs_gateway_rest_requests", unit="1", description="REST API v4 requests sent to TrueConf Server, by status."
)
#: A Retry-After longer than this is not waited for: the command is reported retryable at once.
MAX_RETRY_AFTER = 30.0


class RestError(Exception):
    """A REST call failed. `retryable`: worth trying again later (429, 5xx, unreachable)."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "", retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retryable = retryable


class _RetryableError(RestError):
    """Transient: retried with backoff."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message, status=status, reason=reason, retryable=True)


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    method: str
    path: str

    @property
    def reason(self) -> str:
        """TrueConf's error reason (`conferenceNotFound`, …), empty when absent."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(error, dict):
            errors = error.get("errors")
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                return str(errors[0].get("reason", ""))
        return ""

    @property
    def message(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if isinstance(self.body, dict) and "error_description" in self.body:
            return f"{self.body.get('error')}: {self.body['error_description']}"
        return str(self.body)[:500]

    def failure(self, what: str = "") -> RestError:
        """The permanent error this answer means."""
        prefix = f"{what}: " if what else ""
        return RestError(
            f"{prefix}{self.method} {self.path} answered {self.status} {self.message}",
            status=self.status,
            reason=self.reason,
            retryable=False,
        )


def retry_after_seconds(value: str | None, default: float = 1.0) -> float:
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


async def _read_body(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text[:2000]


#: 403 reasons that mean "this token", not "this client may not": refreshed like a 401.
TOKEN_REASONS = frozenset({"invalidToken", "tokenExpired", "invalid_token", "authorizationRequired"})


def _token_refused(answer: Response) -> bool:
    if answer.status == 401:
        return True
    if answer.status != 403:
        return False
    error = answer.body.get("error") if isinstance(answer.body, dict) else None
    return answer.reason in TOKEN_REASONS or (isinstance(error, str) and error in TOKEN_REASONS)


class TokenManager:
    """OAuth2 client-credentials token of one server, shared by every request to it."""

    def __init__(self, server: ServerSettings, session: aiohttp.ClientSession, timeout: float) -> None:
        self.server = server
        self.session = session
        self.timeout = timeout
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.fetched = 0
        #: The token endpoint that answered last (the documented one first; TrueConf's clients' one on its 404).
        self.url = server.token_url

    async def token(self) -> str:
        async with self._lock:
            if self._token is not None and time.monotonic() < self._refresh_at:
                return self._token
            return await self._fetch()

    def invalidate(self, token: str) -> None:
        if self._token == token:
            self._token = None

    async def _fetch(self) -> str:
        try:
            return await self._fetch_from(self.url)
        except RestError as exc:
            if exc.status != 404:
                raise
            other = next(u for u in (self.server.token_url, self.server.api_token_url) if u != self.url)
            log.info("token endpoint not found; trying the other one", extra={"url": self.url, "other": other})
            self.url = other
            return await self._fetch_from(other)

    async def _fetch_from(self, url: str) -> str:
        path = urlsplit(url).path
        form = {
            "grant_type": "client_credentials",
            "client_id": self.server.client_id,
            "client_secret": self.server.client_secret,
        }
        try:
            with url_template(path):
                async with self.session.post(
                    url,
                    data=form,
                    ssl=self.server.verify_tls,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as response:
                    body = await _read_body(response)
                    status = response.status
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _RetryableError(f"token endpoint {url} unreachable: {exc!r}") from exc
        _REQUESTS.add(1, {"server": self.server.id, "status": str(status), "endpoint": "token"})
        answer = Response(status, body, "POST", path)
        if status == 429:
            await asyncio.sleep(min(retry_after, MAX_RETRY_AFTER))
            raise _RetryableError(f"token endpoint {url} answered 429", status=status)
        if status >= 500:
            raise _RetryableError(f"token endpoint {url} answered {status} {answer.message}", status=status)
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise RestError(
                f"OAuth2 token request for client {self.server.client_id!r} at {url} refused: {status} "
                f"{answer.message}",
                status=status,
                reason=str(body.get("error", "")) if isinstance(body, dict) else "",
            )
        token = str(body["access_token"])
        telemetry.register_secret(token)
        lifetime = body.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else 3600.0
        margin = min(60.0, seconds * 0.1)
        self._token = token
        self._refresh_at = time.monotonic() + seconds - margin
        self.fetched += 1
        log.info("REST API token obtained", extra={"server": self.server.id, "expires_in": seconds})
        return token


class RestClient:
    """Requests to one server's REST API v4 (`rest_url` = https://<server>/api/v4)."""

    def __init__(self, server: ServerSettings, settings: GatewaySettings, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.settings = settings
        self.session = session
        self.tokens = TokenManager(server, session, settings.rest_timeout)

    async def request(
        self,
        method: str,
        path: str,
        *,
        route: str | None = None,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> Response:
        """Send with token handling and retries; returns any answer that is neither 401, 429 nor 5xx."""

        async def attempt() -> Response:
            token = await self.tokens.token()
            response = await self._send(method, path, route or path, token, body, params)
            if _token_refused(response[0]):
                self.tokens.invalidate(token)
                token = await self.tokens.token()
                response = await self._send(method, path, route or path, token, body, params)
                if _token_refused(response[0]):
                    raise response[0].failure("rejected even with a fresh token")
            answer, retry_after = response
            if answer.status == 429:
                if retry_after > MAX_RETRY_AFTER:
                    raise RestError(
                        f"{method} {path} answered 429; Retry-After {retry_after:.0f} s",
                        status=429,
                        reason=answer.reason,
                        retryable=True,
                    )
                await asyncio.sleep(retry_after)
                raise _RetryableError(
                    f"{method} {path} answered 429 {answer.message}", status=429, reason=answer.reason
                )
            if answer.status >= 500:
                raise _RetryableError(
                    f"{method} {path} answered {answer.status} {answer.message}",
                    status=answer.status,
                    reason=answer.reason,
                )
            return answer

        return await retry_async(
            attempt,
            retry_on=_RetryableError,
            attempts=self.settings.rest_attempts,
            base=self.settings.rest_backoff_base,
            cap=self.settings.rest_backoff_cap,
        )

    async def _send(
        self, method: str, path: str, route: str, token: str, body: Any, params: dict[str, str] | None
    ) -> tuple[Response, float]:
        url = f"{self.server.rest_url}{path}"
        try:
            with url_template(route):
                async with self.session.request(
                    method,
                    url,
                    json=body,
                    params=params,
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                    ssl=self.server.verify_tls,
                    timeout=aiohttp.ClientTimeout(total=self.settings.rest_timeout),
                ) as response:
                    answer = Response(response.status, await _read_body(response), method, path)
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _RetryableError(f"{method} {url} failed: {exc!r}") from exc
        _REQUESTS.add(1, {"server": self.server.id, "status": str(answer.status), "endpoint": route})
        return answer, retry_after

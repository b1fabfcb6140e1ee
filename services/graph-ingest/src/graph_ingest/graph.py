"""A thin Microsoft Graph client on aiohttp: GET (or PATCH) a URL as JSON with an app-only bearer token.

Why not msgraph-sdk: on the Graph emulator a full calendarView delta round over 1,000 events took 10.6 s through
msgraph-sdk (its Kiota model parsing costs about 10 ms per event) and 0.3 s with raw aiohttp (README.md).

* At most `max_concurrency` requests per mailbox at once (Outlook allows 4 per app and mailbox). A `$batch` POST
  holds as many of the mailbox's slots as Graph runs of its members at once (batch.py: up to four).
* 429 and 503 are retried through tccal.retry, each wait the answer's Retry-After (seconds); transport errors too.
* 401 drops the cached token and asks for a new one once.
* Other answers raise GraphError with the status, Graph's error code and message.

https://learn.microsoft.com/en-us/graph/throttling, https://learn.microsoft.com/en-us/graph/errors
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from graph_ingest import metrics
from graph_ingest.settings import GraphProviderSettings, Tuning
from graph_ingest.token import TokenSource
from tccal.http_client import traced_session
from tccal.retry import retry_async

RETRIED_STATUSES = frozenset({429, 503})


class MailboxLimit:
    """At most `capacity` Graph requests in flight for one mailbox; a request may need several slots (a $batch).

    Waiters are served in arrival order, so a batch waiting for four slots is not starved by single GETs."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._turn = asyncio.Condition()
        self._queue: list[object] = []

    def locked(self) -> bool:
        """No slot is free (what asyncio.Semaphore.locked says)."""
        return self.in_use >= self.capacity

    @asynccontextmanager
    async def slots(self, count: int) -> AsyncIterator[None]:
        if not 1 <= count <= self.capacity:
            raise ValueError(f"a request needs {count} slots, the mailbox allows {self.capacity}")
        ticket = object()
        async with self._turn:
            self._queue.append(ticket)
            try:
                await self._turn.wait_for(lambda: self._queue[0] is ticket and self.in_use + count <= self.capacity)
            finally:
                self._queue.remove(ticket)
                self._turn.notify_all()
            self.in_use += count
        try:
            yield
        finally:
            async with self._turn:
                self.in_use -= count
                self._turn.notify_all()


class GraphError(RuntimeError):
    def __init__(self, status: int, code: str, message: str, url: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message} ({url})")
        self.status = status
        self.code = code


class ThrottledError(GraphError):
    """429/503: retried after `retry_after` seconds."""

    def __init__(self, status: int, code: str, message: str, url: str, retry_after: float) -> None:
        super().__init__(status, code, message, url)
        self.retry_after = retry_after


class _UnauthorizedError(GraphError):
    pass


@dataclass
class ClientStats:
    requests: int = 0
    throttled: int = 0
    waited_seconds: float = 0.0
    by_status: dict[int, int] = field(default_factory=dict)
    #: $batch POSTs (each also one of `requests`) and the member requests they carried (retries included).
    batches: int = 0
    batch_members: int = 0


class GraphClient:
    def __init__(self, provider: GraphProviderSettings, tuning: Tuning, tokens: TokenSource | None = None) -> None:
        self.provider = provider
        self.tuning = tuning
        self.tokens = tokens or TokenSource(provider, tuning.http_timeout_seconds)
        self.stats = ClientStats()
        self._session: aiohttp.ClientSession | None = None
        self._limits: dict[str, MailboxLimit] = {}
        self._ssl: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context(cafile=self.provider.ca_file)
            self._ssl = context
        return self._ssl

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.tuning.http_timeout_seconds)
            self._session = traced_session(timeout=timeout, raise_for_status=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def limit(self, mailbox: str) -> MailboxLimit:
        if mailbox not in self._limits:
            self._limits[mailbox] = MailboxLimit(self.provider.max_concurrency)
        return self._limits[mailbox]

    def url(self, path: str) -> str:
        return f"{self.provider.graph_url}{path}"

    async def get(self, mailbox: str, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """GET `url` (absolute) for `mailbox`: the JSON object Graph answered."""
        return await self._retried(mailbox, "GET", url, headers or {}, None, 1)

    async def patch(
        self, mailbox: str, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """PATCH `url` with the JSON `body` (https://learn.microsoft.com/en-us/graph/api/event-update): the updated
        resource. A failed `If-Match` precondition raises GraphError with status 412."""
        return await self._retried(mailbox, "PATCH", url, headers or {}, body, 1)

    async def post_batch(self, mailbox: str, payload: dict[str, Any], slots: int) -> dict[str, Any]:
        """POST /$batch for `mailbox` holding `slots` of its concurrency: the batch's JSON answer (the members'
        own statuses are the caller's to read; 429/503 of the whole POST are retried here)."""
        headers = {"Content-Type": "application/json"}
        return await self._retried(mailbox, "POST", self.url("/$batch"), headers, payload, slots)

    def note_throttled_members(self, count: int, waited: float) -> None:
        self.stats.throttled += count
        self.stats.waited_seconds += waited
        self.note_wait(waited, count)

    def note_wait(self, seconds: float, waits: int = 1) -> None:
        """A wait for Retry-After (exported: graph_ingest_throttled_waits_total and _wait_seconds_total)."""
        labels = {"provider": self.provider.name}
        metrics.throttled_waits.add(waits, labels)
        metrics.throttled_wait_seconds.add(seconds, labels)

    def note_response(self, method: str, status: int) -> None:
        """One answer of Graph (exported: graph_ingest_graph_requests_total)."""
        metrics.graph_requests.add(1, {"provider": self.provider.name, "method": method, "status": str(status)})

    async def _retried(
        self, mailbox: str, method: str, url: str, headers: dict[str, str], payload: Any, slots: int
    ) -> dict[str, Any]:
        async def once() -> dict[str, Any]:
            try:
                return await self._send(mailbox, method, url, headers, payload, slots)
            except _UnauthorizedError:
                self.tokens.invalidate()
                return await self._send(mailbox, method, url, headers, payload, slots)

        def wait_of(error: BaseException) -> float | None:
            if isinstance(error, ThrottledError):
                wait = min(error.retry_after, self.tuning.max_retry_after_seconds)
                self.stats.waited_seconds += wait
                self.note_wait(wait)
                return wait
            return None

        return await retry_async(
            once,
            retry_on=(ThrottledError, aiohttp.ClientConnectionError, TimeoutError),
            attempts=self.tuning.attempts,
            base=0.5,
            cap=30.0,
            retry_after=wait_of,
        )

    async def _send(
        self, mailbox: str, method: str, url: str, headers: dict[str, str], payload: Any, slots: int
    ) -> dict[str, Any]:
        token = await self.tokens.token()
        all_headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", **headers}
        async with (
            self.limit(mailbox).slots(slots),
            self._http().request(method, url, headers=all_headers, json=payload, ssl=self._ssl_context()) as response,
        ):
            self.stats.requests += 1
            self.stats.by_status[response.status] = self.stats.by_status.get(response.status, 0) + 1
            self.note_response(method, response.status)
            text = await response.text()
            if response.status == 200:
                body = await response.json(content_type=None) if text else {}
                if not isinstance(body, dict):
                    raise GraphError(response.status, "invalidResponse", "the answer is not a JSON object", url)
                return body
            code, message = error_of(text)
            if response.status in RETRIED_STATUSES:
                self.stats.throttled += 1
                raise ThrottledError(response.status, code, message, url, retry_after_of(response.headers))
            if response.status == 401:
                raise _UnauthorizedError(response.status, code, message, url)
            raise GraphError(response.status, code, message, url)


def retry_after_of(headers: Any) -> float:
    """Retry-After in seconds (Graph sends delta-seconds); 1 s when absent or unreadable."""
    try:
        return max(0.0, float(headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def error_of(text: str) -> tuple[str, str]:
    try:
        data = json.loads(text)
    except ValueError:
        return "unknown", text[:200]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("code", "unknown")), str(error.get("message", ""))
    return "unknown", text[:200]

"""Outlook service limits per app and mailbox, answered with 429 and Retry-After.

https://learn.microsoft.com/en-us/graph/throttling-limits#outlook-service-limits: per app ID and mailbox, 10,000 API
requests in a 10 minute period and 4 concurrent requests. https://learn.microsoft.com/en-us/graph/throttling: a
throttled request gets 429 Too Many Requests with a Retry-After header (seconds); every request of a $batch counts
on its own (https://learn.microsoft.com/en-us/graph/throttling#throttling-and-batching).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .config import ThrottlingConfig
from .errors import GraphError


@dataclass
class MailboxUsage:
    requests: int = 0
    throttled: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    recent: deque[float] = field(default_factory=deque)


class Throttle:
    def __init__(self, config: ThrottlingConfig) -> None:
        self.config = config
        self.usage: dict[tuple[str, str], MailboxUsage] = {}
        self.holds: dict[str, asyncio.Event] = {}

    def _usage(self, client_id: str, mailbox_id: str) -> MailboxUsage:
        return self.usage.setdefault((client_id, mailbox_id), MailboxUsage())

    def _throttled(self, usage: MailboxUsage, message: str, retry_after: int) -> GraphError:
        usage.throttled += 1
        return GraphError(429, "ApplicationThrottled", message, {"Retry-After": str(max(1, retry_after))})

    @asynccontextmanager
    async def slot(self, client_id: str, mailbox_id: str) -> AsyncIterator[None]:
        usage = self._usage(client_id, mailbox_id)
        now = time.monotonic()
        while usage.recent and usage.recent[0] <= now - self.config.window_s:
            usage.recent.popleft()
        if usage.in_flight >= self.config.concurrent_requests:
            raise self._throttled(usage, "Application is over its MailboxConcurrency limit.", 1)
        if len(usage.recent) >= self.config.requests_per_window:
            wait = usage.recent[0] + self.config.window_s - now
            raise self._throttled(usage, "Application is over its MailboxRequests limit.", math.ceil(wait))
        usage.requests += 1
        usage.recent.append(now)
        usage.in_flight += 1
        usage.max_in_flight = max(usage.max_in_flight, usage.in_flight)
        try:
            hold = self.holds.get(mailbox_id)
            if hold is not None:
                await hold.wait()
            yield
        finally:
            usage.in_flight -= 1

    def hold(self, mailbox_id: str) -> None:
        """Requests for the mailbox wait (counted as in flight) until `release` (a test's control)."""
        self.holds.setdefault(mailbox_id, asyncio.Event())

    def release(self, mailbox_id: str) -> None:
        event = self.holds.pop(mailbox_id, None)
        if event is not None:
            event.set()

    def snapshot(self, mailbox_id: str) -> dict[str, dict[str, int]]:
        return {
            client: {
                "requests": u.requests,
                "throttled": u.throttled,
                "in_flight": u.in_flight,
                "max_in_flight": u.max_in_flight,
                "in_window": len(u.recent),
            }
            for (client, box), u in self.usage.items()
            if box == mailbox_id
        }

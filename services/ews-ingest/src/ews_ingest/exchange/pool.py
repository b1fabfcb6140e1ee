"""One bounded pool of EWS connections per impersonation account.

exchangelib blocks, so every call runs in this pool's worker threads and the event loop only awaits it. At most
`sync_slots` (= maxConcurrency) ordinary calls of one credential are on the wire at any time (`RankedSlots` in front
of as many threads: a live change's call takes the next free connection before bulk work's), plus up to
`stream_slots` GetStreamingEvents, each holding its connection for up to 30 minutes. Streaming connections are a
budget of their own: Exchange counts them apart from EWSMaxConcurrency, and with impersonation each one is charged
to the mailbox it is anchored on (X-AnchorMailbox, its group's first member), so the per-account
HangingConnectionLimit does not cap them; 2,000 mailboxes need 10. exchangelib's own session pool holds `sync_slots
+ stream_slots` sessions (made as they are first needed), so it never waits.

Throttling: ErrorServerBusy's BackOffMilliseconds is honoured for the mailbox the answer was about (with
impersonation Exchange charges the budget to the impersonated mailbox), so one throttled or broken mailbox never
holds up the others. Network trouble and transient server errors are retried with jittered exponential back-off.
Waiting longer than `pool_wait_warn_seconds` for a free connection logs the guide's `Cant get free socket from
pool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from exchangelib import IMPERSONATION, UTC, Account, Configuration
from exchangelib.errors import MalformedResponseError

from ews_ingest.exchange.auth import PoolCredentials, forget_protocol, make_configuration, make_protocol
from ews_ingest.exchange.endpoint import EndpointResolver
from ews_ingest.exchange.errors import classify, describe
from ews_ingest.exchange.slots import RankedSlots, call_rank
from ews_ingest.settings import MAX_STREAMS_PER_CREDENTIAL, CredentialSettings, ProviderSettings, Tuning
from tccal import telemetry
from tccal.retry import backoff_delay

log = logging.getLogger(__name__)
#: What exchangelib raises while reading a response it does not understand (beyond its own parse errors).
UNREADABLE_RESPONSE = (AttributeError, KeyError, IndexError, TypeError)
T = TypeVar("T")
POOL_EXHAUSTED = "Cant get free socket from pool"

_meter = telemetry.meter("ews_ingest")
_calls = _meter.create_counter("ews_ingest_ews_calls", description="EWS calls by operation and outcome")
_backoffs = _meter.create_counter("ews_ingest_ews_backoffs", description="ErrorServerBusy back-offs honoured")


@dataclass(frozen=True)
class BackOff:
    """One ErrorServerBusy honoured: what Exchange asked for and how long the retry actually waited."""

    mailbox: str
    operation: str
    requested: float
    waited: float


@dataclass
class PoolStats:
    calls: int = 0
    failures: int = 0
    transient_retries: int = 0
    back_offs: list[BackOff] = field(default_factory=list)
    pool_waits_logged: int = 0


class CredentialPool:
    """EWS access for the mailboxes assigned to one credential of one provider."""

    def __init__(
        self, provider: ProviderSettings, credential: CredentialSettings, tuning: Tuning, *, index: int = 0
    ) -> None:
        self.provider = provider
        self.login = credential.login
        self.tuning = tuning
        self.sync_slots = provider.connections
        self.stream_slots = tuning.streams_per_credential or MAX_STREAMS_PER_CREDENTIAL
        self.connections = self.sync_slots + self.stream_slots
        self.credentials = PoolCredentials(credential.login, credential.password)
        telemetry.register_secret(credential.password)
        label = f"{provider.name}-{index}"
        self._executor = ThreadPoolExecutor(self.sync_slots, thread_name_prefix=f"ews-{label}")
        self._stream_executor = ThreadPoolExecutor(self.stream_slots, thread_name_prefix=f"ews-stream-{label}")
        self._slots = RankedSlots(self.sync_slots)
        self._resolver = EndpointResolver(provider, self.credentials)
        self._configs: dict[str, Configuration] = {}
        self._accounts: dict[str, Account] = {}
        self._lock = threading.Lock()
        self._busy_until: dict[str, float] = {}
        self.stats = PoolStats()
        self.last_success: float | None = None
        self.closed = False

    @property
    def name(self) -> str:
        return f"{self.provider.name}/{self.login}"

    @property
    def exhausted(self) -> bool:
        """Every connection for ordinary calls is in use: the next call waits."""
        return self._slots.locked()

    # ------------------------------------------------------------------ accounts (worker threads only)
    def account(self, mailbox: str) -> Account:
        """The impersonating exchangelib Account of `mailbox` (blocking: autodiscover may run)."""
        with self._lock:
            cached = self._accounts.get(mailbox)
        if cached is not None:
            return cached
        url = self._resolver.ews_url(mailbox)
        with self._lock:
            config = self._configs.get(url)
            if config is None:
                config = make_configuration(
                    url,
                    self.credentials,
                    auth=self.provider.auth,
                    max_connections=self.connections,
                    version=self.provider.exchange_version,
                )
                make_protocol(config, verify_tls=self.provider.verify_tls, timeout=self.tuning.http_timeout_seconds)
                self._configs[url] = config
            account = Account(
                primary_smtp_address=mailbox,
                config=config,
                access_type=IMPERSONATION,
                autodiscover=False,
                default_timezone=UTC,
                locale="en_US",
            )
            self._accounts[mailbox] = account
        return account

    def cached_grouping(self, mailbox: str) -> str | None:
        """The streaming group key of `mailbox` if known (EndpointResolver.grouping), else None."""
        return self._resolver.cached_grouping(mailbox)

    async def grouping(self, mailbox: str) -> str:
        """The streaming group key of `mailbox`, asking autodiscover in a worker thread when not known yet."""
        known = self._resolver.cached_grouping(mailbox)
        if known is not None:
            return known
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._resolver.grouping, mailbox)

    def forget(self, mailbox: str) -> None:
        """Drop the cached account (after ErrorNonExistentMailbox or a move, autodiscover is asked again)."""
        with self._lock:
            self._accounts.pop(mailbox, None)
        self._resolver.forget(mailbox)

    # ------------------------------------------------------------------ calls
    async def call(self, mailbox: str, operation: str, fn: Callable[[Account], T]) -> T:
        """Run `fn(account)` in a worker thread, honouring back-offs and retrying transient errors."""
        loop = asyncio.get_running_loop()
        attempt = 0
        busy_total = 0.0
        pending: tuple[float, float] | None = None  # (failed at, requested back-off) of the last ErrorServerBusy
        while True:
            await self._wait_backoff(mailbox)
            async with self._slot(mailbox, operation):
                if pending is not None:
                    failed_at, requested = pending
                    record = BackOff(mailbox, operation, requested, time.monotonic() - failed_at)
                    self.stats.back_offs.append(record)
                    pending = None
                self.stats.calls += 1
                try:
                    result = await loop.run_in_executor(self._executor, self._run, mailbox, operation, fn)
                except Exception as exc:
                    failure: Exception = exc
                else:
                    self.last_success = time.monotonic()
                    _calls.add(1, {"operation": operation, "outcome": "ok"})
                    return result
            verdict = classify(failure)
            self.stats.failures += 1
            _calls.add(1, {"operation": operation, "outcome": verdict.kind})
            if verdict.kind == "busy":
                busy_total += verdict.back_off
                if busy_total > self.tuning.max_busy_wait_seconds:
                    raise failure
                failed_at = time.monotonic()
                self._busy_until[mailbox] = max(self._busy_until.get(mailbox, 0.0), failed_at + verdict.back_off)
                pending = (failed_at, verdict.back_off)
                _backoffs.add(1, {"operation": operation})
                log.warning(
                    "EWS asked to back off",
                    extra={
                        "mailbox": mailbox,
                        "credential": self.name,
                        "operation": operation,
                        "back_off_ms": int(verdict.back_off * 1000),
                    },
                )
                continue
            if verdict.kind == "transient":
                attempt += 1
                if attempt >= self.tuning.transient_attempts:
                    raise failure
                self.stats.transient_retries += 1
                delay = random.uniform(0.5, 1.0) * backoff_delay(attempt, base=0.5, cap=30.0)
                log.info(
                    "EWS call failed, retrying",
                    extra={
                        "mailbox": mailbox,
                        "credential": self.name,
                        "operation": operation,
                        "attempt": attempt,
                        "delay_s": round(delay, 3),
                        "error": describe(failure),
                    },
                )
                await asyncio.sleep(delay)
                continue
            raise failure

    def _run(self, mailbox: str, operation: str, fn: Callable[[Account], T]) -> T:
        try:
            return fn(self.account(mailbox))
        except UNREADABLE_RESPONSE as exc:
            # exchangelib trips over a response it cannot read (cut off, or elements missing) with whatever
            # Python error the parser hits; name it for what it is, so it is logged clearly and retried.
            raise MalformedResponseError(f"{operation}: unreadable EWS response ({type(exc).__name__}: {exc})") from exc

    async def _wait_backoff(self, mailbox: str) -> None:
        until = self._busy_until.get(mailbox)
        if until is None:
            return
        delay = until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._busy_until.get(mailbox) == until:
            del self._busy_until[mailbox]

    @contextlib.asynccontextmanager
    async def _slot(self, mailbox: str, operation: str) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        handle: asyncio.TimerHandle | None = None

        def warn() -> None:
            nonlocal handle
            self.stats.pool_waits_logged += 1
            waited = time.monotonic() - started
            log.warning(
                POOL_EXHAUSTED,
                extra={
                    "mailbox": mailbox,
                    "credential": self.name,
                    "operation": operation,
                    "cause": f"all {self.sync_slots} EWS connections of {self.login} at {self.provider.name} "
                    f"busy for {waited:.0f}s",
                },
            )
            handle = loop.call_later(self.tuning.pool_wait_warn_seconds, warn)

        if self._slots.locked():
            handle = loop.call_later(self.tuning.pool_wait_warn_seconds, warn)
        try:
            await self._slots.acquire(call_rank.get())
        finally:
            if handle is not None:
                handle.cancel()
        try:
            yield
        finally:
            self._slots.release()

    # ------------------------------------------------------------------ streaming
    def run_stream(self, fn: Callable[[], None]) -> asyncio.Future[None]:
        """Run a long streaming call on one of the stream connections (not counted against sync slots)."""
        return asyncio.get_running_loop().run_in_executor(self._stream_executor, fn)

    # ------------------------------------------------------------------ life
    async def close(self) -> None:
        self.closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._close_blocking)

    def _close_blocking(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._stream_executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            configs = list(self._configs.values())
            self._configs.clear()
            self._accounts.clear()
        for config in configs:
            forget_protocol(config)
        self._resolver.close()


def random_jitter(seconds: float) -> float:
    """`seconds` spread by ±20 % (periodic work of many mailboxes should not fire at once)."""
    return seconds * random.uniform(0.8, 1.2)


def any_recent_success(pools: list[CredentialPool], within: float) -> bool:
    now = time.monotonic()
    return any(p.last_success is not None and now - p.last_success < within for p in pools)


__all__ = ["POOL_EXHAUSTED", "BackOff", "CredentialPool", "PoolStats"]

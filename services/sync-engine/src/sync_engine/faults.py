"""What a failed engine transaction means, and how the engine behaves while PostgreSQL cannot take writes.

`classify(exc)` is the one place that decides (docs/architecture.md §12, issue #17):

* `INFRASTRUCTURE` — the database cannot take the transaction now, whatever it holds: connection lost or refused
  (class 08, `57P01` admin_shutdown, `57P03` cannot_connect_now, the rest of class 57, asyncpg's connection
  errors, OSError, timeouts), read-only (`25006` read_only_sql_transaction, e.g. a hot standby after a fail-over;
  `25P0x`), disk full or out of resources (class 53, `53100` disk_full), system and I/O errors (class 58), a role
  that lost its write grant (`42501`). The engine keeps the message un-acked (in progress for JetStream) and
  retries with `tccal.retry.backoff_delay` until PostgreSQL takes it, reporting itself not ready meanwhile
  (`DatabaseHealth`). Never dead-lettered: the message is not at fault.
* `RACE` — the transaction lost to another one (`40001` serialization, `40P01` deadlock, `40003`, `55P03`
  lock_not_available, asyncpg's outdated statement cache): retried with a short backoff.
* `DATA` — everything else: a value PostgreSQL or asyncpg refuses (`22xxx`, `23xxx`, asyncpg `DataError`), a bug.
  Raised: the consumer naks the message and after `nats.maxDeliver` deliveries dead-letters it, where
  `tc-calendar dead-letters` lists and replays it.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import asyncpg

from sync_engine.metrics import METRICS

log = logging.getLogger(__name__)


class Fault(enum.Enum):
    INFRASTRUCTURE = "infrastructure"
    RACE = "race"
    DATA = "data"


#: SQLSTATE classes (first two characters) that mean "PostgreSQL cannot take this now", whatever the message.
_INFRASTRUCTURE_CLASSES = frozenset({"08", "53", "57", "58"})
#: Single SQLSTATEs (or their prefixes) of the same kind outside those classes.
_INFRASTRUCTURE_CODES = ("25006", "25P0", "42501")
#: The transaction lost a race with another one: run it again.
_RACE_CODES = ("40001", "40P01", "40003", "55P03")


def sqlstate_of(exc: BaseException) -> str:
    """The SQLSTATE PostgreSQL sent ("" for errors that did not come from PostgreSQL)."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "")
    return ""


def classify(exc: BaseException) -> Fault:
    """Is `exc` the database's fault (wait), a lost race (retry now) or this message's (fail it)?"""
    if isinstance(exc, asyncpg.PostgresError):
        code = sqlstate_of(exc)
        if code[:2] in _INFRASTRUCTURE_CLASSES or code.startswith(_INFRASTRUCTURE_CODES):
            return Fault.INFRASTRUCTURE
        if code.startswith(_RACE_CODES):
            return Fault.RACE
        return Fault.DATA
    if isinstance(exc, asyncpg.DataError):  # a value asyncpg could not encode: it never will
        return Fault.DATA
    if isinstance(exc, asyncpg.InternalClientError):  # e.g. OutdatedSchemaCacheError after a schema change
        return Fault.RACE
    if isinstance(exc, asyncpg.InterfaceError | OSError | ConnectionError | TimeoutError):
        # connection closed or never made, pool closing, a statement timing out: the database, not the data
        return Fault.INFRASTRUCTURE
    return Fault.DATA


class DatabaseHealth:
    """Whether PostgreSQL takes the engine's writes: set by every retried transaction (and the relay and the loops),
    read by readiness ("postgres-writes") and `sync_engine_database_waiting_seconds`.

    Each task that met an infrastructure fault (a consumer lane, the relay, the scheduler) is waiting until that
    same task commits again: a read-only transaction that happens to succeed elsewhere (the scheduler finding
    nothing due while the disk is full) does not end the wait of a change that still cannot be written. Logs when a
    wait begins, every `interval` seconds while it lasts (with how many retries) and when it ends — never once
    per message."""

    def __init__(self, *, interval: float = 10.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.monotonic = monotonic
        self.waiting_since: float | None = None
        self.reason = ""
        self.retries = 0  # retries of the current wait
        self.total_retries = 0  # retries since the process started
        self.waits = 0  # waits that ended (PostgreSQL took writes again)
        self.last_wait_s = 0.0
        #: Retries since the process started by SQLSTATE (or exception type, for errors not from PostgreSQL).
        self.by_cause: collections.Counter[str] = collections.Counter()
        self._logged = 0.0
        self._failing: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()  # a task that ended no longer waits
        METRICS.database_waiting = self.waited_s

    @property
    def waiting(self) -> bool:
        for task in list(self._failing):
            if task.done():  # stopped while waiting (SIGTERM, an API call that gave up): waits no longer
                self._failing.discard(task)
        if not self._failing:
            self.waiting_since = None
        return self.waiting_since is not None

    def waited_s(self) -> float:
        return self.monotonic() - self.waiting_since if self.waiting and self.waiting_since is not None else 0.0

    def failed(self, exc: BaseException, fault: Fault = Fault.INFRASTRUCTURE) -> None:
        """The current task met an infrastructure fault and will retry."""
        now = self.monotonic()
        began = not self.waiting
        task = asyncio.current_task()
        if task is not None:
            self._failing.add(task)
        self.total_retries += 1
        self.reason = _describe(exc)
        cause = sqlstate_of(exc) or type(exc).__name__
        self.by_cause[cause] += 1
        METRICS.database_retries.add(1, {"fault": fault.value, "sqlstate": cause})
        if began:
            self.waiting_since = now
            self.retries = 1
            self._logged = now
            log.warning(
                "PostgreSQL cannot take writes; changes wait un-acked and are retried until it can",
                extra={"error": self.reason},
            )
            return
        self.retries += 1
        if now - self._logged >= self.interval:
            self._logged = now
            log.warning(
                "PostgreSQL still cannot take writes",
                extra={"error": self.reason, "waiting_s": round(self.waited_s(), 1), "retries": self.retries},
            )

    def succeeded(self) -> None:
        """The current task committed: its wait, if it had one, is over; the engine's when no task waits."""
        task = asyncio.current_task()
        if task is None or task not in self._failing:
            return
        self._failing.discard(task)
        if self._failing or self.waiting_since is None:
            return
        self.last_wait_s = self.monotonic() - self.waiting_since
        self.waits += 1
        log.info(
            "PostgreSQL takes writes again",
            extra={"waited_s": round(self.last_wait_s, 1), "retries": self.retries, "error": self.reason},
        )
        self.waiting_since = None

    async def check(self) -> None:
        """Readiness: raises while the engine waits for PostgreSQL to take writes."""
        if self.waiting:
            raise ConnectionError(
                f"PostgreSQL has not taken writes for {self.waited_s():.0f} s ({self.retries} retries): {self.reason}"
            )


def _describe(exc: BaseException) -> str:
    code = sqlstate_of(exc)
    text = f"{type(exc).__name__}: {exc}"
    return f"{code} {text}" if code else text

"""The outbox relay: publishes committed commands to TCS_COMMANDS, in order, exactly once in effect.

One relay runs at a time across all engine replicas (a session advisory lock), so commands leave in the
order they were decided: a batch is written in order on the one NATS connection and its acks awaited together.
Each command is published with its command id as Nats-Msg-Id and marked published only after JetStream
acknowledged it and every command before it: a crash in between re-publishes the same id, which JetStream drops as a
duplicate. The trace continues from the message that caused the command (its stored traceparent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from opentelemetry import trace
from opentelemetry.context import Context

from sync_engine.faults import DatabaseHealth, Fault, classify
from sync_engine.metrics import METRICS
from tccal import telemetry
from tccal.bus import Bus
from tccal.clock import Clock
from tccal.retry import backoff_delay
from tccal.subjects import commands_subject

log = logging.getLogger(__name__)

RELAY_LOCK_KEY = int.from_bytes(b"tcsyncrY", "big") & 0x7FFF_FFFF_FFFF_FFFF
CHANNEL = "sync_engine_outbox"
BATCH = 256


class Relay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Bus,
        clock: Clock,
        *,
        poll_interval: float = 0.5,
        health: DatabaseHealth | None = None,
    ) -> None:
        self.pool = pool
        self.health = health or DatabaseHealth()
        self.bus = bus
        self.clock = clock
        self.poll_interval = poll_interval
        self.tracer = telemetry.tracer("sync_engine.relay")
        self._wake = asyncio.Event()
        self._failures = 0  # rounds failed in a row

    def _notified(self, *_args: object) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; only the replica holding the relay lock publishes."""
        while not stop.is_set():
            try:
                async with self.pool.acquire() as connection:
                    await self._lead(connection, stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL or NATS trouble: start over after a pause
                self._failures += 1
                if classify(exc) is Fault.INFRASTRUCTURE and not isinstance(exc, RelayIncompleteError):
                    # PostgreSQL cannot take the marks: published commands are published again on the next
                    # round (duplicates of the window are dropped), so back off instead of re-sending every second
                    self.health.failed(exc)
                    await _pause(stop, backoff_delay(self._failures, base=1.0, cap=10.0))
                else:
                    log.warning("outbox relay interrupted, restarting", extra={"error": repr(exc)})
                    await _pause(stop, 1.0)

    async def _lead(self, connection: asyncpg.Connection, stop: asyncio.Event) -> None:
        while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
            if await _pause(stop, 1.0):
                return
        await connection.add_listener(CHANNEL, self._notified)
        try:
            while not stop.is_set():
                self._wake.clear()
                published = await self.publish_pending(connection)
                self._failures = 0
                self.health.succeeded()  # the marks were written: a wait of the relay, if any, is over
                if published < BATCH:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_interval)
        finally:
            await connection.remove_listener(CHANNEL, self._notified)
            await connection.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK_KEY)

    async def publish_pending(self, connection: asyncpg.Connection) -> int:
        """Publish up to one batch of due pending commands; returns how many were published."""
        now = self.clock.now()
        rows = await connection.fetch(
            "SELECT id, command_id, server_id, kind, payload, traceparent, tracestate, created_at FROM outbox"
            " WHERE status = 'pending' AND available_at <= $1 ORDER BY id LIMIT $2",
            now,
            BATCH,
        )
        METRICS.outbox_backlog = len(rows)
        messages: list[tuple[str, bytes, str, dict[str, str]]] = []
        subjects: dict[str, str] = {}
        causes: dict[tuple[str, str], Context] = {}  # the commands of one change share its stored trace
        for row in rows:
            command_id, server_id = str(row["command_id"]), str(row["server_id"])
            # No stored trace: a new one starts here (the empty context extract_context gives for no headers).
            cause = (str(row["traceparent"] or ""), str(row["tracestate"] or ""))
            context = causes.get(cause)
            if context is None:
                context = causes[cause] = _stored_context(*cause)
            # The producer span is only started, written into the headers and ended: it never becomes the current
            # span (nothing runs inside it), which spares the context switch in and out per command.
            span = self.tracer.start_span(
                "publish TCS_COMMANDS",
                context=context,
                kind=trace.SpanKind.PRODUCER,
                attributes={"tcs.command_id": command_id, "tcs.command_kind": str(row["kind"])},
            )
            headers: dict[str, str] = {}
            telemetry.inject_context(headers, trace.set_span_in_context(span, context))
            span.end()
            subject = subjects.get(server_id)
            if subject is None:
                subject = subjects[server_id] = commands_subject(server_id)
            messages.append((subject, bytes(row["payload"]), command_id, headers))
        # In order on the one connection, acks awaited together; rows are marked only up to the first unacked.
        acknowledged = await self.bus.publish_pipelined(messages)
        done = [int(row["id"]) for row in rows[:acknowledged]]
        now = self.clock.now()
        kinds: dict[str, int] = {}
        for row in rows[:acknowledged]:
            kinds[str(row["kind"])] = kinds.get(str(row["kind"]), 0) + 1
            METRICS.relay_lag.record(max(0.0, (now - row["created_at"]).total_seconds()))
        for kind, count in kinds.items():
            METRICS.commands_published.add(count, {"kind": kind})
        if done:
            await connection.execute(
                "UPDATE outbox SET status = 'published' WHERE id = ANY($1::bigint[]) AND status = 'pending'", done
            )
        if len(done) < len(rows):
            raise RelayIncompleteError(
                f"JetStream acknowledged {len(done)} of {len(rows)} commands; publishing the rest again"
            )
        return len(done)


def _stored_context(traceparent: str, tracestate: str) -> Context:
    """The trace context a command's row stored (an empty one if none)."""
    if not traceparent:
        return Context()
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return telemetry.extract_context(carrier)


class RelayIncompleteError(ConnectionError):
    """JetStream did not acknowledge every command of a batch (NATS trouble, not PostgreSQL's)."""


async def _pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` (real time) unless `stop` is set first; True when stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()

"""Pushes of one connection: the server's queued calendar commands sent within TCS's in-flight window, in
engine order per user, and their replies (done, retried later, or refused for good).

A push whose user's snapshot is being built waits; one a written snapshot covers is not sent (it is done when
the snapshot is acknowledged); one that would arrive after a later push of its user is replaced by a fresh
snapshot of the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from tccal import telemetry
from tcs_gateway.bridge.channel import ConnectionClosedError, log, retry_delay
from tcs_gateway.bridge.framing import ErrorCode
from tcs_gateway.bridge.metrics import METRICS
from tcs_gateway.bridge.queue import PendingPush
from trueconf.calendar.v1 import commands_pb2

if TYPE_CHECKING:
    from tcs_gateway.bridge.servers import ServerState
    from tcs_gateway.bridge.session import Session

_tracer = telemetry.tracer("tcs_gateway.bridge")
_METER = telemetry.meter("tcs_gateway")
PUSHES = _METER.create_counter(
    "tcs_gateway_pushes", unit="1", description="Calendar pushes sent to TrueConf Servers, by method and outcome."
)


class PushSender:
    def __init__(self, session: Session) -> None:
        self.session = session

    def _server(self) -> ServerState:
        server = self.session.server
        assert server is not None
        return server

    async def run(self) -> None:
        session = self.session
        snapshots = session.snapshots
        await snapshots.catchup_ready.wait()
        server = self._server()
        while not session.closing:
            item = await self._next_push()
            if item is None:
                return
            if server.is_covered(item):
                server.finish(item, commands_pb2.COMMAND_STATUS_OK)
                continue
            # The slot is taken after the push is chosen, so a waiting pusher never holds a slot a snapshot needs.
            slot = False
            sent = False
            try:
                await session.slots.acquire()
                slot = True
                if snapshots.is_blocked(item.user) or item.engine_seq <= snapshots.covered_by_sent_snapshot(item.user):
                    continue  # a snapshot of its user started meanwhile: the push waits (or is superseded)
                await self._send(item)
                sent = True
            except ConnectionClosedError:
                return
            finally:
                if not sent:
                    if slot:
                        session.slots.release()
                    if item.in_flight:
                        server.queue.requeue(item)

    async def _next_push(self) -> PendingPush | None:
        session = self.session
        snapshots = session.snapshots
        queue = self._server().queue
        while not session.closing:
            queue.changed.clear()
            now = time.monotonic()
            item = queue.take(now, snapshots.is_blocked, snapshots.covered_by_sent_snapshot)
            if item is not None:
                return item
            wait = queue.next_due(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.changed.wait(), timeout=wait if wait is not None else 5.0)
        return None

    async def _send(self, item: PendingPush) -> None:
        session = self.session
        server = self._server()
        span = _tracer.start_span(
            f"bridge push {item.method}",
            context=item.context,
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "tcs.server": server.id,
                "tcs.user": item.user,
                "tcs.seq": item.wire_seq,
                "tcs.command_id": item.command_id,
                "tcs.attempt": item.attempts,
            },
        )

        def on_lost() -> None:
            session.slots.release()
            span.set_status(trace.Status(trace.StatusCode.ERROR, "connection lost before the acknowledgement"))
            span.end()

        sent = time.monotonic()
        try:
            await session.channel.request(
                item.method,
                item.payload,
                lambda reply: self._reply(item, span, reply, sent),
                on_lost=on_lost,
                item=item,
            )
        except ConnectionClosedError:
            span.set_status(trace.Status(trace.StatusCode.ERROR, "connection closed before sending"))
            span.end()
            server.queue.requeue(item)
            raise
        if item.engine_seq > server.max_sent.get(item.user, 0):
            server.max_sent[item.user] = item.engine_seq

    def _reply(self, item: PendingPush, span: trace.Span, payload: dict[str, Any], sent: float) -> None:
        self.session.slots.release()
        METRICS.push_duration.record(time.monotonic() - sent, {"method": item.method})
        server = self._server()
        code = payload.get("errorCode")
        if code == 0:
            applied = payload.get("applied")
            outcome = "acknowledged" if applied is None else "applied" if applied else "ignored"
            if applied is not None:
                span.set_attribute("tcs.applied", bool(applied))
            span.end()
            PUSHES.add(1, {"method": item.method, "outcome": outcome})
            server.finish(item, commands_pb2.COMMAND_STATUS_OK)
            return
        description = str(payload.get("errorDescription", "no description"))
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code} {description}"))
        span.end()
        if not isinstance(code, int) or code in (ErrorCode.OVERLOADED, ErrorCode.INTERNAL_ERROR):
            PUSHES.add(1, {"method": item.method, "outcome": "retry"})
            delay = retry_delay(payload, item.attempts)
            if item.engine_seq < server.max_sent.get(item.user, 0):
                # A later push of this user is already out: resending this one would be stale. A fresh
                # snapshot supersedes it.
                self.session.request_snapshot(item.user)
            server.queue.requeue(item, time.monotonic() + delay)
            return
        PUSHES.add(1, {"method": item.method, "outcome": "refused"})
        name = str(payload.get("errorName", ""))
        text = f"TrueConf Server {server.id} refused {item.method} for {item.user}: {code} {name} {description}"
        field_name = payload.get("field")
        if field_name:
            text += f" (field {field_name})"
        server.record_error(text)
        log.error(
            "push refused",
            extra={"server": server.id, "user": item.user, "method": item.method, "code": code, "error": description},
        )
        server.finish(item, commands_pb2.COMMAND_STATUS_PERMANENT_ERROR, text)

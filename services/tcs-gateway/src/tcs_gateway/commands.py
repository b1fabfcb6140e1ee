"""TCS_COMMANDS → bridge pushes and REST calls → TCS_RESULTS, one durable pull consumer per TrueConf Server.

- Calendar commands become pushes in the server's outbound queue. Their message stays unacknowledged (with
  in-progress heartbeats) until TrueConf Server acknowledged the push, a snapshot superseded it, or TCS refused
  it for good; only then is the result published and the message acked. For a disconnected server the messages
  simply wait, so nothing is lost (a crash redelivers them) and nothing is doubled (TCS ignores a `seq` it has).
  While the queue is full the consumer stops pulling — after giving up the pushes that can only wait for their
  user's snapshot (answered SUPERSEDED, the snapshot owed; ServerState.relieve), so a full queue holds only pushes
  that can go out, and one user whose snapshot keeps failing holds back no one else.
- Conference commands run against REST API v4, in order per meeting, a few meetings at a time; the message is
  acked once the result is published.
- Results go to `tcs.v1.results.<server-key>` with the command id as Nats-Msg-Id.

The consumption span continues the trace of the message's `traceparent`; REST calls and pushes are its children.
tccal.bus.consume is not used because it handles one message at a time and acks when the handler returns,
while pushes are acknowledged later and in parallel (bounded by the in-flight window).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry import context as otel_context
from opentelemetry import trace

from tccal import telemetry
from tccal.bus import Bus, ensure_consumer, hand_back_late_deliveries
from tccal.cache_window import cache_window
from tccal.retry import backoff_delay
from tccal.subjects import TCS_COMMANDS, commands_subject, results_subject
from tcs_gateway.bridge.events import EventError, build_event, fit_event, push_seq
from tcs_gateway.bridge.payloads import event_budget
from tcs_gateway.bridge.ports import SyncUnavailableError
from tcs_gateway.bridge.queue import PendingPush
from tcs_gateway.bridge.servers import ServerState
from tcs_gateway.conference_commands import ConferenceCommands
from tcs_gateway.conference_order import ConferenceOrder
from tcs_gateway.rest.conferences import ConferenceService
from tcs_gateway.results import ResultBatcher
from tcs_gateway.settings import GatewaySettings
from tcs_gateway.sync_client import EventSource
from trueconf.calendar.v1 import calendar_pb2, commands_pb2

log = logging.getLogger(__name__)
_tracer = telemetry.tracer("tcs_gateway.commands")
_METER = telemetry.meter("tcs_gateway")
_RESULTS = _METER.create_counter(
    "tcs_gateway_command_results", unit="1", description="Command results published, by kind and status."
)
CALENDAR_KINDS = ("calendar_upsert", "calendar_cancel", "calendar_delete")
CONFERENCE_KINDS = ("conference_upsert", "conference_delete", "conference_run", "invitations_sync")


def durable_name(server_id: str) -> str:
    """The durable consumer of a server's command subject (letters, digits, '-' and '_' only)."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", server_id.lower())[:48]
    digest = hashlib.sha256(server_id.lower().encode("utf-8")).hexdigest()[:8]
    return f"tcs-gateway-{readable}-{digest}"


class CommandConsumer:
    def __init__(
        self,
        bus: Bus,
        state: ServerState,
        conferences: ConferenceService,
        source: EventSource,
        settings: GatewaySettings,
        order: ConferenceOrder,
    ) -> None:
        self.bus = bus
        self.state = state
        self.conferences = conferences
        self.source = source
        self.settings = settings
        self.server_id = state.id
        self.durable = durable_name(state.id)
        self.stop = asyncio.Event()
        self._conference = ConferenceCommands(state, conferences, settings, self._publish_and_ack, order)
        self.consumed = 0
        self._results = ResultBatcher(bus, results_subject(self.server_id))
        state.on_push_done = self.finish_push

    # ------------------------------------------------------------------ consuming
    async def run(self) -> None:
        js = self.bus.js
        subject = commands_subject(self.server_id)
        await ensure_consumer(
            js,
            TCS_COMMANDS,
            self.durable,
            filter_subject=subject,
            max_deliver=-1,  # never dead-letter a command: every one gets a result
            ack_wait=self.settings.ack_wait,
            max_ack_pending=self.settings.queue_capacity + self.settings.rest_backlog + self.settings.fetch_batch,
        )
        subscription = await js.pull_subscribe_bind(self.durable, TCS_COMMANDS)
        loop = asyncio.get_running_loop()
        heartbeat = loop.create_task(self._heartbeat(), name=f"heartbeat-{self.durable}")
        log.info("consuming commands", extra={"server": self.server_id, "subject": subject, "durable": self.durable})
        fetch_ended = loop.time()
        stopped = False
        try:
            while not self.stop.is_set():
                room = min(self.state.queue.free, self.settings.rest_backlog - self._conference.running)
                if self.state.queue.free <= 0 and self.state.relieve():
                    continue  # pushes that could only wait for their user's snapshot made room (ServerState.relieve)
                if room <= 0:
                    # Backpressure: a full queue (slow or absent server) or too many REST calls pending.
                    waiters = [self.state.queue.space.wait(), self._conference.space.wait(), self.stop.wait()]
                    await _first(waiters, timeout=1.0)
                    continue
                try:
                    messages = await subscription.fetch(
                        min(room, self.settings.fetch_batch), timeout=self.settings.fetch_timeout
                    )
                except (NatsTimeoutError, TimeoutError):
                    continue  # nothing to pull
                except Exception as exc:  # connection trouble: the client reconnects; fetch again
                    log.warning("fetch failed", extra={"server": self.server_id, "error": repr(exc)})
                    await _first([self.stop.wait()], timeout=0.5)
                    continue
                finally:
                    fetch_ended = loop.time()
                if self.stop.is_set():  # stopped (a lost lease) while pulling: another replica runs these
                    for message in messages:
                        with contextlib.suppress(Exception):
                            await message.nak()
                    break
                for message in messages:
                    self.consumed += 1
                    try:
                        await self._dispatch(message)
                    except Exception as exc:  # a defect with one command: try it again later, keep consuming
                        log.exception("command handling failed", extra={"server": self.server_id})
                        self.state.record_error(f"command handling failed: {exc!r}")
                        delivered = message.metadata.num_delivered or 1
                        with contextlib.suppress(Exception):
                            await message.nak(delay=backoff_delay(delivered, base=1.0, cap=60.0))
            stopped = True
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if stopped:  # what reached the last pull request after its fetch gave up goes to the next holder at once
                await hand_back_late_deliveries(
                    self.bus, subscription, fetch_ended, self.settings.fetch_timeout, TCS_COMMANDS, self.durable
                )
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _heartbeat(self) -> None:
        """Keep held messages from being redelivered while their push or REST call is pending."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            held = [m for item in self.state.queue.items() for m in item.messages()]
            held += self._conference.held_messages()
            for message in held:
                try:
                    await message.in_progress()
                except Exception as exc:  # NATS trouble: the message may be redelivered, which is harmless
                    log.debug("in-progress failed", extra={"error": repr(exc)})

    async def _dispatch(self, message: Msg) -> None:
        parent = telemetry.extract_context({str(k): str(v) for k, v in (message.headers or {}).items()})
        span = _tracer.start_span(f"consume {TCS_COMMANDS}", context=parent, kind=trace.SpanKind.CONSUMER)
        span.set_attribute("messaging.destination.name", message.subject)
        span.set_attribute("tcs.server", self.server_id)
        try:
            command = commands_pb2.TcsCommand.FromString(message.data)
        except DecodeError as exc:
            log.error("undecodable command dropped", extra={"server": self.server_id, "error": str(exc)})
            span.set_status(trace.Status(trace.StatusCode.ERROR, "undecodable"))
            span.end()
            await message.ack()
            return
        kind = command.WhichOneof("command")
        span.update_name(f"command {kind}")
        span.set_attribute("tcs.command_id", command.command_id)
        if not command.command_id:
            log.error("command without command_id dropped", extra={"server": self.server_id, "kind": kind})
            span.end()
            await message.ack()
            return
        if command.server_id and command.server_id.lower() != self.server_id.lower():
            await self._publish_and_ack(
                command,
                [message],
                commands_pb2.COMMAND_STATUS_PERMANENT_ERROR,
                f"command for {command.server_id} arrived on the subject of {self.server_id}",
            )
            span.end()
            return
        if kind in CALENDAR_KINDS:
            with trace.use_span(span, end_on_exit=True):
                await self._calendar(message, command, kind)
        elif kind in CONFERENCE_KINDS:
            self._conference.start(message, command, kind, span)
        else:
            with trace.use_span(span, end_on_exit=True):
                await self._publish_and_ack(
                    command, [message], commands_pb2.COMMAND_STATUS_PERMANENT_ERROR, f"unknown command kind {kind!r}"
                )

    # ------------------------------------------------------------------ calendar commands
    async def _calendar(self, message: Msg, command: commands_pb2.TcsCommand, kind: str) -> None:
        host = self.state.server.host
        budget = event_budget(self.settings.max_frame_bytes)
        try:
            if kind == "calendar_upsert":
                body = command.calendar_upsert
                user, seq = body.user.lower(), int(body.seq)
                wire = push_seq(seq)
                cancelled = bool(body.occurrence.cancelled)
                event = build_event(body.occurrence, user, wire, server_host=host, cancelled=cancelled)
                method = "calendar.cancel" if cancelled else "calendar.upsert"
                payload = {"user": user, "seq": wire, "event": fit_event(event, budget, user)}
                meeting = body.occurrence.meeting_id
            elif kind == "calendar_cancel":
                cancel = command.calendar_cancel
                user, seq = cancel.user.lower(), int(cancel.seq)
                wire = push_seq(seq)
                carried = cancel.occurrence if cancel.HasField("occurrence") else None
                # engines before the occurrence field: read it back from the engine's view
                occurrence = carried or await self._occurrence(user, cancel.occurrence_id)
                if occurrence is None:
                    # The engine no longer shows it to this user: make TCS agree.
                    method, meeting = "calendar.delete", ""
                    payload = {"user": user, "seq": wire, "id": cancel.occurrence_id[:512], "reason": "deleted"}
                else:
                    event = build_event(occurrence, user, wire, server_host=host, cancelled=True)
                    method, meeting = "calendar.cancel", occurrence.meeting_id
                    payload = {"user": user, "seq": wire, "event": fit_event(event, budget, user)}
            else:
                delete = command.calendar_delete
                user, seq = delete.user.lower(), int(delete.seq)
                wire = push_seq(seq)
                method, meeting = "calendar.delete", ""
                payload = {"user": user, "seq": wire, "id": delete.occurrence_id[:512], "reason": "deleted"}
                if not delete.occurrence_id:
                    raise EventError("calendar_delete.occurrence_id is empty")
            if not user:
                raise EventError(f"{kind}.user is empty")
        except EventError as exc:
            await self._publish_and_ack(command, [message], commands_pb2.COMMAND_STATUS_PERMANENT_ERROR, str(exc))
            return
        except SyncUnavailableError as exc:
            # The cancelled occurrence could not be read: try again later.
            self.state.record_error(str(exc))
            delivered = message.metadata.num_delivered or 1
            await message.nak(delay=backoff_delay(delivered, base=1.0, cap=30.0))
            return
        item = PendingPush(
            command_id=command.command_id,
            user=user,
            engine_seq=seq,
            method=method,
            payload=payload,
            message=message,
            context=otel_context.get_current(),
            meeting_id=meeting,
            caused_at=command.created_at.ToMicroseconds() / 1e6 if command.HasField("created_at") else None,
        )
        if self.state.is_covered(item):
            await self._publish_and_ack(command, [message], commands_pb2.COMMAND_STATUS_OK, "")
            return
        queued = self.state.queue.add(item)
        if queued is not item:
            return  # a redelivery of a push already queued: it takes the newer message
        session = self.state.session
        if seq < self.state.max_sent.get(user, 0) and session is not None:
            # Arrived after a later push of its user: it would be stale, a fresh snapshot covers it.
            session.request_snapshot(user)

    async def _occurrence(self, user: str, occurrence_id: str) -> calendar_pb2.Occurrence | None:
        window = cache_window(
            datetime.now(UTC), self.settings.window_backward_months, self.settings.window_forward_months
        )
        listed = await self.source.list_events(user, window.start, window.end)
        for occurrence in listed.occurrences:
            if occurrence.id == occurrence_id:
                return occurrence
        return None

    async def finish_push(self, item: PendingPush, status: commands_pb2.CommandStatus.ValueType, error: str) -> None:
        token = otel_context.attach(item.context) if item.context is not None else None
        try:
            result = commands_pb2.TcsCommandResult(
                command_id=item.command_id,
                server_id=self.server_id,
                status=status,
                error=error,
                meeting_id=item.meeting_id,
            )
            result.completed_at.FromDatetime(datetime.now(UTC))
            # Batched with the other pushes finished meanwhile; returns once published and the messages acked.
            await self._results.publish_and_ack(result, item.context, item.messages())
            _RESULTS.add(1, {"kind": "calendar", "status": commands_pb2.CommandStatus.Name(result.status)})
        except Exception as exc:  # not published: leave the message unacked, it comes back and is pushed again
            log.warning(
                "command result not published; the command will be redelivered",
                extra={"server": self.server_id, "command_id": item.command_id, "error": repr(exc)},
            )
        finally:
            if token is not None:
                otel_context.detach(token)

    # ------------------------------------------------------------------ results
    async def _publish(self, result: commands_pb2.TcsCommandResult, kind: str) -> None:
        await self.bus.publish(results_subject(self.server_id), result.SerializeToString(), msg_id=result.command_id)
        _RESULTS.add(1, {"kind": kind, "status": commands_pb2.CommandStatus.Name(result.status)})

    async def _publish_and_ack(
        self,
        command: commands_pb2.TcsCommand,
        messages: list[Msg],
        status: commands_pb2.CommandStatus.ValueType,
        error: str,
        *,
        conference_id: str = "",
    ) -> None:
        kind = command.WhichOneof("command") or ""
        body = getattr(command, kind, None) if kind else None
        meeting = str(getattr(body, "meeting_id", "")) if body is not None else ""
        result = commands_pb2.TcsCommandResult(
            command_id=command.command_id,
            server_id=self.server_id,
            status=status,
            error=error[:4000],
            meeting_id=meeting,
        )
        if conference_id and kind in CONFERENCE_KINDS:
            result.conference.id = conference_id
            result.conference.url = self.conferences.url(conference_id)
        result.completed_at.FromDatetime(datetime.now(UTC))
        try:
            await self._publish(result, kind)
        except Exception as exc:  # NATS trouble: redeliver the command later; its effect is idempotent
            log.warning(
                "command result not published; the command will be redelivered",
                extra={"server": self.server_id, "command_id": command.command_id, "error": repr(exc)},
            )
            for message in messages:
                with contextlib.suppress(Exception):
                    await message.nak(delay=2.0)
            return
        for message in messages:
            with contextlib.suppress(Exception):
                await message.ack()

    # ------------------------------------------------------------------ shutdown
    async def wait_rest(self, timeout: float) -> None:
        await self._conference.wait(timeout)

    def restart(self) -> None:
        """Ready to run again after a stop (the server's lease came back)."""
        self.stop = asyncio.Event()

    async def hand_back(self) -> int:
        """The lease is gone: the queued pushes not yet sent go back to JetStream now (the next holder gets them at
        once) and leave the queue; a push already sent finishes here when TCS answers."""
        released = 0
        for item in self.state.queue.items():
            if item.in_flight:
                continue
            self.state.queue.remove(item)
            for message in item.messages():
                with contextlib.suppress(Exception):
                    await message.nak()
                    released += 1
        return released

    async def release_held(self) -> int:
        """Shutdown: hand the queued pushes' messages back to JetStream now (instead of after ack_wait)."""
        released = 0
        for item in self.state.queue.items():
            for message in item.messages():
                with contextlib.suppress(Exception):
                    await message.nak()
                    released += 1
        return released


async def _first(waiters: list[Coroutine[Any, Any, Any]], timeout: float) -> None:
    tasks = [asyncio.ensure_future(w) for w in waiters]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()

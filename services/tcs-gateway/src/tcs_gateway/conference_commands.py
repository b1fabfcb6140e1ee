"""Conference commands of one TrueConf Server (conference_upsert/delete/run, invitations_sync) run against REST
API v4: in order per meeting, at most `rest_concurrency` at a time, at most `rest_backlog` pending (the command
consumer stops pulling beyond that). Each command's messages are held (kept alive by the consumer's heartbeat)
until its result is published; the same command arriving again while it runs is acked with it. A
conference_upsert or conference_delete older than one that already ran for its meeting is not run and is answered
COMMAND_STATUS_SUPERSEDED (conference_order.py says why)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from nats.aio.msg import Msg
from opentelemetry import trace

from tcs_gateway.bridge.servers import ServerState
from tcs_gateway.conference_order import FENCED_KINDS, ConferenceOrder
from tcs_gateway.rest.conferences import ConferenceService, conference_id_for
from tcs_gateway.rest.http import RestError
from tcs_gateway.settings import GatewaySettings
from trueconf.calendar.v1 import commands_pb2

#: The command consumer's logger: these lines are about its commands.
log = logging.getLogger("tcs_gateway.commands")


class PublishAndAck(Protocol):
    async def __call__(
        self,
        command: commands_pb2.TcsCommand,
        messages: list[Msg],
        status: commands_pb2.CommandStatus.ValueType,
        error: str,
        *,
        conference_id: str = "",
    ) -> None: ...


class _MeetingLocks:
    """FIFO lock per meeting, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, meeting: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(meeting, (asyncio.Lock(), 0))
        self._locks[meeting] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[meeting]
            if users <= 1:
                del self._locks[meeting]
            else:
                self._locks[meeting] = (lock, users - 1)


class ConferenceCommands:
    def __init__(
        self,
        state: ServerState,
        conferences: ConferenceService,
        settings: GatewaySettings,
        publish_and_ack: PublishAndAck,
        order: ConferenceOrder,
    ) -> None:
        self.state = state
        self.conferences = conferences
        self.order = order
        self.settings = settings
        self.server_id = state.id
        self._publish_and_ack = publish_and_ack
        #: Commands started and not finished.
        self.running = 0
        #: Set while fewer than `rest_backlog` commands are pending.
        self.space = asyncio.Event()
        self.space.set()
        self._slots = asyncio.Semaphore(settings.rest_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._messages: dict[str, list[Msg]] = {}
        self._meetings = _MeetingLocks()

    def held_messages(self) -> list[Msg]:
        return [m for messages in self._messages.values() for m in messages]

    def start(self, message: Msg, command: commands_pb2.TcsCommand, kind: str, span: trace.Span) -> None:
        held = self._messages.get(command.command_id)
        if held is not None:
            held.append(message)  # the same command again while it runs: acked together
            span.end()
            return
        self._messages[command.command_id] = [message]
        self.running += 1
        if self.running >= self.settings.rest_backlog:
            self.space.clear()
        task = asyncio.get_running_loop().create_task(self._run(command, kind, span), name=f"rest-{kind}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, command: commands_pb2.TcsCommand, kind: str, span: trace.Span) -> None:
        body = getattr(command, kind)
        meeting: str = body.meeting_id
        conference_id = ""
        try:
            async with self._meetings.hold(meeting or command.command_id), self._slots:
                with trace.use_span(span, end_on_exit=True):
                    status: commands_pb2.CommandStatus.ValueType = commands_pb2.COMMAND_STATUS_OK
                    error = ""
                    fenced = kind in FENCED_KINDS and meeting != ""
                    try:
                        newer = (
                            await self.order.superseded_by(self.server_id, meeting, command.conference_order)
                            if fenced
                            else 0
                        )
                        if newer:
                            status = commands_pb2.COMMAND_STATUS_SUPERSEDED
                            error = f"not run: command {newer} of the meeting ran after it was decided"
                            log.info(
                                "conference command older than one that ran: not run",
                                extra={"server": self.server_id, "kind": kind, "meeting": meeting, "newer": newer},
                            )
                        elif kind == "conference_upsert":
                            conference_id = await self.conferences.upsert(command.conference_upsert)
                        elif kind == "conference_delete":
                            conference_id = await self.conferences.delete(command.conference_delete)
                        elif kind == "conference_run":
                            conference_id = await self.conferences.run(command.conference_run)
                        else:
                            conference_id = await self.conferences.invitations(command.invitations_sync)
                        if fenced and status == commands_pb2.COMMAND_STATUS_OK:
                            await self.order.ran(self.server_id, meeting, command.conference_order)
                    except RestError as exc:
                        status = (
                            commands_pb2.COMMAND_STATUS_RETRYABLE_ERROR
                            if exc.retryable
                            else commands_pb2.COMMAND_STATUS_PERMANENT_ERROR
                        )
                        error = str(exc)
                    except Exception as exc:  # unexpected: report it, the engine retries
                        log.exception("conference command failed", extra={"server": self.server_id, "kind": kind})
                        status = commands_pb2.COMMAND_STATUS_RETRYABLE_ERROR
                        error = f"{kind} failed in the gateway: {exc!r}"
                    if status not in (commands_pb2.COMMAND_STATUS_OK, commands_pb2.COMMAND_STATUS_SUPERSEDED):
                        span.set_status(trace.Status(trace.StatusCode.ERROR, error[:200]))
                        self.state.record_error(f"{kind} {meeting}: {error}")
                        log.warning(
                            "conference command failed",
                            extra={"server": self.server_id, "kind": kind, "meeting": meeting, "error": error},
                        )
                    messages = self._messages.get(command.command_id, [])
                    await self._publish_and_ack(
                        command,
                        messages,
                        status,
                        error,
                        conference_id=conference_id or (body.conference_id or conference_id_for(meeting)),
                    )
        finally:
            self._messages.pop(command.command_id, None)
            self.running -= 1
            if self.running < self.settings.rest_backlog:
                self.space.set()

    async def wait(self, timeout: float) -> None:
        """Shutdown: let the running commands finish (at most `timeout` seconds)."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*list(self._tasks), return_exceptions=True), timeout)

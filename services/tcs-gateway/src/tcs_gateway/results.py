"""Results of finished pushes, published to TCS_RESULTS together (group commit) and then their commands acked.

TrueConf acknowledges pushes one frame at a time; publishing each result with its own round trip to JetStream and
its own socket write cost the gateway (and NATS) more CPU than the push itself during a first sync. Results that
finish while a batch is out wait for the next one: one pipelined publish (`Bus.publish_batch`, each result with
the command id as Nats-Msg-Id and its push's trace context), then the commands' messages are acked. Each caller
still waits for its own result, so a result is never reported published before JetStream stored it, and a failed
batch leaves its commands unacked (they are redelivered and pushed again; TCS ignores a `seq` it has).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from nats.aio.msg import Msg
from opentelemetry.context import Context

from tccal import telemetry
from tccal.bus import Bus
from trueconf.calendar.v1 import commands_pb2


@dataclass
class _Waiting:
    result: commands_pb2.TcsCommandResult
    context: Context | None
    messages: Sequence[Msg]
    done: asyncio.Future[None]


class ResultBatcher:
    """Publish results on one subject in batches: whatever finished while the previous batch was out."""

    def __init__(self, bus: Bus, subject: str) -> None:
        self.bus = bus
        self.subject = subject
        self._waiting: list[_Waiting] = []
        self._sender: asyncio.Task[None] | None = None

    async def publish_and_ack(
        self, result: commands_pb2.TcsCommandResult, context: Context | None, messages: Sequence[Msg]
    ) -> None:
        """Return once `result` is stored in JetStream and `messages` are acked; raise if it was not published."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append(_Waiting(result, context, messages, done))
        if self._sender is None:
            self._sender = loop.create_task(self._send(), name=f"results-{self.subject}")
        await done

    async def _send(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await self.bus.publish_batch(
                        [
                            (
                                self.subject,
                                waiting.result.SerializeToString(),
                                waiting.result.command_id,
                                dict(telemetry.inject_context({}, waiting.context)),
                            )
                            for waiting in batch
                        ]
                    )
                except Exception as exc:  # not published: the callers leave their messages unacked
                    _settle(batch, exc)
                    continue
                for waiting in batch:
                    for message in waiting.messages:
                        with contextlib.suppress(Exception):
                            await message.ack()
                _settle(batch, None)
        finally:
            self._sender = None
            stopped = RuntimeError("the result publisher stopped before publishing")
            _settle(batch, stopped)
            _settle(self._waiting, stopped)
            self._waiting = []


def _settle(batch: Sequence[_Waiting], error: BaseException | None) -> None:
    for waiting in batch:
        if waiting.done.done():
            continue
        if error is None:
            waiting.done.set_result(None)
        else:
            waiting.done.set_exception(error)

"""Stream lag and dead letters of a service's own JetStream consumers, as metrics.

Every `interval` seconds the service asks NATS for each of its durable consumers' info (`num_pending`: messages
in the stream the consumer has not been given yet; `num_ack_pending`: given but not acknowledged) and, where it
may read the DEADLETTER stream's info, how many dead letters each consumer left there (`tccal.bus.consume`
copies a message it gave up on to `dlq.<stream>.<durable>`). The gauges report the last answer; a consumer not
created yet, or a NATS that does not answer, leaves them out until it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry.metrics import Observation

from tccal import telemetry
from tccal.bus import Bus
from tccal.subjects import DEADLETTER, deadletter_subject

log = logging.getLogger(__name__)

#: How often the consumers are looked at (seconds).
DEFAULT_INTERVAL = 10.0


@dataclass(frozen=True)
class Consumer:
    """A durable consumer of `stream` this service reads with."""

    stream: str
    durable: str

    def attributes(self) -> dict[str, str]:
        return {"stream": self.stream, "consumer": self.durable}


class ConsumerMetrics:
    """The gauges `tc_calendar_consumer_pending_messages`, `tc_calendar_consumer_ack_pending_messages` and
    `tc_calendar_dead_letter_messages`, labelled by stream and consumer, fed by `run`."""

    def __init__(
        self,
        bus: Bus,
        consumers: Callable[[], Iterable[Consumer]],
        *,
        dead_letters: bool,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"consumer metrics interval must be positive, not {interval!r}")
        self.bus = bus
        self.consumers = consumers
        self.dead_letters = dead_letters
        self.interval = interval
        self.pending: dict[Consumer, int] = {}
        self.ack_pending: dict[Consumer, int] = {}
        self.dead: dict[Consumer, int] = {}
        _watched.add(self)
        _instruments()

    async def refresh(self) -> None:
        """Ask NATS once about every consumer (one that does not answer keeps its last values)."""
        for consumer in list(self.consumers()):
            try:
                info = await self.bus.js.consumer_info(consumer.stream, consumer.durable)
            except Exception as exc:  # not created yet, NATS away: nothing new to report
                log.debug("consumer info unavailable", extra={"consumer": consumer.durable, "error": repr(exc)})
                continue
            self.pending[consumer] = int(info.num_pending or 0)
            self.ack_pending[consumer] = int(info.num_ack_pending or 0)
        if self.dead_letters:
            await self._refresh_dead_letters()

    async def _refresh_dead_letters(self) -> None:
        for consumer in list(self.consumers()):
            subject = deadletter_subject(consumer.stream, consumer.durable)
            try:
                info = await self.bus.js.stream_info(DEADLETTER, subjects_filter=subject)
            except Exception as exc:  # DEADLETTER not declared yet, NATS away
                log.debug("dead-letter stream info unavailable", extra={"error": repr(exc)})
                return
            self.dead[consumer] = int((info.state.subjects or {}).get(subject, 0))

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every `interval` seconds until `stop`."""
        while not stop.is_set():
            if self.bus.connected:
                await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)


#: Every ConsumerMetrics of the process: the gauges (created once per process) report them all.
_watched: weakref.WeakSet[ConsumerMetrics] = weakref.WeakSet()


def _observe(values: Callable[[ConsumerMetrics], dict[Consumer, int]]) -> Iterable[Observation]:
    return [
        Observation(value, consumer.attributes())
        for watcher in list(_watched)
        for consumer, value in list(values(watcher).items())
    ]


@functools.cache
def _instruments() -> None:
    meter = telemetry.meter("tccal.streams")
    meter.create_observable_gauge(
        "tc_calendar_consumer_pending_messages",
        callbacks=[lambda options: _observe(lambda watcher: watcher.pending)],
        unit="{message}",
        description="Messages in the stream the durable consumer has not been given yet (stream lag).",
    )
    meter.create_observable_gauge(
        "tc_calendar_consumer_ack_pending_messages",
        callbacks=[lambda options: _observe(lambda watcher: watcher.ack_pending)],
        unit="{message}",
        description="Messages given to the durable consumer and not acknowledged yet.",
    )
    meter.create_observable_gauge(
        "tc_calendar_dead_letter_messages",
        callbacks=[lambda options: _observe(lambda watcher: watcher.dead)],
        unit="{message}",
        description="Messages the consumer gave up on, kept in DEADLETTER (tc-calendar dead-letters).",
    )

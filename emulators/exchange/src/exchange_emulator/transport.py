"""Meeting messages travel through transport, later than the organizer's call returns, sometimes out of order.

Exchange does not write an attendee's calendar inside the organizer's CreateItem or UpdateItem: it sends a meeting
request, update or cancellation (and the attendee's response back) through transport, and the attendee's Calendar
Attendant (Calendar Repair Assistant) applies it when it arrives ("Meeting requests in EWS in Exchange", "Calendar
Attendant / Calendar processing": an out-of-date meeting message, older than what the calendar already holds, is
not applied). Each message here is delivered `delay_ms` + 0..`jitter_ms` after it was sent. A meeting request or
update carries the whole meeting as the organizer had it then, so it may overtake older messages about the same
meeting to the same mailbox, which are then out of date on arrival and dropped; a message carrying only part of
the story (a cancellation, one occurrence cancelled, a response) is never overtaken by an older one about the same
meeting. `delay_ms` = `jitter_ms` = 0 delivers before the
organizer's call returns (the emulator's old behaviour, for tests of calendar semantics).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: What a message is about: (recipient mailbox, meeting UID, and for responses the attendee who answered).
Topic = tuple[str, ...]


@dataclass(order=True)
class _Message:
    due: float
    stamp: int
    topic: Topic = field(compare=False)
    apply: Callable[[], object] = field(compare=False)


class Transport:
    def __init__(self, delay_ms: int, jitter_ms: int, seed: int | None = None) -> None:
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms
        self._random = random.Random(seed)
        self._queue: list[_Message] = []
        self._stamps = itertools.count(1)
        #: Newest stamp applied per topic: an older message arriving later is out of date.
        self._applied: dict[Topic, int] = {}
        self.delivered = 0
        self.out_of_date = 0
        self._wake = asyncio.Event()

    @property
    def immediate(self) -> bool:
        return self.delay_ms == 0 and self.jitter_ms == 0

    @property
    def in_transit(self) -> int:
        return len(self._queue)

    def pending_for(self, topic: Topic) -> bool:
        return any(message.topic == topic for message in self._queue)

    def send(self, topic: Topic, apply: Callable[[], object], *, whole: bool = False) -> None:
        """Send a message about `topic`; `whole`: it carries the meeting's whole state (a request or update)."""
        stamp = next(self._stamps)
        if self.immediate:
            self._deliver(_Message(0.0, stamp, topic, apply))
            return
        due = time.monotonic() + (self.delay_ms + self._random.uniform(0, self.jitter_ms)) / 1000.0
        if not whole:
            ahead = [message.due for message in self._queue if message.topic == topic]
            if ahead:
                due = max(due, max(ahead) + 0.001)
        heapq.heappush(self._queue, _Message(due, stamp, topic, apply))
        self._wake.set()

    def _deliver(self, message: _Message) -> None:
        if self._applied.get(message.topic, 0) > message.stamp:
            self.out_of_date += 1
            log.info("out-of-date meeting message for %s dropped", "/".join(message.topic))
            return
        self._applied[message.topic] = message.stamp
        self.delivered += 1
        message.apply()

    def deliver_due(self, now: float | None = None) -> int:
        """Deliver every message whose time has come; returns how many arrived."""
        moment = time.monotonic() if now is None else now
        count = 0
        while self._queue and self._queue[0].due <= moment:
            self._deliver(heapq.heappop(self._queue))
            count += 1
        return count

    def flush(self) -> int:
        """Deliver everything still in transit (at shutdown: transport queues are durable on Exchange)."""
        return self.deliver_due(float("inf"))

    async def run(self) -> None:
        """Deliver messages as they fall due, until cancelled."""
        while True:
            self.deliver_due()
            wait = self._queue[0].due - time.monotonic() if self._queue else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait if wait is None else max(0.0, min(wait, 1.0)))

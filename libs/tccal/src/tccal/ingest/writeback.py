"""writeBackJoinLink, the part both ingest services share: which organizer items wait for a join link, and the
TrueConf results that bring one.

A service calls `observe` for every change it publishes. It remembers the meetings published from an organizer's
own copy that ask for a conference and carry no join link yet (meeting id = sync-engine's: the first 32 hex digits
of SHA-256 of the iCalendar UID). A `TcsCommandResult` on TCS_RESULTS (`tcs.v1.results.>`, the service's durable
consumer) with status OK and a conference link for such a meeting makes the service `write` the link into the
organizer's item: into the location when it is empty, else appended to the body (`body_with_link`). The next sync
publishes the organizer's item with the link, which names the same conference (no second conference) and ends the
wait. Results for meetings not remembered (other organizers, already linked, from before a restart) are acked and
ignored; a write that fails raises, so the result is delivered again (and dead-lettered after `nats.maxDeliver`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import html
import logging
from dataclasses import dataclass

from nats.aio.msg import Msg

from tccal.bus import Bus, consume
from tccal.service import ServiceApp
from tccal.stream_metrics import Consumer, ConsumerMetrics
from tccal.subjects import TCS_RESULTS
from trueconf.calendar.v1 import calendar_pb2, commands_pb2, common_pb2

log = logging.getLogger(__name__)


def meeting_id(uid: str) -> str:
    """sync-engine's meeting id of an iCalendar UID (sync_engine/ids.py)."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:32]


def body_with_link(body: str, url: str, *, is_html: bool) -> str:
    """The organizer's body with the join link appended (an HTML paragraph or a text line)."""
    if is_html:
        link = html.escape(url, quote=True)
        return f'{body}<p>TrueConf: <a href="{link}">{link}</a></p>'
    return f"{body}\n\nTrueConf: {url}".lstrip()


@dataclass
class Pending:
    mailbox: str
    item_id: str


class JoinLinkWriteBack(abc.ABC):
    """Subclasses give the durable name and implement `may_write` and `write` (abstract: a subclass missing one
    cannot be constructed)."""

    durable = ""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.pending: dict[str, Pending] = {}
        self.written = 0

    @abc.abstractmethod
    def may_write(self, pending: Pending) -> bool:
        """Whether this service serves the mailbox now (seat, ownership)."""

    @abc.abstractmethod
    async def write(self, pending: Pending, url: str) -> str:
        """Put `url` into the organizer's item; which field took it ("location", "body" or "present")."""

    def describe(self, error: BaseException) -> str:
        return f"{type(error).__name__}: {error}"

    def observe(self, mailbox: str, item_id: str, event: calendar_pb2.CalendarEvent | None) -> None:
        """Called for every change a sync publishes."""
        if event is None:
            for key, pending in list(self.pending.items()):
                if pending.item_id == item_id:
                    del self.pending[key]
            return
        key = meeting_id(event.uid)
        wants_link = (
            event.my_response == common_pb2.RESPONSE_TYPE_ORGANIZER
            and event.HasField("conference")
            and not event.conference.existing_conference_id
            and not event.cancelled
        )
        if wants_link:
            self.pending[key] = Pending(mailbox, item_id)
        elif key in self.pending and self.pending[key].item_id == item_id:
            del self.pending[key]  # the organizer's item got its link (attendees' copies change nothing here)

    async def run(self, stop: asyncio.Event) -> None:
        await consume(self.bus, TCS_RESULTS, self.durable, self._handle, stop=stop, batch=16)

    async def keep_running(self, stop: asyncio.Event) -> None:
        """`run` until `stop`: a crash of the consumer is logged and it starts again after a pause."""
        while not stop.is_set():
            try:
                await self.run(stop)
            except Exception as exc:
                log.error("join-link write-back consumer failed; restarting", extra={"error": self.describe(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)

    async def _handle(self, message: Msg) -> None:
        result = commands_pb2.TcsCommandResult.FromString(message.data)
        if result.status != commands_pb2.COMMAND_STATUS_OK or not result.conference.url:
            return
        pending = self.pending.get(result.meeting_id)
        if pending is None or not self.may_write(pending):
            return
        url = result.conference.url
        try:
            where = await self.write(pending, url)
        except Exception as exc:
            log.warning(
                "join link not written back",
                extra={"mailbox": pending.mailbox, "item_id": pending.item_id, "error": self.describe(exc)},
            )
            raise
        self.pending.pop(result.meeting_id, None)
        self.written += 1
        log.info(
            "join link written back",
            extra={"mailbox": pending.mailbox, "item_id": pending.item_id, "field": where, "url": url},
        )


def watch_writeback(app: ServiceApp, bus: Bus, writer: JoinLinkWriteBack | None) -> None:
    """Stream lag and dead letters of the service's write-back consumer, as metrics (none when writeBackJoinLink
    is off and there is no writer)."""
    consumers = [Consumer(TCS_RESULTS, writer.durable)] if writer is not None else []
    lag = ConsumerMetrics(bus, lambda: consumers, dead_letters=True)
    app.task(lambda: lag.run(app.stop_event))

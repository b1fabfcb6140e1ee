"""writeBackJoinLink: put the join link of a conference TrueConf Server created into the organizer's item.

ews-ingest remembers the meetings it publishes from an organizer's own copy that ask for a conference and carry
no join link yet (meeting id = sync-engine's: the first 32 hex digits of SHA-256 of the iCalendar UID). A
`TcsCommandResult` on TCS_RESULTS (`tcs.v1.results.>`, durable consumer `ews-ingest-writeback`) with status OK and
a conference link for such a meeting makes ews-ingest write the link into the organizer's item with UpdateItem:
into Location when it is empty, else appended to the body. Attendees are not sent an update (SendToNone); the
next sync publishes the organizer's item with the link, which names the same conference (no second conference).
Results for meetings not remembered (other organizers, already linked, from before a restart) are acked and
ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from exchangelib import HTMLBody
from nats.aio.msg import Msg

from ews_ingest.exchange.errors import describe
from ews_ingest.scheduler import Scheduler
from tccal.bus import Bus, consume
from tccal.subjects import TCS_RESULTS
from trueconf.calendar.v1 import calendar_pb2, commands_pb2, common_pb2

log = logging.getLogger(__name__)
DURABLE = "ews-ingest-writeback"


def meeting_id(uid: str) -> str:
    """sync-engine's meeting id of an iCalendar UID (sync_engine/ids.py)."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:32]


@dataclass
class Pending:
    mailbox: str
    item_id: str


class JoinLinkWriter:
    def __init__(self, scheduler: Scheduler, bus: Bus) -> None:
        self.scheduler = scheduler
        self.bus = bus
        self.pending: dict[str, Pending] = {}
        self.written = 0

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
        await consume(self.bus, TCS_RESULTS, DURABLE, self._handle, stop=stop, batch=16)

    async def _handle(self, message: Msg) -> None:
        result = commands_pb2.TcsCommandResult.FromString(message.data)
        if result.status != commands_pb2.COMMAND_STATUS_OK or not result.conference.url:
            return
        pending = self.pending.get(result.meeting_id)
        if pending is None:
            return
        entry = self.scheduler.entries.get(pending.mailbox)
        if entry is None or not self.scheduler.active(entry):
            return
        url = result.conference.url

        def write(account: Any) -> str:
            (item,) = list(account.fetch(ids=[(pending.item_id, None)], folder=account.calendar))
            if isinstance(item, Exception):
                raise item
            text = f"{item.location or ''} {item.text_body or item.body or ''}"
            if url in text:
                return "present"
            if not (item.location or "").strip():
                item.location = url
                fields = ["location"]
            else:
                if type(item.body).__name__ == "HTMLBody":
                    item.body = HTMLBody(f'{item.body}<p>TrueConf: <a href="{url}">{url}</a></p>')
                else:
                    item.body = f"{item.body or ''}\n\nTrueConf: {url}".lstrip()
                fields = ["body"]
            item.save(update_fields=fields, send_meeting_invitations="SendToNone")
            return fields[0]

        try:
            where = await entry.pool.call(pending.mailbox, "UpdateItem", write)
        except Exception as exc:
            log.warning(
                "join link not written back",
                extra={"mailbox": pending.mailbox, "item_id": pending.item_id, "error": describe(exc)},
            )
            raise
        self.pending.pop(result.meeting_id, None)
        self.written += 1
        log.info(
            "join link written back",
            extra={"mailbox": pending.mailbox, "item_id": pending.item_id, "field": where, "url": url},
        )

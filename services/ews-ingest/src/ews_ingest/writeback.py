"""writeBackJoinLink for Exchange: the join link of a conference TrueConf Server created goes into the organizer's
item with UpdateItem (tccal.ingest.writeback says which items and when; durable consumer `ews-ingest-writeback`).

Into Location when it is empty, else appended to the body. Attendees are not sent an update (SendToNone); the next
sync publishes the organizer's item with the link, which names the same conference (no second conference).
"""

from __future__ import annotations

from typing import Any

from exchangelib import HTMLBody

from ews_ingest.exchange.errors import describe
from ews_ingest.scheduler import Scheduler
from tccal.bus import Bus
from tccal.ingest.writeback import JoinLinkWriteBack, Pending, body_with_link, meeting_id

__all__ = ["DURABLE", "JoinLinkWriter", "meeting_id"]
DURABLE = "ews-ingest-writeback"


class JoinLinkWriter(JoinLinkWriteBack):
    durable = DURABLE

    def __init__(self, scheduler: Scheduler, bus: Bus) -> None:
        super().__init__(bus)
        self.scheduler = scheduler

    def describe(self, error: BaseException) -> str:
        return describe(error)

    def may_write(self, pending: Pending) -> bool:
        entry = self.scheduler.entries.get(pending.mailbox)
        return entry is not None and self.scheduler.active(entry)

    async def write(self, pending: Pending, url: str) -> str:
        entry = self.scheduler.entries[pending.mailbox]

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
                    item.body = HTMLBody(body_with_link(str(item.body), url, is_html=True))
                else:
                    item.body = body_with_link(str(item.body or ""), url, is_html=False)
                fields = ["body"]
            item.save(update_fields=fields, send_meeting_invitations="SendToNone")
            return fields[0]

        result: str = await entry.pool.call(pending.mailbox, "UpdateItem", write)
        return result

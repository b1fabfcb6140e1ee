"""writeBackJoinLink for Graph mailboxes: the join link of a conference TrueConf Server created goes into the
organizer's event with `PATCH /users/{id}/events/{id}` (tccal.ingest.writeback says which events and when; durable
consumer `graph-ingest-writeback` on TCS_RESULTS).

The event is read first (`$select=location,body`): a link already there is left alone; else the link becomes the
location's displayName when the location is empty, or is appended to the body (HTML or text, as the body is), as
ews-ingest writes it. The PATCH carries the read `@odata.etag` in `If-Match`, so an organizer's edit between the read
and the write is never overwritten: Graph answers 412 Precondition Failed, and the event is read again and the
write tried again (https://learn.microsoft.com/en-us/graph/errors). The PATCH names only location or body: the
add-in's TrueConfMeeting property and everything else stay, so the change the next delta round publishes carries
the link and ends the wait (no second conference, no loop). Unlike EWS's SendToNone, Graph's event update has no
switch for meeting updates: Exchange Online sends the attendees the update, as when the organizer saves in Outlook.

Needs the application permission `Calendars.ReadWrite`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from graph_ingest.graph import GraphClient, GraphError
from tccal.bus import Bus
from tccal.ingest.writeback import JoinLinkWriteBack, Pending, body_with_link

log = logging.getLogger(__name__)
DURABLE = "graph-ingest-writeback"
#: Reads and writes of one event before a write that keeps meeting 412 gives up (the result is delivered again).
ATTEMPTS = 4
PRECONDITION_FAILED = 412
FORBIDDEN = 403


class GraphJoinLinkWriter(JoinLinkWriteBack):
    durable = DURABLE

    def __init__(
        self, bus: Bus, clients: Mapping[str, GraphClient], providers: Mapping[str, str], seated: Callable[[str], bool]
    ) -> None:
        super().__init__(bus)
        #: Graph client by provider name, provider name by mailbox, whether a mailbox holds a seat now.
        self.clients = clients
        self.providers = providers
        self.seated = seated
        self.conflicts = 0

    def describe(self, error: BaseException) -> str:
        text = f"{type(error).__name__}: {error}"
        if isinstance(error, GraphError) and error.status == FORBIDDEN:
            text += " - writeBackJoinLink needs the app's application permission Calendars.ReadWrite"
        return text

    def may_write(self, pending: Pending) -> bool:
        return pending.mailbox in self.providers and self.seated(pending.mailbox)

    async def write(self, pending: Pending, url: str) -> str:
        client = self.clients[self.providers[pending.mailbox]]
        event_url = client.url(f"/users/{quote(pending.mailbox)}/events/{quote(pending.item_id, safe='')}")
        for attempt in range(1, ATTEMPTS + 1):
            event = await client.get(pending.mailbox, f"{event_url}?$select=location,body")
            change = _link_change(event, url)
            if change is None:
                return "present"
            where, patch = change
            etag = event.get("@odata.etag")
            headers = {"If-Match": str(etag)} if etag else {}
            try:
                await client.patch(pending.mailbox, event_url, patch, headers)
            except GraphError as exc:
                if exc.status != PRECONDITION_FAILED or attempt == ATTEMPTS:
                    raise
                self.conflicts += 1
                log.info(
                    "the event changed since it was read (412): reading it again",
                    extra={"mailbox": pending.mailbox, "item_id": pending.item_id, "attempt": attempt},
                )
                continue
            return where
        raise AssertionError("unreachable: the last attempt returns or raises")


def _link_change(event: dict[str, Any], url: str) -> tuple[str, dict[str, Any]] | None:
    """(field, PATCH body) that puts `url` into the event; None when it is there already."""
    location = str((event.get("location") or {}).get("displayName") or "")
    body = event.get("body") or {}
    content = str(body.get("content") or "")
    if url in location or url in content:
        return None
    if not location.strip():
        return "location", {"location": {"displayName": url}}
    is_html = str(body.get("contentType", "")).lower() == "html"
    new_body = {"contentType": "html" if is_html else "text", "content": body_with_link(content, url, is_html=is_html)}
    return "body", {"body": new_body}

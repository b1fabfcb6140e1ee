"""One delta round of one mailbox: calendarView/delta page by page, publish, checkpoint the link.

https://learn.microsoft.com/en-us/graph/delta-query-events. The first round asks
`/users/{mailbox}/calendarView/delta?startDateTime&endDateTime` for the cache window (tccal.cache_window: cache.backward
/ cache.forward) with `Prefer: odata.maxpagesize=N` and `Prefer: outlook.timezone="UTC"`, follows `@odata.nextLink`
to the `@odata.deltaLink`; every later round starts from the stored link. The link is written to the KV checkpoint
only after every change of its page is acked by JetStream, so a restart resumes after the last published page and
publishes nothing twice. Items with `@removed` become CHANGE_TYPE_DELETE.

calendarView/delta refuses `$expand`, so the TrueConfMeeting extended property of each created or changed event is
read with one GET of the event (`$expand=singleValueExtendedProperties($filter=id eq '…')`).

Graph forgets delta tokens (410 `syncStateNotFound`: "the delta token is no longer valid"; Outlook keeps them in a
cache of its own size). A round refused that way after the first complete round reads the mailbox again with a
fresh delta, framed like ews-ingest's whole-mailbox re-read: CHANGE_TYPE_MAILBOX_RESYNC_BEGIN before the first page,
MAILBOX_RESYNC_END with the same token after the last one (the engine deletes what the re-read did not bring back:
events deleted while the token was lost). Dedupe ids carry the re-read's token, so events seen minutes ago are
published again. A re-read cut short publishes no END; its token stays in the checkpoint and the next round starts
it again. The same re-read runs when the cache window moved to another day: the delta token carries the window it
was made for, and events entering the window as days pass would never be reported otherwise.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from graph_ingest.graph import GraphClient, GraphError
from graph_ingest.normalize import NormalizationError, normalize, timestamp
from graph_ingest.state import Checkpoint, StateStore
from tccal.bus import Bus
from tccal.cache_window import CacheWindow
from tccal.conference_marker import MARKER_GRAPH_PROPERTY_ID, MarkerParser
from tccal.http_client import url_template
from tccal.subjects import calendar_subject
from trueconf.calendar.v1 import calendar_pb2

log = logging.getLogger(__name__)
#: Graph's answer to a delta or skip token it no longer knows.
SYNC_STATE_NOT_FOUND = 410


@dataclass
class RoundResult:
    published: int = 0
    duplicates: int = 0
    deleted: int = 0
    skipped: int = 0
    pages: int = 0
    #: Whole-mailbox re-reads that reached their deltaLink and published MAILBOX_RESYNC_END.
    snapshots: int = 0
    #: 410 syncStateNotFound answers that started a fresh delta.
    token_resets: int = 0


class MailboxDelta:
    def __init__(
        self,
        *,
        provider: str,
        mailbox: str,
        client: GraphClient,
        store: StateStore,
        bus: Bus,
        marker: MarkerParser,
        checkpoint: Checkpoint,
        window: CacheWindow,
        page_size: int,
        auto_sync: bool,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.provider = provider
        self.mailbox = mailbox
        self.client = client
        self.store = store
        self.bus = bus
        self.marker = marker
        self.checkpoint = checkpoint
        self.window = window
        self.page_size = page_size
        self.auto_sync = auto_sync
        self.stop = stop
        self.result = RoundResult()
        self._kept: set[str] = set()

    @property
    def window_key(self) -> str:
        return f"{self.window.start.date().isoformat()}/{self.window.end.date().isoformat()}"

    # ------------------------------------------------------------------ entry point
    async def run(self) -> RoundResult:
        checkpoint = self.checkpoint
        if checkpoint.reread:
            log.warning(
                "a whole re-read of the mailbox was cut short: reading it again whole",
                extra={"mailbox": self.mailbox, "token": checkpoint.reread},
            )
            await self._reread(_token("restart"))
            return self.result
        if checkpoint.initial_done and checkpoint.window != self.window_key:
            log.info(
                "the cache window moved: reading the mailbox again for the new window",
                extra={"mailbox": self.mailbox, "old": checkpoint.window, "new": self.window_key},
            )
            await self._reread(_token("window"))
            return self.result
        first = not checkpoint.initial_done
        origin = calendar_pb2.CHANGE_ORIGIN_INITIAL_LOAD if first else calendar_pb2.CHANGE_ORIGIN_SYNC
        publish = self.auto_sync or not first
        try:
            await self._walk(checkpoint.link or self._start_url(), origin, publish=publish)
        except GraphError as exc:
            if exc.status != SYNC_STATE_NOT_FOUND:
                raise
            self.result.token_resets += 1
            log.warning(
                "Graph no longer knows the mailbox's delta token (410 syncStateNotFound): fresh delta",
                extra={"mailbox": self.mailbox, "error": str(exc), "initial_done": checkpoint.initial_done},
            )
            if checkpoint.initial_done:
                await self._reread(_token("token-reset"))
            else:  # nothing but (idempotent) initial-load pages went out: start the first round again
                checkpoint.link, checkpoint.mid_round = "", False
                await self.store.save_checkpoint(checkpoint)
                await self._walk(self._start_url(), origin, publish=publish)
        return self.result

    def _start_url(self) -> str:
        """The first request of a fresh delta over today's window (noted in the checkpoint with the link)."""
        query = urlencode(
            {"startDateTime": _iso(self.window.start), "endDateTime": _iso(self.window.end)}, quote_via=quote
        )
        self.checkpoint.window = self.window_key
        return self.client.url(f"/users/{quote(self.mailbox)}/calendarView/delta?{query}")

    async def _reread(self, token: str) -> None:
        checkpoint = self.checkpoint
        self._kept = set()
        checkpoint.reread = token
        checkpoint.link, checkpoint.mid_round = "", False
        await self.store.save_checkpoint(checkpoint)  # before BEGIN: whatever cuts the walk short, it starts again
        await self._publish_marker(calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN, token)
        complete = await self._walk(self._start_url(), calendar_pb2.CHANGE_ORIGIN_RESYNC, publish=True, token=token)
        if complete:
            await self._publish_marker(calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END, token)
            checkpoint.reread = ""
            await self.store.save_checkpoint(checkpoint)
            self.result.snapshots += 1

    # ------------------------------------------------------------------ pages
    async def _walk(
        self, url: str, origin: calendar_pb2.ChangeOrigin.ValueType, *, publish: bool, token: str = ""
    ) -> bool:
        """Follow the pages from `url`; True when the deltaLink was reached (False: stopped for shutdown)."""
        checkpoint = self.checkpoint
        headers = {"Prefer": f'outlook.timezone="UTC", odata.maxpagesize={self.page_size}'}
        while True:
            with url_template("/users/{user}/calendarView/delta"):
                page = await self.client.get(self.mailbox, url, headers)
            self.result.pages += 1
            items = page.get("value") or []
            if publish and items:
                await self._publish_page(items, origin, token)
            next_link = page.get("@odata.nextLink")
            delta_link = page.get("@odata.deltaLink")
            if isinstance(next_link, str) and next_link:
                checkpoint.link, checkpoint.mid_round = next_link, True
                await self.store.save_checkpoint(checkpoint)
                url = next_link
                if self.stop is not None and self.stop.is_set():
                    return False
                continue
            if not isinstance(delta_link, str) or not delta_link:
                raise GraphError(200, "noLink", "a delta page carried neither @odata.nextLink nor deltaLink", url)
            # Every round ends with a new deltaLink (the old one may be forgotten by Graph): always saved.
            checkpoint.link, checkpoint.mid_round = delta_link, False
            checkpoint.initial_done = True
            checkpoint.last_sync = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            await self.store.save_checkpoint(checkpoint)
            return True

    async def _publish_page(
        self, items: list[dict[str, Any]], origin: calendar_pb2.ChangeOrigin.ValueType, token: str
    ) -> None:
        upserts = [i for i in items if "@removed" not in i and isinstance(i.get("id"), str)]
        properties = await asyncio.gather(*(self._marker_property(i["id"]) for i in upserts))
        found = dict(zip((i["id"] for i in upserts), properties, strict=True))
        changes: list[tuple[str, calendar_pb2.CalendarEvent | None]] = []
        for item in items:
            item_id = item.get("id")
            if not isinstance(item_id, str) or not item_id:
                continue
            if "@removed" in item:
                changes.append((item_id, None))
                continue
            gone, value = found[item_id]
            if gone:
                continue  # deleted between the delta page and the GET: the next round reports the removal
            if value is not None:
                item = {**item, "singleValueExtendedProperties": [{"id": MARKER_GRAPH_PROPERTY_ID, "value": value}]}
            try:
                event = normalize(item, marker=self.marker)
            except NormalizationError as exc:
                self.result.skipped += 1
                self._kept.add(item_id)
                log.error(
                    "calendar item skipped: it cannot be normalized",
                    extra={"mailbox": self.mailbox, "item_id": item_id, "reason": str(exc)},
                )
                continue
            changes.append((item_id, event))
        if not changes:
            return
        checkpoint = self.checkpoint
        if checkpoint.reserve(len(changes)):
            await self.store.save_checkpoint(checkpoint)
        observed = timestamp(dt.datetime.now(dt.UTC))
        for item_id, maybe in changes:
            change = self._change(item_id, maybe, origin, token)
            change.sequence = checkpoint.next_sequence()
            change.observed_at.CopyFrom(observed)
            if await self._publish(change):
                self.result.published += 1
                checkpoint.changes_published += 1
            else:
                self.result.duplicates += 1
            if maybe is None:
                self.result.deleted += 1

    async def _marker_property(self, item_id: str) -> tuple[bool, str | None]:
        """(gone, value) of the event's TrueConfMeeting property."""
        expand = f"singleValueExtendedProperties($filter=id eq '{MARKER_GRAPH_PROPERTY_ID}')"
        query = urlencode({"$select": "id", "$expand": expand}, quote_via=quote)
        url = self.client.url(f"/users/{quote(self.mailbox)}/events/{quote(item_id, safe='')}?{query}")
        try:
            with url_template("/users/{user}/events/{event}"):
                event = await self.client.get(self.mailbox, url)
        except GraphError as exc:
            if exc.status == 404:
                return True, None
            raise
        for prop in event.get("singleValueExtendedProperties") or []:
            if str(prop.get("id", "")).lower() == MARKER_GRAPH_PROPERTY_ID.lower():
                value = prop.get("value")
                return False, str(value) if value is not None else None
        return False, None

    def _change(
        self,
        item_id: str,
        event: calendar_pb2.CalendarEvent | None,
        origin: calendar_pb2.ChangeOrigin.ValueType,
        token: str,
    ) -> calendar_pb2.CalendarChange:
        if event is None:
            change_id = f"{self.mailbox}/{item_id}/deleted"
            change = calendar_pb2.CalendarChange(type=calendar_pb2.CHANGE_TYPE_DELETE)
        else:
            change_id = f"{self.mailbox}/{item_id}/{event.change_key}"
            change = calendar_pb2.CalendarChange(type=calendar_pb2.CHANGE_TYPE_UPSERT)
            change.event.CopyFrom(event)
        if token:
            change_id = f"{change_id}/resync/{token}"
        change.change_id = change_id
        change.provider = self.provider
        change.mailbox = self.mailbox
        change.item_id = item_id
        change.origin = origin
        return change

    async def _publish_marker(self, kind: calendar_pb2.ChangeType.ValueType, token: str) -> None:
        name = "begin" if kind == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN else "end"
        change = calendar_pb2.CalendarChange(
            change_id=f"{self.mailbox}/resync-{name}/{token}",
            provider=self.provider,
            mailbox=self.mailbox,
            type=kind,
            origin=calendar_pb2.CHANGE_ORIGIN_RESYNC,
        )
        change.resync.token = token
        if kind == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END:
            change.resync.window_start.CopyFrom(timestamp(self.window.start))
            change.resync.kept_item_ids.extend(sorted(self._kept))
        if self.checkpoint.reserve(1):
            await self.store.save_checkpoint(self.checkpoint)
        change.sequence = self.checkpoint.next_sequence()
        change.observed_at.CopyFrom(timestamp(dt.datetime.now(dt.UTC)))
        if not await self._publish(change):
            self.result.duplicates += 1
        log.info(
            "mailbox re-read marker published",
            extra={"mailbox": self.mailbox, "marker": name, "token": token, "sequence": change.sequence},
        )

    async def _publish(self, change: calendar_pb2.CalendarChange) -> bool:
        subject = calendar_subject(change.provider, change.mailbox)
        return await self.bus.publish(subject, change.SerializeToString(), msg_id=change.change_id)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _token(reason: str) -> str:
    """A re-read's token: why, and when (distinct per re-read, also the dedupe ids' suffix)."""
    return f"{reason}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%f')}"

"""One delta round of one mailbox: calendarView/delta page by page, publish, checkpoint the link.

https://learn.microsoft.com/en-us/graph/delta-query-events. The first round asks
`/users/{mailbox}/calendarView/delta?startDateTime&endDateTime` for the cache window (tccal.cache_window: cache.backward
/ cache.forward) with `Prefer: odata.maxpagesize=N` and `Prefer: outlook.timezone="UTC"`, follows `@odata.nextLink`
to the `@odata.deltaLink`; every later round starts from the stored link. The link is written to the KV checkpoint
only after every change of its page is acked by JetStream, so a restart resumes after the last published page and
publishes nothing twice. Items with `@removed` become CHANGE_TYPE_DELETE.

calendarView/delta refuses `$expand`, so the TrueConfMeeting extended property of each created or changed event is
read with a GET of the event (`$expand=singleValueExtendedProperties($filter=id eq '…')`), 20 to a `$batch`
(batch.py). The same batches read the series master and its instances for every series the page touches, over the
span series.py names (the window and SERIES_HORIZON past it, in pieces): the master is published as
ITEM_KIND_RECURRING_MASTER before the page's instances. When a page removes anything, the mailbox's known masters
(known_series.py) are read again and those gone are published deleted.

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
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from graph_ingest.batch import Answer, get_many
from graph_ingest.graph import GraphClient, GraphError
from graph_ingest.known_series import KnownSeries
from graph_ingest.normalize import NormalizationError, normalize, timestamp
from graph_ingest.series import INSTANCE_FIELDS, complete_master, instance_ranges, series_span
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
#: Every read asks for UTC times (normalize.py expects them).
UTC_PREFERENCE = 'outlook.timezone="UTC"'
INSTANCE_TYPES = ("occurrence", "exception")


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
    #: Series masters published (upserts) and published as deleted.
    masters: int = 0
    masters_deleted: int = 0


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
        observer: Callable[[str, str, calendar_pb2.CalendarEvent | None], None] | None = None,
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
        #: Told (mailbox, item id, event or None) of every change published (the join-link write-back).
        self.observer = observer
        self.result = RoundResult()
        self._kept: set[str] = set()
        self.known_series = KnownSeries(store, provider, mailbox)
        #: Masters read in this round: one delta round is one snapshot, so a series spread over pages is read once.
        self._masters_read: set[str] = set()

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

    async def resync(self) -> RoundResult:
        """Read the whole mailbox again with a fresh delta inside a MAILBOX_RESYNC_BEGIN ... END frame (a resync
        asked on `calendar.v1.control.resync.<mailbox>`: the same re-read as after a 410 syncStateNotFound)."""
        await self._reread(_token("resync"))
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
        self._masters_read = set()  # the re-read publishes every master again (its END drops the others)
        # The re-read's END makes the engine drop every master it does not publish again: start the set afresh (so
        # series that left the window are no longer re-checked).
        (await self.known_series.load()).clear()
        await self.known_series.save()
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
        series = sorted(
            {
                str(i["seriesMasterId"])
                for i in upserts
                if i.get("type") in INSTANCE_TYPES and isinstance(i.get("seriesMasterId"), str) and i["seriesMasterId"]
            }
            - self._masters_read
        )
        self._masters_read.update(series)
        known = await self.known_series.load()
        recheck = sorted(known - set(series)) if any("@removed" in i for i in items) else []
        answers = await get_many(self.client, self.mailbox, self._reads(upserts, series, recheck), self._headers())
        changes: list[tuple[str, calendar_pb2.CalendarEvent | None]] = []
        for master_id in recheck:
            if answers[f"recheck:{master_id}"].gone:
                changes.append((master_id, None))
                known.discard(master_id)
        for master_id in series:
            gone, master = await self._master(master_id, answers)
            if gone:
                changes.append((master_id, None))
                known.discard(master_id)
            elif master is not None:
                changes.append((master_id, master))
                known.add(master_id)
        for item in items:
            item_id = item.get("id")
            if not isinstance(item_id, str) or not item_id:
                continue
            if "@removed" in item:
                changes.append((item_id, None))
                continue
            answer = answers[f"marker:{item_id}"]
            if answer.gone:
                continue  # deleted between the delta page and the GET: the next round reports the removal
            value = _marker_value(answer.body)
            if value is not None:
                item = {**item, "singleValueExtendedProperties": [{"id": MARKER_GRAPH_PROPERTY_ID, "value": value}]}
            event = self._normalized(item_id, item)
            if event is not None:
                changes.append((item_id, event))
        await self.known_series.save()
        if not changes:
            return
        masters = {*series, *recheck}
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
                if maybe is not None and maybe.kind == calendar_pb2.ITEM_KIND_RECURRING_MASTER:
                    self.result.masters += 1
                elif maybe is None and item_id in masters:
                    self.result.masters_deleted += 1
            else:
                self.result.duplicates += 1
            if maybe is None:
                self.result.deleted += 1
            if self.observer is not None:
                self.observer(self.mailbox, item_id, maybe)

    def _headers(self) -> dict[str, str]:
        return {"Prefer": UTC_PREFERENCE}

    def _reads(self, upserts: list[dict[str, Any]], series: list[str], recheck: list[str]) -> dict[str, str]:
        """The page's GETs for one get_many: key → URL below the Graph root."""
        user = f"/users/{quote(self.mailbox)}/events"
        expand = f"singleValueExtendedProperties($filter=id eq '{MARKER_GRAPH_PROPERTY_ID}')"
        marker_query = urlencode({"$select": "id", "$expand": expand}, quote_via=quote)
        ranges = [
            urlencode(
                {
                    "startDateTime": _iso(lo),
                    "endDateTime": _iso(hi),
                    "$select": ",".join(INSTANCE_FIELDS),
                    "$top": "100",
                },
                quote_via=quote,
            )
            for lo, hi in instance_ranges(*series_span(self.window))
        ]
        reads = {f"marker:{i['id']}": f"{user}/{quote(i['id'], safe='')}?{marker_query}" for i in upserts}
        for master_id in series:
            escaped = quote(master_id, safe="")
            reads[f"master:{master_id}"] = f"{user}/{escaped}?{urlencode({'$expand': expand}, quote_via=quote)}"
            for number, query in enumerate(ranges):
                reads[f"instances:{master_id}:{number}"] = f"{user}/{escaped}/instances?{query}"
        for master_id in recheck:
            reads[f"recheck:{master_id}"] = f"{user}/{quote(master_id, safe='')}?$select=id"
        return reads

    async def _master(
        self, master_id: str, answers: dict[str, Answer]
    ) -> tuple[bool, calendar_pb2.CalendarEvent | None]:
        """(gone, the series master as CalendarEvent): gone when Graph no longer has it, no event when it cannot be
        normalized (logged; a re-read's END keeps it)."""
        master = answers[f"master:{master_id}"]
        first_pages = [answer for key, answer in answers.items() if key.startswith(f"instances:{master_id}:")]
        if master.gone or any(page.gone for page in first_pages):
            return True, None
        # An instance overlapping two ranges is returned by both: one entry per id.
        instances: dict[str, dict[str, Any]] = {}
        for first_page in first_pages:
            page = first_page.body
            while True:
                for instance in page.get("value") or []:
                    instances.setdefault(str(instance.get("id")), instance)
                link = page.get("@odata.nextLink")
                if not isinstance(link, str) or not link:
                    break
                with url_template("/users/{user}/events/{event}/instances"):
                    page = await self.client.get(self.mailbox, link, self._headers())
        event = self._normalized(master_id, master.body)
        if event is None:
            return False, None
        try:
            complete_master(event, master.body, list(instances.values()), series_span(self.window))
        except NormalizationError as exc:
            self._skip(master_id, exc)
            return False, None
        return False, event

    def _normalized(self, item_id: str, item: dict[str, Any]) -> calendar_pb2.CalendarEvent | None:
        try:
            return normalize(item, marker=self.marker)
        except NormalizationError as exc:
            self._skip(item_id, exc)
            return None

    def _skip(self, item_id: str, exc: Exception) -> None:
        self.result.skipped += 1
        self._kept.add(item_id)
        log.error(
            "calendar item skipped: it cannot be normalized",
            extra={"mailbox": self.mailbox, "item_id": item_id, "reason": str(exc)},
        )

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
            if event.kind == calendar_pb2.ITEM_KIND_RECURRING_MASTER:
                # A master's occurrences change without its changeKey changing: the content names the change.
                digest = hashlib.sha256(event.SerializeToString(deterministic=True)).hexdigest()[:16]
                change_id = f"{change_id}/{digest}"
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


def _marker_value(event: dict[str, Any]) -> str | None:
    """The TrueConfMeeting property's value from a marker read's answer."""
    for prop in event.get("singleValueExtendedProperties") or []:
        if str(prop.get("id", "")).lower() == MARKER_GRAPH_PROPERTY_ID.lower():
            value = prop.get("value")
            return str(value) if value is not None else None
    return None


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _token(reason: str) -> str:
    """A re-read's token: why, and when (distinct per re-read, also the dedupe ids' suffix)."""
    return f"{reason}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%f')}"

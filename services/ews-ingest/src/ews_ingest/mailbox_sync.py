"""One sync pass of one mailbox: SyncFolderItems page by page, GetItem in batches, publish, checkpoint.

SyncFolderItems on the calendar folder is the source of truth (it reports masters and single items). Each page's
created and updated items are fetched with GetItem in batches (masters' modified occurrences too, for the subject,
location and body an exception overrides), normalized and published to CALENDAR; deletions become delete changes.
Only when every change of a page is acked by JetStream is the page's SyncState written to the KV checkpoint, so a
restart resumes after the last fully published page and never re-reads unchanged items.

First pass of a mailbox: with cache.autoSync every item that has not ended before the window's start
(today - cache.backward months) is published (origin INITIAL_LOAD); without it the pages are only walked to take the
SyncState baseline (nothing published: only changes from now on). The forward bound is not applied here: an item
beyond today + cache.forward months enters the window as days pass without changing, and Exchange would never
report it again - the sync-engine materializes occurrences only inside its window, so publishing it costs nothing.

A whole-mailbox re-read (Exchange refused the SyncState, or an administrator's resync without `since`) is a
snapshot: it is framed by a CHANGE_TYPE_MAILBOX_RESYNC_BEGIN marker, published before the first page, and a
MAILBOX_RESYNC_END with the same token after the last page, both on the mailbox's own subject (so they keep their
place in the engine's lane) and with sequences of their own. The engine deletes, on END, every live item of the
mailbox whose last change is older than BEGIN: items deleted in Exchange while the SyncState was lost are never
reported as deletions otherwise. Items the re-read saw but did not publish are named in END (`kept_item_ids`:
quarantined or unreadable items, series that ended before the window); single items that ended before the window
are not named (a mailbox's history would not fit one message) - END carries the window's start instead and the
engine does not judge stored items that ended before it. A re-read cut short (shutdown, failure) publishes no END,
so nothing is deleted; its token stays in the checkpoint (`reread`) and the next sync starts the re-read again
(a new BEGIN replaces the open one), so an END always follows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exchangelib import CalendarItem
from exchangelib.errors import ErrorInvalidSyncStateData, ErrorItemNotFound, MalformedResponseError
from exchangelib.fields import FieldPath
from exchangelib.items import ID_ONLY
from exchangelib.services import SyncFolderItems
from exchangelib.version import Version

from ews_ingest.conference_marker import MARKER_FIELD, MarkerParser
from ews_ingest.exchange.errors import describe
from ews_ingest.exchange.pool import CredentialPool
from ews_ingest.normalize import NormalizationError, normalize, plain_utc, timestamp
from ews_ingest.state import Checkpoint, Quarantined, StateStore
from tccal.cache_window import cache_window
from trueconf.calendar.v1 import calendar_pb2

log = logging.getLogger(__name__)
#: Fields SyncFolderItems returns besides ItemId/ChangeKey: enough to keep the window without a GetItem.
SYNC_FIELDS = ("start", "end", "type", "last_modified_time")
QUARANTINED = "calendar item quarantined"
#: What normalize() and the window checks read of a fetched item: GetItem asks for these properties only. Without
#: them exchangelib asks for every property, MimeContent (Exchange renders each item as iCalendar) and
#: ConflictingMeetings / AdjacentMeetings (a free/busy search per item) included, none of which is used here.
FETCH_FIELDS = (
    "uid", "subject", "sensitivity", "text_body", "body", "last_modified_name", "last_modified_time",
    "recurrence_id", "start", "end", "original_start", "is_all_day", "location", "is_meeting", "is_cancelled",
    "type", "my_response_type", "organizer", "required_attendees", "optional_attendees", "resources",
    "appointment_sequence_number", "recurrence", "last_occurrence", "modified_occurrences", "deleted_occurrences",
    "_start_timezone", "_end_timezone", MARKER_FIELD,
)  # fmt: skip


@dataclass(frozen=True)
class Window:
    start: dt.datetime
    end: dt.datetime

    @classmethod
    def around(cls, now: dt.datetime, backward_months: int, forward_months: int) -> Window:
        window = cache_window(now, backward_months, forward_months)
        return cls(window.start, window.end)

    def holds(self, start: Any, end: Any) -> bool:
        """Whether [start, end] touches the window [self.start, self.end) (dates count as whole UTC days)."""
        if start is None or end is None:
            return True
        return _as_instant(end) >= self.start and _as_instant(start) < self.end

    def still_relevant(self, end: Any) -> bool:
        """Whether something ending at `end` is in the window now or will be: it has not ended before its start."""
        return end is None or _as_instant(end) >= self.start


def _as_instant(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return plain_utc(value) if value.tzinfo else dt.datetime(*value.timetuple()[:6], tzinfo=dt.UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)


#: Publishes (change, dedupe id) pairs in order; per change True if stored, False if JetStream had it already.
Publish = Callable[[Sequence[tuple[calendar_pb2.CalendarChange, str]]], Awaitable[list[bool]]]
#: Told of every published change: (mailbox, item id, event or None for a deletion).
Observer = Callable[[str, str, calendar_pb2.CalendarEvent | None], None]


@dataclass
class SyncResult:
    published: int = 0
    duplicates: int = 0
    deleted: int = 0
    quarantined: int = 0
    pages: int = 0
    fetched: int = 0
    #: Times Exchange refused the SyncState and the mailbox was read again from none.
    state_resets: int = 0
    #: Whole-mailbox re-reads that reached their last page and published MAILBOX_RESYNC_END.
    snapshots: int = 0
    newest_modified: dt.datetime | None = None


@dataclass
class MailboxContext:
    """What a sync of one mailbox works with (owned by the scheduler's entry for that mailbox)."""

    provider: str
    mailbox: str
    pool: CredentialPool
    store: StateStore
    publish: Publish
    marker: MarkerParser
    checkpoint: Checkpoint
    quarantine: dict[str, Quarantined] = field(default_factory=dict)
    observers: list[Observer] = field(default_factory=list)


class MailboxSync:
    def __init__(
        self,
        ctx: MailboxContext,
        *,
        auto_sync: bool,
        window: Window,
        page_size: int,
        batch_size: int,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.ctx = ctx
        self.auto_sync = auto_sync
        self.window = window
        self.page_size = page_size
        self.batch_size = batch_size
        self.stop = stop
        self.result = SyncResult()
        self._quarantine_dirty = False
        #: Items a whole re-read saw but did not publish (they exist: the engine must keep them).
        self._kept: set[str] = set()

    # ------------------------------------------------------------------ entry points
    async def sync(self) -> SyncResult:
        """Incremental sync from the checkpoint (or the first pass when there is none).

        Exchange refuses a SyncState it no longer knows - after a mailbox moved to another database, or from
        another store - with ErrorInvalidSyncStateData ("Synchronize items by using EWS in Exchange": start again
        without one). The checkpoint is then dropped and the mailbox read again whole and published as a snapshot
        (MAILBOX_RESYNC_BEGIN ... END, like an admin resync): the engine keeps what it already has, takes what
        changed, and deletes what the re-read did not bring back - items deleted while the state was lost."""
        checkpoint = self.ctx.checkpoint
        if checkpoint.reread:
            log.warning(
                "a whole re-read of the mailbox was cut short: reading it again whole",
                extra={"mailbox": self.ctx.mailbox, "token": checkpoint.reread},
            )
            checkpoint.sync_state = None
            await self._reread(None, _token("restart"))
            await self._save_quarantine()
            return self.result
        try:
            if checkpoint.initial_done:
                origin = calendar_pb2.CHANGE_ORIGIN_SYNC
                await self._walk(checkpoint.sync_state, origin, publish=True, in_window_only=False)
            else:
                origin = calendar_pb2.CHANGE_ORIGIN_INITIAL_LOAD
                await self._walk(checkpoint.sync_state, origin, publish=self.auto_sync, in_window_only=True)
        except ErrorInvalidSyncStateData as exc:
            log.warning(
                "Exchange no longer knows the mailbox's sync state (moved?): reading it again whole",
                extra={"mailbox": self.ctx.mailbox, "error": describe(exc)},
            )
            checkpoint.sync_state = None
            await self.ctx.store.save_checkpoint(checkpoint)
            self.result.state_resets += 1
            await self._reread(None, _token("state-reset"))
        await self._save_quarantine()
        return self.result

    async def resync(self, since: dt.datetime | None, token: str) -> SyncResult:
        """Read the whole mailbox again (fresh SyncState) and publish every item not ended before the window (or
        those modified since `since`). Dedupe ids carry `token` so JetStream does not drop what it saw minutes ago.
        Without `since` the re-read is a snapshot (MAILBOX_RESYNC_BEGIN ... END): what it does not bring back is
        deleted by the engine. With `since` it is not (it leaves out what did not change), so no markers."""
        await self._reread(since, token)
        await self._save_quarantine()
        return self.result

    async def _reread(self, since: dt.datetime | None, token: str) -> None:
        snapshot = since is None
        self._kept = set()
        checkpoint = self.ctx.checkpoint
        if snapshot:
            # Saved before BEGIN goes out: whatever cuts the walk short, the next sync starts it again (sync()).
            checkpoint.reread = token
            await self.ctx.store.save_checkpoint(checkpoint)
            await self._publish_marker(calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN, token)
        complete = await self._walk(
            None, calendar_pb2.CHANGE_ORIGIN_RESYNC, publish=True, in_window_only=True, since=since, token=token
        )
        if snapshot and complete:
            await self._publish_marker(calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END, token)
            checkpoint.reread = ""
            await self.ctx.store.save_checkpoint(checkpoint)
            self.result.snapshots += 1

    async def _publish_marker(self, kind: calendar_pb2.ChangeType.ValueType, token: str) -> None:
        """Publish a MAILBOX_RESYNC marker with a sequence of its own (END names the items kept, the window)."""
        mailbox = self.ctx.mailbox
        name = "begin" if kind == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN else "end"
        change = calendar_pb2.CalendarChange(
            change_id=f"{mailbox}/resync-{name}/{token}",
            provider=self.ctx.provider,
            mailbox=mailbox,
            type=kind,
            origin=calendar_pb2.CHANGE_ORIGIN_RESYNC,
        )
        change.resync.token = token
        if kind == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END:
            change.resync.window_start.CopyFrom(timestamp(self.window.start))
            change.resync.kept_item_ids.extend(sorted(self._kept))
        checkpoint = self.ctx.checkpoint
        if checkpoint.reserve(1):
            await self.ctx.store.save_checkpoint(checkpoint)
        change.sequence = checkpoint.next_sequence()
        change.observed_at.CopyFrom(timestamp(dt.datetime.now(dt.UTC)))
        if not (await self.ctx.publish([(change, change.change_id)]))[0]:
            self.result.duplicates += 1
        log.info(
            "mailbox re-read marker published",
            extra={"mailbox": mailbox, "marker": name, "token": token, "sequence": change.sequence},
        )

    # ------------------------------------------------------------------ the walk
    async def _walk(
        self,
        sync_state: str | None,
        origin: calendar_pb2.ChangeOrigin.ValueType,
        *,
        publish: bool,
        in_window_only: bool,
        since: dt.datetime | None = None,
        token: str = "",
    ) -> bool:
        """Walk the pages from `sync_state`; True when the last page was reached (False: stopped for shutdown)."""
        ctx = self.ctx
        fields = {FieldPath(field=CalendarItem.get_field_by_fieldname(name)) for name in SYNC_FIELDS}
        page_size = self.page_size
        while True:
            before = sync_state

            def page(account: Any, state: str | None = sync_state) -> tuple[list[tuple[str, Any]], str, bool]:
                service = SyncFolderItems(account=account)
                changes = list(
                    service.call(
                        # the calendar folder: one GetFolder the first time, then cached on the account - read here,
                        # on the page's own connection, a sync waits for a free connection once per page, not twice
                        folder=account.calendar,
                        shape=ID_ONLY,
                        additional_fields=fields,
                        sync_state=state,
                        ignore=None,
                        max_changes_returned=page_size,
                        sync_scope=None,
                    )
                )
                if not service.sync_state:
                    # Every SyncFolderItems answer carries a SyncState ("SyncFolderItemsResponseMessage": SyncState,
                    # IncludesLastItemInRange, Changes). Without one the answer was cut short (a proxy, a failing
                    # backend) and exchangelib yields nothing: taken as "no changes, last page", a whole re-read
                    # would end here with nothing brought back and the engine would delete the whole mailbox.
                    raise MalformedResponseError("SyncFolderItems answered without a SyncState (truncated answer?)")
                return changes, service.sync_state, bool(service.includes_last_item_in_range)

            changes, sync_state, last = await ctx.pool.call(ctx.mailbox, "SyncFolderItems", page)
            self.result.pages += 1
            if publish:
                await self._publish_page(changes, origin, in_window_only=in_window_only, since=since, token=token)
            unchanged = not changes and sync_state == before and ctx.checkpoint.initial_done
            ctx.checkpoint.sync_state = sync_state
            if last or sync_state == before:
                ctx.checkpoint.initial_done = True
            if not unchanged:  # a quiet mailbox costs no KV write
                await ctx.store.save_checkpoint(ctx.checkpoint)
            if last or sync_state == before:
                return True
            if self.stop is not None and self.stop.is_set():
                return False  # shutting down: the next start resumes after this checkpointed page

    async def _publish_page(
        self,
        changes: list[tuple[str, Any]],
        origin: calendar_pb2.ChangeOrigin.ValueType,
        *,
        in_window_only: bool,
        since: dt.datetime | None,
        token: str,
    ) -> None:
        ordered: list[tuple[str, str, Any]] = []  # (kind, item_id, sync item) in Exchange's order
        wanted: list[tuple[str, str]] = []
        for kind, item in changes:
            if kind == "delete":
                ordered.append(("delete", item.id, None))
                continue
            if kind not in ("create", "update") or not isinstance(item, CalendarItem):
                continue
            if (
                since is not None
                and item.last_modified_time is not None
                and _as_instant(item.last_modified_time) < since
            ):
                continue
            if in_window_only and item.type != "RecurringMaster" and not self.window.still_relevant(item.end):
                continue
            ordered.append(("upsert", item.id, item))
            wanted.append((item.id, item.changekey))
        fetched = await self._fetch(wanted)
        exceptions = await self._fetch_exceptions(fetched.values())
        events: list[tuple[str, calendar_pb2.CalendarEvent | None]] = []
        for kind, item_id, _ in ordered:
            if kind == "delete":
                events.append((item_id, None))
                self._unquarantine(item_id)
                continue
            full = fetched.get(item_id)
            if full is None:
                continue  # gone between SyncFolderItems and GetItem: the next sync reports the deletion
            if isinstance(full, Exception):
                self._quarantine(item_id, "", describe(full))
                self._kept.add(item_id)
                continue
            try:
                normalized = normalize(full, marker=self.ctx.marker, exceptions=exceptions)
            except NormalizationError as exc:
                self._quarantine(item_id, full.changekey or "", str(exc))
                self._kept.add(item_id)
                continue
            if (
                in_window_only
                and normalized.kind == calendar_pb2.ITEM_KIND_RECURRING_MASTER
                and not self._series_in_window(full)
            ):
                self._kept.add(item_id)  # a series that ended before the window: it exists, the engine keeps it
                continue
            self._unquarantine(item_id)
            modified = _as_instant(full.last_modified_time) if full.last_modified_time is not None else None
            if modified is not None and (self.result.newest_modified is None or modified > self.result.newest_modified):
                self.result.newest_modified = modified
            events.append((item_id, normalized))
        if not events:
            return
        checkpoint = self.ctx.checkpoint
        if checkpoint.reserve(len(events)):
            await self.ctx.store.save_checkpoint(checkpoint)
        observed = timestamp(dt.datetime.now(dt.UTC))
        page: list[tuple[calendar_pb2.CalendarChange, str]] = []
        for item_id, maybe in events:
            change = self._change(item_id, maybe, origin, token)
            change.sequence = checkpoint.next_sequence()
            change.observed_at.CopyFrom(observed)
            page.append((change, change.change_id))
        # The page's changes go out together, in Exchange's order; the checkpoint moves only when all are acked.
        outcomes = await self.ctx.publish(page)
        for (item_id, maybe), stored in zip(events, outcomes, strict=True):
            if stored:
                self.result.published += 1
                checkpoint.changes_published += 1
            else:
                self.result.duplicates += 1
            if maybe is None:
                self.result.deleted += 1
            for observe in self.ctx.observers:
                observe(self.ctx.mailbox, item_id, maybe)

    def _change(
        self,
        item_id: str,
        event: calendar_pb2.CalendarEvent | None,
        origin: calendar_pb2.ChangeOrigin.ValueType,
        token: str,
    ) -> calendar_pb2.CalendarChange:
        mailbox = self.ctx.mailbox
        if event is None:
            change_id = f"{mailbox}/{item_id}/deleted"
            change = calendar_pb2.CalendarChange(type=calendar_pb2.CHANGE_TYPE_DELETE)
        else:
            change_id = f"{mailbox}/{item_id}/{event.change_key}"
            change = calendar_pb2.CalendarChange(type=calendar_pb2.CHANGE_TYPE_UPSERT)
            change.event.CopyFrom(event)
        if token:
            change_id = f"{change_id}/resync/{token}"
        change.change_id = change_id
        change.provider = self.ctx.provider
        change.mailbox = mailbox
        change.item_id = item_id
        change.origin = origin
        return change

    def _series_in_window(self, master: Any) -> bool:
        """Whether a series still has occurrences at or after the window's start."""
        last = master.last_occurrence
        if last is not None and last.end is not None and _as_instant(last.end) < self.window.start:
            return False
        boundary = getattr(master.recurrence, "boundary", None)
        end_date = getattr(boundary, "end", None)
        return not (end_date is not None and _as_instant(end_date) + dt.timedelta(days=1) < self.window.start)

    # ------------------------------------------------------------------ GetItem
    async def _fetch(self, wanted: list[tuple[str, str]]) -> dict[str, Any]:
        """Full items by id, in batches; an item Exchange could not return maps to its error (not found: absent)."""
        out: dict[str, Any] = {}
        ctx = self.ctx
        for start in range(0, len(wanted), self.batch_size):
            batch = wanted[start : start + self.batch_size]

            def get(account: Any, ids: list[tuple[str, str]] = batch) -> list[Any]:
                fields = fetch_fields(account.version)
                items = list(account.fetch(ids=ids, folder=account.calendar, only_fields=fields, chunk_size=len(ids)))
                if len(items) != len(ids):  # exchangelib yields nothing for a body it could not parse
                    raise MalformedResponseError(f"GetItem answered {len(items)} items for {len(ids)} ids")
                return items

            items = await ctx.pool.call(ctx.mailbox, "GetItem", get)
            self.result.fetched += len(batch)
            for (item_id, _), item in zip(batch, items, strict=True):
                if isinstance(item, ErrorItemNotFound):
                    continue
                out[item_id] = item
        return out

    async def _fetch_exceptions(self, items: Iterable[Any]) -> dict[str, Any]:
        wanted: list[tuple[str, str]] = []
        for item in items:
            if isinstance(item, Exception) or getattr(item, "type", None) != "RecurringMaster":
                continue
            for occurrence in item.modified_occurrences or []:
                if occurrence.id:
                    wanted.append((occurrence.id, occurrence.changekey))
        if not wanted:
            return {}
        fetched = await self._fetch(wanted)
        return {k: v for k, v in fetched.items() if not isinstance(v, Exception)}

    # ------------------------------------------------------------------ quarantine
    def _quarantine(self, item_id: str, change_key: str, reason: str) -> None:
        self.result.quarantined += 1
        known = self.ctx.quarantine.get(item_id)
        if known is None or known.change_key != change_key or known.reason != reason:
            self.ctx.quarantine[item_id] = Quarantined(change_key=change_key, reason=reason)
            self._quarantine_dirty = True
        log.error(
            QUARANTINED,
            extra={"mailbox": self.ctx.mailbox, "item_id": item_id, "change_key": change_key, "reason": reason},
        )

    def _unquarantine(self, item_id: str) -> None:
        if self.ctx.quarantine.pop(item_id, None) is not None:
            self._quarantine_dirty = True
            log.info("calendar item left quarantine", extra={"mailbox": self.ctx.mailbox, "item_id": item_id})

    async def _save_quarantine(self) -> None:
        if self._quarantine_dirty:
            await self.ctx.store.save_quarantine(self.ctx.mailbox, self.ctx.quarantine)
            self._quarantine_dirty = False


@functools.cache
def fetch_fields(version: Version) -> list[str]:
    """FETCH_FIELDS that the mailbox's Exchange version has (as exchangelib's all-fields default leaves out the
    others); the TrueConf marker property when it is registered (conference_marker.register_marker_property)."""
    registered = {field.name for field in CalendarItem.FIELDS}
    names = [name for name in FETCH_FIELDS if name != MARKER_FIELD or name in registered]
    return [name for name in names if CalendarItem.get_field_by_fieldname(name).supports_version(version)]


def _token(reason: str) -> str:
    """A re-read's token: why, and when (distinct per re-read, also the dedupe ids' suffix)."""
    return f"{reason}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%f')}"

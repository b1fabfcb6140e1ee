"""Which mailbox syncs when.

Every mailbox ews-ingest knows has an entry: its provider, the credential serving it (mailboxes are spread over a
provider's credentials, fewest mailboxes first), its seat, state and counters. A mailbox with a seat is synced
when something says it changed (a streaming notification, a catch-up after a stream gap, a control message), when
it gets its seat, and at the latest every `safety_sync_seconds` (every `poll_seconds` when no streaming connection
had room for it). One sync of a mailbox runs at a time; a trigger during a sync runs another one right after.

Live changes first: a notification for a mailbox already synced (its first pass done, no whole re-read pending)
reads one page of what changed, while a first sync, an on-demand mailbox or a re-read walks the whole calendar.
Syncs are queued by priority (live, then on-demand, then seats and catch-ups, then safety syncs and polls; a
mailbox queued twice keeps its most urgent place, a trigger during its sync its most urgent rerun). Besides the
`workers` that take any sync, most urgent first, `live_workers` take only live ones, so a backlog of whole-mailbox
syncs holding every general worker never holds a live change; and a live sync's EWS calls take the credential's
next free connection before bulk work's (ews_ingest.exchange.slots) - within the same maxConcurrency budget.
A failed sync logs `failed to getCalendarList` with the mailbox and the cause, marks the mailbox ERROR and is
retried with jittered exponential back-off - the other mailboxes carry on (workers and EWS connections are shared,
per-credential bounds are kept by the credential pools).

With several replicas a mailbox is synced only by the replica owning it (`owns`, ews_ingest.ownership): a mailbox
is active when it has a seat and is owned here; `activate` / `deactivate` tell the streams when ownership moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry import trace

from ews_ingest.conference_marker import MarkerParser
from ews_ingest.exchange.errors import describe
from ews_ingest.exchange.pool import CredentialPool, random_jitter
from ews_ingest.exchange.slots import LIVE, ORDINARY, call_rank
from ews_ingest.mailbox_sync import MailboxContext, MailboxSync, Observer, Publish, SyncResult, Window
from ews_ingest.settings import IngestSettings
from ews_ingest.state import StateStore
from tccal import telemetry
from tccal.retry import backoff_delay
from trueconf.calendar.v1 import ingest_pb2

log = logging.getLogger(__name__)
#: Concurrent mailbox syncs per EWS connection for ordinary calls.
SYNCS_PER_CONNECTION = 2
CALENDAR_UNREADABLE = "failed to getCalendarList"
#: Queue priority by trigger reason, most urgent first. A live change is a notification of a mailbox caught up;
#: a notification of one that is not (first pass or re-read pending) is whole-mailbox work, queued as on-demand.
PRIORITY = {
    "notification": LIVE,
    "resync": 1,
    "on-demand": 1,
    "seat": 2,
    "catch-up": 2,
    "safety": 3,
    "poll": 3,
    "retry": 3,
}
WHOLE_MAILBOX = PRIORITY["on-demand"]

_meter = telemetry.meter("ews_ingest")
_syncs = _meter.create_counter("ews_ingest_mailbox_syncs", description="Mailbox syncs by outcome")
_published = _meter.create_counter("ews_ingest_changes_published", description="CalendarChanges stored in CALENDAR")
_sync_seconds = _meter.create_histogram("ews_ingest_sync_seconds", unit="s", description="Duration of mailbox syncs")


@dataclass
class MailboxEntry:
    mailbox: str
    provider: str
    configured: bool
    pool: CredentialPool
    state: ingest_pb2.MailboxState.ValueType = ingest_pb2.MAILBOX_STATE_PENDING
    seat: bool = False
    last_sync: dt.datetime | None = None
    last_error: str = ""
    last_error_at: dt.datetime | None = None
    lag_seconds: float = 0.0
    context: MailboxContext | None = None
    #: Ownership left this replica since `context` was loaded: another replica may have moved the checkpoint on
    #: (SyncState, sequences), so the next sync here loads it again from INGEST_STATE.
    context_stale: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: int | None = None  # priority it is queued with
    dirty: bool = False
    rerun: int | None = None  # most urgent priority of the triggers that came during its running sync
    failures: int = 0
    next_due: float = 0.0
    noticed_at: float | None = None
    streamed: bool = False
    syncs: int = 0
    sync_started: float = 0.0  # monotonic start of the latest sync
    #: Set to stop the running sync after its current page (shutdown, or ownership moved to another replica).
    halt: asyncio.Event | None = None

    @property
    def credential(self) -> str:
        return self.pool.login

    @property
    def caught_up(self) -> bool:
        """Its first pass is done and no whole re-read is pending: a sync reads only what changed."""
        checkpoint = self.context.checkpoint if self.context is not None else None
        return checkpoint is not None and checkpoint.initial_done and not checkpoint.reread

    @property
    def changes_published(self) -> int:
        return self.context.checkpoint.changes_published if self.context else 0

    def status(self) -> ingest_pb2.MailboxStatus:
        status = ingest_pb2.MailboxStatus(
            mailbox=self.mailbox,
            provider=self.provider,
            credential=self.credential,
            state=self.state,
            last_error=self.last_error,
            lag_seconds=self.lag_seconds,
            configured=self.configured,
            changes_published=self.changes_published,
        )
        if self.last_sync is not None:
            status.last_sync.FromDatetime(self.last_sync)
        if self.last_error_at is not None:
            status.last_error_at.FromDatetime(self.last_error_at)
        return status


class UnknownMailboxError(KeyError):
    pass


def _owns_every_mailbox(mailbox: str) -> bool:
    return True


class Scheduler:
    def __init__(
        self,
        settings: IngestSettings,
        pools: dict[str, list[CredentialPool]],
        store: StateStore,
        publish: Publish,
        marker: MarkerParser,
    ) -> None:
        self.settings = settings
        self.tuning = settings.tuning
        self.pools = pools
        self.store = store
        self.publish = publish
        self.marker = marker
        self.entries: dict[str, MailboxEntry] = {}
        self._queue: asyncio.PriorityQueue[tuple[int, int, str]] = asyncio.PriorityQueue()
        self._live: asyncio.Queue[str] = asyncio.Queue()  # mailboxes queued LIVE, for the live-only workers
        self._order = itertools.count()
        self._assigned: dict[int, int] = {}
        self.on_activate: list[Callable[[MailboxEntry], None]] = []
        self.on_deactivate: list[Callable[[MailboxEntry], None]] = []
        self.after_sync: list[Callable[[MailboxEntry, SyncResult], Awaitable[None]]] = []
        self.observers: list[Observer] = []
        #: Whether this replica owns a mailbox (ews_ingest.ownership replaces it; alone, it owns every one).
        self.owns: Callable[[str], bool] = _owns_every_mailbox
        self.tracer = telemetry.tracer("ews_ingest")
        # A mailbox sync holds an EWS connection only during its calls; publishing its changes and writing its
        # checkpoint take no connection. Twice as many syncs as connections keep every connection busy (the pool's
        # semaphore still bounds the calls): at 8 per sync the 2,000-mailbox initial sync left EWS idle half the time.
        self.workers = max(2, min(128, SYNCS_PER_CONNECTION * sum(p.sync_slots for g in pools.values() for p in g)))
        #: Workers for live changes only, on top: a backlog of whole-mailbox syncs never holds a live change.
        self.live_workers = max(2, self.workers // 4)
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------------ registry
    def add(self, mailbox: str, provider: str, configured: bool) -> MailboxEntry:
        mailbox = mailbox.strip().lower()
        existing = self.entries.get(mailbox)
        if existing is not None:
            if configured and not existing.configured:
                existing.configured = True
            return existing
        candidates = self.pools[provider]
        pool = min(candidates, key=lambda p: (self._assigned.get(id(p), 0), candidates.index(p)))
        self._assigned[id(pool)] = self._assigned.get(id(pool), 0) + 1
        entry = MailboxEntry(mailbox=mailbox, provider=provider, configured=configured, pool=pool)
        self.entries[mailbox] = entry
        return entry

    def get(self, mailbox: str) -> MailboxEntry:
        entry = self.entries.get(mailbox.strip().lower())
        if entry is None:
            raise UnknownMailboxError(mailbox)
        return entry

    def set_seat(self, mailbox: str, granted: bool, reason: str = "") -> None:
        entry = self.get(mailbox)
        if granted and not entry.seat:
            entry.seat = True
            if entry.state == ingest_pb2.MAILBOX_STATE_NO_SEAT:
                entry.state = ingest_pb2.MAILBOX_STATE_PENDING if entry.last_sync is None else entry.state
                if entry.last_sync is not None:
                    entry.state = ingest_pb2.MAILBOX_STATE_SYNCING
                entry.last_error = ""
            log.info("seat granted", extra={"mailbox": entry.mailbox, "provider": entry.provider})
            self.activate(entry, "seat")
        elif not granted:
            was = entry.seat
            entry.seat = False
            entry.state = ingest_pb2.MAILBOX_STATE_NO_SEAT
            entry.last_error = reason or "licensing granted no seat"
            entry.last_error_at = dt.datetime.now(dt.UTC)
            if was:
                log.warning("seat revoked", extra={"mailbox": entry.mailbox, "reason": entry.last_error})
                if self.owns(entry.mailbox):
                    for callback in self.on_deactivate:
                        callback(entry)

    def active(self, entry: MailboxEntry) -> bool:
        """Synced here: it has a seat and this replica owns it."""
        return entry.seat and self.owns(entry.mailbox)

    def activate(self, entry: MailboxEntry, reason: str) -> None:
        """The mailbox became active (a seat, or ownership came here): stream it and sync it."""
        if not self.active(entry):
            return
        for callback in self.on_activate:
            callback(entry)
        self.trigger(entry.mailbox, reason)

    def deactivate(self, entry: MailboxEntry) -> None:
        """Ownership left this replica (`owns` says no already): stop streaming it; no new sync starts and a running
        one stops after its current page (checkpointed: the next owner resumes there)."""
        if entry.halt is not None:
            entry.halt.set()
        entry.context_stale = True
        if entry.seat:
            for callback in self.on_deactivate:
                callback(entry)

    # ------------------------------------------------------------------ triggers
    def trigger(self, mailbox: str, reason: str, noticed_at: float | None = None) -> bool:
        entry = self.entries.get(mailbox)
        if entry is None or not self.active(entry):
            return False
        if noticed_at is not None and (entry.noticed_at is None or noticed_at < entry.noticed_at):
            entry.noticed_at = noticed_at
        entry.dirty = True
        priority = PRIORITY.get(reason, PRIORITY["seat"])
        if entry.lock.locked():  # syncing now: its worker runs it again right after (dirty)
            entry.rerun = priority if entry.rerun is None else min(entry.rerun, priority)
            return True
        self._enqueue(entry, priority)
        return True

    def _enqueue(self, entry: MailboxEntry, priority: int) -> None:
        if priority == LIVE and not entry.caught_up:
            priority = WHOLE_MAILBOX
        if entry.queued is None or priority < entry.queued:
            entry.queued = priority
            self._queue.put_nowait((priority, next(self._order), entry.mailbox))
            if priority == LIVE:
                self._live.put_nowait(entry.mailbox)

    # ------------------------------------------------------------------ running
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        workers = [asyncio.create_task(self._worker(stop), name=f"ews-sync-{i}") for i in range(self.workers)]
        workers += [
            asyncio.create_task(self._worker(stop, live_only=True), name=f"ews-sync-live-{i}")
            for i in range(self.live_workers)
        ]
        ticker = asyncio.create_task(self._ticker(stop), name="ews-sync-ticker")
        try:
            await stop.wait()
        finally:
            for entry in self.entries.values():
                if entry.halt is not None:
                    entry.halt.set()
            ticker.cancel()
            for _ in workers:
                self._queue.put_nowait((-1, -1, ""))
                self._live.put_nowait("")
            await asyncio.gather(*workers, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _ticker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            for entry in self.entries.values():
                if self.active(entry) and entry.queued is None and entry.next_due and entry.next_due <= now:
                    if entry.state == ingest_pb2.MAILBOX_STATE_ERROR:
                        reason = "retry"
                    else:
                        reason = "safety" if entry.streamed else "poll"
                    self.trigger(entry.mailbox, reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def _worker(self, stop: asyncio.Event, *, live_only: bool = False) -> None:
        """Take queued mailboxes and sync them (a mailbox queued twice, in both queues or at two priorities, is
        synced by whichever worker takes it first; the others skip it)."""
        while True:
            if live_only:
                mailbox = await self._live.get()
            else:
                _, _, mailbox = await self._queue.get()
            if stop.is_set() or not mailbox:
                return
            entry = self.entries.get(mailbox)
            if entry is None or entry.queued is None or (live_only and entry.queued != LIVE):
                continue
            priority, entry.queued = entry.queued, None
            if not self.active(entry):
                continue
            async with entry.lock:
                entry.dirty = False
                entry.rerun = None
                if not self.active(entry):  # ownership left while it waited for a running sync
                    continue
                rank = call_rank.set(LIVE if priority == LIVE else ORDINARY)
                try:
                    await self._sync(entry)
                finally:
                    call_rank.reset(rank)
            if entry.dirty and self.active(entry) and not stop.is_set():
                self._enqueue(entry, LIVE if entry.rerun is None else entry.rerun)

    async def context(self, entry: MailboxEntry) -> MailboxContext:
        if entry.context_stale:  # under the entry's lock: this replica's last sync of it has saved its checkpoint
            entry.context, entry.context_stale = None, False
        if entry.context is None:
            checkpoint = await self.store.load_checkpoint(entry.provider, entry.mailbox)
            quarantine = await self.store.load_quarantine(entry.mailbox)
            entry.context = MailboxContext(
                provider=entry.provider,
                mailbox=entry.mailbox,
                pool=entry.pool,
                store=self.store,
                publish=self.publish,
                marker=self.marker,
                checkpoint=checkpoint,
                quarantine=quarantine,
                observers=self.observers,
            )
        return entry.context

    def _halt(self, entry: MailboxEntry) -> asyncio.Event:
        """A fresh stop signal for the sync starting on `entry` (set already when ews-ingest is stopping)."""
        entry.halt = asyncio.Event()
        if self._stop is not None and self._stop.is_set():
            entry.halt.set()
        return entry.halt

    def _syncer(self, context: MailboxContext, halt: asyncio.Event) -> MailboxSync:
        return MailboxSync(
            context,
            auto_sync=self.settings.auto_sync,
            window=Window.around(dt.datetime.now(dt.UTC), self.settings.backward_months, self.settings.forward_months),
            page_size=self.tuning.sync_page_size,
            batch_size=self.tuning.get_item_batch,
            stop=halt,
        )

    async def _sync(self, entry: MailboxEntry) -> None:
        noticed = entry.noticed_at
        entry.noticed_at = None
        started = entry.sync_started = time.monotonic()
        with self.tracer.start_as_current_span("sync mailbox", kind=trace.SpanKind.INTERNAL) as span:
            span.set_attribute("calendar.mailbox", entry.mailbox)
            span.set_attribute("calendar.provider", entry.provider)
            span.set_attribute("ews.credential", entry.credential)
            try:
                context = await self.context(entry)
                result = await self._syncer(context, self._halt(entry)).sync()
            except Exception as exc:
                self._failed(entry, exc, span)
                _syncs.add(1, {"outcome": "error"})
                return
            finally:
                _sync_seconds.record(time.monotonic() - started)
            span.set_attribute("calendar.published", result.published)
            span.set_attribute("ews.pages", result.pages)
        _syncs.add(1, {"outcome": "ok"})
        _published.add(result.published, {"provider": entry.provider})
        self._succeeded(entry, result, noticed)
        for callback in self.after_sync:
            await callback(entry, result)

    def _succeeded(self, entry: MailboxEntry, result: SyncResult, noticed: float | None) -> None:
        entry.syncs += 1
        entry.failures = 0
        entry.state = ingest_pb2.MAILBOX_STATE_SYNCING
        entry.last_sync = dt.datetime.now(dt.UTC)
        interval = self.tuning.safety_sync_seconds if entry.streamed else self.tuning.poll_seconds
        entry.next_due = time.monotonic() + random_jitter(interval)
        if result.published:
            if noticed is not None:
                entry.lag_seconds = max(0.0, time.monotonic() - noticed)
            elif result.newest_modified is not None:
                entry.lag_seconds = max(0.0, (entry.last_sync - result.newest_modified).total_seconds())
        quarantine = entry.context.quarantine if entry.context else {}
        if quarantine:
            item_id, info = next(iter(quarantine.items()))
            entry.last_error = f"{len(quarantine)} item(s) quarantined; {item_id}: {info.reason}"
            entry.last_error_at = entry.last_sync
        else:
            entry.last_error = ""
        log.info(
            "mailbox synced",
            extra={
                "mailbox": entry.mailbox,
                "provider": entry.provider,
                "published": result.published,
                "deleted": result.deleted,
                "quarantined": result.quarantined,
                "pages": result.pages,
            },
        )

    def _failed(self, entry: MailboxEntry, exc: Exception, span: trace.Span) -> None:
        cause = describe(exc)
        entry.failures += 1
        entry.state = ingest_pb2.MAILBOX_STATE_ERROR
        entry.last_error = cause
        entry.last_error_at = dt.datetime.now(dt.UTC)
        delay = backoff_delay(entry.failures, base=self.tuning.error_backoff_base_seconds,
                              cap=self.tuning.error_backoff_cap_seconds)  # fmt: skip
        entry.next_due = time.monotonic() + random.uniform(0.5, 1.0) * delay
        if type(exc).__name__ in ("ErrorNonExistentMailbox", "ErrorImpersonateUserDenied", "AutoDiscoverFailed"):
            entry.pool.forget(entry.mailbox)
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, cause))
        log.error(
            CALENDAR_UNREADABLE,
            extra={
                "mailbox": entry.mailbox,
                "provider": entry.provider,
                "credential": entry.credential,
                "cause": cause,
                "attempt": entry.failures,
            },
        )

    # ------------------------------------------------------------------ resync
    async def resync(self, mailbox: str, since: dt.datetime | None) -> int:
        """Publish every item of the mailbox again (or those modified since `since`); returns how many."""
        entry = self.get(mailbox)
        if not entry.seat:
            raise PermissionError(f"{entry.mailbox} has no seat: {entry.last_error or 'licensing granted none'}")
        if not self.owns(entry.mailbox):
            raise PermissionError(f"{entry.mailbox} is synced by another ews-ingest replica")
        async with entry.lock:
            with self.tracer.start_as_current_span("resync mailbox") as span:
                span.set_attribute("calendar.mailbox", entry.mailbox)
                try:
                    context = await self.context(entry)
                    result = await self._syncer(context, self._halt(entry)).resync(since, uuid.uuid4().hex[:12])
                except Exception as exc:
                    self._failed(entry, exc, span)
                    raise
                span.set_attribute("calendar.published", result.published)
        self._succeeded(entry, result, None)
        if entry.dirty:
            self._enqueue(entry, LIVE if entry.rerun is None else entry.rerun)
            entry.rerun = None
        _published.add(result.published, {"provider": entry.provider})
        log.info("mailbox resynced", extra={"mailbox": entry.mailbox, "published": result.published})
        return result.published

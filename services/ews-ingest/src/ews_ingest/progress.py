"""How far the first sync of the mailboxes is since ews-ingest started: mailboxes done of those with a seat, items
published, items per second and the time left (IngestService.GetSyncProgress, `tc-calendar sync progress`).

The same numbers are metrics (OpenTelemetry observable instruments, read when /metrics is scraped):
`ews_ingest_first_sync_mailboxes{state="done|failed|pending"}`, `ews_ingest_first_sync_items` (a counter:
`_total` in Prometheus), `ews_ingest_first_sync_items_per_second` and `ews_ingest_first_sync_remaining_seconds`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from ews_ingest.mailbox_sync import SyncResult
from ews_ingest.scheduler import MailboxEntry, Scheduler
from tccal import telemetry
from trueconf.calendar.v1 import ingest_pb2


class SyncProgressTracker:
    """Counts what the scheduler's syncs did since `started` and answers the progress of the first sync."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.started_wall = dt.datetime.now(dt.UTC)
        self.started = time.monotonic()
        self.items = 0
        self.finished: float | None = None
        self.finished_wall: dt.datetime | None = None
        scheduler.after_sync.append(self._after_sync)

    async def _after_sync(self, entry: MailboxEntry, result: SyncResult) -> None:
        self.items += result.published
        self._counts()  # the moment the last mailbox is done is when the first sync finished

    def _counts(self) -> tuple[int, int, int]:
        """(mailboxes with a seat, done, failed); notes when the first sync finished (or is no longer finished)."""
        seated = [e for e in self.scheduler.entries.values() if e.seat]
        done = sum(1 for e in seated if e.last_sync is not None)
        failed = sum(1 for e in seated if e.last_sync is None and e.state == ingest_pb2.MAILBOX_STATE_ERROR)
        if seated and done == len(seated):
            if self.finished is None:
                self.finished, self.finished_wall = time.monotonic(), dt.datetime.now(dt.UTC)
        else:
            self.finished = self.finished_wall = None  # a mailbox got a seat (or was added): not done any more
        return len(seated), done, failed

    def snapshot(self) -> ingest_pb2.SyncProgress:
        total, done, failed = self._counts()
        now = time.monotonic()
        elapsed = max(1e-6, (self.finished or now) - self.started)
        left = 0.0
        pending = total - done - failed  # failing mailboxes are retried with back-off: no estimate for them
        if done and pending > 0:
            left = elapsed / done * pending
        progress = ingest_pb2.SyncProgress(
            mailboxes_total=total,
            mailboxes_done=done,
            mailboxes_failed=failed,
            items=self.items,
            items_per_second=self.items / elapsed,
            seconds_left=left,
        )
        progress.started_at.FromDatetime(self.started_wall)
        if self.finished_wall is not None:
            progress.finished_at.FromDatetime(self.finished_wall)
        return progress


def export_metrics(tracker: SyncProgressTracker) -> None:
    """Register the observable instruments reading `tracker` (once per process)."""
    meter = telemetry.meter("ews_ingest")

    def mailboxes(options: CallbackOptions) -> Iterable[Observation]:
        now = tracker.snapshot()
        pending = now.mailboxes_total - now.mailboxes_done - now.mailboxes_failed
        yield Observation(now.mailboxes_done, {"state": "done"})
        yield Observation(now.mailboxes_failed, {"state": "failed"})
        yield Observation(pending, {"state": "pending"})

    def items(options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(tracker.items)

    def rate(options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(tracker.snapshot().items_per_second)

    def remaining(options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(tracker.snapshot().seconds_left)

    meter.create_observable_gauge(
        "ews_ingest_first_sync_mailboxes",
        [mailboxes],
        unit="{mailbox}",
        description="Mailboxes with a seat by first-sync state since the start: done, failed (retrying), pending",
    )
    meter.create_observable_counter(
        "ews_ingest_first_sync_items",
        [items],
        unit="{item}",
        description="Calendar items published by mailbox syncs since the start",
    )
    meter.create_observable_gauge(
        "ews_ingest_first_sync_items_per_second",
        [rate],
        unit="{item}/s",
        description="Items published per second, averaged from the start until the first sync was done",
    )
    meter.create_observable_gauge(
        "ews_ingest_first_sync_remaining_seconds",
        [remaining],
        unit="s",
        description="Estimated seconds until every mailbox with a seat has been synced once (0: done or unknown)",
    )

"""Calendar changes: a batch of CalendarChanges applied in one transaction, in stream order.

Locking (no cycles): the mailbox-set lock (exclusive if the batch adds mailboxes, else shared), then the batch's
mailbox rows, then its item rows, then the meetings it touches (advisory locks, sorted); per-user seqs are
allocated last (users sorted). Mailboxes seen for the first time are added, and the meetings their users take part
in are reconciled with the rest.

A whole-mailbox re-read by ews-ingest is framed by CHANGE_TYPE_MAILBOX_RESYNC_BEGIN and ..._END markers (same
`resync.token`), on the mailbox's subject like its other changes. BEGIN records its token and sequence on the
mailbox row; the matching END deletes every live item of the mailbox whose last change is older than BEGIN - the
re-read did not bring it back, so Exchange no longer has it - exactly as a CHANGE_TYPE_DELETE of that item at END's
sequence would (tombstone, meetings reconciled: users stop seeing it, an organizer's deletion cancels it and
deletes its conference). Spared: items END names in `kept_item_ids`, and items other than series masters that
ended before `window_start` + 1 day (the re-read skips those; the day covers all-day items' zone offsets). The
END's items are locked with the batch's own (one statement, key order), so the lock order above holds. Markers are
idempotent: one at or below the mailbox's last marker is stale, an END whose token is not the open BEGIN's
deletes nothing (a BEGIN without END - ews-ingest stopped mid re-read - is replaced by the next BEGIN).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from sync_engine.context import EngineContext
from sync_engine.ids import to_datetime
from sync_engine.items import Incoming, ItemState, ItemWrites
from sync_engine.metrics import METRICS
from sync_engine.outbox import Cause
from sync_engine.reconcile import lock_meetings, reconcile_meeting
from trueconf.calendar.v1 import calendar_pb2

log = logging.getLogger(__name__)

#: Taken first by every batch of calendar changes: exclusively by one that adds mailboxes, shared by the others.
#: A batch that adds mailbox X shows X the meetings it takes part in (meeting_people); a concurrent batch writing
#: a new meeting of X, not seeing X yet, would leave it out, and the first would not see that meeting: so a batch
#: adding mailboxes runs alone, and every other sees the mailboxes it added.
MAILBOX_SET_LOCK_KEY = int.from_bytes(b"tcsyncmb", "big") & 0x7FFF_FFFF_FFFF_FFFF
LOCK_MAILBOX_SET = (
    "SELECT CASE WHEN (SELECT count(*) FROM mailboxes WHERE mailbox = ANY($1::text[])) < cardinality($1::text[])"
    " THEN (SELECT 'exclusive' FROM pg_advisory_xact_lock($2))"
    " ELSE (SELECT 'shared' FROM pg_advisory_xact_lock_shared($2)) END"
)
MARKERS = (calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN, calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END)
#: Stored items ending before an END's window_start plus this are not judged (the re-read skipped them; an
#: all-day item's stored end may lie up to a day after the date ews-ingest compared).
WINDOW_SLACK = dt.timedelta(days=1)


@dataclass
class ResyncState:
    """A mailbox's re-read markers: the open BEGIN (token, sequence; 0 = none) and the last marker's sequence."""

    token: str
    begin: int
    marker: int


class ChangeApplier:
    """Applies batches of calendar changes: stale ones are ignored, the rest stored, every meeting they touch
    reconciled once."""

    def __init__(self, context: EngineContext) -> None:
        self.context = context

    async def apply_change(
        self,
        change: calendar_pb2.CalendarChange,
        headers: Mapping[str, str] | None = None,
        *,
        stop: asyncio.Event | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Apply one change; True if it changed the state, False if it was stale (or malformed, and logged)."""
        (applied,) = await self.apply_changes([(change, headers)], stop=stop, on_wait=on_wait)
        return applied

    async def apply_changes(
        self,
        changes: Sequence[tuple[calendar_pb2.CalendarChange, Mapping[str, str] | None]],
        *,
        stop: asyncio.Event | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> list[bool]:
        """Apply changes in stream order in one transaction; per change, True if it changed the state, False if
        it was stale (or malformed, and logged). Every meeting they touch is reconciled once, after all of them."""
        incoming: list[Incoming] = []
        positions: list[int] = []
        for position, (change, headers) in enumerate(changes):
            checked = self._incoming(change, headers)
            if checked is not None:
                incoming.append(checked)
                positions.append(position)
        results = [False] * len(changes)
        if not incoming:
            return results
        with self.context.tracer.start_as_current_span("apply calendar changes") as span:
            span.set_attribute("calendar.changes", len(incoming))
            if len(incoming) == 1:
                span.set_attribute("calendar.mailbox", incoming[0].mailbox)
                span.set_attribute("calendar.sequence", incoming[0].change.sequence)
            applied = await self.context.transaction(
                lambda connection: self._apply_changes(connection, incoming), stop=stop, on_wait=on_wait
            )
        stale = 0
        committed = self.context.clock.now()
        for position, one, ok in zip(positions, incoming, applied, strict=True):
            results[position] = ok
            if ok:
                METRICS.apply_lag.record(max(0.0, (committed - one.cause.created_at).total_seconds()))
            else:
                stale += 1
                log.info(
                    "stale calendar change ignored",
                    extra={"mailbox": one.mailbox, "item_id": one.item_id, "sequence": one.change.sequence},
                )
        if len(applied) > stale:
            METRICS.changes_applied.add(len(applied) - stale)
        if stale:
            METRICS.changes_stale.add(stale)
        return results

    def _incoming(self, change: calendar_pb2.CalendarChange, headers: Mapping[str, str] | None) -> Incoming | None:
        mailbox = change.mailbox.strip().lower()
        item_id = change.item_id or change.event.item_id
        if change.type in MARKERS:
            if not mailbox or not change.resync.token:
                log.error(
                    "mailbox re-read marker without mailbox or token dropped",
                    extra={"change_id": change.change_id, "mailbox": change.mailbox},
                )
                return None
            item_id = ""  # a marker names no item
        elif not mailbox or not item_id:
            log.error(
                "calendar change without mailbox or item id dropped",
                extra={"change_id": change.change_id, "mailbox": change.mailbox, "item_id": item_id},
            )
            return None
        if change.type not in (calendar_pb2.CHANGE_TYPE_UPSERT, calendar_pb2.CHANGE_TYPE_DELETE, *MARKERS):
            log.error(
                "calendar change of unknown type dropped",
                extra={"change_id": change.change_id, "type": int(change.type)},
            )
            return None
        observed = to_datetime(change.observed_at) if change.HasField("observed_at") else self.context.clock.now()
        cause = Cause(
            created_at=observed,
            traceparent=(headers or {}).get("traceparent", ""),
            tracestate=(headers or {}).get("tracestate", ""),
        )
        return Incoming(change, mailbox, item_id, cause)

    async def _apply_changes(self, connection: asyncpg.Connection, incoming: list[Incoming]) -> list[bool]:
        """Lock the changes' mailboxes, then their items (both in key order), store what is not stale, then lock,
        reconcile and write every meeting touched."""
        providers = {one.mailbox: one.change.provider for one in incoming}
        mailboxes = sorted(providers)
        await connection.execute(LOCK_MAILBOX_SET, mailboxes, MAILBOX_SET_LOCK_KEY)
        new_rows = await connection.fetch(
            "INSERT INTO mailboxes (mailbox, provider, last_sequence)"
            " SELECT m, p, 0 FROM unnest($1::text[], $2::text[]) AS t (m, p) ORDER BY m"
            " ON CONFLICT (mailbox) DO NOTHING RETURNING mailbox",
            mailboxes,
            [providers[m] for m in mailboxes],
        )
        floors: dict[str, int] = {}
        markers: dict[str, ResyncState] = {}
        for r in await connection.fetch(
            "SELECT mailbox, resync_floor, resync_token, resync_begin, resync_marker FROM mailboxes"
            " WHERE mailbox = ANY($1::text[]) ORDER BY mailbox FOR UPDATE",
            mailboxes,
        ):
            floors[str(r["mailbox"])] = int(r["resync_floor"])
            markers[str(r["mailbox"])] = ResyncState(
                str(r["resync_token"]), int(r["resync_begin"]), int(r["resync_marker"])
            )
        keys = sorted({(one.mailbox, one.item_id) for one in incoming if one.change.type not in MARKERS})
        # A re-read's END judges every live item of its mailbox: lock them with the batch's items, in key order.
        ending = sorted(
            {one.mailbox for one in incoming if one.change.type == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END}
        )
        stored: dict[tuple[str, str], ItemState] = {}
        live: set[tuple[str, str]] = set()
        for r in await connection.fetch(
            "SELECT mailbox, item_id, meeting_id, sequence, deleted FROM items WHERE (mailbox, item_id) IN"
            " (SELECT * FROM unnest($1::text[], $2::text[])) OR (mailbox = ANY($3::text[]) AND NOT deleted)"
            " ORDER BY mailbox, item_id FOR UPDATE",
            [m for m, _ in keys],
            [i for _, i in keys],
            ending,
        ):
            key = (str(r["mailbox"]), str(r["item_id"]))
            stored[key] = ItemState(str(r["meeting_id"]), int(r["sequence"]))
            if not r["deleted"]:
                live.add(key)
        writes = ItemWrites()
        affected: dict[str, Cause] = {}
        applied: list[bool] = []
        changed_markers: set[str] = set()

        def delete(one: Incoming, sequence: int) -> None:
            key = (one.mailbox, one.item_id)
            item = stored.get(key)
            writes.delete(one, sequence, known=item is not None)
            if item is not None and item.meeting_id:
                affected[item.meeting_id] = one.cause
            stored[key] = ItemState(item.meeting_id if item is not None else "", sequence)
            live.discard(key)

        for one in incoming:
            key = (one.mailbox, one.item_id)
            sequence = int(one.change.sequence)
            if one.change.type in MARKERS:
                state = markers[one.mailbox]
                ok = sequence > floors.get(one.mailbox, 0) and sequence > state.marker
                if ok and one.change.type == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN:
                    state.token, state.begin, state.marker = one.change.resync.token, sequence, sequence
                elif ok:
                    if state.begin and state.token == one.change.resync.token:
                        for gone in await self._not_brought_back(connection, one, state.begin, stored, live, writes):
                            delete(gone, sequence)
                    else:
                        log.warning(
                            "end of a mailbox re-read without its beginning: nothing deleted",
                            extra={"mailbox": one.mailbox, "token": one.change.resync.token, "open": state.token},
                        )
                    state.token, state.begin, state.marker = "", 0, sequence
                applied.append(ok)
                if ok:
                    writes.touch_mailbox(one, sequence)
                    changed_markers.add(one.mailbox)
                continue
            item = stored.get(key)
            if sequence <= floors.get(one.mailbox, 0) or (item is not None and sequence <= item.sequence):
                applied.append(False)
                continue
            applied.append(True)
            writes.touch_mailbox(one, sequence)
            if one.change.type == calendar_pb2.CHANGE_TYPE_UPSERT:
                meeting = writes.upsert(one, sequence)
                affected[meeting] = one.cause
                if item is not None and item.meeting_id and item.meeting_id != meeting:
                    affected[item.meeting_id] = one.cause
                stored[key] = ItemState(meeting, sequence)
                live.add(key)
            else:
                delete(one, sequence)
        created = await writes.flush(connection)
        for mailbox in sorted(changed_markers):
            state = markers[mailbox]
            await connection.execute(
                "UPDATE mailboxes SET resync_token = $2, resync_begin = $3, resync_marker = $4 WHERE mailbox = $1",
                mailbox,
                state.token,
                state.begin,
                state.marker,
            )
        new_mailboxes = sorted({str(r["mailbox"]) for r in new_rows})
        if new_mailboxes:
            # Newly synced users: the meetings they take part in now show in their calendars too.
            first_cause: dict[str, Cause] = {}
            for one in incoming:
                first_cause.setdefault(one.mailbox, one.cause)
            for row in await connection.fetch(
                "SELECT meeting_id, email FROM meeting_people WHERE email = ANY($1::text[])", new_mailboxes
            ):
                affected.setdefault(str(row["meeting_id"]), first_cause[str(row["email"])])
        if affected:
            await lock_meetings(connection, affected)
            workspace = self.context.workspace(connection)
            for meeting, (uid, items) in writes.stored(created).items():
                workspace.adopt(meeting, uid, items)
            await workspace.load(affected)
            moment = self.context.moment()
            batch = self.context.batch(incoming[-1].cause)
            for meeting in sorted(affected):
                batch.cause = affected[meeting]
                await reconcile_meeting(workspace, self.context.settings, meeting, batch, moment)
            await batch.flush(connection, workspace.take_writes())
        return applied

    async def _not_brought_back(
        self,
        connection: asyncpg.Connection,
        end: Incoming,
        begin: int,
        stored: Mapping[tuple[str, str], ItemState],
        live: set[tuple[str, str]],
        writes: ItemWrites,
    ) -> list[Incoming]:
        """The live items of END's mailbox (locked) whose last change is older than BEGIN and that the re-read
        judged, as the DELETE changes that remove them (at END's sequence, origin RESYNC)."""
        marker = end.change.resync
        kept = set(marker.kept_item_ids)
        doomed = sorted(
            key for key in live if key[0] == end.mailbox and stored[key].sequence < begin and key[1] not in kept
        )
        if not doomed:
            return []
        if marker.HasField("window_start"):
            horizon = to_datetime(marker.window_start) + WINDOW_SLACK
            events = {key: writes.events.get(key) for key in doomed if key in writes.events}
            unknown = [key for key in doomed if key not in events]
            for r in await connection.fetch(
                "SELECT item_id, event FROM items WHERE mailbox = $1 AND item_id = ANY($2::text[])",
                end.mailbox,
                [item_id for _, item_id in unknown],
            ):
                raw = r["event"]
                events[(end.mailbox, str(r["item_id"]))] = (
                    calendar_pb2.CalendarEvent.FromString(raw) if raw is not None else None
                )
            doomed = [key for key in doomed if not _ended_before(events.get(key), horizon)]
        gone: list[Incoming] = []
        for mailbox, item_id in doomed:
            change = calendar_pb2.CalendarChange(
                change_id=f"{mailbox}/{item_id}/deleted/resync/{marker.token}",
                provider=end.change.provider,
                mailbox=mailbox,
                sequence=end.change.sequence,
                type=calendar_pb2.CHANGE_TYPE_DELETE,
                item_id=item_id,
                origin=calendar_pb2.CHANGE_ORIGIN_RESYNC,
            )
            change.observed_at.CopyFrom(end.change.observed_at)
            gone.append(Incoming(change, mailbox, item_id, end.cause))
        log.info(
            "items a mailbox re-read did not bring back are deleted",
            extra={"mailbox": end.mailbox, "token": marker.token, "items": len(gone)},
        )
        return gone


def _ended_before(event: calendar_pb2.CalendarEvent | None, horizon: dt.datetime) -> bool:
    """Whether a stored item (not a series master) ended before `horizon`: a re-read skipped it, so it stays."""
    if event is None or event.kind == calendar_pb2.ITEM_KIND_RECURRING_MASTER or not event.HasField("end"):
        return False
    return to_datetime(event.end) < horizon

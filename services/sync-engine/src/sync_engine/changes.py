"""Calendar changes: a batch of CalendarChanges applied in one transaction, in stream order.

Locking (no cycles): the mailbox-set lock (exclusive if the batch adds mailboxes, else shared), then the batch's
mailbox rows, then its item rows, then the meetings it touches (advisory locks, sorted); per-user seqs are
allocated last (users sorted). Mailboxes seen for the first time are added, and the meetings their users take part
in are reconciled with the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

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
        for position, one, ok in zip(positions, incoming, applied, strict=True):
            results[position] = ok
            if not ok:
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
        if not mailbox or not item_id:
            log.error(
                "calendar change without mailbox or item id dropped",
                extra={"change_id": change.change_id, "mailbox": change.mailbox, "item_id": item_id},
            )
            return None
        if change.type not in (calendar_pb2.CHANGE_TYPE_UPSERT, calendar_pb2.CHANGE_TYPE_DELETE):
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
        floors = {
            str(r["mailbox"]): int(r["resync_floor"])
            for r in await connection.fetch(
                "SELECT mailbox, resync_floor FROM mailboxes WHERE mailbox = ANY($1::text[]) ORDER BY mailbox"
                " FOR UPDATE",
                mailboxes,
            )
        }
        keys = sorted({(one.mailbox, one.item_id) for one in incoming})
        stored = {
            (str(r["mailbox"]), str(r["item_id"])): ItemState(str(r["meeting_id"]), int(r["sequence"]))
            for r in await connection.fetch(
                "SELECT mailbox, item_id, meeting_id, sequence FROM items WHERE (mailbox, item_id) IN"
                " (SELECT * FROM unnest($1::text[], $2::text[])) ORDER BY mailbox, item_id FOR UPDATE",
                [m for m, _ in keys],
                [i for _, i in keys],
            )
        }
        writes = ItemWrites()
        affected: dict[str, Cause] = {}
        applied: list[bool] = []
        for one in incoming:
            key = (one.mailbox, one.item_id)
            sequence = int(one.change.sequence)
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
            else:
                writes.delete(one, sequence, known=item is not None)
                if item is not None and item.meeting_id:
                    affected[item.meeting_id] = one.cause
                stored[key] = ItemState(item.meeting_id if item is not None else "", sequence)
        created = await writes.flush(connection)
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
            await workspace.flush()
            await batch.flush(connection)
        return applied

"""The `items` and `mailboxes` writes of a batch of calendar changes, coalesced into a few statements.

Changes are applied in stream order; when one item changes several times in a batch its row gets the last
state (a deletion after an upsert in the same batch keeps the upserted data, as a tombstone, like the
row-by-row UPDATE it replaces).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from sync_engine.ids import meeting_id as meeting_id_of
from sync_engine.ids import to_datetime
from sync_engine.model import MAIN_KINDS, is_organizer_copy
from sync_engine.outbox import Cause
from trueconf.calendar.v1 import calendar_pb2

UPSERT_ITEM = (
    "INSERT INTO items (mailbox, item_id, uid, meeting_id, kind, recurrence_id, sequence, change_key,"
    " deleted, was_organizer, observed_at, event)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    " ON CONFLICT (mailbox, item_id) DO UPDATE SET uid = EXCLUDED.uid, meeting_id = EXCLUDED.meeting_id,"
    " kind = EXCLUDED.kind, recurrence_id = EXCLUDED.recurrence_id, sequence = EXCLUDED.sequence,"
    " change_key = EXCLUDED.change_key, deleted = EXCLUDED.deleted, was_organizer = EXCLUDED.was_organizer,"
    " observed_at = EXCLUDED.observed_at, event = EXCLUDED.event"
)
DELETE_ITEM = (
    "UPDATE items SET deleted = true, sequence = $3, change_key = '', observed_at = $4"
    " WHERE mailbox = $1 AND item_id = $2"
)


@dataclass(frozen=True)
class Incoming:
    """A well-formed calendar change, its mailbox normalized, and what its decisions stem from."""

    change: calendar_pb2.CalendarChange
    mailbox: str
    item_id: str
    cause: Cause


@dataclass(frozen=True)
class ItemState:
    """What the staleness check needs of a stored item: its meeting and the sequence of its last change."""

    meeting_id: str
    sequence: int


Row = tuple[str, str, str, str, int, datetime | None, int, str, bool, bool, datetime, bytes | None]


@dataclass
class ItemWrites:
    rows: dict[tuple[str, str], Row] = field(default_factory=dict)
    deletions: dict[tuple[str, str], tuple[str, str, int, datetime]] = field(default_factory=dict)
    mailboxes: dict[str, tuple[int, str, datetime]] = field(default_factory=dict)

    def touch_mailbox(self, one: Incoming, sequence: int) -> None:
        last, _, observed = self.mailboxes.get(one.mailbox, (0, "", one.cause.created_at))
        self.mailboxes[one.mailbox] = (max(last, sequence), one.change.provider, max(observed, one.cause.created_at))

    def upsert(self, one: Incoming, sequence: int) -> str:
        """Store the item's new state; returns its meeting id."""
        event = one.change.event
        uid = event.uid or f"{one.mailbox}/{one.item_id}"
        meeting = meeting_id_of(uid)
        kind = int(event.kind)
        recurrence_id = to_datetime(event.recurrence_id) if event.HasField("recurrence_id") else None
        was_organizer = kind in MAIN_KINDS and is_organizer_copy(one.mailbox, event)
        key = (one.mailbox, one.item_id)
        self.deletions.pop(key, None)
        self.rows[key] = (
            one.mailbox,
            one.item_id,
            uid,
            meeting,
            kind,
            recurrence_id,
            sequence,
            event.change_key,
            False,
            was_organizer,
            one.cause.created_at,
            event.SerializeToString(deterministic=True),
        )
        return meeting

    def delete(self, one: Incoming, sequence: int, *, known: bool) -> None:
        """Mark the item deleted; an item never seen gets a tombstone (an older upsert stays ignored)."""
        key = (one.mailbox, one.item_id)
        observed = one.cause.created_at
        earlier = self.rows.get(key)
        if earlier is not None:
            mailbox, item_id, uid, meeting, kind, recurrence_id, _, _, _, was_organizer, _, event = earlier
            self.rows[key] = (
                mailbox,
                item_id,
                uid,
                meeting,
                kind,
                recurrence_id,
                sequence,
                "",
                True,
                was_organizer,
                observed,
                event,
            )
        elif known:
            self.deletions[key] = (one.mailbox, one.item_id, sequence, observed)
        else:
            self.rows[key] = (one.mailbox, one.item_id, "", "", 0, None, sequence, "", True, False, observed, None)

    async def flush(self, connection: asyncpg.Connection) -> None:
        if self.mailboxes:
            await connection.executemany(
                "UPDATE mailboxes SET last_sequence = GREATEST(last_sequence, $2), provider = $3,"
                " last_observed_at = GREATEST(last_observed_at, $4) WHERE mailbox = $1",
                [(m, *self.mailboxes[m]) for m in sorted(self.mailboxes)],
            )
        meetings = sorted({(row[3], row[2]) for row in self.rows.values() if row[3]})
        if meetings:
            await connection.execute(
                "INSERT INTO meetings (meeting_id, uid) SELECT * FROM unnest($1::text[], $2::text[])"
                " ON CONFLICT (meeting_id) DO NOTHING",
                [m for m, _ in meetings],
                [u for _, u in meetings],
            )
        if self.deletions:
            await connection.executemany(DELETE_ITEM, [self.deletions[k] for k in sorted(self.deletions)])
        if self.rows:
            await connection.executemany(UPSERT_ITEM, [self.rows[k] for k in sorted(self.rows)])

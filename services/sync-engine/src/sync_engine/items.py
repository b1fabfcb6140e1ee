"""The `items` and `mailboxes` writes of a batch of calendar changes, coalesced into a few statements.

Changes are applied in stream order; when one item changes several times in a batch its row gets the last
state (a deletion after an upsert in the same batch keeps the upserted data, as a tombstone, like the
row-by-row UPDATE it replaces).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from sync_engine import bulk
from sync_engine.ids import meeting_id as meeting_id_of
from sync_engine.ids import to_datetime
from sync_engine.model import MAIN_KINDS, StoredItem, is_organizer_copy
from sync_engine.outbox import Cause
from trueconf.calendar.v1 import calendar_pb2

ITEM_COLUMNS = bulk.columns(
    "mailbox text, item_id text, uid text, meeting_id text, kind smallint, recurrence_id timestamptz,"
    " sequence bigint, change_key text, deleted boolean, was_organizer boolean, observed_at timestamptz, event bytea"
)
UPSERT_ITEMS = bulk.upsert_sql("items", ITEM_COLUMNS, ("mailbox", "item_id"))
DELETION_COLUMNS = bulk.columns("mailbox text, item_id text, sequence bigint, observed_at timestamptz")
DELETE_ITEMS = bulk.update_sql(
    "items",
    DELETION_COLUMNS,
    ("mailbox", "item_id"),
    "deleted = true, sequence = u.sequence, change_key = '', observed_at = u.observed_at",
)
MAILBOX_COLUMNS = bulk.columns("mailbox text, last_sequence bigint, provider text, last_observed_at timestamptz")
TOUCH_MAILBOXES = bulk.update_sql(
    "mailboxes",
    MAILBOX_COLUMNS,
    ("mailbox",),
    "last_sequence = GREATEST(t.last_sequence, u.last_sequence), provider = u.provider,"
    " last_observed_at = GREATEST(t.last_observed_at, u.last_observed_at)",
)
MEETING_COLUMNS = bulk.columns("meeting_id text, uid text")
INSERT_MEETINGS = (
    f"INSERT INTO meetings (meeting_id, uid) SELECT meeting_id, uid FROM {bulk.unnest(MEETING_COLUMNS)}"
    " ON CONFLICT (meeting_id) DO NOTHING RETURNING meeting_id"
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
    #: The event of each row in `rows` (the change's own message; None for a tombstone of an unknown item).
    events: dict[tuple[str, str], calendar_pb2.CalendarEvent | None] = field(default_factory=dict)

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
        self.events[key] = event
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
            self.events[key] = None
            self.rows[key] = (one.mailbox, one.item_id, "", "", 0, None, sequence, "", True, False, observed, None)

    def stored(self, meetings: set[str]) -> dict[str, tuple[str, list[StoredItem]]]:
        """(uid, items) of these meetings as written by this batch, items in (mailbox, item id) order."""
        found: dict[str, tuple[str, list[StoredItem]]] = {}
        for key in sorted(self.rows):
            mailbox, item_id, uid, meeting, kind, recurrence_id, _, _, deleted, was_organizer, _, _ = self.rows[key]
            if meeting not in meetings:
                continue
            item = StoredItem(mailbox, item_id, kind, recurrence_id, deleted, was_organizer, self.events[key])
            found.setdefault(meeting, (uid, []))[1].append(item)
        return found

    async def flush(self, connection: asyncpg.Connection) -> set[str]:
        """Write the batch's items, mailboxes and meetings (one statement); returns the meetings this created
        (nothing is stored about them yet but these items: meetings rows are never deleted, and everything else
        hangs off one). The parts touch different rows: deletions are of items not among the upserted rows."""
        meetings = sorted({(row[3], row[2]) for row in self.rows.values() if row[3]})
        parts = {
            "touched": bulk.statement(
                TOUCH_MAILBOXES, [(m, *self.mailboxes[m]) for m in sorted(self.mailboxes)], len(MAILBOX_COLUMNS)
            ),
            "gone": bulk.statement(
                DELETE_ITEMS, [self.deletions[k] for k in sorted(self.deletions)], len(DELETION_COLUMNS)
            ),
            "stored": bulk.statement(UPSERT_ITEMS, [self.rows[k] for k in sorted(self.rows)], len(ITEM_COLUMNS)),
            "created": bulk.statement(INSERT_MEETINGS, meetings, len(MEETING_COLUMNS)),
        }
        final = (
            "SELECT meeting_id FROM created" if parts["created"] is not None else "SELECT '' AS meeting_id WHERE false"
        )
        write = bulk.combined(parts, final)
        if not write.args:
            return set()
        return {str(r["meeting_id"]) for r in await connection.fetch(write.sql, *write.args)}

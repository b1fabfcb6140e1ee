"""The rows of the meetings one transaction decides about: read in a few statements, written back in a few.

A transaction that touches N meetings (a fetched batch of calendar changes, a command result, a re-expansion)
loads all their rows at once (`Workspace.load`, one query per table; nothing for meetings it created: `adopt`),
`reconcile` works on them in memory, and `take_writes` hands what changed to the command batch, which writes it in
one statement before it allocates its users' seqs (a data-modifying CTE per table and kind, rows unnested from
arrays: bulk.py), so the number of round trips does not grow with the number of meetings. The meetings' advisory locks
must be held while the workspace lives (`reconcile.lock_meetings`); nothing else may write these rows in the same
transaction meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime

import asyncpg

from sync_engine import bulk
from sync_engine.model import StoredItem
from trueconf.calendar.v1 import calendar_pb2


@dataclass
class ConferenceRow:
    """One row of `conferences` (columns in table order)."""

    meeting_id: str
    server_id: str
    state: str
    linked: bool = False
    conference_id: str = ""
    url: str = ""
    topic: str = ""
    owner: str = ""
    sent: bytes | None = None
    sent_invitations: bytes | None = None
    run_invitations: bytes | None = None
    repoint_at: datetime | None = None
    commands: int = 0
    last_error: str = ""
    last_launch: datetime | None = None


@dataclass
class LaunchRow:
    """One row of `launches`."""

    occurrence_id: str
    meeting_id: str
    start_at: datetime
    end_at: datetime
    state: str
    launched_at: datetime | None = None
    command_id: str | None = None


@dataclass
class ShownRow:
    """What a user's calendar shows of one occurrence (a row of `shown`, its occurrence parsed)."""

    cancelled: bool
    occurrence: calendar_pb2.Occurrence


@dataclass
class MeetingRows:
    """Everything stored about one meeting."""

    meeting_id: str
    uid: str
    snapshot: bytes | None
    items: list[StoredItem] = field(default_factory=list)
    conference: ConferenceRow | None = None
    launches: dict[str, LaunchRow] = field(default_factory=dict)
    shown: dict[tuple[str, str], ShownRow] = field(default_factory=dict)
    occurrences: dict[str, bytes] = field(default_factory=dict)
    people: set[str] = field(default_factory=set)


CONFERENCE_COLUMNS = tuple(f.name for f in fields(ConferenceRow))
LAUNCH_COLUMNS = tuple(f.name for f in fields(LaunchRow))


CONFERENCE_SQL_COLUMNS = bulk.columns(
    "meeting_id text, server_id text, state text, linked boolean, conference_id text, url text, topic text,"
    " owner text, sent bytea, sent_invitations bytea, run_invitations bytea, repoint_at timestamptz,"
    " commands integer, last_error text, last_launch timestamptz"
)
LAUNCH_SQL_COLUMNS = bulk.columns(
    "occurrence_id text, meeting_id text, start_at timestamptz, end_at timestamptz, state text,"
    " launched_at timestamptz, command_id text"
)
OCCURRENCE_COLUMNS = bulk.columns(
    "occurrence_id text, meeting_id text, original_start timestamptz, start_at timestamptz, end_at timestamptz,"
    " cancelled boolean, occurrence bytea"
)
SNAPSHOT_COLUMNS = bulk.columns(
    "meeting_id text, snapshot bytea, cancelled boolean, recurring boolean, updated_at timestamptz"
)
assert tuple(c.name for c in CONFERENCE_SQL_COLUMNS) == CONFERENCE_COLUMNS
assert tuple(c.name for c in LAUNCH_SQL_COLUMNS) == LAUNCH_COLUMNS
UPSERT_CONFERENCES = bulk.upsert_sql("conferences", CONFERENCE_SQL_COLUMNS, ("meeting_id",))
UPSERT_LAUNCHES = bulk.upsert_sql("launches", LAUNCH_SQL_COLUMNS, ("occurrence_id",))
UPSERT_OCCURRENCES = bulk.upsert_sql("occurrences", OCCURRENCE_COLUMNS, ("occurrence_id",))
PEOPLE_COLUMNS = bulk.columns("meeting_id text, email text")
DROP_LAUNCHES = "DELETE FROM launches WHERE occurrence_id = ANY($1::text[]) AND state IN ('planned', 'missed')"
DROP_OCCURRENCES = "DELETE FROM occurrences WHERE occurrence_id = ANY($1::text[])"
DROP_PEOPLE = (
    "DELETE FROM meeting_people WHERE (meeting_id, email) IN"
    f" (SELECT meeting_id, email FROM {bulk.unnest(PEOPLE_COLUMNS)})"
)
ADD_PEOPLE = bulk.upsert_sql("meeting_people", PEOPLE_COLUMNS, ("meeting_id", "email"), update=False)
UPDATE_SNAPSHOTS = bulk.update_sql(
    "meetings",
    SNAPSHOT_COLUMNS,
    ("meeting_id",),
    "snapshot = u.snapshot, cancelled = u.cancelled, recurring = u.recurring, updated_at = u.updated_at",
)


def parse_item(row: asyncpg.Record) -> StoredItem:
    return StoredItem(
        mailbox=row["mailbox"],
        item_id=row["item_id"],
        kind=int(row["kind"]),
        recurrence_id=row["recurrence_id"],
        deleted=bool(row["deleted"]),
        was_organizer=bool(row["was_organizer"]),
        event=calendar_pb2.CalendarEvent.FromString(bytes(row["event"])) if row["event"] is not None else None,
    )


class Workspace:
    """The loaded meetings of one transaction and the writes decided about them."""

    def __init__(
        self,
        connection: asyncpg.Connection,
        configured_users: frozenset[str] | set[str],
        seats_at: datetime | None = None,
    ) -> None:
        """`seats_at`: seats are enforced, a mailbox is seated while its lease in `seats` runs past this time
        (seats.py); None: every mailbox counts as seated (an engine built in-process without a seat source)."""
        self.connection = connection
        self.configured_users = configured_users
        self.seats_at = seats_at
        self.meetings: dict[str, MeetingRows] = {}
        self._users: set[str] = set()  # synced mailboxes among the people looked up
        self._seated: set[str] = set()  # seated mailboxes among the people looked up
        self._looked_up: set[str] = set()
        self._adopted: list[str] = []
        self._conferences: set[str] = set()
        self._launches: dict[str, LaunchRow] = {}
        self._launches_gone: set[str] = set()
        self._snapshots: dict[str, tuple[bytes, bool, bool, datetime]] = {}
        self._occurrences: dict[str, tuple[str, datetime, datetime, datetime, bool, bytes]] = {}
        self._occurrences_gone: set[str] = set()
        self._people_added: set[tuple[str, str]] = set()
        self._people_gone: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------------------------------------- reading
    def adopt(self, meeting_id: str, uid: str, items: list[StoredItem]) -> None:
        """A meeting this transaction created: nothing is stored about it but `items`, so there is nothing to read
        (its people are looked up with the next `load`)."""
        self.meetings[meeting_id] = MeetingRows(meeting_id, uid, None, items)
        self._adopted.append(meeting_id)

    async def load(self, meeting_ids: Iterable[str]) -> None:
        """Read every row of these meetings (those already loaded or adopted are kept as they are)."""
        wanted = sorted(set(meeting_ids) - set(self.meetings))
        found = await self._read(wanted) if wanted else []
        adopted, self._adopted = self._adopted, []
        await self._look_up(self._candidates([*found, *adopted]))

    async def _read(self, wanted: list[str]) -> list[str]:
        c = self.connection
        for row in await c.fetch("SELECT meeting_id, uid, snapshot FROM meetings WHERE meeting_id = ANY($1)", wanted):
            snapshot = bytes(row["snapshot"]) if row["snapshot"] is not None else None
            self.meetings[row["meeting_id"]] = MeetingRows(row["meeting_id"], row["uid"], snapshot)
        found = sorted(set(wanted) & set(self.meetings))
        if not found:
            return found
        for row in await c.fetch(
            "SELECT meeting_id, mailbox, item_id, kind, recurrence_id, deleted, was_organizer, event FROM items"
            " WHERE meeting_id = ANY($1) ORDER BY meeting_id, mailbox, item_id",
            found,
        ):
            self.meetings[row["meeting_id"]].items.append(parse_item(row))
        for row in await c.fetch(
            f"SELECT {', '.join(CONFERENCE_COLUMNS)} FROM conferences WHERE meeting_id = ANY($1)", found
        ):
            self.meetings[row["meeting_id"]].conference = ConferenceRow(**dict(row.items()))
        for row in await c.fetch(f"SELECT {', '.join(LAUNCH_COLUMNS)} FROM launches WHERE meeting_id = ANY($1)", found):
            self.meetings[row["meeting_id"]].launches[row["occurrence_id"]] = LaunchRow(**dict(row.items()))
        for row in await c.fetch(
            "SELECT meeting_id, user_email, occurrence_id, cancelled, occurrence FROM shown WHERE meeting_id = ANY($1)",
            found,
        ):
            occurrence = calendar_pb2.Occurrence.FromString(bytes(row["occurrence"]))
            occurrence.ClearField("updated_at")
            shown = ShownRow(bool(row["cancelled"]), occurrence)
            self.meetings[row["meeting_id"]].shown[(row["user_email"], row["occurrence_id"])] = shown
        for row in await c.fetch(
            "SELECT meeting_id, occurrence_id, occurrence FROM occurrences WHERE meeting_id = ANY($1)", found
        ):
            self.meetings[row["meeting_id"]].occurrences[row["occurrence_id"]] = bytes(row["occurrence"])
        for row in await c.fetch("SELECT meeting_id, email FROM meeting_people WHERE meeting_id = ANY($1)", found):
            self.meetings[row["meeting_id"]].people.add(row["email"])
        return found

    def _candidates(self, meeting_ids: Iterable[str]) -> set[str]:
        """Everyone who may take part in these meetings: the users to look up at once."""
        people: set[str] = set()
        for meeting in meeting_ids:
            rows = self.meetings[meeting]
            people |= rows.people
            for item in rows.items:
                people.add(item.mailbox)
                if item.event is not None:
                    people.add(item.event.organizer.email.lower())
                    people.update(a.person.email.lower() for a in item.event.attendees)
        people.discard("")
        return people

    async def _look_up(self, people: set[str]) -> None:
        missing = sorted(people - self._looked_up)
        if not missing:
            return
        if self.seats_at is None:
            rows = await self.connection.fetch(
                "SELECT mailbox, true AS synced FROM mailboxes WHERE mailbox = ANY($1::text[])", missing
            )
        else:  # one round trip for both
            rows = await self.connection.fetch(
                "SELECT mailbox, true AS synced FROM mailboxes WHERE mailbox = ANY($1::text[])"
                " UNION ALL SELECT mailbox, false FROM seats WHERE mailbox = ANY($1::text[]) AND lease_until > $2",
                missing,
                self.seats_at,
            )
        for row in rows:
            (self._users if row["synced"] else self._seated).add(str(row["mailbox"]))
        self._looked_up.update(missing)

    def seated(self, mailbox: str) -> bool:
        """Whether `mailbox` (looked up already: `look_up`) holds a seat; always, when seats are not enforced."""
        return self.seats_at is None or mailbox in self._seated

    async def look_up(self, people: set[str]) -> None:
        """Read whether these people are synced mailboxes and hold seats (each person once per workspace)."""
        await self._look_up(people)

    async def known_users(self, people: set[str]) -> set[str]:
        """The people who are TrueConf users we serve: synced mailboxes and calendarProviders[].users, holding a
        seat."""
        await self._look_up(people)
        known = (people & self._users) | (people & self.configured_users)
        return {person for person in known if self.seated(person)}

    # ------------------------------------------------------------------------------------------------- writing
    def conference_changed(self, rows: MeetingRows) -> None:
        self._conferences.add(rows.meeting_id)

    def ensure_conference(self, rows: MeetingRows, server_id: str) -> ConferenceRow:
        if rows.conference is None:
            rows.conference = ConferenceRow(meeting_id=rows.meeting_id, server_id=server_id, state="pending")
            self.conference_changed(rows)
        return rows.conference

    def next_command(self, rows: MeetingRows) -> int:
        """The meeting's next conference command number (command ids are deterministic)."""
        if rows.conference is None:
            raise LookupError(f"meeting {rows.meeting_id} has no conference row")
        rows.conference.commands += 1
        self.conference_changed(rows)
        return rows.conference.commands

    def put_launch(self, rows: MeetingRows, launch: LaunchRow) -> None:
        rows.launches[launch.occurrence_id] = launch
        self._launches[launch.occurrence_id] = launch
        self._launches_gone.discard(launch.occurrence_id)

    def drop_launch(self, rows: MeetingRows, occurrence_id: str) -> None:
        rows.launches.pop(occurrence_id, None)
        self._launches.pop(occurrence_id, None)
        self._launches_gone.add(occurrence_id)

    def put_snapshot(self, rows: MeetingRows, snapshot: bytes, cancelled: bool, recurring: bool, at: datetime) -> None:
        rows.snapshot = snapshot
        self._snapshots[rows.meeting_id] = (snapshot, cancelled, recurring, at)

    def put_occurrence(
        self,
        rows: MeetingRows,
        occurrence_id: str,
        times: tuple[datetime, datetime, datetime],
        cancelled: bool,
        data: bytes,
    ) -> None:
        rows.occurrences[occurrence_id] = data
        self._occurrences[occurrence_id] = (rows.meeting_id, *times, cancelled, data)
        self._occurrences_gone.discard(occurrence_id)

    def drop_occurrence(self, rows: MeetingRows, occurrence_id: str) -> None:
        rows.occurrences.pop(occurrence_id, None)
        self._occurrences.pop(occurrence_id, None)
        self._occurrences_gone.add(occurrence_id)

    def set_people(self, rows: MeetingRows, people: set[str]) -> None:
        for email in people - rows.people:
            self._people_added.add((rows.meeting_id, email))
            self._people_gone.discard((rows.meeting_id, email))
        for email in rows.people - people:
            self._people_gone.add((rows.meeting_id, email))
            self._people_added.discard((rows.meeting_id, email))
        rows.people = set(people)

    def take_writes(self) -> dict[str, bulk.Statement | None]:
        """Every change decided since the last call as the parts of one statement (`bulk.combined`), then
        forgotten: `CommandBatch.flush` runs them before its own writes, whatever the number of meetings. The parts
        touch different rows: a launch, occurrence or person is either put or dropped."""
        conferences = [self.meetings[m].conference for m in sorted(self._conferences)]
        conference_rows = [tuple(getattr(row, n) for n in CONFERENCE_COLUMNS) for row in conferences if row is not None]
        launches = [tuple(getattr(self._launches[k], n) for n in LAUNCH_COLUMNS) for k in sorted(self._launches)]
        people_gone = sorted(self._people_gone)
        people_added = sorted(self._people_added)
        parts = {
            "conferences_put": bulk.statement(UPSERT_CONFERENCES, conference_rows, len(CONFERENCE_COLUMNS)),
            "launches_gone": bulk.statement(DROP_LAUNCHES, [(k,) for k in sorted(self._launches_gone)], 1),
            "launches_put": bulk.statement(UPSERT_LAUNCHES, launches, len(LAUNCH_COLUMNS)),
            "snapshots_put": bulk.statement(
                UPDATE_SNAPSHOTS, [(m, *self._snapshots[m]) for m in sorted(self._snapshots)], len(SNAPSHOT_COLUMNS)
            ),
            "occurrences_gone": bulk.statement(DROP_OCCURRENCES, [(k,) for k in sorted(self._occurrences_gone)], 1),
            "occurrences_put": bulk.statement(
                UPSERT_OCCURRENCES,
                [(k, *self._occurrences[k]) for k in sorted(self._occurrences)],
                len(OCCURRENCE_COLUMNS),
            ),
            "people_gone": bulk.statement(DROP_PEOPLE, people_gone, len(PEOPLE_COLUMNS)),
            "people_put": bulk.statement(ADD_PEOPLE, people_added, len(PEOPLE_COLUMNS)),
        }
        self._conferences.clear()
        self._launches.clear()
        self._launches_gone.clear()
        self._snapshots.clear()
        self._occurrences.clear()
        self._occurrences_gone.clear()
        self._people_added.clear()
        self._people_gone.clear()
        return parts

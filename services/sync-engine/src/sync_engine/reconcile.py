"""Bring one meeting's derived state in line with its stored copies, deciding the commands that takes.

Runs inside a transaction holding the meeting's advisory lock (`lock_meetings`). It reads the meeting's
items, builds the view (`model.build_view`), and compares what should be with what was pushed:
* `shown` rows (what every user's TrueConf calendar shows) → calendar_upsert / calendar_cancel / calendar_delete,
* the `conferences` row → conference_upsert (create/update), invitations_sync, conference_delete,
* `launches` rows → planned / re-planned / removed (the scheduler launches them),
* `occurrences`, `meetings`, `meeting_people` for the API.
Nothing changes and nothing is sent when the meeting is already in line (a redelivered change is a no-op).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from sync_engine.config import EngineSettings
from sync_engine.ids import set_timestamp
from sync_engine.model import (
    Absent,
    DesiredConference,
    LinkedConference,
    MeetingView,
    OwnedConference,
    StoredItem,
    Untouched,
    Window,
    build_view,
    conference_upsert,
    desired_conference,
    invitee_messages,
    occurrence_message,
    shown_occurrences,
)
from sync_engine.outbox import CommandBatch
from trueconf.calendar.v1 import calendar_pb2, commands_pb2, common_pb2, sync_pb2

log = logging.getLogger(__name__)


def lock_key(meeting_id: str) -> int:
    """The pg advisory lock key of a meeting (63 bits of SHA-256)."""
    return int.from_bytes(hashlib.sha256(b"meeting:" + meeting_id.encode()).digest()[:8], "big") >> 1


async def lock_meetings(connection: asyncpg.Connection, meeting_ids: Iterable[str]) -> None:
    """Take the meetings' transaction-scoped locks in sorted order (so two transactions never deadlock)."""
    for meeting in sorted(set(meeting_ids)):
        await connection.execute("SELECT pg_advisory_xact_lock($1)", lock_key(meeting))


async def try_lock_meeting(connection: asyncpg.Connection, meeting_id: str) -> bool:
    return bool(await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", lock_key(meeting_id)))


@dataclass(frozen=True)
class Moment:
    """The time a decision is taken at, and the cache window it applies to."""

    now: datetime
    window: Window


def _serialize(message: object) -> bytes:
    serialize = getattr(message, "SerializeToString")  # noqa: B009 - protobuf messages only
    data: bytes = serialize(deterministic=True)
    return data


async def load_items(connection: asyncpg.Connection, meeting_id: str) -> list[StoredItem]:
    rows = await connection.fetch(
        "SELECT mailbox, item_id, kind, recurrence_id, deleted, was_organizer, event FROM items"
        " WHERE meeting_id = $1 ORDER BY mailbox, item_id",
        meeting_id,
    )
    items: list[StoredItem] = []
    for row in rows:
        event = None
        if row["event"] is not None:
            event = calendar_pb2.CalendarEvent.FromString(bytes(row["event"]))
        items.append(
            StoredItem(
                mailbox=row["mailbox"],
                item_id=row["item_id"],
                kind=int(row["kind"]),
                recurrence_id=row["recurrence_id"],
                deleted=bool(row["deleted"]),
                was_organizer=bool(row["was_organizer"]),
                event=event,
            )
        )
    return items


async def known_users(connection: asyncpg.Connection, people: set[str], settings: EngineSettings) -> set[str]:
    """The people who are TrueConf users we serve: synced mailboxes and calendarProviders[].users."""
    if not people:
        return set()
    rows = await connection.fetch("SELECT mailbox FROM mailboxes WHERE mailbox = ANY($1::text[])", sorted(people))
    return {str(r["mailbox"]) for r in rows} | (people & settings.configured_users)


async def reconcile_meeting(
    connection: asyncpg.Connection,
    settings: EngineSettings,
    meeting_id: str,
    batch: CommandBatch,
    moment: Moment,
) -> None:
    """Recompute one meeting (its lock must be held) and add the commands that takes to `batch`."""
    meeting_row = await connection.fetchrow("SELECT uid, snapshot FROM meetings WHERE meeting_id = $1", meeting_id)
    if meeting_row is None:
        return
    items = await load_items(connection, meeting_id)
    view = build_view(meeting_id, str(meeting_row["uid"]), items, moment.window)
    known = await known_users(connection, view.people, settings)
    desired = desired_conference(view, settings, moment.now)
    await _reconcile_launches(connection, settings, view, desired, moment)
    link = await _reconcile_conference(connection, settings, view, desired, batch)
    await _reconcile_shown(connection, view, known, link, batch)
    await _store_meeting(connection, view, link, batch.cause.created_at)


# ---------------------------------------------------------------------------------------------------------
# What users see
# ---------------------------------------------------------------------------------------------------------


async def _reconcile_shown(
    connection: asyncpg.Connection,
    view: MeetingView,
    known: set[str],
    link: common_pb2.ConferenceLink | None,
    batch: CommandBatch,
) -> None:
    desired = shown_occurrences(view, known, link)
    spans = {core.id: (core.start, core.end) for core in view.occurrences}
    rows = await connection.fetch(
        "SELECT user_email, occurrence_id, cancelled, occurrence FROM shown WHERE meeting_id = $1"
        " ORDER BY user_email, occurrence_id",
        view.meeting_id,
    )
    current: dict[tuple[str, str], tuple[bool, calendar_pb2.Occurrence]] = {}
    for row in rows:
        occurrence = calendar_pb2.Occurrence.FromString(bytes(row["occurrence"]))
        occurrence.ClearField("updated_at")
        current[(row["user_email"], row["occurrence_id"])] = (bool(row["cancelled"]), occurrence)
    for key in sorted(desired):
        user, occurrence_id = key
        wanted = desired[key]
        start, end = spans[occurrence_id]
        existing = current.get(key)
        if existing is None:
            batch.upsert(user, wanted, start, end)
            continue
        was_cancelled, shown = existing
        if shown == wanted:
            continue
        if wanted.cancelled and not was_cancelled:
            batch.cancel(user, wanted, start, end)
        else:
            batch.upsert(user, wanted, start, end)
    for key in sorted(set(current) - set(desired)):
        user, occurrence_id = key
        batch.delete(user, occurrence_id, view.meeting_id)


# ---------------------------------------------------------------------------------------------------------
# The conference
# ---------------------------------------------------------------------------------------------------------


async def next_conference_command(connection: asyncpg.Connection, meeting_id: str) -> int:
    value = await connection.fetchval(
        "UPDATE conferences SET commands = commands + 1 WHERE meeting_id = $1 RETURNING commands", meeting_id
    )
    if value is None:
        raise LookupError(f"meeting {meeting_id} has no conference row")
    return int(value)


def _upsert_command(upsert: commands_pb2.ConferenceUpsert) -> commands_pb2.TcsCommand:
    command = commands_pb2.TcsCommand()
    command.conference_upsert.CopyFrom(upsert)
    return command


def delete_command(meeting_id: str, conference_id: str) -> commands_pb2.TcsCommand:
    command = commands_pb2.TcsCommand()
    command.conference_delete.meeting_id = meeting_id
    command.conference_delete.conference_id = conference_id
    return command


def _comparable(upsert: commands_pb2.ConferenceUpsert | None) -> bytes:
    """What decides whether a conference must be updated: everything but its id and the invitations."""
    if upsert is None:
        return b""
    copy = commands_pb2.ConferenceUpsert()
    copy.CopyFrom(upsert)
    copy.conference_id = ""
    copy.ClearField("invitations")
    copy.sync_invitations = False
    return _serialize(copy)


def _invitations_blob(invitations: Iterable[tuple[str, str]]) -> bytes:
    message = commands_pb2.InvitationsSync(invitations=invitee_messages(invitations))
    return _serialize(message)


async def _reconcile_conference(
    connection: asyncpg.Connection,
    settings: EngineSettings,
    view: MeetingView,
    desired: DesiredConference,
    batch: CommandBatch,
) -> common_pb2.ConferenceLink | None:
    meeting = view.meeting_id
    row = await connection.fetchrow("SELECT * FROM conferences WHERE meeting_id = $1", meeting)
    state = str(row["state"]) if row is not None else ""
    linked = bool(row["linked"]) if row is not None else False
    owned_live = row is not None and not linked and state in ("pending", "created")
    syncing = settings.sync_conference_participants and not settings.temporal_conf_participants_mode

    if (
        isinstance(desired, LinkedConference)
        and row is not None
        and not linked
        and desired.conference_id == row["conference_id"]
    ):
        desired = Untouched()  # the join link of our own conference, written back into the meeting

    if isinstance(desired, Untouched):
        pass
    elif isinstance(desired, Absent):
        if owned_live:
            assert row is not None
            counter = await next_conference_command(connection, meeting)
            batch.conference(
                "conference_delete",
                str(row["server_id"]),
                meeting,
                counter,
                delete_command(meeting, str(row["conference_id"])),
            )
            await connection.execute(
                "UPDATE conferences SET state = 'deleted', repoint_at = NULL WHERE meeting_id = $1", meeting
            )
        elif row is not None and linked and state == "created":
            await connection.execute(
                "UPDATE conferences SET state = 'deleted', repoint_at = NULL WHERE meeting_id = $1", meeting
            )
    elif isinstance(desired, LinkedConference):
        if owned_live:
            assert row is not None
            counter = await next_conference_command(connection, meeting)
            batch.conference(
                "conference_delete",
                str(row["server_id"]),
                meeting,
                counter,
                delete_command(meeting, str(row["conference_id"])),
            )
        await _ensure_row(connection, meeting, desired.server_id)
        invitations = _invitations_blob(desired.invitations)
        await connection.execute(
            "UPDATE conferences SET state = 'created', linked = true, server_id = $2, conference_id = $3,"
            " url = $4, topic = '', owner = '', sent = NULL, run_invitations = $5, repoint_at = NULL,"
            " last_error = '' WHERE meeting_id = $1",
            meeting,
            desired.server_id,
            desired.conference_id,
            desired.url,
            invitations,
        )
        sent_invitations = bytes(row["sent_invitations"]) if row is not None and row["sent_invitations"] else None
        if syncing and (sent_invitations != invitations or not linked):
            counter = await next_conference_command(connection, meeting)
            command = commands_pb2.TcsCommand()
            command.invitations_sync.meeting_id = meeting
            command.invitations_sync.conference_id = desired.conference_id
            command.invitations_sync.invitations.extend(invitee_messages(desired.invitations))
            batch.conference("invitations_sync", desired.server_id, meeting, counter, command)
            await connection.execute(
                "UPDATE conferences SET sent_invitations = $2 WHERE meeting_id = $1", meeting, invitations
            )
    else:
        await _reconcile_owned(connection, settings, view, desired, row, batch, syncing)

    current = await connection.fetchrow(
        "SELECT state, conference_id, url FROM conferences WHERE meeting_id = $1", meeting
    )
    if current is None or current["state"] != "created" or not current["conference_id"]:
        return None
    return common_pb2.ConferenceLink(id=str(current["conference_id"]), url=str(current["url"]))


async def _ensure_row(connection: asyncpg.Connection, meeting_id: str, server_id: str) -> None:
    await connection.execute(
        "INSERT INTO conferences (meeting_id, server_id, state) VALUES ($1, $2, 'pending')"
        " ON CONFLICT (meeting_id) DO NOTHING",
        meeting_id,
        server_id,
    )


async def _reconcile_owned(
    connection: asyncpg.Connection,
    settings: EngineSettings,
    view: MeetingView,
    desired: OwnedConference,
    row: asyncpg.Record | None,
    batch: CommandBatch,
    syncing: bool,
) -> None:
    meeting = view.meeting_id
    state = str(row["state"]) if row is not None else ""
    linked = bool(row["linked"]) if row is not None else False
    sent = (
        commands_pb2.ConferenceUpsert.FromString(bytes(row["sent"]))
        if row is not None and row["sent"] is not None
        else None
    )
    create = conference_upsert(meeting, desired, "", settings)
    invitations = _invitations_blob(desired.invitations)
    await connection.execute(
        "UPDATE conferences SET run_invitations = $2, repoint_at = $3 WHERE meeting_id = $1",
        meeting,
        invitations,
        desired.repoint_at,
    )
    failed_and_changed = state == "failed" and (sent is None or _serialize(create) != _serialize(sent))
    if row is None or linked or state == "deleted" or failed_and_changed:
        if row is None:
            await _ensure_row(connection, meeting, desired.server_id)
        counter = await next_conference_command(connection, meeting)
        batch.conference("conference_upsert", desired.server_id, meeting, counter, _upsert_command(create))
        await connection.execute(
            "UPDATE conferences SET state = 'pending', linked = false, server_id = $2, conference_id = '',"
            " url = '', topic = $3, owner = $4, sent = $5, sent_invitations = $6, run_invitations = $7,"
            " repoint_at = $8, last_error = '' WHERE meeting_id = $1",
            meeting,
            desired.server_id,
            desired.topic,
            desired.owner,
            _serialize(create),
            invitations if syncing else None,
            invitations,
            desired.repoint_at,
        )
        return
    assert row is not None
    if state != "created":
        return  # creation in flight (or failed with nothing new to try): the result decides what follows
    conference_id = str(row["conference_id"])
    server_id = str(row["server_id"])
    sent_invitations = bytes(row["sent_invitations"]) if row["sent_invitations"] is not None else None
    if _comparable(create) != _comparable(sent):
        update = conference_upsert(meeting, desired, conference_id, settings)
        counter = await next_conference_command(connection, meeting)
        batch.conference("conference_upsert", server_id, meeting, counter, _upsert_command(update))
        await connection.execute(
            "UPDATE conferences SET topic = $2, owner = $3, sent = $4, sent_invitations = $5 WHERE meeting_id = $1",
            meeting,
            desired.topic,
            desired.owner,
            _serialize(create),
            invitations if syncing else sent_invitations,
        )
    elif syncing and sent_invitations != invitations:
        counter = await next_conference_command(connection, meeting)
        command = commands_pb2.TcsCommand()
        command.invitations_sync.meeting_id = meeting
        command.invitations_sync.conference_id = conference_id
        command.invitations_sync.invitations.extend(invitee_messages(desired.invitations))
        batch.conference("invitations_sync", server_id, meeting, counter, command)
        await connection.execute(
            "UPDATE conferences SET sent_invitations = $2 WHERE meeting_id = $1", meeting, invitations
        )


# ---------------------------------------------------------------------------------------------------------
# Launches
# ---------------------------------------------------------------------------------------------------------


async def _reconcile_launches(
    connection: asyncpg.Connection,
    settings: EngineSettings,
    view: MeetingView,
    desired: DesiredConference,
    moment: Moment,
) -> None:
    if isinstance(desired, Untouched):
        return
    wanted: dict[str, tuple[datetime, datetime]] = {}
    if settings.launch_conference and isinstance(desired, (OwnedConference, LinkedConference)):
        wanted = {
            core.id: (core.start, core.end) for core in view.occurrences if not core.cancelled and core.end > moment.now
        }
    rows = await connection.fetch(
        "SELECT occurrence_id, start_at, end_at, state FROM launches WHERE meeting_id = $1 ORDER BY occurrence_id",
        view.meeting_id,
    )
    existing = {str(r["occurrence_id"]): r for r in rows}
    for occurrence_id in sorted(wanted):
        start, end = wanted[occurrence_id]
        row = existing.get(occurrence_id)
        if row is None:
            await connection.execute(
                "INSERT INTO launches (occurrence_id, meeting_id, start_at, end_at, state)"
                " VALUES ($1, $2, $3, $4, 'planned')",
                occurrence_id,
                view.meeting_id,
                start,
                end,
            )
        elif row["start_at"] != start:
            # Moved: planned again at the new time (also after it was launched at the old one).
            await connection.execute(
                "UPDATE launches SET start_at = $2, end_at = $3, state = 'planned', launched_at = NULL,"
                " command_id = NULL WHERE occurrence_id = $1",
                occurrence_id,
                start,
                end,
            )
        elif row["end_at"] != end:
            await connection.execute("UPDATE launches SET end_at = $2 WHERE occurrence_id = $1", occurrence_id, end)
    for occurrence_id in sorted(set(existing) - set(wanted)):
        await connection.execute("DELETE FROM launches WHERE occurrence_id = $1 AND state = 'planned'", occurrence_id)


# ---------------------------------------------------------------------------------------------------------
# The meeting as the API shows it
# ---------------------------------------------------------------------------------------------------------


def _snapshot(view: MeetingView, link: common_pb2.ConferenceLink | None) -> sync_pb2.Meeting:
    meeting = sync_pb2.Meeting(
        meeting_id=view.meeting_id,
        uid=view.uid,
        time_zone=view.time_zone,
        cancelled=view.cancelled,
        private=view.private,
        mailboxes=sorted(view.mailboxes),
    )
    meeting.organizer.CopyFrom(view.organizer)
    meeting.attendees.extend(view.attendees)
    base = view.base
    if base is not None:
        meeting.subject = base.subject
        if base.HasField("start"):
            meeting.start.CopyFrom(base.start)
        if base.HasField("end"):
            meeting.end.CopyFrom(base.end)
        if base.HasField("recurrence"):
            meeting.recurrence.CopyFrom(base.recurrence)
        if base.HasField("conference"):
            meeting.conference_spec.CopyFrom(base.conference)
    if link is not None:
        meeting.conference.CopyFrom(link)
    return meeting


async def _store_meeting(
    connection: asyncpg.Connection,
    view: MeetingView,
    link: common_pb2.ConferenceLink | None,
    changed_at: datetime,
) -> None:
    snapshot = _serialize(_snapshot(view, link))
    await connection.execute(
        "UPDATE meetings SET snapshot = $2, cancelled = $3, recurring = $4, updated_at = $5"
        " WHERE meeting_id = $1 AND snapshot IS DISTINCT FROM $2",
        view.meeting_id,
        snapshot,
        view.cancelled,
        view.recurring,
        changed_at,
    )
    # Occurrences in the window, as the organizer sees them.
    rows = await connection.fetch(
        "SELECT occurrence_id, occurrence FROM occurrences WHERE meeting_id = $1", view.meeting_id
    )
    current = {str(r["occurrence_id"]): bytes(r["occurrence"]) for r in rows}
    wanted: dict[str, tuple[bytes, datetime, datetime, datetime, bool]] = {}
    for core in view.occurrences:
        message = occurrence_message(view, core, common_pb2.RESPONSE_TYPE_ORGANIZER, link)
        wanted[core.id] = (_serialize(message), core.original_start, core.start, core.end, message.cancelled)
    for occurrence_id in sorted(wanted):
        data, original_start, start, end, cancelled = wanted[occurrence_id]
        if current.get(occurrence_id) == data:
            continue
        await connection.execute(
            "INSERT INTO occurrences (occurrence_id, meeting_id, original_start, start_at, end_at, cancelled,"
            " occurrence) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (occurrence_id) DO UPDATE SET"
            " original_start = EXCLUDED.original_start, start_at = EXCLUDED.start_at, end_at = EXCLUDED.end_at,"
            " cancelled = EXCLUDED.cancelled, occurrence = EXCLUDED.occurrence",
            occurrence_id,
            view.meeting_id,
            original_start,
            start,
            end,
            cancelled,
            data,
        )
    stale = sorted(set(current) - set(wanted))
    if stale:
        await connection.execute("DELETE FROM occurrences WHERE occurrence_id = ANY($1::text[])", stale)
    # Who takes part (to find a user's meetings when their mailbox first appears).
    people = view.people
    existing = {
        str(r["email"])
        for r in await connection.fetch("SELECT email FROM meeting_people WHERE meeting_id = $1", view.meeting_id)
    }
    for email in sorted(people - existing):
        await connection.execute(
            "INSERT INTO meeting_people (meeting_id, email) VALUES ($1, $2)", view.meeting_id, email
        )
    gone = sorted(existing - people)
    if gone:
        await connection.execute(
            "DELETE FROM meeting_people WHERE meeting_id = $1 AND email = ANY($2::text[])", view.meeting_id, gone
        )


def run_command(
    meeting_id: str, conference_id: str, occurrence_start: datetime, invitations: bytes | None, temporal: bool
) -> commands_pb2.TcsCommand:
    command = commands_pb2.TcsCommand()
    run = command.conference_run
    run.meeting_id = meeting_id
    run.conference_id = conference_id
    set_timestamp(run.occurrence_start, occurrence_start)
    if temporal and invitations:
        run.invitations.extend(commands_pb2.InvitationsSync.FromString(invitations).invitations)
    return command

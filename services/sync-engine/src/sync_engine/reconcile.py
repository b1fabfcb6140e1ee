"""Bring one meeting's derived state in line with its stored copies, deciding the commands that takes.

Runs inside a transaction holding the meeting's advisory lock (`lock_meetings`), on the meeting's rows loaded in
a `Workspace` (written back with the commands: `take_writes`). It builds the view from the stored items
(`model.build_view`) and compares what should be with what was pushed:
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

from sync_engine.ids import set_timestamp
from sync_engine.model import (
    Absent,
    DesiredConference,
    LinkedConference,
    MeetingView,
    OccurrenceMessages,
    OwnedConference,
    Untouched,
    Window,
    build_view,
    conference_upsert,
    desired_conference,
    invitee_messages,
    shown_occurrences,
)
from sync_engine.outbox import CommandBatch
from sync_engine.settings import EngineSettings
from sync_engine.workspace import LaunchRow, MeetingRows, ShownRow, Workspace
from trueconf.calendar.v1 import commands_pb2, common_pb2, sync_pb2

log = logging.getLogger(__name__)


def lock_key(meeting_id: str) -> int:
    """The pg advisory lock key of a meeting (63 bits of SHA-256)."""
    return int.from_bytes(hashlib.sha256(b"meeting:" + meeting_id.encode()).digest()[:8], "big") >> 1


async def lock_meetings(connection: asyncpg.Connection, meeting_ids: Iterable[str]) -> None:
    """Take the meetings' transaction-scoped locks in the order of their keys (two transactions never deadlock)."""
    keys = sorted({lock_key(meeting) for meeting in meeting_ids})
    if len(keys) == 1:
        await connection.execute("SELECT pg_advisory_xact_lock($1)", keys[0])
    elif keys:
        await connection.execute(
            "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest($1::bigint[]) AS k ORDER BY 1) AS ordered",
            keys,
        )


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


async def reconcile_meeting(
    workspace: Workspace,
    settings: EngineSettings,
    meeting_id: str,
    batch: CommandBatch,
    moment: Moment,
) -> None:
    """Recompute one loaded meeting (its lock must be held) and add the commands that takes to `batch`."""
    rows = workspace.meetings.get(meeting_id)
    if rows is None:
        return
    # Seats (docs/architecture.md §5.5): the copies of a mailbox without a seat count for nothing, as if it were
    # not synced. A meeting whose organizer's copy is such a copy is held: its conference is neither created,
    # changed nor deleted, and its launches are dropped, until the organizer holds a seat again.
    await workspace.look_up({item.mailbox for item in rows.items})
    seated_items = [item for item in rows.items if workspace.seated(item.mailbox)]
    held = any(item.was_organizer and not workspace.seated(item.mailbox) for item in rows.items)
    view = build_view(meeting_id, rows.uid, seated_items, moment.window)
    known = await workspace.known_users(view.people)
    desired: DesiredConference = Untouched() if held else desired_conference(view, settings, moment.now)
    if held:
        _drop_pending_launches(workspace, rows)
    else:
        _reconcile_launches(workspace, rows, settings, view, desired, moment)
    link = _reconcile_conference(workspace, rows, settings, view, desired, batch)
    messages = OccurrenceMessages(view, link)
    _reconcile_shown(rows, view, known, messages, batch)
    _store_meeting(workspace, rows, view, messages, batch.cause.created_at)


# ---------------------------------------------------------------------------------------------------------
# What users see
# ---------------------------------------------------------------------------------------------------------


def _reconcile_shown(
    rows: MeetingRows,
    view: MeetingView,
    known: set[str],
    messages: OccurrenceMessages,
    batch: CommandBatch,
) -> None:
    desired = shown_occurrences(view, known, messages.conference, messages)
    spans = {core.id: (core.start, core.end) for core in view.occurrences}
    current = rows.shown
    for key in sorted(desired):
        user, occurrence_id = key
        wanted = desired[key]
        start, end = spans[occurrence_id]
        existing = current.get(key)
        if existing is None:
            batch.upsert(user, wanted, start, end)
        elif existing.occurrence == wanted:
            continue
        elif wanted.cancelled and not existing.cancelled:
            batch.cancel(user, wanted, start, end)
        else:
            batch.upsert(user, wanted, start, end)
        current[key] = ShownRow(wanted.cancelled, wanted)
    for key in sorted(set(current) - set(desired)):
        user, occurrence_id = key
        batch.delete(user, occurrence_id, view.meeting_id)
        del current[key]


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


def _invitations_command(
    meeting_id: str, conference_id: str, invitations: Iterable[tuple[str, str]]
) -> commands_pb2.TcsCommand:
    command = commands_pb2.TcsCommand()
    command.invitations_sync.meeting_id = meeting_id
    command.invitations_sync.conference_id = conference_id
    command.invitations_sync.invitations.extend(invitee_messages(invitations))
    return command


def _reconcile_conference(
    workspace: Workspace,
    rows: MeetingRows,
    settings: EngineSettings,
    view: MeetingView,
    desired: DesiredConference,
    batch: CommandBatch,
) -> common_pb2.ConferenceLink | None:
    meeting = view.meeting_id
    row = rows.conference
    state = row.state if row is not None else ""
    linked = row.linked if row is not None else False
    owned_live = row is not None and not linked and state in ("pending", "created")
    syncing = settings.sync_conference_participants and not settings.temporal_conf_participants_mode

    if (
        isinstance(desired, LinkedConference)
        and row is not None
        and not linked
        and desired.conference_id == row.conference_id
    ):
        desired = Untouched()  # the join link of our own conference, written back into the meeting

    if isinstance(desired, Untouched):
        pass
    elif isinstance(desired, Absent):
        if row is not None and (owned_live or (linked and state == "created")):
            if owned_live:
                counter = workspace.next_command(rows)
                batch.conference(
                    "conference_delete", row.server_id, meeting, counter, delete_command(meeting, row.conference_id)
                )
            row.state, row.repoint_at = "deleted", None
            workspace.conference_changed(rows)
    elif isinstance(desired, LinkedConference):
        sent_invitations = row.sent_invitations if row is not None else None
        if owned_live:
            assert row is not None
            counter = workspace.next_command(rows)
            batch.conference(
                "conference_delete", row.server_id, meeting, counter, delete_command(meeting, row.conference_id)
            )
        conference = workspace.ensure_conference(rows, desired.server_id)
        invitations = _invitations_blob(desired.invitations)
        conference.state, conference.linked, conference.server_id = "created", True, desired.server_id
        conference.conference_id, conference.url = desired.conference_id, desired.url
        conference.topic, conference.owner, conference.sent = "", "", None
        conference.run_invitations, conference.repoint_at, conference.last_error = invitations, None, ""
        workspace.conference_changed(rows)
        if syncing and (sent_invitations != invitations or not linked):
            counter = workspace.next_command(rows)
            command = _invitations_command(meeting, desired.conference_id, desired.invitations)
            batch.conference("invitations_sync", desired.server_id, meeting, counter, command)
            conference.sent_invitations = invitations
    else:
        _reconcile_owned(workspace, rows, settings, desired, batch, syncing)

    current = rows.conference
    if current is None or current.state != "created" or not current.conference_id:
        return None
    return common_pb2.ConferenceLink(id=current.conference_id, url=current.url)


def _reconcile_owned(
    workspace: Workspace,
    rows: MeetingRows,
    settings: EngineSettings,
    desired: OwnedConference,
    batch: CommandBatch,
    syncing: bool,
) -> None:
    meeting = rows.meeting_id
    row = rows.conference
    state = row.state if row is not None else ""
    linked = row.linked if row is not None else False
    sent = commands_pb2.ConferenceUpsert.FromString(row.sent) if row is not None and row.sent is not None else None
    create = conference_upsert(meeting, desired, "", settings)
    invitations = _invitations_blob(desired.invitations)
    if row is not None:
        row.run_invitations, row.repoint_at = invitations, desired.repoint_at
        workspace.conference_changed(rows)
    failed_and_changed = state == "failed" and (sent is None or _serialize(create) != _serialize(sent))
    if row is None or linked or state == "deleted" or failed_and_changed:
        conference = workspace.ensure_conference(rows, desired.server_id)
        counter = workspace.next_command(rows)
        batch.conference("conference_upsert", desired.server_id, meeting, counter, _upsert_command(create))
        conference.state, conference.linked, conference.server_id = "pending", False, desired.server_id
        conference.conference_id, conference.url = "", ""
        conference.topic, conference.owner, conference.sent = desired.topic, desired.owner, _serialize(create)
        conference.sent_invitations = invitations if syncing else None
        conference.run_invitations, conference.repoint_at, conference.last_error = invitations, desired.repoint_at, ""
        workspace.conference_changed(rows)
        return
    if state != "created":
        return  # creation in flight (or failed with nothing new to try): the result decides what follows
    if _comparable(create) != _comparable(sent):
        update = conference_upsert(meeting, desired, row.conference_id, settings)
        counter = workspace.next_command(rows)
        batch.conference("conference_upsert", row.server_id, meeting, counter, _upsert_command(update))
        row.topic, row.owner, row.sent = desired.topic, desired.owner, _serialize(create)
        if syncing:
            row.sent_invitations = invitations
    elif syncing and row.sent_invitations != invitations:
        counter = workspace.next_command(rows)
        command = _invitations_command(meeting, row.conference_id, desired.invitations)
        batch.conference("invitations_sync", row.server_id, meeting, counter, command)
        row.sent_invitations = invitations


# ---------------------------------------------------------------------------------------------------------
# Launches
# ---------------------------------------------------------------------------------------------------------


def _reconcile_launches(
    workspace: Workspace,
    rows: MeetingRows,
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
    existing = dict(rows.launches)
    for occurrence_id in sorted(wanted):
        start, end = wanted[occurrence_id]
        row = existing.get(occurrence_id)
        if row is None:
            workspace.put_launch(rows, LaunchRow(occurrence_id, view.meeting_id, start, end, "planned"))
        elif row.start_at != start:
            # Moved: planned again at the new time (also after it was launched at the old one).
            moved = LaunchRow(occurrence_id, row.meeting_id, start, end, "planned")
            workspace.put_launch(rows, moved)
        elif row.end_at != end:
            row.end_at = end
            workspace.put_launch(rows, row)
    for occurrence_id in sorted(set(existing) - set(wanted)):
        if existing[occurrence_id].state == "planned":
            workspace.drop_launch(rows, occurrence_id)


def _drop_pending_launches(workspace: Workspace, rows: MeetingRows) -> None:
    for occurrence_id, launch in sorted(rows.launches.items()):
        if launch.state in ("planned", "missed"):
            workspace.drop_launch(rows, occurrence_id)


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


def _store_meeting(
    workspace: Workspace,
    rows: MeetingRows,
    view: MeetingView,
    messages: OccurrenceMessages,
    changed_at: datetime,
) -> None:
    snapshot = _serialize(_snapshot(view, messages.conference))
    if rows.snapshot != snapshot:
        workspace.put_snapshot(rows, snapshot, view.cancelled, view.recurring, changed_at)
    # Occurrences in the window, as the organizer sees them.
    wanted: set[str] = set()
    for core in view.occurrences:
        message = messages.get(core, common_pb2.RESPONSE_TYPE_ORGANIZER)
        data = _serialize(message)
        wanted.add(core.id)
        if rows.occurrences.get(core.id) != data:
            workspace.put_occurrence(
                rows, core.id, (core.original_start, core.start, core.end), message.cancelled, data
            )
    for occurrence_id in sorted(set(rows.occurrences) - wanted):
        workspace.drop_occurrence(rows, occurrence_id)
    # Who takes part (to find a user's meetings when their mailbox first appears).
    workspace.set_people(rows, view.people)


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

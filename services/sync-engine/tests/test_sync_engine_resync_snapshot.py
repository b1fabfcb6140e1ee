"""A whole-mailbox re-read as a snapshot (issue #15, docs/architecture.md §12): ews-ingest frames it with
MAILBOX_RESYNC_BEGIN ... END; on END the engine deletes what the re-read did not bring back, as a deletion would,
and nothing else."""

from __future__ import annotations

from datetime import datetime, timedelta

from sync_engine_testkit import ANNA, BOB, PROVIDER, T0, Harness, attendee, event, full_spec, mid

from sync_engine.ids import to_timestamp
from trueconf.calendar.v1 import calendar_pb2, common_pb2

ACCEPT = common_pb2.RESPONSE_TYPE_ACCEPT
START = T0 + timedelta(hours=3)
CONFERENCE_ID = "700100"
WINDOW_START = T0 - timedelta(days=30)
OUTSIDER = "carol@elsewhere.example"


def marker(
    harness: Harness,
    kind: int,
    token: str,
    *,
    sequence: int | None = None,
    kept: tuple[str, ...] = (),
    suffix: str = "",
) -> calendar_pb2.CalendarChange:
    name = "begin" if kind == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN else "end"
    change = calendar_pb2.CalendarChange(
        change_id=f"{ANNA}/resync-{name}/{token}{suffix}",
        provider=PROVIDER,
        mailbox=ANNA,
        sequence=sequence if sequence is not None else harness.mailboxes.next_sequence(ANNA),
        type=calendar_pb2.ChangeType.ValueType(kind),
        origin=calendar_pb2.CHANGE_ORIGIN_RESYNC,
    )
    change.resync.token = token
    change.observed_at.CopyFrom(to_timestamp(harness.mailboxes.observed_at))
    if kind == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END:
        change.resync.window_start.CopyFrom(to_timestamp(WINDOW_START))
        change.resync.kept_item_ids.extend(kept)
    return change


def meeting(uid: str, start: datetime = START, **changes: object) -> calendar_pb2.CalendarEvent:
    return event(uid, start=start, duration=timedelta(hours=1), attendees=[attendee(BOB, ACCEPT)], **changes)  # type: ignore[arg-type]


async def shown(harness: Harness, user: str) -> list[str]:
    """The meetings the user sees (not cancelled)."""
    return sorted(o.meeting_id for o in await harness.events(user) if not o.cancelled)


async def cancelled(harness: Harness, user: str) -> list[str]:
    return sorted(o.meeting_id for o in await harness.events(user) if o.cancelled)


async def live_items(harness: Harness) -> set[str]:
    async with harness.connect() as connection:
        rows = await connection.fetch("SELECT item_id FROM items WHERE mailbox = $1 AND NOT deleted", ANNA)
    return {str(r["item_id"]) for r in rows}


async def test_the_end_of_a_re_read_deletes_what_it_did_not_bring_back_and_nothing_else(harness: Harness) -> None:
    await harness.start_engine()
    # Anna's mailbox: a meeting with a conference (deleted in Exchange during the gap), one that comes back,
    # one quarantined by ews-ingest (named in END), one that ended before the window (skipped by the re-read).
    await harness.upsert(ANNA, meeting("gone", conference=full_spec()))
    [create] = await harness.wait_command("conference_upsert", 1, meeting_id=mid("gone"))
    await harness.result(create, conference_id=CONFERENCE_ID)
    await harness.wait_command("calendar_upsert", 2, occurrence__conference__id=CONFERENCE_ID)
    stays = await harness.upsert(ANNA, meeting("stays"))
    unreadable = await harness.upsert(ANNA, meeting("unreadable", start=START + timedelta(days=1)))
    old = await harness.upsert(ANNA, meeting("old", start=WINDOW_START - timedelta(days=20)))
    later = await harness.upsert(ANNA, meeting("changed-during-the-re-read", start=START + timedelta(days=2)))
    # An invitation from outside in Anna's calendar, also deleted during the gap: it leaves her calendar.
    invitation = event(
        "invitation", start=START, organizer=OUTSIDER, attendees=[attendee(ANNA, ACCEPT)], my_response=ACCEPT
    )
    await harness.upsert(ANNA, invitation)
    await harness.settle()
    everything = sorted(mid(uid) for uid in ("gone", "stays", "unreadable", "old", "changed-during-the-re-read"))
    assert await shown(harness, ANNA) == sorted([*everything, mid("invitation")])
    assert await shown(harness, BOB) == everything

    # A re-read that never ends (ews-ingest stopped mid-way) deletes nothing.
    await harness.publish(marker(harness, calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN, "cut-short"))
    await harness.upsert(ANNA, meeting("stays"))
    await harness.settle()
    assert await shown(harness, ANNA) == sorted([*everything, mid("invitation")])
    assert await shown(harness, BOB) == everything

    # The real re-read: BEGIN, what Exchange still has, an ordinary change arriving meanwhile (after BEGIN, not
    # re-read), END naming the quarantined item.
    before = len(harness.commands)
    begin = marker(harness, calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN, "move-1")
    await harness.publish(begin)
    await harness.upsert(ANNA, meeting("stays"))
    await harness.upsert(ANNA, meeting("changed-during-the-re-read", start=START + timedelta(days=3), sequence=1))
    end = marker(harness, calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END, "move-1", kept=(unreadable.item_id,))
    await harness.publish(end)
    [delete] = await harness.wait_command("conference_delete", 1, conference_id=CONFERENCE_ID)
    assert delete.conference_delete.meeting_id == mid("gone")
    await harness.settle()
    remaining = sorted(mid(uid) for uid in ("stays", "unreadable", "old", "changed-during-the-re-read"))
    assert await shown(harness, ANNA) == remaining and await shown(harness, BOB) == remaining
    # Deleted exactly as a DELETE would: the organizer's meeting cancelled for both users (§5.2), its conference
    # deleted; the outside invitation gone from Anna's calendar; the meeting that came back unchanged pushed
    # nothing and no conference was created; the change after BEGIN was applied as usual.
    assert await cancelled(harness, ANNA) == [mid("gone")] and await cancelled(harness, BOB) == [mid("gone")]
    assert await live_items(harness) == {stays.item_id, unreadable.item_id, old.item_id, later.item_id}
    kinds = sorted(p.command.WhichOneof("command") or "" for p in harness.commands[before:])
    assert kinds == sorted(
        ["conference_delete", "calendar_cancel", "calendar_cancel", "calendar_delete", *["calendar_upsert"] * 2]
    ), kinds
    assert {c.calendar_cancel.occurrence_id for c in harness.of("calendar_cancel")} == {mid("gone")}
    async with harness.connect() as connection:
        row = await connection.fetchrow(
            "SELECT deleted, sequence FROM items WHERE mailbox = $1 AND item_id = $2",
            ANNA,
            harness.mailboxes.item_id(ANNA, "gone"),
        )
    assert row is not None and row["deleted"] and row["sequence"] == end.sequence

    # Replays (JetStream redelivery, duplicates past the dedupe window) and a stray END change nothing.
    after = len(harness.commands)
    await harness.publish(begin, {"Nats-Msg-Id": "replayed-begin"})
    await harness.publish(end, {"Nats-Msg-Id": "replayed-end"})
    await harness.publish(marker(harness, calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END, "cut-short"))
    await harness.settle()
    assert len(harness.commands) == after
    assert await shown(harness, ANNA) == remaining and await shown(harness, BOB) == remaining
    assert await live_items(harness) == {stays.item_id, unreadable.item_id, old.item_id, later.item_id}

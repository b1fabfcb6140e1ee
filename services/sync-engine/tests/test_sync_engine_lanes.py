"""A fetch of calendar changes is split by mailbox into lanes applied side by side (sync_engine.bus.CALENDAR_LANES):
each mailbox's changes stay in stream order, every change is applied once, meetings shared by mailboxes of both
lanes end as if applied one by one, and a batch adding a mailbox runs alone (the mailbox-set lock)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sync_engine_testkit import ANNA, BOB, PROVIDER, T0, Harness, as_attendee_copy, attendee, event, mid

from sync_engine.bus import CALENDAR_BATCH, CALENDAR_DURABLE, CALENDAR_LANES
from sync_engine.changes import MAILBOX_SET_LOCK_KEY
from tccal.bus import lane_of
from tccal.subjects import CALENDAR, calendar_subject
from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import calendar_pb2, commands_pb2, common_pb2

ACCEPT = common_pb2.RESPONSE_TYPE_ACCEPT


def mailboxes_in_every_lane(per_lane: int) -> list[str]:
    """Synced mailboxes, `per_lane` of them in each lane."""
    found: dict[int, list[str]] = {lane: [] for lane in range(CALENDAR_LANES)}
    n = 0
    while any(len(boxes) < per_lane for boxes in found.values()):
        mailbox = f"lane{n:03d}@example.com"
        lane = lane_of(calendar_subject(PROVIDER, mailbox), CALENDAR_LANES)
        if len(found[lane]) < per_lane:
            found[lane].append(mailbox)
        n += 1
    return [mailbox for lane in sorted(found) for mailbox in found[lane]]


async def test_lanes_keep_each_mailbox_in_order_and_apply_every_change_once(harness: Harness) -> None:
    assert CALENDAR_LANES > 1
    boxes = mailboxes_in_every_lane(3)
    lanes = {lane_of(calendar_subject(PROVIDER, box), CALENDAR_LANES) for box in boxes}
    assert lanes == set(range(CALENDAR_LANES))
    start = T0 + timedelta(days=1)
    published: list[calendar_pb2.CalendarChange] = []
    # Every mailbox organizes 4 meetings with the next mailbox (often in the other lane) as attendee; each meeting
    # is written 3 times by its organizer (versions 0..2), and answered by its attendee after the second version.
    for version in range(3):
        for i, organizer in enumerate(boxes):
            guest = boxes[(i + 1) % len(boxes)]
            for n in range(4):
                uid = f"lane-{organizer}-{n}"
                copy = event(
                    uid,
                    start=start + timedelta(hours=n),
                    organizer=organizer,
                    attendees=[attendee(guest)],
                    subject=f"{uid} v{version}",
                    sequence=version,
                )
                published.append(await harness.upsert(organizer, copy))
                if version == 1:
                    published.append(await harness.upsert(guest, as_attendee_copy(copy, ACCEPT)))
    assert len(published) <= CALENDAR_BATCH * CALENDAR_LANES  # one fetch: its lanes run side by side
    await harness.start_engine(calendarProviders=[_provider(boxes)])
    await harness.settle()

    info = await harness.bus.js.consumer_info(CALENDAR, CALENDAR_DURABLE)
    assert info.delivered.consumer_seq == len(published)  # each delivered once: no lane failed or was redelivered
    async with harness.connect() as connection:
        items = {
            (r["mailbox"], r["item_id"]): int(r["sequence"])
            for r in await connection.fetch("SELECT mailbox, item_id, sequence FROM items")
        }
        shown = {
            (r["user_email"], r["occurrence_id"]): calendar_pb2.Occurrence.FromString(bytes(r["occurrence"]))
            for r in await connection.fetch("SELECT user_email, occurrence_id, occurrence FROM shown")
        }
        seqs = {str(r["user_email"]): int(r["seq"]) for r in await connection.fetch("SELECT * FROM user_seq")}
    # Every item holds its mailbox's last change of it (per-mailbox order kept).
    last: dict[tuple[str, str], int] = {}
    for change in published:
        last[(change.mailbox, change.item_id)] = change.sequence
    assert items == last
    # Every user is shown the last version, with the attendee's answer, whichever lane applied what first.
    for i, organizer in enumerate(boxes):
        guest = boxes[(i + 1) % len(boxes)]
        for n in range(4):
            uid = f"lane-{organizer}-{n}"
            for user in (organizer, guest):
                occurrence = shown[(user, mid(uid))]
                assert occurrence.subject == f"{uid} v2"
                assert {a.person.email: a.response for a in occurrence.attendees} == {guest: ACCEPT}
    # Pushes: per user, seqs 1..n without a gap or a repeat, in the order they were published; ids unique.
    pushes: dict[str, list[int]] = {}
    for command in harness.commands:
        body = command.command.calendar_upsert
        if command.command.WhichOneof("command") == "calendar_upsert":
            pushes.setdefault(body.user, []).append(body.seq)
    assert set(pushes) == set(boxes)
    for user, sent in pushes.items():
        assert sent == list(range(1, seqs[user] + 1)), user
    ids = [c.command.command_id for c in harness.commands]
    assert len(ids) == len(set(ids))


async def test_a_batch_adding_a_mailbox_waits_for_batches_in_flight(harness: Harness) -> None:
    """The mailbox-set lock: a batch of known mailboxes takes it shared, one adding a mailbox exclusively."""
    running = await harness.start_engine(run=False)
    m = harness.mailboxes
    start = T0 + timedelta(days=1)
    assert await running.engine.apply_change(m.upsert(ANNA, event("set-1", start=start, attendees=[attendee(BOB)])))
    async with harness.connect() as side:
        # An in-flight batch of known mailboxes: it holds the lock shared; another such batch goes ahead.
        await side.execute("BEGIN")
        await side.execute("SELECT pg_advisory_xact_lock_shared($1)", MAILBOX_SET_LOCK_KEY)
        assert await running.engine.apply_change(m.upsert(ANNA, event("set-2", start=start)))
        # Bob's first change adds his mailbox: it waits until the in-flight batch ends.
        adding = asyncio.create_task(
            running.engine.apply_change(m.upsert(BOB, as_attendee_copy(event("set-3", start=start), ACCEPT)))
        )
        await _until_adding_waits(harness)
        assert not adding.done()
        await side.execute("COMMIT")
        assert await adding
    async with harness.connect() as connection:
        assert await connection.fetchval("SELECT count(*) FROM mailboxes WHERE mailbox = $1", BOB) == 1


async def test_a_mailbox_added_in_one_lane_sees_a_meeting_written_in_the_other(harness: Harness) -> None:
    """Carol (not configured) appears in one lane while the other writes a new meeting she attends. Held at their
    per-user seqs until both got there, without the mailbox-set lock the meeting's batch would not see her yet and
    hers would not see the meeting yet: she would never be shown it."""
    carol = "carol.lanes@example.com"
    running = await harness.start_engine(run=False, calendarProviders=[_provider([ANNA])])
    m = harness.mailboxes
    start = T0 + timedelta(days=1)
    assert await running.engine.apply_change(m.upsert(ANNA, event("warm", start=start)))
    meeting = m.upsert(ANNA, event("both", start=start, attendees=[attendee(carol)]))
    own = m.upsert(carol, event("own", start=start, organizer=carol))
    async with harness.connect() as side:
        await side.execute("BEGIN")
        await side.execute("SELECT 1 FROM user_seq WHERE user_email = $1 FOR UPDATE", ANNA)
        await side.execute("INSERT INTO user_seq (user_email, seq) VALUES ($1, 0)", carol)
        lanes = asyncio.gather(
            running.engine.apply_changes([(meeting, None)]), running.engine.apply_changes([(own, None)])
        )
        await _until_waiting(harness, 2)  # both batches wait: at a per-user seq, or one at the mailbox-set lock
        await side.execute("ROLLBACK")
        assert await lanes == [[True], [True]]
    async with harness.connect() as connection:
        rows = await connection.fetch("SELECT occurrence_id FROM shown WHERE user_email = $1", carol)
    assert sorted(str(r["occurrence_id"]) for r in rows) == sorted([mid("both"), mid("own")])
    kinds = [c.WhichOneof("command") for c in await _outbox(harness)]
    assert kinds.count("calendar_upsert") == 4  # Anna's "warm" and "both", Carol's "both" and "own"


def _provider(users: list[str]) -> dict[str, object]:
    return {"host": PROVIDER, "credentials": [{"login": "svc@example.com", "password": "plain"}], "users": users}


async def _until_adding_waits(harness: Harness) -> None:
    """Poll pg_locks (bounded) until a transaction waits for the mailbox-set lock exclusively."""
    async with harness.connect() as connection:

        async def one_waits() -> bool:
            waiting = await connection.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND mode = 'ExclusiveLock'"
                " AND ((classid::bigint << 32) | objid::bigint) = $1",
                MAILBOX_SET_LOCK_KEY,
            )
            return int(waiting) == 1

        await wait_for_async(one_waits, 20.0, 0.02, "a transaction waiting for the mailbox-set lock")


async def _until_waiting(harness: Harness, count: int) -> None:
    """Poll pg_locks (bounded) until `count` transactions of this database wait for a lock."""
    async with harness.connect() as connection:

        async def all_wait() -> bool:
            waiting = await connection.fetchval(
                "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE NOT l.granted AND a.datname = current_database()"
            )
            return int(waiting) == count

        await wait_for_async(all_wait, 20.0, 0.02, f"{count} transactions waiting for a lock")


async def _outbox(harness: Harness) -> list[commands_pb2.TcsCommand]:
    async with harness.connect() as connection:
        rows = await connection.fetch("SELECT payload FROM outbox WHERE kind LIKE 'calendar_%' ORDER BY id")
    return [commands_pb2.TcsCommand.FromString(bytes(r["payload"])) for r in rows]

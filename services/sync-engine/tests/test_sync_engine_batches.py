"""A fetched batch of calendar changes is applied in one transaction, in stream order, with the end state of
applying them one by one: stale changes inside the batch are recognised, an item created and deleted in one
batch is never shown, and every meeting is reconciled (and pushed) once per batch."""

from __future__ import annotations

from datetime import timedelta

from sync_engine_testkit import ANNA, BOB, T0, Harness, as_attendee_copy, attendee, event, mid

from trueconf.calendar.v1 import commands_pb2, common_pb2


async def test_batch_in_stream_order_with_the_end_state_of_one_by_one(harness: Harness) -> None:
    running = await harness.start_engine(run=False)
    m = harness.mailboxes
    start = T0 + timedelta(days=1)
    draft = event("b-1", start=start, attendees=[attendee(BOB)], subject="Draft")
    final = event("b-1", start=start, attendees=[attendee(BOB)], subject="Final", sequence=1)
    changes = [
        m.upsert(ANNA, draft),  # 1
        m.upsert(ANNA, final),  # 2
        m.upsert(ANNA, draft, sequence=1),  # stale: the item is at 2 already
        m.upsert(ANNA, event("b-2", start=start, subject="Gone at once")),  # 3
        m.delete(ANNA, "b-2"),  # 4: created and deleted in the same batch
        m.delete(ANNA, "b-never"),  # 5: a deletion of an item never seen leaves a tombstone ...
        m.upsert(ANNA, event("b-never", start=start, subject="Late"), sequence=5),  # ... so this older upsert is stale
        m.upsert(BOB, as_attendee_copy(final, common_pb2.RESPONSE_TYPE_ACCEPT)),  # Bob's first change
    ]
    applied = await running.engine.apply_changes([(change, None) for change in changes])
    assert applied == [True, True, False, True, True, True, False, True]

    async with harness.connect() as connection:
        items = {
            (r["mailbox"], r["item_id"]): r
            for r in await connection.fetch("SELECT mailbox, item_id, sequence, deleted, event FROM items")
        }
        outbox = await connection.fetch("SELECT kind, payload FROM outbox ORDER BY id")
    assert items[(ANNA, m.item_id(ANNA, "b-1"))]["sequence"] == 2
    gone = items[(ANNA, m.item_id(ANNA, "b-2"))]
    assert gone["deleted"] and gone["sequence"] == 4 and gone["event"] is not None  # a tombstone keeps its data
    never = items[(ANNA, m.item_id(ANNA, "b-never"))]
    assert never["deleted"] and never["sequence"] == 5 and never["event"] is None

    # b-1 reconciled once: one push of the final version to each of its people, nothing of b-2 or b-never
    pushed = [commands_pb2.TcsCommand.FromString(bytes(r["payload"])) for r in outbox]
    assert sorted((c.calendar_upsert.user, c.calendar_upsert.occurrence.subject) for c in pushed) == [
        (ANNA, "Final"),
        (BOB, "Final"),
    ]
    assert {c.calendar_upsert.occurrence.meeting_id for c in pushed} == {mid("b-1")}
    assert [c.calendar_upsert.seq for c in pushed] == [1, 1]

    # The same batch again (a redelivery after a crash before the ack): every change is stale, nothing is sent.
    assert await running.engine.apply_changes([(change, None) for change in changes]) == [False] * len(changes)
    async with harness.connect() as connection:
        assert await connection.fetchval("SELECT count(*) FROM outbox") == len(outbox)

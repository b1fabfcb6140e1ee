"""SyncService.ListEvents `incremental` (docs/bridge-protocol.md §6.2 "Changes since a sequence"): a caller holding a
user's window as of seq S gets only what changed since - the occurrences changed or added in the window, and the
ids deleted or moved out of it - read from `shown` and the outbox's calendar_delete commands; once the roll pruned
a removal the caller's S no longer reaches back to, the whole list, saying from which seq on changes are known."""

from __future__ import annotations

from datetime import datetime, timedelta

from sync_engine_testkit import ANNA, T0, Harness, event, mid

from sync_engine.calendar_history import prune_outbox
from sync_engine.ids import to_timestamp
from trueconf.calendar.v1 import sync_pb2

WINDOW = (T0 - timedelta(days=1), T0 + timedelta(days=10))


async def _list(harness: Harness, since_seq: int = 0, *, incremental: bool = False) -> sync_pb2.ListEventsResponse:
    assert harness.api is not None
    request = sync_pb2.ListEventsRequest(user=ANNA, since_seq=since_seq, incremental=incremental)
    getattr(request, "from").CopyFrom(to_timestamp(WINDOW[0]))
    request.to.CopyFrom(to_timestamp(WINDOW[1]))
    response: sync_pb2.ListEventsResponse = await harness.api.ListEvents(request)  # type: ignore[misc]
    return response


def _day(n: int, hours: int = 0) -> datetime:
    return T0 + timedelta(days=n, hours=hours)


async def test_incremental_list_has_only_the_changes_since_and_falls_back_when_history_was_pruned(
    harness: Harness,
) -> None:
    await harness.start_engine()
    for n in range(6):
        await harness.upsert(ANNA, event(f"uid-a{n}", start=_day(1, n)))
    await harness.wait_command("calendar_upsert", 6)
    await harness.settle()
    held = await _list(harness)
    assert len(held.occurrences) == 6 and not held.incremental and held.seq >= 6

    # a1 renamed, a2 moved out of the window (still in the cache window), a3 deleted, a6 new
    await harness.upsert(ANNA, event("uid-a1", start=_day(1, 1), subject="Renamed", sequence=1))
    await harness.upsert(ANNA, event("uid-a2", start=_day(20), sequence=1))
    await harness.delete(ANNA, "uid-a3")
    await harness.upsert(ANNA, event("uid-a6", start=_day(2)))
    await harness.wait_command("calendar_delete", 1)
    await harness.wait_command("calendar_upsert", 9)
    await harness.settle()

    changes = await _list(harness, held.seq, incremental=True)
    assert changes.incremental and not changes.unchanged and changes.seq == held.seq + 4
    assert {o.id: o.subject for o in changes.occurrences} == {
        mid("uid-a1"): "Renamed",
        mid("uid-a6"): "Marketing department meeting",
    }
    assert sorted(changes.removed) == sorted([mid("uid-a2"), mid("uid-a3")])
    # the same question without `incremental` is answered whole, as before
    whole = await _list(harness, held.seq)
    assert not whole.incremental and len(whole.occurrences) == 5 and list(whole.removed) == []
    assert (await _list(harness, changes.seq, incremental=True)).unchanged
    # a deleted meeting that comes back is a change, not a removal
    await harness.upsert(ANNA, event("uid-a3", start=_day(3), sequence=2))
    await harness.wait_command("calendar_upsert", 10)
    await harness.settle()
    back = await _list(harness, held.seq, incremental=True)
    assert mid("uid-a3") in {o.id for o in back.occurrences} and mid("uid-a3") not in back.removed

    # The roll prunes settled rows, a3's delete among them: since held.seq the removals are no longer all known.
    async with harness.connect() as connection:
        await connection.execute("UPDATE outbox SET status = 'ok'")
        await prune_outbox(connection, T0 + timedelta(days=3650))
        assert await connection.fetchval("SELECT count(*) FROM outbox") == 0
    fallback = await _list(harness, held.seq, incremental=True)
    assert not fallback.incremental and len(fallback.occurrences) == 6
    assert fallback.history_from == held.seq + 3  # a3's delete was the third push after held.seq
    # from that seq on the history is complete again
    later = await _list(harness, fallback.history_from, incremental=True)
    assert later.incremental and {o.id for o in later.occurrences} == {mid("uid-a6"), mid("uid-a3")}

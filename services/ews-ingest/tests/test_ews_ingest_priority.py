"""Live changes before bulk work: a new meeting in a mailbox already synced is published while a backlog of
whole-mailbox syncs (on-demand mailboxes, each read from scratch) is still being read, within the same
maxConcurrency. Ordering is asserted on the CALENDAR stream, never with times."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json

from ews_ingest_support import FAST, ChangeCollector, Outlook, StreamingIngest, new_mailboxes

from ews_ingest.exchange.slots import LIVE, ORDINARY, RankedSlots
from exchange_emulator.testing import EmulatorHandle
from tccal.subjects import subject_token

MEETINGS = 10  # each a page of its own (sync_page_size 1): a whole-mailbox sync is 11 SyncFolderItems pages


async def test_a_live_change_is_published_before_a_backlog_of_whole_mailbox_syncs_drains(
    emu: EmulatorHandle, collector: ChangeCollector, outlook: Outlook, streaming_ingest: StreamingIngest
) -> None:
    (owner,) = new_mailboxes(emu, "owner")
    domain = owner.split("@")[1]
    tuning = dataclasses.replace(FAST, sync_page_size=1)
    async with streaming_ingest(owner, tuning=tuning, max_concurrency=1) as h:
        # more whole-mailbox syncs than general workers: every worker is taken, the rest wait in the queue
        size = h.scheduler.workers + 2
        emu.admin.seed(
            mailboxes=size, meetings_per_mailbox=MEETINGS, attendees_per_meeting=0, domain=domain, prefix="backlog"
        )
        backlog = [f"backlog{i:05d}@{domain}" for i in range(size)]
        for mailbox in backlog:  # every page of a backlog mailbox is slow: its whole read holds a worker for long
            emu.admin.add_fault(kind="latency", operation="SyncFolderItems", mailbox=mailbox, latency_ms=300)
        # TrueConf asks for the backlog's calendars: each is a first sync, reading the whole mailbox.
        replies = await asyncio.gather(
            *(h.bus.nc.request(f"calendar.v1.control.ondemand.{subject_token(m)}", b"", timeout=30) for m in backlog)
        )
        assert all(json.loads(r.data)["accepted"] for r in replies), [r.data for r in replies]
        await collector.wait(lambda c: c.mailbox in backlog, what="the backlog's first change")

        await outlook.do(outlook.meeting, owner, "live change", send="SendToNone")

        live = await collector.wait(lambda c: c.event.subject == "live change", what="the live change")
        assert live.mailbox == owner
        for mailbox in backlog:
            await collector.wait(
                lambda c, m=mailbox: len({x.item_id for x in collector.of(m)}) >= MEETINGS,  # type: ignore[misc]
                timeout=120,
                what=f"every meeting of {mailbox}",
            )
        order = [r.change for r in collector.received]
        live_at = next(i for i, c in enumerate(order) if c.event.subject == "live change")
        assert any(c.mailbox in backlog for c in order[:live_at]), "the backlog was under way before the change"
        for mailbox in backlog:
            last = max(i for i, c in enumerate(order) if c.mailbox == mailbox)
            assert last > live_at, f"the whole-mailbox sync of {mailbox} finished before the live change"
        assert not h.pool_of(owner).stats.back_offs  # within Exchange's budget: never told to back off


async def test_ranked_slots_hand_the_next_free_slot_to_a_live_call_first() -> None:
    slots = RankedSlots(1)
    await slots.acquire(ORDINARY)  # the one slot is taken
    order: list[str] = []

    async def call(name: str, rank: int) -> None:
        await slots.acquire(rank)
        order.append(name)
        slots.release()

    waiting = [asyncio.create_task(call(f"bulk {i}", ORDINARY)) for i in range(3)]
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(call("live, cancelled", LIVE))
    await asyncio.sleep(0)
    cancelled.cancel()
    waiting.append(asyncio.create_task(call("live", LIVE)))
    await asyncio.sleep(0)
    assert slots.locked() and order == []
    slots.release()
    await asyncio.gather(*waiting)
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    assert order == ["live", "bulk 0", "bulk 1", "bulk 2"]
    assert not slots.locked()

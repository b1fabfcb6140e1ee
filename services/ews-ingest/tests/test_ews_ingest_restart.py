"""Checkpoints: a restart resumes from the SyncState stored in JetStream KV after the publish acks - unchanged items
are not read again (EWS calls counted by the emulator), sequences keep increasing, nothing is published twice."""

from __future__ import annotations

import datetime as dt

import nats
from ews_ingest_support import (
    ChangeCollector,
    FakeLicensing,
    Outlook,
    ingest_config,
    new_mailboxes,
    provider_section,
    running_ingest,
    soon,
)

from ews_ingest.state import mailbox_key
from exchange_emulator.testing import EmulatorHandle
from tccal.subjects import INGEST_STATE_BUCKET

ITEMS_PER_MAILBOX = 5


async def test_restart_reads_only_what_changed(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    mailboxes = new_mailboxes(emu, "ann", "ben", "cid")
    changed_item = None
    for mailbox in mailboxes:
        for n in range(ITEMS_PER_MAILBOX):
            item = await outlook.do(outlook.meeting, mailbox, f"{mailbox} #{n}", start=soon(days=1 + n))
            changed_item = changed_item or item
    assert changed_item is not None
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, mailboxes)])
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(*mailboxes)
        await collector.wait(lambda c: len(collector.received) >= 3 * ITEMS_PER_MAILBOX, what="initial load")
        first_run = {m: [c.sequence for c in collector.of(m)] for m in mailboxes}
        assert all(len(s) == ITEMS_PER_MAILBOX for s in first_run.values())

    # checkpoint in KV: SyncState and sequences, per mailbox
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(INGEST_STATE_BUCKET)
        entry = await kv.get(mailbox_key("127.0.0.1", mailboxes[0]))
        assert entry.value is not None and b'"sync_state":"' in entry.value and b'"initial_done":true' in entry.value
    finally:
        await nc.close()

    # while ews-ingest is down, one item changes
    changed_item.subject = "changed while down"
    changed_item.start = soon(days=20)
    changed_item.end = changed_item.start + dt.timedelta(hours=1)
    await outlook.do(changed_item.save, update_fields=["subject", "start", "end"])
    await outlook.do(emu.admin.reset)  # count from here
    before = len(collector.received)
    async with running_ingest(config) as h:
        await h.synced(*mailboxes)
        change = await collector.wait(lambda c: c.event.subject == "changed while down", what="the change")
        await h.streamed()
        ops = (await outlook.do(emu.admin.requests))["operations"]
        assert ops.get("GetItem", 0) == 1, ops  # only the changed item is read again
        assert ops.get("SyncFolderItems", 0) <= 2 * len(mailboxes), ops  # one pass (+ catch-up after subscribing)
        assert "FindItem" not in ops
        assert change.sequence > max(first_run[mailboxes[0]])
        assert change.item_id == changed_item.id
        assert len(collector.received) == before + 1  # nothing else published again

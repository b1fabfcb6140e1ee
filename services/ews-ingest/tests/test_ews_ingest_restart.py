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
from trueconf.calendar.v1 import calendar_pb2

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


async def test_a_mailbox_moved_while_down_is_read_again_as_a_snapshot(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    """Issue #15: while ews-ingest is down one meeting is deleted, one changed and the mailbox moved (Exchange then
    refuses its SyncState with ErrorInvalidSyncStateData). The re-read is framed MAILBOX_RESYNC_BEGIN ... END with
    one token: between them every item Exchange still has, nothing of the deleted one - which the engine then
    deletes on END (test_sync_engine_resync_snapshot.py)."""
    (owner,) = new_mailboxes(emu, "gap")
    stays = await outlook.do(outlook.meeting, owner, "stays", start=soon(days=2))
    deleted = await outlook.do(outlook.meeting, owner, "deleted in the gap", start=soon(days=3))
    changed = await outlook.do(outlook.meeting, owner, "changed in the gap", start=soon(days=4))
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [owner])])
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(owner)
        await collector.wait(lambda c: len(collector.of(owner)) == 3, what="initial load")
    first = collector.of(owner)

    await outlook.do(deleted.delete)
    changed.subject = "changed in the gap, later"
    await outlook.do(changed.save, update_fields=["subject"])
    server = (await outlook.do(emu.admin.mailbox, owner))["server"]
    await outlook.do(emu.admin.move_mailbox, owner, "EMU-MBX02" if server == "EMU-MBX01" else "EMU-MBX01")

    async with running_ingest(config) as h:
        await h.synced(owner)
        await collector.wait(
            lambda c: c.mailbox == owner and c.type == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END, what="the END"
        )
        assert h.scheduler.entries[owner].last_error == ""
    begin, *items, end = collector.of(owner)[len(first) :]
    assert begin.type == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN and begin.item_id == ""
    assert end.type == calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END
    assert begin.resync.token == end.resync.token != ""
    assert begin.change_id == f"{owner}/resync-begin/{begin.resync.token}"
    assert end.change_id == f"{owner}/resync-end/{end.resync.token}"
    assert end.resync.HasField("window_start") and list(end.resync.kept_item_ids) == []
    sequences = [c.sequence for c in (begin, *items, end)]
    assert sequences == sorted(set(sequences)) and begin.sequence > max(c.sequence for c in first)
    assert {c.type for c in items} == {calendar_pb2.CHANGE_TYPE_UPSERT}
    assert {c.origin for c in (begin, *items, end)} == {calendar_pb2.CHANGE_ORIGIN_RESYNC}
    assert sorted(c.event.subject for c in items) == ["changed in the gap, later", "stays"]
    assert {c.item_id for c in items} == {stays.id, changed.id}  # nothing of the deleted meeting


async def test_a_whole_reread_cut_short_is_started_again_until_it_ends(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    """A whole re-read that fails after its MAILBOX_RESYNC_BEGIN (here Exchange answers its SyncFolderItems with
    garbage) publishes no END; the checkpoint remembers it, and the next sync reads the mailbox again whole under a
    new BEGIN - so an END, which lets the engine delete what Exchange no longer has, always follows."""
    begin_type, end_type = calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN, calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END
    (owner,) = new_mailboxes(emu, "cut")
    await outlook.do(outlook.meeting, owner, "one", start=soon(days=2))
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [owner])])
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(owner)
        await collector.wait(lambda c: len(collector.of(owner)) == 1, what="initial load")
        await outlook.do(emu.admin.add_fault, kind="malformed_xml", operation="SyncFolderItems")
        try:
            await h.scheduler.resync(owner, None)
        except Exception:  # the cut is the point; the checks below say what it left
            pass
        else:
            raise AssertionError(f"the re-read did not fail; published {[c.type for c in collector.of(owner)]}")
        assert [c.type for c in collector.of(owner)][1:] == [begin_type]
        assert (await h.runtime.store.load_checkpoint("127.0.0.1", owner)).reread != ""
        await outlook.do(emu.admin.clear_faults)
        end = await collector.wait(lambda c: c.mailbox == owner and c.type == end_type, what="the END")
        begins = [c for c in collector.of(owner) if c.type == begin_type]
        assert len(begins) >= 2 and end.resync.token == begins[-1].resync.token != begins[0].resync.token
        framed = collector.of(owner)[collector.of(owner).index(begins[-1]) :]
        assert [c.event.subject for c in framed[1:-1]] == ["one"] and framed[-1] == end
        assert (await h.runtime.store.load_checkpoint("127.0.0.1", owner)).reread == ""

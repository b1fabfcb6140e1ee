"""writeBackJoinLink: a conference created on TrueConf Server (TcsCommandResult on TCS_RESULTS) puts its join link
into the organizer's item through EWS UpdateItem; the next change names that conference."""

from __future__ import annotations

import nats
from ews_ingest_support import (
    TCS_HOST,
    TCS_ID,
    ChangeCollector,
    FakeLicensing,
    Outlook,
    ingest_config,
    new_mailboxes,
    provider_section,
    running_ingest,
)

from ews_ingest.writeback import meeting_id
from exchange_emulator.testing import EmulatorHandle
from tccal.subjects import results_subject
from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import commands_pb2, common_pb2


async def test_join_link_written_back(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    org, guest = new_mailboxes(emu, "org", "guest")
    config = ingest_config(nats_url, licensing.address, [provider_section(emu, [org, guest])], writeBackJoinLink=True)
    async with running_ingest(config) as h:
        await collector.start()
        await h.synced(org, guest)
        await h.streamed()
        in_location = await outlook.do(outlook.meeting, org, "Keyword in subject @trueconf", attendees=[guest])
        in_body = await outlook.do(outlook.meeting, org, "Room given", location="Room 7 @trueconf", body="Agenda")
        first = await collector.wait(lambda c: c.mailbox == org and c.event.subject.startswith("Keyword"))
        second = await collector.wait(lambda c: c.mailbox == org and c.event.subject == "Room given")
        assert first.event.conference.source == common_pb2.CONFERENCE_SOURCE_KEYWORD
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            for change, conference_id in ((first, "c-101"), (second, "c-102")):
                result = commands_pb2.TcsCommandResult(
                    command_id=f"cmd-{conference_id}",
                    server_id=TCS_ID,
                    status=commands_pb2.COMMAND_STATUS_OK,
                    meeting_id=meeting_id(change.event.uid),
                    conference=common_pb2.ConferenceLink(id=conference_id, url=f"https://{TCS_HOST}/c/{conference_id}"),
                )
                await js.publish(results_subject(TCS_ID), result.SerializeToString())
        finally:
            await nc.close()
        linked = await collector.wait(
            lambda c: c.item_id == first.item_id and c.event.conference.existing_conference_id == "c-101",
            what="the organizer's item with its join link",
        )
        assert linked.event.location == f"https://{TCS_HOST}/c/c-101"
        assert linked.event.conference.source == common_pb2.CONFERENCE_SOURCE_JOIN_LINK
        appended = await collector.wait(
            lambda c: c.item_id == second.item_id and c.event.conference.existing_conference_id == "c-102",
            what="link appended to the body",
        )
        assert appended.event.location == "Room 7 @trueconf"
        assert f"https://{TCS_HOST}/c/c-102" in appended.event.body and "Agenda" in appended.event.body
        writer = h.runtime.writer
        assert writer is not None
        await wait_for_async(lambda: _equals(writer.written, 2), what="two write-backs")
        assert in_location.id and in_body.id


async def _equals(value: int, wanted: int) -> bool:
    return value == wanted

"""writeBackJoinLink for Graph mailboxes: a conference created on TrueConf Server (TcsCommandResult on TCS_RESULTS)
puts its join link into the organizer's event through PATCH /users/{id}/events/{id} (location when empty, else the
body), keeps the add-in's marker, ends with the echo (no loop), and never overwrites an edit made meanwhile (412 →
read again)."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

import pytest
from ews_ingest_support import ChangeCollector
from graph_ingest_support import (
    TCS_ID,
    GraphHarness,
    GraphTestbed,
    GraphWriter,
    graph_provider,
    new_mailboxes,
    publish_as_admin,
)

from graph_emulator.testing import APP_ID, APP_SECRET
from tccal.conference_marker import MARKER_GRAPH_PROPERTY_ID
from tccal.ingest.writeback import meeting_id
from tccal.subjects import results_subject
from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import commands_pb2, common_pb2

TCS_HOST = TCS_ID.partition("#")[0]
MARKER = json.dumps({"mode": "S|L", "access": "public", "pin": 1234})


def _running(testbed: GraphTestbed, users: list[str]) -> contextlib.AbstractAsyncContextManager[GraphHarness]:
    """graph-ingest with the Calendars.ReadWrite app (the write-back needs it) and writeBackJoinLink on."""
    provider = graph_provider(testbed.emu, users, client_id=APP_ID, secret=APP_SECRET, name="m365")
    return testbed.running([provider], writeBackJoinLink=True)


async def _conference_created(nats_url: str, uid: str, conference_id: str) -> None:
    """What tcs-gateway publishes when TrueConf Server created the meeting's conference."""
    result = commands_pb2.TcsCommandResult(
        command_id=f"cmd-{conference_id}",
        server_id=TCS_ID,
        status=commands_pb2.COMMAND_STATUS_OK,
        meeting_id=meeting_id(uid),
        conference=common_pb2.ConferenceLink(id=conference_id, url=f"https://{TCS_HOST}/c/{conference_id}"),
    )
    await publish_as_admin(nats_url, results_subject(TCS_ID), result.SerializeToString(), to_stream=True)


async def _written(graph: GraphHarness, count: int) -> None:
    writer = graph.runtime.writer
    assert writer is not None

    async def done() -> bool:
        return writer.written >= count

    await wait_for_async(done, timeout=30, what=f"{count} join link(s) written back")


async def _event(writer: GraphWriter, mailbox: str, event_id: str) -> dict[str, Any]:
    expand = f"singleValueExtendedProperties($filter=id eq '{MARKER_GRAPH_PROPERTY_ID}')"
    event: dict[str, Any] = await writer._call("GET", f"/users/{mailbox}/events/{event_id}?$expand={expand}")
    return event


async def test_join_link_written_into_location_or_body_and_the_echo_ends_it(testbed: GraphTestbed) -> None:
    emu, collector, writer = testbed.emu, testbed.collector, testbed.writer
    organizer, guest = new_mailboxes(emu, "olga", "pavel")
    keyword = await writer.create(organizer, "Keyword in subject @trueconf", attendees=(guest,))
    room = await writer.create(organizer, "Room given", location="Room 7 @trueconf", body="Agenda")
    addin = await writer.create(organizer, "Add-in meeting", location="Room 9", marker=MARKER)
    ids = {keyword["id"], room["id"], addin["id"]}
    async with _running(testbed, [organizer, guest]) as graph:
        await collector.start()
        await graph.rounds(organizer)
        await graph.rounds(guest)
        first = {c.item_id: c for c in await _all(collector, organizer, ids)}
        assert all(not c.event.conference.existing_conference_id for c in first.values())
        links = {keyword["id"]: "c-201", room["id"]: "c-202", addin["id"]: "c-203"}
        await _conference_created(testbed.nats_url, f"unknown-{uuid.uuid4()}", "c-299")  # no such meeting: ignored
        for item_id, conference_id in links.items():
            await _conference_created(testbed.nats_url, first[item_id].event.uid, conference_id)
        await _written(graph, 3)
        await graph.poll(organizer)
        echoed = {
            item_id: await collector.wait(
                lambda c, i=item_id, cid=cid: c.item_id == i and c.event.conference.existing_conference_id == cid,
                what=f"the organizer's event {cid} with its join link",
            )
            for item_id, cid in links.items()
        }
        writeback = graph.runtime.writer
        assert writeback is not None and writeback.pending == {}  # the echo ended every wait
        published = len(collector.of(organizer))
        await graph.poll(organizer)  # nothing else to write, nothing new to publish: no loop
        assert len(collector.of(organizer)) == published and writeback.written == 3
    url = {item_id: f"https://{TCS_HOST}/c/{cid}" for item_id, cid in links.items()}
    assert echoed[keyword["id"]].event.location == url[keyword["id"]]
    assert echoed[keyword["id"]].event.conference.source == common_pb2.CONFERENCE_SOURCE_JOIN_LINK
    assert echoed[room["id"]].event.location == "Room 7 @trueconf"
    assert "Agenda" in echoed[room["id"]].event.body and url[room["id"]] in echoed[room["id"]].event.body
    stored = await _event(writer, organizer, addin["id"])
    assert stored["location"]["displayName"] == "Room 9"
    assert url[addin["id"]] in stored["body"]["content"]
    assert stored["singleValueExtendedProperties"] == [{"id": MARKER_GRAPH_PROPERTY_ID, "value": MARKER}]


async def test_an_edit_between_read_and_write_is_kept_412_reads_again(testbed: GraphTestbed) -> None:
    emu, collector, writer = testbed.emu, testbed.collector, testbed.writer
    (organizer,) = new_mailboxes(emu, "rita")
    meeting = await writer.create(organizer, "Planning @trueconf", location="", body="Old agenda")
    async with _running(testbed, [organizer]) as graph:
        await collector.start()
        await graph.rounds(organizer)
        (change,) = await _all(collector, organizer, {meeting["id"]})
        client = graph.runtime.clients["m365"]
        send = client.patch
        edits: list[str] = []

        async def organizer_edits_first(
            mailbox: str, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> dict[str, Any]:
            """The organizer saves the event (another client, real HTTP) after graph-ingest read it."""
            if not edits:
                edits.append("edited")
                await writer.update(organizer, meeting["id"], {"subject": "Planning moved @trueconf"})
            return await send(mailbox, url, body, headers)

        client.patch = organizer_edits_first  # type: ignore[method-assign]
        await _conference_created(testbed.nats_url, change.event.uid, "c-301")
        await _written(graph, 1)
        writeback = graph.runtime.writer
        assert writeback is not None and writeback.conflicts == 1
        assert client.stats.by_status.get(412) == 1  # the emulator refused the stale If-Match once
    stored = await _event(writer, organizer, meeting["id"])
    assert stored["subject"] == "Planning moved @trueconf"  # the organizer's edit survived
    assert stored["location"]["displayName"] == f"https://{TCS_HOST}/c/c-301"


async def _all(collector: ChangeCollector, mailbox: str, ids: set[str]) -> list[Any]:
    async def seen() -> bool:
        return {c.item_id for c in collector.of(mailbox)} >= ids

    await wait_for_async(seen, timeout=30, what=f"the changes of {sorted(ids)}")
    return [c for c in collector.of(mailbox) if c.item_id in ids]


async def test_a_read_only_app_is_told_it_needs_calendars_readwrite(
    testbed: GraphTestbed, caplog: pytest.LogCaptureFixture
) -> None:
    emu, collector, writer = testbed.emu, testbed.collector, testbed.writer
    (organizer,) = new_mailboxes(emu, "vera")
    meeting = await writer.create(organizer, "Read-only @trueconf")
    read_only = graph_provider(emu, [organizer], name="m365")
    async with testbed.running([read_only], writeBackJoinLink=True) as graph:
        await collector.start()
        await graph.rounds(organizer)
        (change,) = await _all(collector, organizer, {meeting["id"]})
        await _conference_created(testbed.nats_url, change.event.uid, "c-401")

        async def refused() -> bool:
            return any("Calendars.ReadWrite" in str(getattr(r, "error", "")) for r in caplog.records)

        await wait_for_async(refused, timeout=30, what="the refused write-back logged")
        writeback = graph.runtime.writer
        assert writeback is not None and writeback.written == 0
    stored = await _event(writer, organizer, meeting["id"])
    assert not (stored.get("location") or {}).get("displayName")
    assert any("HTTP 403 ErrorAccessDenied" in str(getattr(r, "error", "")) for r in caplog.records)

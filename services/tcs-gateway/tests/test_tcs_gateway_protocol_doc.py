"""The gateway and docs/bridge-protocol.md stay in step: every request example of the document drives the
gateway and every reply is checked against the schema (and, where the document shows one, against the example's
shape or text); the pushes the gateway makes have the shape of the document's push examples."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tcs_gateway_testkit import RawBridgeClient, World, gateway_settings, occurrence, server_settings, stamp

from tcs_gateway.bridge.framing import FrameValidator
from trueconf.calendar.v1 import common_pb2

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "bridge-protocol.md"
SCHEMA = REPO / "docs" / "bridge-protocol.schema.json"
EXAMPLE = re.compile(r"<!-- example: ([A-Za-z.]+)\.(request|reply) -->\n```json\n(.*?)\n```", re.S)
EXAMPLES = [(m.group(1), m.group(2), json.loads(m.group(3))) for m in EXAMPLE.finditer(DOC.read_text("utf-8"))]
VALIDATOR = FrameValidator()
SERVER_ID = "server.trueconf.name#vcs"
SECRET = "s3cr3t-shared-with-the-connector"
USER = "mail_test169@trust1.loc"


def examples(method: str, kind: str) -> list[dict[str, Any]]:
    return [frame for m, k, frame in EXAMPLES if (m, k) == (method, kind)]


def test_the_packaged_schema_is_the_documents() -> None:
    # The gateway validates with the schema tccal ships (docs/'s file, carried in tccal's wheel).
    assert VALIDATOR.schema == json.loads(SCHEMA.read_text("utf-8"))
    assert len(EXAMPLES) == len(re.findall("<!-- example: ", DOC.read_text("utf-8")))
    for method, kind, frame in EXAMPLES:
        assert VALIDATOR.problem(frame, f"{method}.{kind}") is None, (method, kind)


def _doc_calendar(world: World) -> None:
    fake = world.sync.fake
    marketing = occurrence(
        "AAMkAGI2TG93AAA=",
        occurrence_id="AAMkAGI2TG93AAA=:20250628T080000Z",
        start=datetime(2025, 6, 28, 8, 0, tzinfo=UTC),
        organizer="postman@trust1.loc",
        attendees=[(USER, common_pb2.RESPONSE_TYPE_NO_RESPONSE_RECEIVED)],
        conference=("561849261795", "https://server.trueconf.name/c/561849261795"),
    )
    private = occurrence(
        "AAMkAGI2TG94AAA=",
        start=datetime(2025, 6, 30, 12, 0, tzinfo=UTC),
        minutes=60,
        organizer=USER,
        private=True,
    )
    fake.shown[USER] = {marketing.id: marketing, private.id: private}
    fake.seq[USER] = 1042


def _doc_changes(world: World) -> None:
    """The changes the incremental example answers: the marketing meeting moved to Room 4 (seq 1045 after two
    pushes to others), the private event deleted (1044)."""
    fake = world.sync.fake
    shown = fake.shown[USER]
    marketing = shown["AAMkAGI2TG93AAA=:20250628T080000Z"]
    marketing.location = "Room 4"
    del shown["AAMkAGI2TG94AAA="]
    fake.removals[USER] = {"AAMkAGI2TG94AAA=": 1044}
    fake.changed[USER] = {marketing.id: 1045}
    fake.seq[USER] = 1045


async def test_every_request_example_drives_the_gateway(world: World) -> None:
    _doc_calendar(world)
    settings = gateway_settings(
        world.sync, [server_settings(server_id=SERVER_ID, secret=SECRET)], whitelist=[SERVER_ID]
    )
    gateway = await world.gateway(settings)
    served = {"auth", "getCalendarList", "ping"}
    async with RawBridgeClient(gateway.url) as client:
        for method, kind, frame in EXAMPLES:
            if kind != "request":
                continue
            incremental = bool(frame["payload"].get("incremental"))
            if incremental:  # the example's changes since 1042: the meeting edited, the private event deleted
                _doc_changes(world)
            await client.send(frame)
            reply = await client.reply_to(frame["id"])
            assert VALIDATOR.problem(reply, f"{method}.reply") is None, (method, reply)
            payload = reply["payload"]
            if method in served:
                assert payload["errorCode"] == 0, (method, payload)
                success = [e for e in examples(method, "reply") if e["payload"]["errorCode"] == 0]
                # A paged request (§6.2 "Pages") is answered like the paged example, one without page like the other.
                paged = "page" in frame["payload"]
                shown = [e for e in success if ("page" in e["payload"]) == paged] or success
                if method == "getCalendarList":
                    shown = [e for e in shown if e["payload"].get("incremental") is (True if incremental else None)]
                assert set(payload) == set(shown[0]["payload"]), method
            else:
                assert payload["errorCode"] == 2, (method, payload)  # the gateway sends these, never serves them
            if method == "getCalendarList" and incremental:
                documented = shown[0]["payload"]
                assert [e["id"] for e in payload["events"]] == [e["id"] for e in documented["events"]]
                assert payload["removed"] == documented["removed"]
                assert payload["events"][0]["location"] == documented["events"][0]["location"]
            elif method == "getCalendarList":
                documented = examples("getCalendarList", "reply")[0]["payload"]
                assert [e["id"] for e in payload["events"]] == [e["id"] for e in documented["events"]]
                for ours, theirs in zip(payload["events"], documented["events"], strict=True):
                    assert set(ours) == set(theirs)
                assert payload["events"][1]["subject"] is None and payload["events"][1]["attendees"] == []
                assert payload["events"][0]["conference"] == documented["events"][0]["conference"]
                assert payload["events"][0]["myResponse"] == "none"
    # The refusals the document shows are the gateway's, word for word.
    refused = examples("auth", "reply")[1]["payload"]
    async with RawBridgeClient(gateway.url) as client:
        reply = await client.auth(server_id=SERVER_ID, secret="not-the-secret")
        assert reply["payload"] == refused
    version = examples("auth", "reply")[2]["payload"]
    async with RawBridgeClient(gateway.url) as client:
        reply = await client.call("auth", {"serverId": SERVER_ID, "secret": SECRET, "protocolVersion": 2})
        assert reply["payload"] == version


async def test_the_gateways_pushes_have_the_shape_of_the_examples(world: World) -> None:
    _doc_calendar(world)
    settings = gateway_settings(
        world.sync, [server_settings(server_id=SERVER_ID, secret=SECRET)], whitelist=[SERVER_ID], users=[USER]
    )
    gateway = await world.gateway(settings)
    async with RawBridgeClient(gateway.url) as client:
        await client.auth(server_id=SERVER_ID, secret=SECRET)
        snapshot = await client.frame()
        await client.ack(snapshot)
        meeting = occurrence(
            "AAMkAGI2TG93AAA=",
            start=datetime.now(UTC).replace(microsecond=0),
            organizer="postman@trust1.loc",
            attendees=[(USER, common_pb2.RESPONSE_TYPE_ACCEPT)],
        )
        meeting.updated_at.CopyFrom(stamp(datetime.now(UTC)))
        pushes = [snapshot]
        for kind in ("upsert", "cancel", "delete"):
            if kind == "upsert":
                command = world.commands.upsert_command(USER, meeting, server_id=SERVER_ID)
            elif kind == "cancel":
                command = world.commands.cancel_command(USER, meeting.id, server_id=SERVER_ID)
            else:
                command = world.commands.delete_command(USER, meeting.id, server_id=SERVER_ID)
            await world.commands.publish(command)
            while True:
                frame = await client.frame()
                if frame["type"] == 1 and frame["method"].startswith("calendar."):
                    pushes.append(frame)
                    await client.ack(frame)
                    break
    methods = [p["method"] for p in pushes]
    assert methods == ["calendar.snapshot", "calendar.upsert", "calendar.cancel", "calendar.delete"]
    for push in pushes:
        method = push["method"]
        assert VALIDATOR.problem(push, f"{method}.request") is None, push
        documented = examples(method, "request")[0]["payload"]
        assert set(push["payload"]) == set(documented), method
        if "event" in documented:
            assert set(push["payload"]["event"]) == set(documented["event"])
            assert push["payload"]["event"]["seq"] == push["payload"]["seq"]
    assert pushes[2]["payload"]["event"]["cancelled"] is True

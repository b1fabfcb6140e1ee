"""Frames the gateway must survive (docs/bridge-protocol.md §2, §8, §9): malformed frames get an error reply and
the connection stays usable; binary frames close with 1003, oversized ones with 4009; the gateway keeps serving."""

from __future__ import annotations

import json
from typing import Any

from tcs_gateway_testkit import RawBridgeClient, World, gateway_settings, server_settings

from tcs_gateway.bridge.framing import FrameValidator

VALIDATOR = FrameValidator()
WINDOW = {"from": "2025-06-01T00:00:00Z", "to": "2025-07-01T00:00:00Z"}


def _error(frame: dict[str, object], code: int, frame_id: int) -> dict[str, object]:
    assert frame["type"] == 2, frame
    assert frame["id"] == frame_id, frame
    payload = frame["payload"]
    assert isinstance(payload, dict)
    assert payload["errorCode"] == code, frame
    assert VALIDATOR.problem(frame, "replyFrame", relative_to_payload=False) is None
    assert VALIDATOR.problem(payload, "errorPayload", relative_to_payload=False) is None, payload
    return payload


async def test_malformed_frames_get_error_replies_and_the_connection_stays(world: World) -> None:
    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    async with RawBridgeClient(gateway.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0
        await client.send("{not json")
        _error(await client.reply_to(0), 1, 0)
        await client.send("[1, 2, 3]")
        _error(await client.reply_to(0), 1, 0)
        await client.send({"type": 3, "id": 41, "method": "ping", "payload": {}})
        _error(await client.reply_to(41), 1, 41)
        await client.send({"type": 1, "id": 42, "method": "ping"})  # no payload
        _error(await client.reply_to(42), 1, 42)
        await client.send({"type": 1, "id": 43, "method": "ping", "payload": {}, "extra": True})
        _error(await client.reply_to(43), 1, 43)
        await client.send({"type": 1, "id": -5, "method": "ping", "payload": {}})
        _error(await client.reply_to(0), 1, 0)
        await client.send({"type": 1, "id": 44, "method": "subscribe", "payload": {}})
        _error(await client.reply_to(44), 2, 44)
        await client.send({"type": 1, "id": 45, "method": "calendar.delete", "payload": {}})
        _error(await client.reply_to(45), 2, 45)  # a gateway→TCS method sent the wrong way
        await client.send({"type": 1, "id": 46, "method": "getCalendarList", "payload": {"user": "bob@example.test"}})
        assert _error(await client.reply_to(46), 6, 46)["field"] == "from"
        await client.send(
            {
                "type": 1,
                "id": 47,
                "method": "getCalendarList",
                "payload": {"user": "bob@example.test", **WINDOW, "colour": "red"},
            }
        )
        assert _error(await client.reply_to(47), 6, 47)["field"] == "colour"
        await client.send(
            {
                "type": 1,
                "id": 48,
                "method": "getCalendarList",
                "payload": {"user": "bob@example.test", "from": WINDOW["to"], "to": WINDOW["from"]},
            }
        )
        assert _error(await client.reply_to(48), 6, 48)["field"] == "to"
        await client.send(
            {
                "type": 1,
                "id": 49,
                "method": "getCalendarList",
                "payload": {"user": "bob@example.test", "from": "2025-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"},
            }
        )
        assert _error(await client.reply_to(49), 6, 49)["field"] == "to"
        await client.send(
            {
                "type": 1,
                "id": 50,
                "method": "getCalendarList",
                "payload": {"user": "bob@example.test", "from": "2025-06-01T03:00:00+03:00", "to": WINDOW["to"]},
            }
        )
        assert _error(await client.reply_to(50), 6, 50)["field"] == "from"
        await client.send({"type": 1, "id": 51, "method": "ping", "payload": {"x-note": "ignored", "ts": "now"}})
        assert _error(await client.reply_to(51), 6, 51)["field"] == "ts"
        await client.send({"type": 1, "id": 52, "method": "ping", "payload": {"x-note": "ignored"}})
        assert (await client.reply_to(52))["payload"]["errorCode"] == 0
        # A reply to nothing is ignored; a malformed reply is not answered.
        await client.send({"type": 2, "id": 999, "payload": {"errorCode": 0}})
        await client.send({"type": 2, "id": 998})
        listed = await client.call("getCalendarList", {"user": "bob@example.test", **WINDOW})
        assert listed["payload"]["errorCode"] == 0
        assert VALIDATOR.problem(listed, "getCalendarList.reply") is None
        # Nothing else was answered: every reply above matched a request of ours.
        replies = [frame for frame in client.received if frame["type"] == 2]
        assert sorted({frame["id"] for frame in replies} - {0}) == [1, 2, *range(41, 53)]


async def test_binary_and_oversized_frames_close_the_connection(world: World) -> None:
    settings = gateway_settings(world.sync, [server_settings()], max_frame_bytes=4096)
    gateway = await world.gateway(settings)
    async with RawBridgeClient(gateway.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0
        await client.ws.send_bytes(b"\x00\x01")
        assert await client.closed() == 1003
    async with RawBridgeClient(gateway.url) as client:
        assert (await client.auth())["payload"]["limits"]["maxFrameBytes"] == 4096
        exactly: dict[str, Any] = {"type": 1, "id": 2, "method": "ping", "payload": {"x-pad": ""}}
        exactly["payload"]["x-pad"] = "a" * (4096 - len(json.dumps(exactly)))
        assert len(json.dumps(exactly).encode()) == 4096
        await client.send(exactly)
        assert (await client.reply_to(2))["payload"]["errorCode"] == 0  # at the limit: fine
        await client.send({"type": 1, "id": 3, "method": "ping", "payload": {"x-pad": "é" * 3000}})
        assert await client.closed() == 4009
    async with RawBridgeClient(gateway.url) as client:  # the gateway keeps serving
        assert (await client.auth())["payload"]["errorCode"] == 0
        assert (await client.call("ping", {}))["payload"]["errorCode"] == 0


async def test_deeply_nested_frames_get_one_clear_error_not_a_traceback(world: World) -> None:
    """A frame nested far deeper than any bridge frame (docs/bridge-protocol.md §2: at most MAX_FRAME_DEPTH levels)
    is answered MALFORMED_FRAME naming its depth: 100,000 levels (which exhaust Python's JSON parser) and 200 levels
    inside a payload alike; the connection stays usable and nothing is logged as an error."""
    from tcs_gateway.bridge.framing import MAX_FRAME_DEPTH

    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    async with RawBridgeClient(gateway.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0
        await client.send("[" * 100_000 + "]" * 100_000)
        payload = _error(await client.reply_to(0), 1, 0)
        assert "nests too deeply" in str(payload["errorDescription"]), payload
        deep = {"x-deep": json.loads("[" * 200 + "]" * 200)}
        await client.send({"type": 1, "id": 61, "method": "ping", "payload": deep})
        payload = _error(await client.reply_to(0), 1, 0)  # refused before anything (its id too) is read
        assert f"at most {MAX_FRAME_DEPTH} levels" in str(payload["errorDescription"]), payload
        await client.send({"type": 1, "id": 62, "method": "ping", "payload": {"x-note": [[["fine"]]]}})
        assert (await client.reply_to(62))["payload"]["errorCode"] == 0

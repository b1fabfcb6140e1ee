"""Liveness (docs/bridge-protocol.md §3.5, §4, §9) with shortened timers: the gateway pings an idle server,
closes a silent one with 4011, and closes with 4011 when a push gets no acknowledgement in time — the push is
then resent on the next connection."""

from __future__ import annotations

import time

from tcs_gateway_testkit import RawBridgeClient, World, gateway_settings, occurrence, server_settings

from tcs_gateway.bridge.framing import FrameValidator
from trueconf.calendar.v1 import commands_pb2

VALIDATOR = FrameValidator()


async def test_pings_silence_and_reply_timeout(world: World) -> None:
    settings = gateway_settings(world.sync, [server_settings()], ping_interval=0.4, reply_timeout=1.5)
    gateway = await world.gateway(settings)
    async with RawBridgeClient(gateway.url) as tcs:
        reply = await tcs.auth()
        assert reply["payload"]["limits"]["pingIntervalSec"] == 1  # whole seconds on the wire
        deadline = time.monotonic() + 2.0
        pings = 0
        while time.monotonic() < deadline:  # answer everything for a while: the connection stays
            frame = await tcs.frame(timeout=2.0)
            assert frame["type"] == 1 and frame["method"] == "ping", frame
            assert VALIDATOR.problem(frame, "ping.request") is None
            pings += 1
            await tcs.ack(frame)
        assert pings >= 2
        assert (await tcs.call("ping", {}))["payload"]["errorCode"] == 0
    async with RawBridgeClient(gateway.url) as tcs:
        await tcs.auth()
        assert await tcs.closed(timeout=10) == 4011  # never answered: silence for 2 × pingInterval
    command = world.commands.upsert_command("bob@example.test", occurrence("late-ack"))
    async with RawBridgeClient(gateway.url) as tcs:
        await tcs.auth()
        await world.commands.publish(command)
        while True:
            frame = await tcs.frame()
            if frame["method"] == "calendar.upsert":
                break
            await tcs.ack(frame)  # pings answered, the push not
        while True:
            try:
                ping = await tcs.frame(timeout=5)
            except ConnectionError:
                break
            await tcs.ack(ping)
        assert tcs.ws.close_code == 4011
    async with RawBridgeClient(gateway.url) as tcs:
        await tcs.auth()
        while True:
            frame = await tcs.frame()
            await tcs.ack(frame)
            if frame["method"] == "calendar.upsert":
                break
        assert frame["payload"]["event"]["id"] == "late-ack"
        result = await world.commands.result_of(command.command_id)
        assert result.status == commands_pb2.COMMAND_STATUS_OK

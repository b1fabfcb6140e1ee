"""Delivery of calendar pushes (docs/bridge-protocol.md §3, §4): acknowledged pushes are done, unacknowledged
ones are resent after a reconnect with nothing lost or doubled, every (re)connect starts with a snapshot, the
in-flight window and the bounded queue hold back a slow server, several servers are served at once."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tcs_gateway_testkit import (
    ACCEPT,
    BOB,
    SERVER_ID,
    RawBridgeClient,
    World,
    admin,
    bridge_state,
    calendar,
    gateway_protocol_errors,
    gateway_settings,
    occurrence,
    server_settings,
    today_at,
    wait_connected,
)

from tccal.subjects import TCS_COMMANDS
from tccal_sandbox.testing import wait_for_async
from tcs_gateway.bridge.events import SEQ_SCALE
from tcs_gateway.bridge.framing import FrameValidator
from tcs_gateway.commands import durable_name
from trueconf.calendar.v1 import commands_pb2

VALIDATOR = FrameValidator()


async def _results_ok(world: World, ids: list[str]) -> bool:
    results = {r.command_id: r for r in await world.commands.results()}
    return all(i in results and results[i].status == commands_pb2.COMMAND_STATUS_OK for i in ids)


async def test_unacknowledged_pushes_are_resent_after_reconnect(world: World) -> None:
    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    commands = [
        world.commands.upsert_command(BOB, occurrence(f"m{i}", start=today_at(8 + i), attendees=[(BOB, ACCEPT)]))
        for i in range(3)
    ]
    async with RawBridgeClient(gateway.url) as first:
        assert (await first.auth())["payload"]["errorCode"] == 0
        for command in commands:
            await world.commands.publish(command)
        pushed = [await first.frame() for _ in commands]  # not acknowledged
        assert [f["method"] for f in pushed] == ["calendar.upsert"] * 3
        for frame in pushed:
            assert VALIDATOR.problem(frame, "calendar.upsert.request") is None, frame
        assert [f["payload"]["seq"] for f in pushed] == [c.calendar_upsert.seq * SEQ_SCALE for c in commands]
        consumer = await world.commands.bus.js.consumer_info(TCS_COMMANDS, durable_name(SERVER_ID))
        assert consumer.num_ack_pending == 3  # the commands wait, unacked, for TCS's acknowledgement
        assert not any(r.command_id in {c.command_id for c in commands} for r in await world.commands.results())
    async with RawBridgeClient(gateway.url) as second:
        assert (await second.auth())["payload"]["errorCode"] == 0
        resent = [await second.frame() for _ in commands]
        assert [f["payload"] for f in resent] == [f["payload"] for f in pushed]  # same pushes, same seq
        for frame in resent:
            await second.ack(frame)
        await wait_for_async(lambda: _results_ok(world, [c.command_id for c in commands]), what="3 OK results")
    results = [r for r in await world.commands.results() if r.command_id in {c.command_id for c in commands}]
    assert len(results) == 3
    consumer = await world.commands.bus.js.consumer_info(TCS_COMMANDS, durable_name(SERVER_ID))
    assert consumer.num_ack_pending == 0 and consumer.num_pending == 0


async def test_dropped_connection_loses_and_doubles_nothing(world: World) -> None:
    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    tcs = await world.tcs(gateway.url)
    await wait_connected(tcs)
    await admin(tcs, "PUT", "/bridge/acks", {"mode": "withhold"})
    commands = [
        world.commands.upsert_command(BOB, occurrence(f"d{i}", start=today_at(8 + i), attendees=[(BOB, ACCEPT)]))
        for i in range(5)
    ]
    for command in commands:
        await world.commands.publish(command)

    async def withheld() -> bool:
        return int((await bridge_state(tcs))["acks_withheld"]) == 5

    await wait_for_async(withheld, what="5 pushes applied without acknowledgement")
    assert gateway.gateway.server_statuses().servers[0].queue_depth == 5
    await admin(tcs, "PUT", "/bridge/acks", {"mode": "normal"})
    await admin(tcs, "POST", "/bridge/drop", {"mode": "abort"})
    await wait_for_async(
        lambda: _results_ok(world, [c.command_id for c in commands]), what="5 OK results after reconnect"
    )
    state = await wait_connected(tcs, connections=2)
    events = await calendar(tcs, BOB)
    assert sorted(e["id"] for e in events) == [f"d{i}" for i in range(5)]
    assert state["acks_lost"] == 5
    # Each push was applied exactly once; the reconnect added one snapshot per served user (alice, bob, carol).
    assert state["pushes_applied"] == 5 + 3
    assert state["pushes_received"]["calendar.snapshot"] == 3
    assert gateway_protocol_errors(state) == []
    assert gateway.gateway.server_statuses().servers[0].queue_depth == 0
    results = [r for r in await world.commands.results() if r.command_id.startswith(f"{SERVER_ID}/calendar/{BOB}")]
    assert len(results) == 5


async def test_every_reconnect_starts_with_a_snapshot_of_the_window(world: World) -> None:
    fake = world.sync.fake
    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()], users=[BOB]))
    first = occurrence("s1", start=today_at(9), attendees=[(BOB, ACCEPT)])
    second = occurrence("s2", start=today_at(11), attendees=[(BOB, ACCEPT)])
    for occ in (first, second):
        fake.shown.setdefault(BOB, {})[occ.id] = occ
    fake.seq[BOB] = 7
    async with RawBridgeClient(gateway.url) as tcs:
        auth = await tcs.auth()
        snapshot = await tcs.frame()
        assert snapshot["method"] == "calendar.snapshot"
        assert VALIDATOR.problem(snapshot, "calendar.snapshot.request") is None, snapshot
        payload = snapshot["payload"]
        assert payload["user"] == BOB
        assert [e["id"] for e in payload["events"]] == ["s1", "s2"]
        assert payload["seq"] == 7 * SEQ_SCALE + 1
        assert (payload["from"], payload["to"]) == (auth["payload"]["window"]["from"], auth["payload"]["window"]["to"])
        assert (payload["chunkIndex"], payload["chunkCount"]) == (0, 1)
        await tcs.ack(snapshot)
    # While TCS is away: one change arrives as a command, one never does (a lost push) — the snapshot has both.
    moved = world.commands.upsert_command(BOB, occurrence("s1", start=today_at(14), attendees=[(BOB, ACCEPT)]))
    await world.commands.publish(moved)
    await wait_for_async(lambda: _queued(gateway, 1), what="the push queued for the absent server")
    renamed = occurrence("s2", start=today_at(11), subject="Renamed", attendees=[(BOB, ACCEPT)])
    fake.shown[BOB]["s2"] = renamed
    fake.seq[BOB] += 1
    async with RawBridgeClient(gateway.url) as tcs:
        await tcs.auth()
        snapshot = await tcs.frame()
        assert snapshot["method"] == "calendar.snapshot"
        payload = snapshot["payload"]
        assert payload["seq"] == fake.seq[BOB] * SEQ_SCALE + 1
        by_id = {e["id"]: e for e in payload["events"]}
        assert by_id["s1"]["start"].startswith(today_at(14).strftime("%Y-%m-%dT%H"))
        assert by_id["s2"]["subject"] == "Renamed"
        await tcs.ack(snapshot)
        # The queued push is older than the snapshot: done without being sent.
        result = await world.commands.result_of(moved.command_id)
        assert result.status == commands_pb2.COMMAND_STATUS_OK
        with contextlib.suppress(TimeoutError):
            extra = await tcs.frame(timeout=0.5)
            assert extra["method"] == "ping", extra
    # The third connection: a snapshot again, with a higher seq although nothing changed.
    async with RawBridgeClient(gateway.url) as tcs:
        await tcs.auth()
        again = await tcs.frame()
        assert again["payload"]["seq"] == fake.seq[BOB] * SEQ_SCALE + 2


async def _queued(gateway: object, count: int) -> bool:
    return len(gateway.server().queue) == count  # type: ignore[attr-defined]


async def test_emulator_receives_snapshots_and_applies_them(world: World) -> None:
    fake = world.sync.fake
    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    tcs = await world.tcs(gateway.url)
    await wait_connected(tcs)
    await admin(tcs, "POST", "/bridge/disconnect")
    fake.shown.setdefault(BOB, {})["late"] = occurrence("late", start=today_at(16), attendees=[(BOB, ACCEPT)])
    fake.seq[BOB] = fake.seq.get(BOB, 0) + 1
    await admin(tcs, "POST", "/bridge/connect")
    state = await wait_connected(tcs, connections=2)

    async def snapshots_applied() -> bool:
        current = await bridge_state(tcs)
        return int(current["pushes_received"].get("calendar.snapshot", 0)) == 3

    await wait_for_async(snapshots_applied, what="a snapshot per served user after the reconnect")
    assert [e["id"] for e in await calendar(tcs, BOB)] == ["late"]
    assert gateway_protocol_errors(await bridge_state(tcs)) == []
    del state


async def test_slow_server_backpressure_window_and_bounded_queue(world: World) -> None:
    settings = gateway_settings(world.sync, [server_settings()], queue_capacity=4, fetch_batch=2)
    gateway = await world.gateway(settings)
    commands = [
        world.commands.upsert_command(BOB, occurrence(f"b{i}", start=today_at(6 + i), attendees=[(BOB, ACCEPT)]))
        for i in range(10)
    ]
    async with RawBridgeClient(gateway.url) as tcs:
        assert (await tcs.auth(maxInFlight=2))["payload"]["limits"]["maxInFlight"] == 2
        for command in commands:
            await world.commands.publish(command)
        first = [await tcs.frame(), await tcs.frame()]
        with contextlib.suppress(TimeoutError):
            third = await tcs.frame(timeout=0.5)
            raise AssertionError(f"a third push went out beyond maxInFlight 2: {third}")

        async def full() -> bool:
            info = await world.commands.bus.js.consumer_info(TCS_COMMANDS, durable_name(SERVER_ID))
            return len(gateway.server().queue) == 4 and info.num_pending == 6

        await wait_for_async(full, what="a full queue (4) and 6 commands left in the stream")
        received = list(first)
        for frame in first:
            await tcs.ack(frame)
        while len(received) < 10:
            frame = await tcs.frame()
            if frame["type"] == 1 and frame["method"] == "calendar.upsert":
                received.append(frame)
                await tcs.ack(frame)
        await wait_for_async(lambda: _results_ok(world, [c.command_id for c in commands]), what="10 OK results")
    assert [f["payload"]["event"]["id"] for f in received] == [f"b{i}" for i in range(10)]


async def test_emulator_window_is_respected(world: World) -> None:
    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    tcs = await world.tcs(gateway.url, extra={"max_in_flight": 2})
    await wait_connected(tcs)
    await admin(tcs, "PUT", "/bridge/acks", {"mode": "normal", "delay_ms": 100})
    commands = [
        world.commands.upsert_command(BOB, occurrence(f"w{i}", start=today_at(6 + i), attendees=[(BOB, ACCEPT)]))
        for i in range(8)
    ]
    for command in commands:
        await world.commands.publish(command)
    await wait_for_async(lambda: _results_ok(world, [c.command_id for c in commands]), what="8 OK results")
    state = await bridge_state(tcs)
    assert state["window_rejections"] == 0
    assert len(await calendar(tcs, BOB)) == 8
    assert gateway_protocol_errors(state) == []


async def test_refused_pushes_are_retried_or_reported(world: World) -> None:
    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    tcs = await world.tcs(gateway.url)
    await wait_connected(tcs)
    await admin(tcs, "PUT", "/bridge/acks", {"mode": "refuse", "error_code": 9, "retry_after_ms": 300})
    busy = world.commands.upsert_command(BOB, occurrence("r1", attendees=[(BOB, ACCEPT)]))
    await world.commands.publish(busy)

    async def refused_once() -> bool:
        return int((await bridge_state(tcs))["acks_refused"]) >= 1

    await wait_for_async(refused_once, what="the push refused with OVERLOADED")
    await admin(tcs, "PUT", "/bridge/acks", {"mode": "normal"})
    assert (await world.commands.result_of(busy.command_id)).status == commands_pb2.COMMAND_STATUS_OK
    assert [e["id"] for e in await calendar(tcs, BOB)] == ["r1"]
    stranger = world.commands.upsert_command("nobody@example.test", occurrence("r2"))
    await world.commands.publish(stranger)
    result = await world.commands.result_of(stranger.command_id)
    assert result.status == commands_pb2.COMMAND_STATUS_PERMANENT_ERROR
    assert "12 UNKNOWN_USER" in result.error
    statuses = gateway.gateway.server_statuses().servers[0]
    assert any("UNKNOWN_USER" in text for text in statuses.last_errors)


async def test_cancel_and_delete_follow_the_engine(world: World) -> None:
    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    tcs = await world.tcs(gateway.url)
    await wait_connected(tcs)
    meeting = occurrence("c1", attendees=[(BOB, ACCEPT)], conference=("tcc_abc", "https://tcs.example.test/c/tcc_abc"))
    for command in (
        world.commands.upsert_command(BOB, meeting),
        world.commands.cancel_command(BOB, "c1"),
    ):
        await world.commands.publish(command)
        assert (await world.commands.result_of(command.command_id)).status == commands_pb2.COMMAND_STATUS_OK
    [shown] = await calendar(tcs, BOB)
    assert shown["cancelled"] and shown["conference"] == {"id": "tcc_abc", "url": "https://tcs.example.test/c/tcc_abc"}
    state = await bridge_state(tcs)
    assert state["pushes_received"]["calendar.cancel"] == 1
    delete = world.commands.delete_command(BOB, "c1")
    await world.commands.publish(delete)
    assert (await world.commands.result_of(delete.command_id)).status == commands_pb2.COMMAND_STATUS_OK
    assert await calendar(tcs, BOB) == []
    assert gateway_protocol_errors(await bridge_state(tcs)) == []


async def test_two_servers_at_once(world: World) -> None:
    second_id = "video2.example.test#vcs"
    one = server_settings()
    two = server_settings(server_id=second_id, secret="second-secret")
    gateway = await world.gateway(gateway_settings(world.sync, [one, two]))
    tcs_one = await world.tcs(gateway.url)
    tcs_two = await world.tcs(gateway.url, server_id=second_id, secret="second-secret")
    await asyncio.gather(wait_connected(tcs_one), wait_connected(tcs_two))
    to_one = world.commands.upsert_command(BOB, occurrence("t1", attendees=[(BOB, ACCEPT)]))
    to_two = world.commands.upsert_command(BOB, occurrence("t2", attendees=[(BOB, ACCEPT)]), server_id=second_id)
    await world.commands.publish(to_one)
    await world.commands.publish(to_two)
    await wait_for_async(lambda: _results_ok(world, [to_one.command_id, to_two.command_id]), what="both results")
    assert [e["id"] for e in await calendar(tcs_one, BOB)] == ["t1"]
    assert [e["id"] for e in await calendar(tcs_two, BOB)] == ["t2"]
    statuses = {s.server_id: s for s in gateway.gateway.server_statuses().servers}
    assert statuses[SERVER_ID].connected and statuses[second_id].connected
    assert statuses[SERVER_ID].peer != statuses[second_id].peer
    assert statuses[SERVER_ID].users == 3 and statuses[second_id].users == 3
    # One server going away does not hold back the other.
    await admin(tcs_two, "POST", "/bridge/disconnect")
    await wait_for_async(lambda: _disconnected(gateway, second_id), what="the second server gone")
    late_two = world.commands.upsert_command(BOB, occurrence("t3", attendees=[(BOB, ACCEPT)]), server_id=second_id)
    late_one = world.commands.upsert_command(BOB, occurrence("t4", attendees=[(BOB, ACCEPT)]))
    await world.commands.publish(late_two)
    await world.commands.publish(late_one)
    await wait_for_async(lambda: _results_ok(world, [late_one.command_id]), what="the first server's result")
    await wait_for_async(lambda: _queued_for(gateway, second_id), what="the second server's push queued")
    await admin(tcs_two, "POST", "/bridge/connect")
    await wait_for_async(
        lambda: _results_ok(world, [late_two.command_id]), what="the second server's result after it is back"
    )
    # The reconnect's snapshot brings bob's whole calendar as the engine shows it, pushed elsewhere or not.
    assert sorted(e["id"] for e in await calendar(tcs_two, BOB)) == ["t1", "t2", "t3", "t4"]


async def _queued_for(gateway: object, server_id: str) -> bool:
    return len(gateway.server(server_id).queue) == 1  # type: ignore[attr-defined]


async def _disconnected(gateway: object, server_id: str) -> bool:
    return gateway.server(server_id).session is None  # type: ignore[attr-defined]


async def test_a_window_of_one_still_gets_snapshots_and_pushes(world: World) -> None:
    world.sync.fake.shown[BOB] = {"one": occurrence("one", attendees=[(BOB, ACCEPT)])}
    world.sync.fake.seq[BOB] = 1
    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()], users=[BOB, "carol@example.test"]))
    queued = world.commands.upsert_command(BOB, occurrence("two", attendees=[(BOB, ACCEPT)]))
    await world.commands.publish(queued)  # waiting before TCS even connects
    await wait_for_async(lambda: _queued(gateway, 1), what="the push queued")
    async with RawBridgeClient(gateway.url) as tcs:
        assert (await tcs.auth(maxInFlight=1))["payload"]["limits"]["maxInFlight"] == 1

        async def one_at_a_time(count: int) -> list[dict[str, Any]]:
            seen: list[dict[str, Any]] = []
            while len(seen) < count:
                frame = await tcs.frame()
                assert frame["type"] == 1
                if frame["method"] == "ping":
                    await tcs.ack(frame)
                    continue
                seen.append(frame)
                with contextlib.suppress(TimeoutError):  # nothing else may come before this one is acknowledged
                    extra = await tcs.frame(timeout=0.3)
                    raise AssertionError(f"a second frame within a window of 1: {extra}")
                await tcs.ack(frame)
            return seen

        snapshots = await one_at_a_time(2)
        assert sorted(f["payload"]["user"] for f in snapshots) == [BOB, "carol@example.test"]
        bob = next(f for f in snapshots if f["payload"]["user"] == BOB)
        assert sorted(e["id"] for e in bob["payload"]["events"]) == ["one", "two"]
        # The queued push is in bob's snapshot: done without being sent.
        assert (await world.commands.result_of(queued.command_id)).status == commands_pb2.COMMAND_STATUS_OK
        later = world.commands.upsert_command(BOB, occurrence("three", attendees=[(BOB, ACCEPT)]))
        await world.commands.publish(later)
        [push] = await one_at_a_time(1)
        assert push["method"] == "calendar.upsert" and push["payload"]["event"]["id"] == "three"
        assert (await world.commands.result_of(later.command_id)).status == commands_pb2.COMMAND_STATUS_OK


async def test_a_bare_acknowledgement_completes_a_push(world: World) -> None:
    """TrueConf's published chatbot client shows the server acknowledging with {"type": 2, "id": N} and no payload;
    the gateway reads it as success instead of waiting out the reply timeout (docs/bridge-protocol.md §2)."""
    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    command = world.commands.upsert_command(BOB, occurrence("bare", start=today_at(9), attendees=[(BOB, ACCEPT)]))
    async with RawBridgeClient(gateway.url) as tcs:
        assert (await tcs.auth())["payload"]["errorCode"] == 0
        await world.commands.publish(command)
        push = await tcs.frame()
        assert push["method"] == "calendar.upsert"
        await tcs.send({"type": 2, "id": push["id"]})
        await wait_for_async(lambda: _results_ok(world, [command.command_id]), what="the push done")
        # nothing is resent, and the connection stays open past the push
        assert (await tcs.call("ping", {}))["payload"]["errorCode"] == 0
        assert not [f for f in tcs.received if f.get("method") == "calendar.upsert" and f is not push]

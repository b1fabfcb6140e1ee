"""A snapshot a user is owed survives the connection it could not be sent on (bridge/snapshots.py catch_up,
ServerState.relieve, docs/architecture.md "Deliver").

A full queue gives up the pushes that can only wait for their user's snapshot: they are answered SUPERSEDED at once
and their messages acked, so from then on nothing but that snapshot carries their changes to TrueConf Server. When
the connection drops before TrueConf acknowledged one, the gateway still owes it, and the next connection's catch-up
must send it — even a connection that asks for no catch-up snapshots (`catchUp: "lists"`, revision 1.3).

A snapshot acknowledged that was read before the last push it owes was given up does not pay the debt: another
snapshot, read after it, is sent (on the same connection, or on the next one when it drops meanwhile).

The first connection is a hand-driven TrueConf Server, so which snapshot fails, waits or is acknowledged is exact. The
next connection is the TrueConf emulator catching up by lists: the owed snapshot reaches it, acknowledged, and bob's
calendar there holds every change once; no given-up push is sent after all.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from tcs_gateway_testkit import (
    ACCEPT,
    BOB,
    ORGANIZER,
    PUSH_METHODS,
    RawBridgeClient,
    RunningGateway,
    ScriptedTrueConf,
    World,
    bridge_state,
    calendar,
    gateway_protocol_errors,
    gateway_settings,
    occurrence,
    server_settings,
    today_at,
)

from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import commands_pb2

CAPACITY = 4
#: Bob's changes: twice what the queue holds, so that every one of them is given up in a full queue.
CHANGES = 2 * CAPACITY


class _RefusingBobsSnapshots(ScriptedTrueConf):
    """A TrueConf Server answering every request of the gateway, except bob's snapshots: OVERLOADED."""

    def __init__(self, client: RawBridgeClient) -> None:
        super().__init__(client)
        self.refused = 0

    async def answer(self, frame: dict[str, Any]) -> bool:
        if frame["method"] == "calendar.snapshot" and frame["payload"]["user"] == BOB:
            self.refused += 1
            await self.overloaded(frame)
            return True
        return False


def _bob_changes(world: World, first: int, count: int) -> list[commands_pb2.TcsCommand]:
    return [
        world.commands.upsert_command(BOB, occurrence(f"bob-{i}", start=today_at(6 + i), attendees=[(BOB, ACCEPT)]))
        for i in range(first, first + count)
    ]


async def _results(world: World, ids: list[str]) -> dict[str, list[int]]:
    """The results of the commands `ids` in the results stream, by command."""
    found: dict[str, list[int]] = {}
    for result in await world.commands.results():
        if result.command_id in ids:
            found.setdefault(result.command_id, []).append(int(result.status))
    return found


async def _every_push_given_up(world: World, gateway: RunningGateway, ids: list[str]) -> None:
    """Wait until each of `ids` is answered SUPERSEDED (once) and bob owed a snapshot up to the last of them."""
    last_seq = world.sync.fake.seq[BOB]

    async def given_up() -> dict[str, list[int]] | None:
        found = await _results(world, ids)
        return found if len(found) == len(ids) and gateway.server().owed.get(BOB) == last_seq else None

    found: dict[str, list[int]] = await wait_for_async(
        given_up, timeout=60, what="bob's pushes given up, his snapshot owed up to the last"
    )
    assert found == {i: [commands_pb2.COMMAND_STATUS_SUPERSEDED] for i in ids}


async def _drop(client: RawBridgeClient, gateway: RunningGateway) -> None:
    """The connection drops (the socket shut down under it, no close frame); the gateway sees it gone."""
    sock = client.ws.get_extra_info("socket")
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)
    await wait_for_async(lambda: gateway.server().session is None, what="the gateway to see the connection gone")


async def _next_connection_pays_what_is_owed(world: World, gateway: RunningGateway, ids: list[str], count: int) -> None:
    """The next connection, TrueConf Server catching up by lists (which brings no catch-up snapshot of a served
    user), gets bob's owed snapshot and acknowledges it: his calendar holds each of his `count` changes once."""
    server = gateway.server()
    assert server.owed == {BOB: world.sync.fake.seq[BOB]}  # still owed: no snapshot read after it was acknowledged
    emulator = await world.tcs(gateway.url, extra={"catch_up": "lists"})
    expected = sorted(f"bob-{i}" for i in range(count))

    async def bob_current() -> dict[str, Any] | None:
        state = await bridge_state(emulator)
        if state["authenticated_connections"] < 1 or server.owed:
            return None
        shown = await calendar(emulator, BOB)
        return state if sorted(event["id"] for event in shown) == expected else None

    state: dict[str, Any] = await wait_for_async(
        bob_current, timeout=60, what="bob's owed snapshot acknowledged and his calendar current at TrueConf"
    )
    assert state["pushes_received"].get("calendar.snapshot", 0) >= 1  # the owed snapshot, on this connection
    assert all(state["pushes_received"].get(method, 0) == 0 for method in PUSH_METHODS)  # none given up comes late
    assert len(await calendar(emulator, BOB)) == count  # each change once
    assert gateway_protocol_errors(state) == []
    assert await _results(world, ids) == {i: [commands_pb2.COMMAND_STATUS_SUPERSEDED] for i in ids}  # answered once
    assert len(server.queue) == 0


async def test_a_snapshot_owed_when_the_connection_drops_is_sent_on_the_next_connection(world: World) -> None:
    """TrueConf Server refuses bob's snapshots (OVERLOADED): every push of his is given up, his snapshot owed, and
    the connection drops before one is acknowledged."""
    settings = gateway_settings(
        world.sync, [server_settings()], users=[BOB], queue_capacity=CAPACITY, fetch_batch=2, snapshot_concurrency=1
    )
    gateway = await world.gateway(settings)
    commands = _bob_changes(world, 0, CHANGES)
    for command in commands:
        await world.commands.publish(command)  # TrueConf Server is not connected yet: they queue up
    ids = [c.command_id for c in commands]
    async with RawBridgeClient(gateway.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0  # catch-up by snapshots
        first = _RefusingBobsSnapshots(client)
        async with first.answering():
            await _every_push_given_up(world, gateway, ids)
            await wait_for_async(lambda: first.refused >= 2, what="bob's owed snapshot refused, and again")
            assert first.pushes() == []  # nothing of bob's reached TrueConf on this connection
            await _drop(client, gateway)
    await _next_connection_pays_what_is_owed(world, gateway, ids, CHANGES)


class _HoldingTheWindow(ScriptedTrueConf):
    """A TrueConf Server with an in-flight window of one that leaves the first snapshot (not bob's) unanswered until
    `release`, acknowledges bob's first snapshot and leaves his later ones unanswered; it acknowledges the rest."""

    def __init__(self, client: RawBridgeClient) -> None:
        super().__init__(client)
        self.held: dict[str, Any] | None = None
        self.release = asyncio.Event()
        self.bob_snapshots: list[dict[str, Any]] = []
        self._releasing: set[asyncio.Task[None]] = set()

    async def answer(self, frame: dict[str, Any]) -> bool:
        if frame["method"] == "calendar.snapshot" and self.held is None:
            assert frame["payload"]["user"] != BOB, "bob's snapshot came first: nothing holds it back"
            self.held = frame
            task = asyncio.get_running_loop().create_task(self._answer_when_released(frame))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            return True
        if frame["method"] == "calendar.snapshot" and frame["payload"]["user"] == BOB:
            self.bob_snapshots.append(frame)
            return len(self.bob_snapshots) > 1  # the later ones never answered: the connection drops first
        return False

    async def _answer_when_released(self, frame: dict[str, Any]) -> None:
        await self.release.wait()
        await self.client.ack(frame)


def _event_ids(snapshot: dict[str, Any]) -> list[str]:
    return sorted(event["id"] for event in snapshot["payload"]["events"])


async def test_a_snapshot_read_before_the_last_push_it_owes_is_sent_again_after_its_ack(world: World) -> None:
    """Bob's catch-up snapshot is read after his first 2 changes, then waits for the in-flight window (another
    user's snapshot holds it); his next changes wait for it and are given up in the full queue. That early snapshot
    is acknowledged, yet bob is still owed one: it is read again and sent; the connection drops before its
    acknowledgement, and the next connection gets it."""
    early = 2
    settings = gateway_settings(
        world.sync,
        [server_settings()],
        users=[ORGANIZER, BOB],  # the organizer's snapshot comes first (users in order) and holds the window
        queue_capacity=CAPACITY,
        fetch_batch=2,
        snapshot_concurrency=1,
    )
    gateway = await world.gateway(settings)
    server = gateway.server()
    commands = _bob_changes(world, 0, early)
    for command in commands:
        await world.commands.publish(command)
    await wait_for_async(lambda: len(server.queue) == early, what="bob's first changes queued")
    async with RawBridgeClient(gateway.url) as client:
        assert (await client.auth(maxInFlight=1))["payload"]["errorCode"] == 0  # catch-up by snapshots
        tcs = _HoldingTheWindow(client)
        async with tcs.answering():
            await wait_for_async(lambda: tcs.held is not None, what="the first snapshot holding the window")
            await wait_for_async(lambda: BOB in world.sync.fake.calls, what="bob's calendar read for his snapshot")
            later = _bob_changes(world, early, CHANGES - early)
            for command in later:
                await world.commands.publish(command)  # after the read: only a later snapshot holds them
            commands += later
            ids = [c.command_id for c in commands]
            await _every_push_given_up(world, gateway, ids)
            assert tcs.bob_snapshots == []
            tcs.release.set()
            # The early snapshot is written and acknowledged, yet the debt stays: read again, it is sent again.
            await wait_for_async(lambda: len(tcs.bob_snapshots) >= 2, what="bob's snapshot read and sent again")
            assert _event_ids(tcs.bob_snapshots[0]) == [f"bob-{i}" for i in range(early)]
            assert _event_ids(tcs.bob_snapshots[1]) == sorted(f"bob-{i}" for i in range(CHANGES))
            assert server.owed == {BOB: world.sync.fake.seq[BOB]}
            assert tcs.pushes() == []
            await _drop(client, gateway)
    await _next_connection_pays_what_is_owed(world, gateway, ids, CHANGES)

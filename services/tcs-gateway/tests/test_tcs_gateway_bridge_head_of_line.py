"""One user whose snapshot cannot complete does not hold back the other users of its TrueConf Server.

A push whose user's snapshot is being built, or is written and not yet acknowledged, waits for that snapshot in
the server's bounded queue (bridge/queue.py). When such a user has more changes than the queue holds, the queue
filled with that user's waiting pushes, the command consumer stopped pulling, and every other user's pushes and
the server's conference commands (the same consumer) waited for as long as that one snapshot kept failing:
TrueConf answering it OVERLOADED every time (retried forever), or SyncService unable to list that one calendar
(retried forever). Now a full queue gives up the pushes that can only wait for their user's snapshot: they are
answered SUPERSEDED and the user is owed a snapshot, sent until one is acknowledged (docs/architecture.md, "Deliver").

The same for the snapshot workers: one whose user's calendar could not be listed retried it in place (0.5 s
doubling to 30 s) for as long as it failed, so with `snapshot_concurrency` such users no other user got a snapshot
on that connection; now the user stays blocked and is listed again later while the worker goes on.

The TrueConf side is a hand-driven WebSocket client, so which snapshot fails is exact.
"""

from __future__ import annotations

from typing import Any

import pytest
from tcs_gateway_testkit import (
    RawBridgeClient,
    ScriptedTrueConf,
    World,
    gateway_settings,
    occurrence,
    server_settings,
    today_at,
)

from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import commands_pb2, common_pb2

BOB = "bob@example.test"
CAROL = "carol@example.test"
ACCEPT = common_pb2.RESPONSE_TYPE_ACCEPT
CAPACITY = 4
#: Bob's changes: more than twice what the queue holds.
CHANGES = 10


class _TrueConf(ScriptedTrueConf):
    """Answers every request of the gateway; answers the snapshots of the users in `refuse` OVERLOADED."""

    def __init__(self, client: RawBridgeClient, refuse: set[str]) -> None:
        super().__init__(client)
        self.refuse = refuse
        self.refused = 0

    async def answer(self, frame: dict[str, Any]) -> bool:
        if frame["method"] == "calendar.snapshot" and frame["payload"]["user"] in self.refuse:
            self.refused += 1
            await self.overloaded(frame)
            return True
        return False


async def _statuses(world: World, ids: list[str]) -> dict[str, int] | None:
    found = {r.command_id: int(r.status) for r in await world.commands.results() if r.command_id in ids}
    return found if len(found) == len(ids) else None


@pytest.mark.parametrize("failure", ["snapshot refused", "calendar unlisted"])
async def test_a_user_whose_snapshot_keeps_failing_does_not_hold_back_the_others(world: World, failure: str) -> None:
    fake = world.sync.fake
    settings = gateway_settings(
        world.sync,
        [server_settings()],
        users=[BOB, CAROL],
        queue_capacity=CAPACITY,
        fetch_batch=2,
        snapshot_concurrency=1,  # bob's snapshot is built first: his failing one must not keep carol's from being built
    )
    gateway = await world.gateway(settings)
    bob = [
        world.commands.upsert_command(BOB, occurrence(f"bob-{i}", start=today_at(6 + i), attendees=[(BOB, ACCEPT)]))
        for i in range(CHANGES)
    ]
    for command in bob:
        await world.commands.publish(command)  # TrueConf Server is not connected yet: they queue up

    async def queue_full() -> bool:
        return len(gateway.server().queue) == CAPACITY

    await wait_for_async(queue_full, what=f"the queue full ({CAPACITY}) of bob's pushes")
    if failure == "calendar unlisted":
        fake.unavailable_users.add(BOB)
    async with RawBridgeClient(gateway.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0
        tcs = _TrueConf(client, refuse={BOB} if failure == "snapshot refused" else set())
        async with tcs.answering():
            await wait_for_async(lambda: tcs.acked_snapshots(CAROL), what="carol's catch-up snapshot acknowledged")
            if failure == "snapshot refused":
                await wait_for_async(lambda: tcs.refused >= 2, what="bob's snapshot refused, and again")
            else:
                await wait_for_async(lambda: fake.calls.count(BOB) >= 2, what="bob's calendar unlisted, and again")
            # Carol's change, made after her snapshot was read, and a conference command, while bob's snapshot fails.
            carol = world.commands.upsert_command(CAROL, occurrence("carol-1", attendees=[(CAROL, ACCEPT)]))
            conference = world.commands.conference_command("conference_run", "carol-1")
            await world.commands.publish(carol)
            await world.commands.publish(conference)
            assert (await world.commands.result_of(carol.command_id, timeout=30)).status == (
                commands_pb2.COMMAND_STATUS_OK
            )
            assert [f["payload"]["event"]["id"] for f in tcs.pushes(CAROL)] == ["carol-1"]
            await world.commands.result_of(conference.command_id, timeout=30)  # pulled and run: any outcome
            # Meanwhile nothing of bob's went out of order: no push of his, no snapshot of his acknowledged.
            assert tcs.pushes(BOB) == [] and tcs.acked_snapshots(BOB) == []
            # Bob's snapshot gets through at last: his calendar reaches TrueConf whole, every command is answered.
            tcs.refuse.clear()
            fake.unavailable_users.clear()
            bob_ids = [c.command_id for c in bob]
            statuses = await wait_for_async(lambda: _statuses(world, bob_ids), timeout=60, what="bob's results")
            assert set(statuses.values()) <= {commands_pb2.COMMAND_STATUS_OK, commands_pb2.COMMAND_STATUS_SUPERSEDED}
            assert commands_pb2.COMMAND_STATUS_SUPERSEDED in statuses.values(), statuses
            latest = tcs.acked_snapshots(BOB)[-1]["payload"]
            assert sorted(e["id"] for e in latest["events"]) == sorted(f"bob-{i}" for i in range(CHANGES))
            assert tcs.pushes(BOB) == []
            await wait_for_async(lambda: not gateway.server().owed, what="no snapshot owed to bob any more")
            assert len(gateway.server().queue) == 0

"""getCalendarList with `sinceSeq` and `incremental` (docs/bridge-protocol.md §6.2 "Changes since a sequence"): TCS
holding a user's window as of an earlier seq gets only what changed since - the changed events and the removed ids -
paged like any list with no frame over the limit; when the sync-engine's history no longer reaches back to
`sinceSeq`, the whole list saying so. Through the TrueConf emulator: after a reconnect it asks for the changes and
applies them strictly."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tcs_gateway_testkit import (
    BOB,
    RawBridgeClient,
    World,
    admin,
    all_pages,
    bridge_state,
    calendar,
    calendar_of,
    frame_size,
    gateway_protocol_errors,
    gateway_settings,
    list_window,
    occurrence,
    server_settings,
    today_at,
)

from tccal.bridge_protocol import FrameValidator
from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import calendar_pb2


async def _change(world: World, client: RawBridgeClient, commands: list[Any]) -> int:
    """Publish the engine's commands for bob and wait until the gateway pushed the last; its seq."""
    for command in commands:
        await world.commands.publish(command)
    last = commands[-1].WhichOneof("command")
    engine_seq = getattr(commands[-1], str(last)).seq

    async def pushed() -> int | None:
        await client.call("ping", {})
        seqs = [f["payload"]["seq"] for f in client.received if str(f.get("method", "")).startswith("calendar.")]
        return max(seqs) if seqs and max(seqs) >= engine_seq * 1_000_000 else None

    result: int = await wait_for_async(pushed, what="the pushes of bob's changes")
    return result


def _moved(meeting: str, minutes: int, subject: str) -> calendar_pb2.Occurrence:
    item = occurrence(meeting, start=today_at(9, days=0) + timedelta(minutes=minutes), attendees=[(BOB, 4)])
    item.subject = subject
    return item


async def test_changes_since_a_seq_are_only_the_changed_and_removed_events(world: World) -> None:
    """bob holds his 300 events as of the list's seq; 7 changes later (3 edits, 1 new, 1 cancel, 2 deletes) the
    incremental answer holds exactly the 5 changed events and the 2 removed ids, based on the sinceSeq asked; asked
    without `incremental` the same sinceSeq still gets the whole list."""
    world.sync.fake.shown[BOB] = calendar_of(BOB, 300)
    world.sync.fake.seq[BOB] = 4
    running = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    validator = FrameValidator()
    async with RawBridgeClient(running.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0
        request = dict(list_window(), user=BOB)
        held = (await all_pages(client, request))[0]["payload"]
        commands = world.commands
        await _change(
            world,
            client,
            [
                commands.upsert_command(BOB, _moved("m00010", 50, "Edited 1")),
                commands.upsert_command(BOB, _moved("m00020", 100, "Edited 2")),
                commands.upsert_command(BOB, _moved("m00030", 7, "Moved earlier")),
                commands.upsert_command(BOB, _moved("new01", 61, "New")),
                commands.cancel_command(BOB, "m00040"),
                commands.delete_command(BOB, "m00050"),
                commands.delete_command(BOB, "m00060"),
            ],
        )
        frames = await all_pages(client, dict(request, sinceSeq=held["seq"], incremental=True))
        for frame in frames:
            assert validator.problem(frame, "getCalendarList.reply") is None
        answer = frames[0]["payload"]
        assert answer["incremental"] is True and answer["sinceSeq"] == held["seq"] and answer["seq"] > held["seq"]
        events = [event for frame in frames for event in frame["payload"]["events"]]
        removed = [event_id for frame in frames for event_id in frame["payload"]["removed"]]
        assert sorted(event["id"] for event in events) == ["m00010", "m00020", "m00030", "m00040", "new01"]
        assert sorted(removed) == ["m00050", "m00060"]
        assert {event["id"]: event["subject"] for event in events}["m00030"] == "Moved earlier"
        assert next(event for event in events if event["id"] == "m00040")["cancelled"] is True
        assert all(event["seq"] > held["seq"] for event in events)
        # unpaged, the same answer in one frame
        unpaged = await client.call("getCalendarList", dict(request, sinceSeq=held["seq"], incremental=True))
        assert validator.problem(unpaged, "getCalendarList.reply") is None
        assert len(unpaged["payload"]["events"]) == 5 and sorted(unpaged["payload"]["removed"]) == removed
        # without `incremental` (revision 1.1 TCS): the whole list, no incremental fields
        whole = (await all_pages(client, dict(request, sinceSeq=held["seq"])))[0]["payload"]
        assert "incremental" not in whole and "removed" not in whole and whole["pageCount"] == 1
        assert len(whole["events"]) == 299
        # at the answer's seq: unchanged
        current = await client.call("getCalendarList", dict(request, sinceSeq=answer["seq"], incremental=True))
        assert current["payload"]["unchanged"] is True and "incremental" not in current["payload"]


async def test_a_sinceseq_older_than_the_history_gets_the_whole_list_saying_so(world: World) -> None:
    """The engine forgot removals up to some seq (its daily prune): a sinceSeq below it is answered whole, with
    `incremental: false`, `wholeBecause: "history"` and the seq from which on changes would be answered."""
    world.sync.fake.shown[BOB] = calendar_of(BOB, 40)
    world.sync.fake.seq[BOB] = 4
    running = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    async with RawBridgeClient(running.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0
        request = dict(list_window(), user=BOB)
        held = (await client.call("getCalendarList", dict(request, page=0)))["payload"]
        await _change(world, client, [world.commands.delete_command(BOB, "m00001")])
        world.sync.fake.history_floor[BOB] = 5  # the delete's seq: removals up to it are no longer known
        frame = await client.call("getCalendarList", dict(request, page=0, sinceSeq=held["seq"], incremental=True))
        assert FrameValidator().problem(frame, "getCalendarList.reply") is None
        answer = frame["payload"]
        assert answer["incremental"] is False and answer["wholeBecause"] == "history"
        assert answer["historyFrom"] == 5_000_000 and "removed" not in answer
        assert sorted(event["id"] for event in answer["events"]) == sorted(world.sync.fake.shown[BOB])
        assert len(answer["events"]) == 39
        # `incremental` says what TCS can apply since its sinceSeq: without one it is refused
        alone = (await client.call("getCalendarList", dict(request, incremental=True)))["payload"]
        assert alone["errorCode"] == 6 and alone["field"] == "sinceSeq"


async def test_ten_changes_of_a_20000_occurrence_user_are_one_small_frame(world: World) -> None:
    """bob has 20,000 occurrences (~20 frames of 1 MiB whole); 10 changes since TCS's seq come as one page of 10
    events, a thousandth of the whole list's bytes."""
    world.sync.fake.shown[BOB] = calendar_of(BOB, 20_000)
    world.sync.fake.seq[BOB] = 4
    running = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    async with RawBridgeClient(running.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0
        request = dict(list_window(), user=BOB)
        whole = await all_pages(client, request)
        whole_bytes = sum(frame_size(frame) for frame in whole)
        held = whole[0]["payload"]["seq"]
        changes = [
            world.commands.upsert_command(BOB, _moved(f"m{n:05d}", 5 * n, "Edited")) for n in range(0, 18_000, 2_000)
        ]
        changes.append(world.commands.delete_command(BOB, "m19999"))
        await _change(world, client, changes)
        frames = await all_pages(client, dict(request, sinceSeq=held, incremental=True))
        assert len(frames) == 1
        answer = frames[0]["payload"]
        assert answer["incremental"] is True and len(answer["events"]) == 9 and answer["removed"] == ["m19999"]
        assert all(event["subject"] == "Edited" for event in answer["events"])
        assert frame_size(frames[0]) * 1000 < whole_bytes
        assert max(frame_size(frame) for frame in whole) <= 1_048_576


async def test_an_incremental_answer_of_many_changes_is_paged_within_the_frame_limit(world: World) -> None:
    """400 edits and 300 removals since TCS's seq, 64 KiB frames: several pages, none over the limit, every change
    in exactly one page (removed ids first), all with the answer's seq, incremental and sinceSeq."""
    world.sync.fake.shown[BOB] = calendar_of(BOB, 1_000)
    world.sync.fake.seq[BOB] = 4
    running = await world.gateway(gateway_settings(world.sync, [server_settings()], max_frame_bytes=65_536))
    async with RawBridgeClient(running.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0
        request = dict(list_window(), user=BOB)
        held = (await all_pages(client, request))[0]["payload"]["seq"]
        changes = [world.commands.upsert_command(BOB, _moved(f"m{n:05d}", 5 * n, "Edited")) for n in range(400)]
        changes += [world.commands.delete_command(BOB, f"m{n:05d}") for n in range(600, 900)]
        await _change(world, client, changes)
        frames = await all_pages(client, dict(request, sinceSeq=held, incremental=True))
        assert len(frames) > 2
        assert all(frame_size(frame) <= 65_536 for frame in frames)
        assert {(f["payload"]["seq"], f["payload"]["incremental"], f["payload"]["sinceSeq"]) for f in frames} == {
            (frames[0]["payload"]["seq"], True, held)
        }
        events = [event["id"] for frame in frames for event in frame["payload"]["events"]]
        removed = [event_id for frame in frames for event_id in frame["payload"]["removed"]]
        assert sorted(events) == [f"m{n:05d}" for n in range(400)] and len(set(events)) == 400
        assert sorted(removed) == [f"m{n:05d}" for n in range(600, 900)] and len(set(removed)) == 300


async def test_the_emulator_reconnecting_gets_only_the_changes_and_applies_them(world: World) -> None:
    """TCS (the emulator) holds bob's 500 events, goes away; 6 changes happen (3 edits, 1 new, 2 deletes). It comes
    back refusing pushes for a while (so only its list can bring the changes): its list after the reconnect asks
    with sinceSeq and incremental, receives exactly the 4 changed events and 2 removals, and its calendar then equals
    what the connector shows."""
    world.sync.fake.shown[BOB] = calendar_of(BOB, 500)
    world.sync.fake.seq[BOB] = 4
    emulator = await world.tcs(None)
    running = await world.gateway(gateway_settings(world.sync, [server_settings(emulator)]))
    await admin(emulator, "PUT", "/bridge/target", {"gateway_url": running.url})

    async def bob_holds(count: int) -> dict[str, Any] | None:
        state = await bridge_state(emulator)
        return state if state["users"].get(BOB, {}).get("events") == count else None

    await wait_for_async(lambda: bob_holds(500), timeout=60, what="bob's 500 events at TCS")
    await admin(emulator, "POST", "/bridge/disconnect", {})
    commands = world.commands
    for command in [
        commands.upsert_command(BOB, _moved("m00010", 50, "Edited 1")),
        commands.upsert_command(BOB, _moved("m00020", 100, "Edited 2")),
        commands.upsert_command(BOB, _moved("m00030", 7, "Moved earlier")),
        commands.upsert_command(BOB, _moved("new01", 61, "New")),
        commands.delete_command(BOB, "m00050"),
        commands.delete_command(BOB, "m00060"),
    ]:
        await world.commands.publish(command)
    await admin(emulator, "PUT", "/bridge/acks", {"mode": "refuse"})
    await admin(emulator, "POST", "/bridge/connect", {})

    async def changes_applied() -> dict[str, Any] | None:
        state = await bridge_state(emulator)
        return state if state["calendar_lists"]["incremental"] >= 1 else None

    state = await wait_for_async(changes_applied, timeout=60, what="TCS to apply bob's changes from its list")
    lists = state["calendar_lists"]
    assert lists["incremental"] == 1 and lists["incremental_events"] == 4 and lists["incremental_removed"] == 2
    assert lists["incremental_refused"] == 0 and lists["whole_history"] == 0
    await admin(emulator, "PUT", "/bridge/acks", {"mode": "normal"})
    shown = await calendar(emulator, BOB)
    assert [event["id"] for event in shown] == sorted(
        world.sync.fake.shown[BOB], key=lambda i: (world.sync.fake.shown[BOB][i].start.seconds, i)
    )
    subjects = {event["id"]: event["subject"] for event in shown}
    assert subjects["m00030"] == "Moved earlier" and subjects["new01"] == "New" and "m00050" not in subjects
    assert gateway_protocol_errors(await bridge_state(emulator)) == []


async def test_a_user_never_pushed_to_is_unchanged_or_listed_as_changes_never_whole_for_history(
    world: World,
) -> None:
    """TCS holds carol's window from a snapshot taken before her first push (engine seq 0): asked with that seq, her
    still empty calendar is `unchanged`; after her first pushes, the changes are her whole list, as an incremental
    answer (TCS held nothing) - never a whole list blamed on the history."""
    carol = "carol@example.test"
    world.sync.fake.shown[carol] = {}
    running = await world.gateway(gateway_settings(world.sync, [server_settings()], users=[carol]))
    async with RawBridgeClient(running.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0

        async def snapshot() -> dict[str, Any] | None:
            await client.call("ping", {})
            return next((f for f in client.received if f.get("method") == "calendar.snapshot"), None)

        held = (await wait_for_async(snapshot, what="carol's snapshot"))["payload"]["seq"]
        assert 0 < held < 1_000_000  # a snapshot at engine seq 0
        request = dict(list_window(), user=carol, sinceSeq=held, incremental=True)
        empty = (await client.call("getCalendarList", dict(request, page=0)))["payload"]
        assert empty["unchanged"] is True and empty["seq"] == held
        await _change(world, client, [world.commands.upsert_command(carol, _moved("c1", 30, "First"))])
        first = await client.call("getCalendarList", dict(request, page=0))
        assert FrameValidator().problem(first, "getCalendarList.reply") is None
        answer = first["payload"]
        assert answer["incremental"] is True and answer["removed"] == []
        assert [event["subject"] for event in answer["events"]] == ["First"]


async def test_a_tcs_catching_up_by_lists_gets_no_snapshots_but_its_pushes(world: World) -> None:
    """`auth` with `catchUp: "lists"` (revision 1.3): the gateway sends no catch-up snapshot of its served user, and
    her pushes still go out; TCS's own list is her calendar. Without catchUp the same connection gets her snapshot
    first (the older revisions' catch-up, unchanged)."""
    carol = "carol@example.test"
    world.sync.fake.shown[carol] = {"c0": _moved("c0", 0, "Held")}
    world.sync.fake.seq[carol] = 3
    running = await world.gateway(gateway_settings(world.sync, [server_settings()], users=[carol]))
    held = "Held"
    for catch_up, snapshots in (("lists", 0), ("snapshots", 1)):
        async with RawBridgeClient(running.url) as client:
            assert (await client.auth(catchUp=catch_up))["payload"]["errorCode"] == 0
            listed = (await client.call("getCalendarList", dict(list_window(), user=carol, page=0)))["payload"]
            assert [event["subject"] for event in listed["events"]] == [held]
            edited = _moved("c0", 0, f"Edited over {catch_up}")
            await _change(world, client, [world.commands.upsert_command(carol, edited)])
            methods = [f["method"] for f in client.received if str(f.get("method", "")).startswith("calendar.")]
            assert methods.count("calendar.snapshot") == snapshots
            assert methods[-1] == "calendar.upsert"
            upsert = next(f for f in reversed(client.received) if f.get("method") == "calendar.upsert")
            assert upsert["payload"]["event"]["subject"] == f"Edited over {catch_up}"
            held = edited.subject


async def test_an_unknown_catchup_is_refused_naming_the_field(world: World) -> None:
    running = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    async with RawBridgeClient(running.url) as client:
        answer = (await client.auth(catchUp="pushes"))["payload"]
        assert answer["errorCode"] == 6 and answer["field"] == "catchUp", answer


async def test_the_emulator_catching_up_by_lists_reconnects_without_snapshots(world: World) -> None:
    """The emulator as a revision-1.3 TCS (`catch_up: lists`) holds bob's 300 events, goes away; 3 changes happen.
    Neither connection brings a snapshot of bob, a served user: the lists (sinceSeq + incremental after the
    reconnect) and the pushes make its calendar equal what the connector shows."""
    world.sync.fake.shown[BOB] = calendar_of(BOB, 300)
    world.sync.fake.seq[BOB] = 4
    emulator = await world.tcs(None, extra={"catch_up": "lists"})
    running = await world.gateway(gateway_settings(world.sync, [server_settings(emulator)], users=[BOB]))
    await admin(emulator, "PUT", "/bridge/target", {"gateway_url": running.url})

    async def bob_holds(count: int) -> dict[str, Any] | None:
        state = await bridge_state(emulator)
        return state if state["users"].get(BOB, {}).get("events") == count else None

    first = await wait_for_async(lambda: bob_holds(300), timeout=60, what="bob's 300 events at TCS")
    assert first["pushes_received"].get("calendar.snapshot", 0) == 0  # a served user, yet TCS asked for the list
    await admin(emulator, "POST", "/bridge/disconnect", {})
    commands = world.commands
    for command in [
        commands.upsert_command(BOB, _moved("m00010", 50, "Edited")),
        commands.upsert_command(BOB, _moved("new01", 61, "New")),
        commands.delete_command(BOB, "m00050"),
    ]:
        await world.commands.publish(command)
    await admin(emulator, "POST", "/bridge/connect", {})
    expected = sorted(world.sync.fake.shown[BOB], key=lambda i: (world.sync.fake.shown[BOB][i].start.seconds, i))

    async def current() -> dict[str, Any] | None:
        state = await bridge_state(emulator)
        if state["authenticated_connections"] < 2 or state["calendar_lists"]["applied"] < 2:
            return None
        shown = await calendar(emulator, BOB)
        return state if [event["id"] for event in shown] == expected else None

    state = await wait_for_async(current, timeout=60, what="TCS to hold bob's changed calendar after the reconnect")
    assert state["pushes_received"].get("calendar.snapshot", 0) == 0
    subjects = {event["id"]: event["subject"] for event in await calendar(emulator, BOB)}
    assert subjects["m00010"] == "Edited" and subjects["new01"] == "New" and "m00050" not in subjects
    assert gateway_protocol_errors(state) == []

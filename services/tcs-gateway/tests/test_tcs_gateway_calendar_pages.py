"""Paged getCalendarList (docs/bridge-protocol.md §6.2 "Pages"): a calendar of any size is served whole with no
frame over `maxFrameBytes`; a page boundary neither splits nor repeats an event; all pages of a list carry the
seq it was read at, so a change during paging leaves TCS consistent by the §4 rules; lists of two users interleave
on one connection."""

from __future__ import annotations

import json
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
from tccal.cache_window import CacheWindow
from tccal_sandbox.testing import wait_for_async
from tcs_gateway.bridge.events import build_event, fit_event, size_bound
from tcs_gateway.bridge.framing import encode, encoded_size, parse_instant, reply_frame
from tcs_gateway.bridge.list_pages import page_frame, split_pages
from tcs_gateway.bridge.payloads import encoded_events_for

CAROL = "carol@example.test"
MAX_FRAME = 1_048_576


async def test_a_calendar_of_20000_occurrences_is_served_whole_through_the_emulator(world: World) -> None:
    """The emulator pages through bob's 20,000 occurrences (~18 MiB as JSON); every frame it received stays within
    the 1 MiB limit, and its inspection shows the whole calendar."""
    world.sync.fake.shown[BOB] = calendar_of(BOB, 20_000)
    world.sync.fake.seq[BOB] = 5
    emulator = await world.tcs(None)
    running = await world.gateway(gateway_settings(world.sync, [server_settings(emulator)]))
    await admin(emulator, "PUT", "/bridge/target", {"gateway_url": running.url})

    async def bob_listed() -> dict[str, Any] | None:
        state = await bridge_state(emulator)
        return state if state["users"].get(BOB, {}).get("events") == 20_000 else None

    state = await wait_for_async(bob_listed, timeout=120, what="bob's 20,000 occurrences at TCS")
    assert 0 < state["largest_frame_bytes"] <= MAX_FRAME
    assert state["calendar_lists"]["pages"] > 3 + 10  # bob's list took many pages (alice and carol one each)
    assert gateway_protocol_errors(state) == []
    shown = await calendar(emulator, BOB)
    assert [event["id"] for event in shown] == sorted(world.sync.fake.shown[BOB])
    assert {event["seq"] for event in shown} == {5_000_000}
    # Asked again for the same window, TCS says what it holds (sinceSeq): one small unchanged answer.
    again = (await admin(emulator, "POST", "/bridge/request-calendar", {"user": BOB}))["reply"]
    assert again["unchanged"] is True and again["events"] == [] and again["pageCount"] == 1
    state = await bridge_state(emulator)
    assert state["calendar_lists"]["unchanged"] == 1 and state["users"][BOB]["events"] == 20_000


async def test_page_boundaries_neither_split_nor_repeat_and_two_users_interleave(world: World) -> None:
    """With a 64 KiB frame limit, bob's and carol's lists are paged alternately on one connection: each page is a
    valid frame within the limit, the pages of one list hold every event once, in order, with one seq; asking
    beyond the last page, an unknown listId, or an unpaged request for a list too large are refused by name."""
    world.sync.fake.shown[BOB] = calendar_of(BOB, 600)
    world.sync.fake.shown[CAROL] = calendar_of(CAROL, 400, body="Agenda. " * 40)
    world.sync.fake.seq[BOB] = 3
    world.sync.fake.seq[CAROL] = 8
    running = await world.gateway(gateway_settings(world.sync, [server_settings()], max_frame_bytes=65_536))
    validator = FrameValidator()
    async with RawBridgeClient(running.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0
        window = list_window()
        requests = {user: dict(window, user=user) for user in (BOB, CAROL)}
        firsts = {user: await client.call("getCalendarList", dict(requests[user], page=0)) for user in (BOB, CAROL)}
        pages: dict[str, list[dict[str, Any]]] = {user: [firsts[user]] for user in (BOB, CAROL)}
        counts = {user: firsts[user]["payload"]["pageCount"] for user in (BOB, CAROL)}
        assert counts[BOB] > 2 and counts[CAROL] > 2
        for page in range(1, max(counts.values())):
            for user in (BOB, CAROL):  # alternately: bob's page n, carol's page n, ...
                if page < counts[user]:
                    asked = dict(requests[user], page=page, listId=firsts[user]["payload"]["listId"])
                    pages[user].append(await client.call("getCalendarList", asked))
        for user, seq in ((BOB, 3_000_000), (CAROL, 8_000_000)):
            ids: list[str] = []
            for index, frame in enumerate(pages[user]):
                assert frame_size(frame) <= 65_536
                assert validator.problem(frame, "getCalendarList.reply") is None
                payload = frame["payload"]
                assert payload["page"] == index and payload["pageCount"] == counts[user] and payload["seq"] == seq
                assert payload["events"], f"page {index} of {user} is empty"
                ids.extend(event["id"] for event in payload["events"])
            assert ids == sorted(world.sync.fake.shown[user])  # all, once each, in order across the boundaries
        # bob's list was forgotten after its last page: its listId is unknown now.
        again = await client.call(
            "getCalendarList", dict(requests[BOB], page=1, listId=firsts[BOB]["payload"]["listId"])
        )
        assert again["payload"]["errorCode"] == 6 and again["payload"]["field"] == "listId"
        fresh = await client.call("getCalendarList", dict(requests[BOB], page=0))
        beyond = await client.call(
            "getCalendarList", dict(requests[BOB], page=counts[BOB], listId=fresh["payload"]["listId"])
        )
        assert beyond["payload"]["errorCode"] == 6 and beyond["payload"]["field"] == "page"
        other = await client.call("getCalendarList", dict(requests[CAROL], page=1, listId=fresh["payload"]["listId"]))
        assert other["payload"]["errorCode"] == 6 and other["payload"]["field"] == "user"
        missing = await client.call("getCalendarList", dict(requests[BOB], page=2))
        assert missing["payload"]["errorCode"] == 6 and missing["payload"]["field"] == "listId"
        unpaged = await client.call("getCalendarList", requests[BOB])
        assert unpaged["payload"]["errorCode"] == 7
        small = await client.call("getCalendarList", dict(window, user="alice@example.test"))
        assert small["payload"]["errorCode"] == 0 and "page" not in small["payload"]  # revision 1.0 answer


async def test_a_change_during_paging_ends_consistent(world: World) -> None:
    """bob's meeting changes while TCS pages through his list: the push carries a seq above the list's, every page
    keeps the list's seq (so TCS finds the list stale, §4, and asks again), and the list asked again holds the
    change with a seq not below the push's."""
    world.sync.fake.shown[BOB] = calendar_of(BOB, 300)
    world.sync.fake.seq[BOB] = 4
    running = await world.gateway(gateway_settings(world.sync, [server_settings()], max_frame_bytes=65_536))
    async with RawBridgeClient(running.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0
        window = list_window()
        request = dict(window, user=BOB)
        first = await client.call("getCalendarList", dict(request, page=0))
        list_seq = first["payload"]["seq"]
        assert first["payload"]["pageCount"] > 2
        changed = occurrence("m00150", start=today_at(9, days=0) + timedelta(minutes=750), attendees=[(BOB, 4)])
        changed.subject = "Moved to the big room"
        command = world.commands.upsert_command(BOB, changed)
        await world.commands.publish(command)

        async def the_push() -> dict[str, Any] | None:
            await client.call("ping", {})
            pushes = [f for f in client.received if f.get("method") == "calendar.upsert"]
            return pushes[0] if pushes else None

        push = await wait_for_async(the_push, what="the push of bob's changed meeting")
        assert push["payload"]["seq"] > list_seq
        rest = [
            await client.call("getCalendarList", dict(request, page=page, listId=first["payload"]["listId"]))
            for page in range(1, first["payload"]["pageCount"])
        ]
        assert {frame["payload"]["seq"] for frame in rest} == {list_seq}  # stale as a whole: TCS asks again
        again = await all_pages(client, request)
        assert again[0]["payload"]["seq"] >= push["payload"]["seq"]
        events = {event["id"]: event for frame in again for event in frame["payload"]["events"]}
        assert len(events) == 300 and events["m00150"]["subject"] == "Moved to the big room"


async def test_since_seq_answers_unchanged_until_something_changed(world: World) -> None:
    """`sinceSeq` at the user's seq: `unchanged`, no events (paged: one page; unpaged: no page fields); after a
    push with a higher seq, the whole list; at that push's seq, unchanged again."""
    world.sync.fake.shown[BOB] = calendar_of(BOB, 50)
    world.sync.fake.seq[BOB] = 6
    running = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    async with RawBridgeClient(running.url) as client:
        assert (await client.auth())["payload"]["errorCode"] == 0
        request = dict(list_window(), user=BOB)
        listed = (await client.call("getCalendarList", dict(request, page=0)))["payload"]
        assert len(listed["events"]) == 50 and "unchanged" not in listed
        held = (await client.call("getCalendarList", dict(request, page=0, sinceSeq=listed["seq"])))["payload"]
        assert held["unchanged"] is True and held["events"] == [] and held["pageCount"] == 1
        assert held["seq"] <= listed["seq"]
        unpaged = (await client.call("getCalendarList", dict(request, sinceSeq=listed["seq"])))["payload"]
        assert unpaged["unchanged"] is True and unpaged["events"] == [] and "page" not in unpaged
        changed = occurrence("m00010", start=today_at(9, days=0) + timedelta(minutes=50), attendees=[(BOB, 4)])
        changed.subject = "Moved"
        await world.commands.publish(world.commands.upsert_command(BOB, changed))

        async def the_push() -> dict[str, Any] | None:
            await client.call("ping", {})
            return next((f for f in client.received if f.get("method") == "calendar.upsert"), None)

        push = await wait_for_async(the_push, what="the push of bob's change")
        behind = (await client.call("getCalendarList", dict(request, page=0, sinceSeq=listed["seq"])))["payload"]
        assert "unchanged" not in behind and len(behind["events"]) == 50
        assert next(e for e in behind["events"] if e["id"] == "m00010")["subject"] == "Moved"
        current = (await client.call("getCalendarList", dict(request, sinceSeq=push["payload"]["seq"])))["payload"]
        assert current["unchanged"] is True


def test_the_size_bound_is_never_below_the_encoded_size() -> None:
    """fit_event skips encoding an event whose bound fits: the bound must hold for the worst texts (control
    characters, written as six bytes each; four-byte characters), and a bound over the budget still fits exactly."""
    worst = occurrence(
        "\x01" * 500,
        attendees=[(f"a{n}@example.test", 4) for n in range(50)],
        conference=("c" * 100, "https://tcs.example.test/c/" + "c" * 100),
    )
    worst.body = "\x02" * 65_536
    worst.subject = "\U0001f600" * 1024
    worst.location = '"' * 1024
    event = build_event(worst, BOB, 5, server_host="tcs.example.test")
    assert encoded_size(event) > 65_536 * 6
    assert size_bound(event) >= encoded_size(event)
    fitted = fit_event(event, 400_000, BOB)
    assert encoded_size(fitted) <= 400_000 < encoded_size(event)
    plain = build_event(occurrence("m1", attendees=[(BOB, 4)]), BOB, 5, server_host="tcs.example.test")
    assert size_bound(plain) >= encoded_size(plain) and fit_event(plain, 1_000_000, BOB) is plain


def test_a_page_is_written_as_the_gateway_writes_every_frame() -> None:
    """Pages encode their events with orjson and other frames with json: the page's bytes (and so the sizes
    split_pages counted) are exactly `framing.encode`'s for the worst texts — control characters, quotes,
    backslashes, U+2028, four-byte characters — and instants with and without a fraction."""
    tricky = occurrence('m\x00\x1f\x7f\\"', attendees=[(BOB, 4), ("ä@example.test", 3)])
    tricky.subject = "\u2028\u2029\ufeff\U0001f600 «Planning» \t\n\r\b\f"
    tricky.body = "\x01" * 300 + "\\" * 10 + '"' * 10
    tricky.start.nanos = 123_456_789
    plain = occurrence("m2", start=today_at(10), attendees=[(BOB, 4)])
    events = [build_event(item, BOB, 5, server_host="tcs.example.test") for item in (tricky, plain)]
    assert events[0]["start"].endswith(".123456Z") and events[1]["start"].endswith(":00Z")
    window = list_window()
    span = CacheWindow(parse_instant(window["from"]), parse_instant(window["to"]))
    texts = encoded_events_for([plain, tricky], BOB, 5, span, server_host="tcs.example.test", budget=MAX_FRAME)
    assert texts == [encode(event).encode("utf-8") for event in events]
    pages = split_pages(texts, BOB, window["from"], window["to"], MAX_FRAME)
    assert pages == [texts]
    answer = {"errorCode": 0, "user": BOB, **window, "seq": 5, "listId": "l1st-Id_0", "page": 0, "pageCount": 1}
    frame = page_frame(7, answer, pages[0])
    assert frame == encode(reply_frame(7, dict(answer, events=events))).encode("utf-8")
    assert FrameValidator().problem(json.loads(frame), "getCalendarList.reply") is None

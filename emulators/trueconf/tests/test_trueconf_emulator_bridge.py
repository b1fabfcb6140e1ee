"""The emulator as TrueConf Server on the calendar bridge, driven by a small in-test gateway (aiohttp).

The gateway here is deliberately simple but keeps a gateway's state (events and seq per user) so that
getCalendarList answers stay consistent with the pushes it sent; it validates every frame the emulator
sends against docs/bridge-protocol.schema.json.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tccal_sandbox.embedded import free_ports
from tccal_sandbox.testing import wait_for_async
from trueconf_emulator.schema import FrameValidator, load_schema
from trueconf_emulator.testing import EmulatorProcess, start_emulator_async

VALIDATOR = FrameValidator(load_schema())
SERVER_ID = "tcs.example.test#vcs"
SECRET = "bridge-secret"
ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"
ORGANIZER = "postman@example.test"
DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_event(
    event_id: str,
    user: str,
    *,
    seq: int,
    hour: int = 9,
    day: int = 0,
    minutes: int = 30,
    subject: str = "Planning",
    response: str = "accepted",
    cancelled: bool = False,
    private: bool = False,
    conference_id: str | None = None,
) -> dict[str, Any]:
    start = DAY + timedelta(days=day, hours=hour)
    attendees = [
        {"email": ORGANIZER, "name": "Postman", "role": "required", "response": "organizer"},
        {"email": user, "name": user.split("@")[0], "role": "required", "response": response},
    ]
    return {
        "id": event_id,
        "meetingId": event_id.split(":")[0],
        "uid": f"uid-{event_id}",
        "subject": None if private else subject,
        "body": None if private else "Agenda",
        "location": None if private else "Room 1",
        "start": iso(start),
        "end": iso(start + timedelta(minutes=minutes)),
        "allDay": False,
        "timeZone": "Europe/Moscow",
        "cancelled": cancelled,
        "private": private,
        "organizer": {"email": ORGANIZER, "name": "Postman"},
        "attendees": [] if private else attendees,
        "myResponse": response,
        "recurring": False,
        "conference": None
        if conference_id is None or private
        else {"id": conference_id, "url": f"https://tcs.example.test/c/{conference_id}"},
        "updatedAt": iso(DAY - timedelta(days=1)),
        "seq": seq,
    }


class GatewayConnection:
    def __init__(self, ws: web.WebSocketResponse, index: int) -> None:
        self.ws = ws
        self.index = index
        self.frames: list[dict[str, Any]] = []
        self.replies: dict[int, dict[str, Any]] = {}
        self.reply_events: dict[int, asyncio.Event] = {}
        self.push_methods: dict[int, str] = {}
        self.authenticated = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._next_id = 0

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def request(self, method: str, payload: dict[str, Any]) -> int:
        frame_id = self.new_id()
        self.push_methods[frame_id] = method
        self.reply_events[frame_id] = asyncio.Event()
        await self.ws.send_str(json.dumps({"type": 1, "id": frame_id, "method": method, "payload": payload}))
        return frame_id

    async def reply(self, frame_id: int, timeout: float = 10.0) -> dict[str, Any]:
        await asyncio.wait_for(self.reply_events[frame_id].wait(), timeout)
        return self.replies[frame_id]

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    def requests_of(self, method: str) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if frame.get("type") == 1 and frame.get("method") == method]


class FakeGateway:
    """Gateway side of the bridge: auth, getCalendarList from its own state, pushes that update that state."""

    def __init__(self, *, secret: str = SECRET, mailboxes: tuple[str, ...] = (ALICE, BOB)) -> None:
        self.secret = secret
        self.mailboxes = set(mailboxes)
        #: Per user, how many more getCalendarList to answer 8 INTERNAL_ERROR with retryAfterMs 200.
        self.list_failures: dict[str, int] = {}
        #: Per user, answers to give the next getCalendarList (their `seq`, `events` and anything else), in turn.
        self.list_answers: dict[str, list[dict[str, Any]]] = {}
        self.calendars: dict[str, dict[str, dict[str, Any]]] = {user: {} for user in mailboxes}
        self.seq: dict[str, int] = {user: 0 for user in mailboxes}
        self.connections: list[GatewayConnection] = []
        self.violations: list[str] = []
        self.answer_pings = True
        self.on_authenticated: Callable[[GatewayConnection], Awaitable[None]] | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._new_connection = asyncio.Condition()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/bridge/v1", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"ws://127.0.0.1:{port}/bridge/v1"

    async def stop(self) -> None:
        for conn in self.connections:
            if not conn.ws.closed:
                await conn.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def authenticated_connection(self, number: int, timeout: float = 15.0) -> GatewayConnection:
        """The `number`-th (1-based) connection that authenticated successfully."""

        async def find() -> GatewayConnection:
            async with self._new_connection:
                while True:
                    done = [conn for conn in self.connections if conn.authenticated.is_set()]
                    if len(done) >= number:
                        return done[number - 1]
                    await self._new_connection.wait()

        return await asyncio.wait_for(find(), timeout)

    def set_events(self, user: str, events: list[dict[str, Any]]) -> None:
        self.calendars[user] = {event["id"]: event for event in events}
        self.seq[user] = max([self.seq.get(user, 0), *(event["seq"] for event in events)])

    def next_seq(self, user: str) -> int:
        self.seq[user] = self.seq.get(user, 0) + 1
        return self.seq[user]

    async def push(self, conn: GatewayConnection, method: str, payload: dict[str, Any]) -> int:
        """Send a push and update the gateway's own state as a real gateway would."""
        user = payload["user"]
        self.seq[user] = max(self.seq.get(user, 0), payload["seq"])
        if method in ("calendar.upsert", "calendar.cancel"):
            self.calendars.setdefault(user, {})[payload["event"]["id"]] = payload["event"]
        elif method == "calendar.delete":
            self.calendars.setdefault(user, {}).pop(payload["id"], None)
        return await conn.request(method, payload)

    async def _notify(self) -> None:
        async with self._new_connection:
            self._new_connection.notify_all()

    def _check(self, frame: Any, definition: str) -> None:
        if not VALIDATOR.has_definition(definition):
            definition = "replyFrame" if definition.endswith(".reply") else "requestFrame"
        problem = VALIDATOR.problem(frame, definition)
        if problem is not None:
            self.violations.append(f"{definition}: {problem.message}")

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = GatewayConnection(ws, len(self.connections) + 1)
        self.connections.append(conn)
        await self._notify()
        peer_close_code: int | None = None
        try:
            while True:
                message = await ws.receive()
                if message.type == aiohttp.WSMsgType.CLOSE:
                    peer_close_code = int(message.data)  # the code the emulator sent, before any reply of ours
                    break
                if message.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(message.data)
                conn.frames.append(frame)
                if frame.get("type") == 2:
                    method = conn.push_methods.get(frame["id"])
                    self._check(frame, f"{method}.reply" if method else "replyFrame")
                    conn.replies[frame["id"]] = frame["payload"]
                    if frame["id"] in conn.reply_events:
                        conn.reply_events[frame["id"]].set()
                    continue
                self._check(frame, f"{frame.get('method')}.request")
                await self._on_request(conn, frame)
        finally:
            conn.close_code = peer_close_code if peer_close_code is not None else ws.close_code
            conn.closed.set()
            await self._notify()
        return ws

    async def _on_request(self, conn: GatewayConnection, frame: dict[str, Any]) -> None:
        method, frame_id, payload = frame["method"], frame["id"], frame["payload"]
        if method == "auth":
            if payload.get("secret") != self.secret:
                await conn.ws.send_json(
                    {
                        "type": 2,
                        "id": frame_id,
                        "payload": {"errorCode": 5, "errorName": "BAD_SECRET", "errorDescription": "wrong secret"},
                    }
                )
                await conn.ws.close(code=4001, message=b"auth failed")
                return
            await conn.ws.send_json(
                {
                    "type": 2,
                    "id": frame_id,
                    "payload": {
                        "errorCode": 0,
                        "protocolVersion": 1,
                        "sessionId": f"session-{conn.index}",
                        "limits": {
                            "maxFrameBytes": 1048576,
                            "maxInFlight": payload.get("maxInFlight", 64),
                            "pingIntervalSec": 30,
                            "replyTimeoutSec": 30,
                        },
                        "window": {"from": iso(DAY - timedelta(days=30)), "to": iso(DAY + timedelta(days=60))},
                    },
                }
            )
            conn.authenticated.set()
            await self._notify()
            if self.on_authenticated is not None:
                await self.on_authenticated(conn)
        elif method == "getCalendarList":
            user = payload["user"]
            if self.list_failures.get(user, 0) > 0:
                self.list_failures[user] -= 1
                reply = {
                    "errorCode": 8,
                    "errorName": "INTERNAL_ERROR",
                    "errorDescription": "sync-engine is starting",
                    "retryAfterMs": 200,
                }
            elif user not in self.mailboxes:
                reply = {"errorCode": 12, "errorName": "UNKNOWN_USER", "errorDescription": f"no mailbox {user}"}
            elif self.list_answers.get(user):
                window = {name: payload[name] for name in ("user", "from", "to")}
                reply = {"errorCode": 0, **window, **self.list_answers[user].pop(0)}
                if "page" in payload:
                    reply.update({"listId": f"list-{frame_id}", "page": payload["page"], "pageCount": 1})
            else:
                window_from = datetime.fromisoformat(payload["from"])
                window_to = datetime.fromisoformat(payload["to"])
                events = [
                    event
                    for event in self.calendars.get(user, {}).values()
                    if datetime.fromisoformat(event["start"]) < window_to
                    and datetime.fromisoformat(event["end"]) > window_from
                ]
                events.sort(key=lambda event: event["start"])
                window = {name: payload[name] for name in ("user", "from", "to")}
                reply = {"errorCode": 0, **window, "seq": self.seq.get(user, 0), "events": events}
                if payload.get("incremental"):  # it keeps no history (§6.2 "Changes since a sequence"): whole
                    reply.update({"incremental": False, "wholeBecause": "history", "historyFrom": max(1, reply["seq"])})
                if "page" in payload:  # a paged request (§6.2 "Pages"): a small calendar is one page
                    reply.update({"listId": f"list-{frame_id}", "page": payload["page"], "pageCount": 1})
            await conn.ws.send_json({"type": 2, "id": frame_id, "payload": reply})
        elif method == "ping":
            if self.answer_pings:
                await conn.ws.send_json({"type": 2, "id": frame_id, "payload": {"errorCode": 0}})
        else:
            await conn.ws.send_json(
                {
                    "type": 2,
                    "id": frame_id,
                    "payload": {"errorCode": 2, "errorName": "UNKNOWN_METHOD", "errorDescription": method},
                }
            )


async def http(method: str, url: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, url, json=body) as response:
        data = await response.json()
        if response.status >= 400:
            raise AssertionError(f"{method} {url} -> {response.status}: {data}")
        return data


async def calendar(tcs: EmulatorProcess, email: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await http("GET", f"{tcs.inspect_url}/calendars/{email}")
    return result


async def bridge_state(tcs: EmulatorProcess) -> dict[str, Any]:
    result: dict[str, Any] = await http("GET", f"{tcs.inspect_url}/bridge")
    return result


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    fake.set_events(
        ALICE,
        [
            make_event("m1:occ1", ALICE, seq=3, hour=9, subject="Marketing", conference_id="561849261795"),
            make_event("m2", ALICE, seq=5, hour=7, private=True),
            make_event("m3", ALICE, seq=4, day=40, subject="Far away"),
        ],
    )
    await fake.start()
    yield fake
    await fake.stop()


async def _start(gateway: FakeGateway, **extra: Any) -> EmulatorProcess:
    return await start_emulator_async(gateway_url=gateway.url, extra={"max_in_flight": 8, **extra})


@pytest_asyncio.fixture
async def tcs(gateway: FakeGateway) -> AsyncIterator[EmulatorProcess]:
    handle = await _start(gateway)
    yield handle
    await handle.astop()


async def test_auth_first_then_calendar_lists_for_every_directory_user(
    gateway: FakeGateway, tcs: EmulatorProcess
) -> None:
    conn = await gateway.authenticated_connection(1)
    assert conn.frames[0]["method"] == "auth"
    auth = conn.frames[0]["payload"]
    assert auth["serverId"] == SERVER_ID
    assert auth["secret"] == SECRET
    assert auth["protocolVersion"] == 1
    assert auth["maxInFlight"] == 8

    async def lists_done() -> bool:
        state = await bridge_state(tcs)
        lists = state["calendar_lists"]
        return bool(lists["applied"] == 2 and lists["errors"] == 1)

    await wait_for_async(lists_done, what="getCalendarList answered for alice, bob and carol")
    asked = sorted(frame["payload"]["user"] for frame in conn.requests_of("getCalendarList"))
    assert asked == [ALICE, BOB, CAROL]
    window = conn.requests_of("getCalendarList")[0]["payload"]
    assert window["from"] < window["to"]

    events = await calendar(tcs, ALICE)
    assert [event["id"] for event in events] == ["m2", "m1:occ1", "m3"]  # sorted by start
    marketing = events[1]
    for key in ("id", "subject", "start", "end", "all_day", "cancelled", "organizer", "attendees", "conference"):
        assert key in marketing
    assert marketing["subject"] == "Marketing"
    assert marketing["start"].endswith("Z") and marketing["all_day"] is False and marketing["cancelled"] is False
    assert marketing["organizer"] == ORGANIZER
    assert marketing["attendees"][1] == {"email": ALICE, "name": "alice", "role": "required", "response": "accepted"}
    assert marketing["conference"] == {"id": "561849261795", "url": "https://tcs.example.test/c/561849261795"}
    private = events[0]
    assert private["private"] is True and private["subject"] is None and private["attendees"] == []

    state = await bridge_state(tcs)
    assert state["state"] == "connected"
    assert state["session"]["sessionId"] == "session-1"
    assert state["calendar_list_errors"][CAROL]["errorCode"] == 12
    assert state["protocol_error_count"] == 0
    assert gateway.violations == []


async def test_upsert_cancel_delete_are_applied_and_acknowledged(gateway: FakeGateway, tcs: EmulatorProcess) -> None:
    conn = await gateway.authenticated_connection(1)
    seq = gateway.next_seq(BOB)
    event = make_event("b1", BOB, seq=seq, subject="Kick-off", conference_id="777")
    ack = await conn.reply(await gateway.push(conn, "calendar.upsert", {"user": BOB, "seq": seq, "event": event}))
    assert ack == {"errorCode": 0, "applied": True, "seq": seq}
    assert [(row["id"], row["subject"]) for row in await calendar(tcs, BOB)] == [("b1", "Kick-off")]

    seq = gateway.next_seq(BOB)
    moved = make_event("b1", BOB, seq=seq, subject="Kick-off (moved)", hour=11, response="tentative")
    ack = await conn.reply(await gateway.push(conn, "calendar.upsert", {"user": BOB, "seq": seq, "event": moved}))
    assert ack["applied"] is True
    [row] = await calendar(tcs, BOB)
    assert row["subject"] == "Kick-off (moved)" and row["start"] == moved["start"] and row["conference"] is None
    assert row["my_response"] == "tentative"
    assert await http("GET", f"{tcs.inspect_url}/calendars/{BOB}?prefix=Kick") == [row]
    assert await http("GET", f"{tcs.inspect_url}/calendars/{BOB}?prefix=Other") == []

    seq = gateway.next_seq(BOB)
    cancelled = {**moved, "cancelled": True, "seq": seq}
    ack = await conn.reply(await gateway.push(conn, "calendar.cancel", {"user": BOB, "seq": seq, "event": cancelled}))
    assert ack["applied"] is True
    [row] = await calendar(tcs, BOB)
    assert row["cancelled"] is True

    seq = gateway.next_seq(BOB)
    ack = await conn.reply(
        await gateway.push(conn, "calendar.delete", {"user": BOB, "seq": seq, "id": "b1", "reason": "deleted"})
    )
    assert ack == {"errorCode": 0, "applied": True, "seq": seq}
    assert await calendar(tcs, BOB) == []

    state = await bridge_state(tcs)
    assert state["pushes_received"] == {
        "calendar.upsert": 2,
        "calendar.cancel": 1,
        "calendar.delete": 1,
        "total": 4,
    }
    assert state["acks_sent"] == 4 and state["pushes_applied"] == 4
    assert gateway.violations == []


async def test_duplicate_and_stale_pushes_change_nothing(gateway: FakeGateway, tcs: EmulatorProcess) -> None:
    conn = await gateway.authenticated_connection(1)
    payload = {"user": BOB, "seq": 20, "event": make_event("b2", BOB, seq=20, subject="Current")}
    first = await conn.reply(await gateway.push(conn, "calendar.upsert", payload))
    assert first == {"errorCode": 0, "applied": True, "seq": 20}
    again = await conn.reply(await conn.request("calendar.upsert", payload))
    assert again == {"errorCode": 0, "applied": False, "seq": 20}
    older = {"user": BOB, "seq": 15, "event": make_event("b2", BOB, seq=15, subject="Older")}
    stale = await conn.reply(await conn.request("calendar.upsert", older))
    assert stale == {"errorCode": 0, "applied": False, "seq": 20}
    [row] = await calendar(tcs, BOB)
    assert row["subject"] == "Current" and row["seq"] == 20
    state = await bridge_state(tcs)
    assert state["duplicates_ignored"] == 1
    assert state["stale_ignored"] == 1


async def test_snapshot_in_chunks_replaces_the_window_only_when_complete(
    gateway: FakeGateway, tcs: EmulatorProcess
) -> None:
    conn = await gateway.authenticated_connection(1)
    await wait_for_async(lambda: _has_events(tcs, ALICE, 3), what="alice's initial list")
    seq = gateway.next_seq(ALICE)
    window = {"from": iso(DAY - timedelta(days=1)), "to": iso(DAY + timedelta(days=10))}
    first = {
        "user": ALICE,
        "seq": seq,
        **window,
        "chunkIndex": 0,
        "chunkCount": 2,
        "events": [make_event("s1", ALICE, seq=seq, hour=13, subject="Snap one")],
    }
    ack = await conn.reply(await conn.request("calendar.snapshot", first))
    assert ack == {"errorCode": 0, "applied": False, "seq": seq - 1}
    assert [row["id"] for row in await calendar(tcs, ALICE)] == ["m2", "m1:occ1", "m3"]

    second = {**first, "chunkIndex": 1, "events": [make_event("s2", ALICE, seq=seq, day=2, subject="Snap two")]}
    ack = await conn.reply(await conn.request("calendar.snapshot", second))
    assert ack == {"errorCode": 0, "applied": True, "seq": seq}
    # m1 and m2 lay inside the snapshot window and are gone; m3 (day 40) lies outside and stays.
    assert [row["id"] for row in await calendar(tcs, ALICE)] == ["s1", "s2", "m3"]
    assert gateway.violations == []


async def _has_events(tcs: EmulatorProcess, email: str, count: int) -> bool:
    return len(await calendar(tcs, email)) == count


async def test_invalid_frames_get_the_documented_error_codes(gateway: FakeGateway, tcs: EmulatorProcess) -> None:
    conn = await gateway.authenticated_connection(1)

    async def push(method: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await conn.reply(await conn.request(method, payload))

    backwards = make_event("x1", BOB, seq=50)
    backwards["end"] = iso(DAY)  # before start (09:00)
    reply = await push("calendar.upsert", {"user": BOB, "seq": 50, "event": backwards})
    assert reply["errorCode"] == 6 and reply["field"] == "event.end"

    missing = make_event("x1", BOB, seq=50)
    del missing["start"]
    reply = await push("calendar.upsert", {"user": BOB, "seq": 50, "event": missing})
    assert reply["errorCode"] == 6 and reply["field"] == "event.start"

    reply = await push("calendar.upsert", {"user": BOB, "seq": 51, "event": make_event("x1", BOB, seq=50)})
    assert reply["errorCode"] == 6 and reply["field"] == "event.seq"

    bad_zone = make_event("x1", BOB, seq=50)
    bad_zone["timeZone"] = "Mars/Olympus_Mons"
    reply = await push("calendar.upsert", {"user": BOB, "seq": 50, "event": bad_zone})
    assert reply["errorCode"] == 6 and reply["field"] == "event.timeZone"

    wrong_answer = make_event("x1", BOB, seq=50, response="declined")
    wrong_answer["myResponse"] = "accepted"
    reply = await push("calendar.upsert", {"user": BOB, "seq": 50, "event": wrong_answer})
    assert reply["errorCode"] == 6 and reply["field"] == "event.myResponse"

    reply = await push(
        "calendar.upsert",
        {"user": "nobody@example.test", "seq": 1, "event": make_event("x1", "nobody@example.test", seq=1)},
    )
    assert reply["errorCode"] == 12 and reply["field"] == "user"

    reply = await push("calendar.move", {"user": BOB})
    assert reply["errorCode"] == 2
    reply = await push("getCalendarList", {"user": BOB, "from": iso(DAY), "to": iso(DAY + timedelta(days=1))})
    assert reply["errorCode"] == 2
    reply = await push("ping", {})
    assert reply["errorCode"] == 0 and "ts" in reply

    await conn.send_raw("{not json")
    await wait_for_async(lambda: any(f.get("id") == 0 for f in conn.frames), what="reply to the malformed frame")
    malformed = next(frame for frame in conn.frames if frame.get("id") == 0)
    assert malformed["payload"]["errorCode"] == 1

    assert await calendar(tcs, BOB) == []
    state = await bridge_state(tcs)
    assert state["invalid_pushes"] == 5
    assert state["malformed_frames"] == 1
    kinds = {entry["kind"] for entry in state["protocol_errors"]}
    assert {"invalid_payload", "unknown_user", "unknown_method", "malformed_frame"} <= kinds
    assert state["state"] == "connected"
    assert gateway.violations == []


async def test_delayed_acks_and_the_in_flight_window(gateway: FakeGateway, tcs: EmulatorProcess) -> None:
    conn = await gateway.authenticated_connection(1)
    await http("PUT", f"{tcs.admin_url}/bridge/acks", {"delay_ms": 1500})
    seq = gateway.next_seq(BOB)
    frame_id = await gateway.push(
        conn, "calendar.upsert", {"user": BOB, "seq": seq, "event": make_event("d1", BOB, seq=seq)}
    )

    async def applied_but_unacknowledged() -> bool:
        state = await bridge_state(tcs)
        return bool(state["pushes_applied"] == 1 and state["acks_pending"] == 1)

    await wait_for_async(applied_but_unacknowledged, what="push applied with its ack held back")
    assert frame_id not in conn.replies
    assert (await conn.reply(frame_id))["applied"] is True

    # Window: max_in_flight is 8; a ninth push while eight wait is refused with OVERLOADED.
    ids = []
    for index in range(9):
        seq = gateway.next_seq(BOB)
        event = make_event(f"w{index}", BOB, seq=seq, day=index)
        ids.append(await gateway.push(conn, "calendar.upsert", {"user": BOB, "seq": seq, "event": event}))
    ninth = await conn.reply(ids[8])
    assert ninth["errorCode"] == 9 and ninth["retryAfterMs"] > 0
    replies = [await conn.reply(frame_id) for frame_id in ids[:8]]
    assert all(reply["applied"] for reply in replies)
    state = await bridge_state(tcs)
    assert state["window_rejections"] == 1
    assert gateway.violations == []


async def test_refused_acks_do_not_apply_the_push(gateway: FakeGateway, tcs: EmulatorProcess) -> None:
    conn = await gateway.authenticated_connection(1)
    policy = await http(
        "PUT", f"{tcs.admin_url}/bridge/acks", {"mode": "refuse", "error_code": 8, "retry_after_ms": 250}
    )
    assert policy["mode"] == "refuse"
    seq = gateway.next_seq(BOB)
    payload = {"user": BOB, "seq": seq, "event": make_event("r1", BOB, seq=seq)}
    reply = await conn.reply(await gateway.push(conn, "calendar.upsert", payload))
    assert reply["errorCode"] == 8 and reply["retryAfterMs"] == 250 and reply["errorName"] == "INTERNAL_ERROR"
    assert await calendar(tcs, BOB) == []

    await http("PUT", f"{tcs.admin_url}/bridge/acks", {"mode": "normal"})
    reply = await conn.reply(await conn.request("calendar.upsert", payload))
    assert reply == {"errorCode": 0, "applied": True, "seq": seq}
    assert [row["id"] for row in await calendar(tcs, BOB)] == ["r1"]
    assert (await bridge_state(tcs))["acks_refused"] == 1


async def test_withheld_ack_then_drop_reconnect_snapshot_and_resend(gateway: FakeGateway, tcs: EmulatorProcess) -> None:
    conn = await gateway.authenticated_connection(1)
    await http("PUT", f"{tcs.admin_url}/bridge/acks", {"mode": "withhold"})
    seq = gateway.next_seq(BOB)
    payload = {"user": BOB, "seq": seq, "event": make_event("h1", BOB, seq=seq, subject="Held")}
    frame_id = await gateway.push(conn, "calendar.upsert", payload)

    async def withheld() -> bool:
        state = await bridge_state(tcs)
        return bool(state["acks_withheld"] == 1 and state["pushes_applied"] == 1)

    await wait_for_async(withheld, what="push applied, acknowledgement withheld")
    await http("PUT", f"{tcs.admin_url}/bridge/acks", {"mode": "normal"})

    snapshot_seq: dict[str, int] = {}

    async def on_reconnect(new_conn: GatewayConnection) -> None:
        if new_conn.index == 1:
            return
        # A gateway sends a snapshot per user after auth, then resends what was not acknowledged.
        seq = gateway.next_seq(BOB)
        snapshot_seq["bob"] = seq
        events = [{**event, "seq": event["seq"]} for event in gateway.calendars[BOB].values()]
        events.append(make_event("h2", BOB, seq=seq, day=1, subject="Added while away"))
        gateway.calendars[BOB]["h2"] = events[-1]
        await new_conn.request(
            "calendar.snapshot",
            {
                "user": BOB,
                "seq": seq,
                "from": iso(DAY - timedelta(days=30)),
                "to": iso(DAY + timedelta(days=60)),
                "chunkIndex": 0,
                "chunkCount": 1,
                "events": events,
            },
        )
        await new_conn.request("calendar.upsert", payload)

    gateway.on_authenticated = on_reconnect
    dropped = await http("POST", f"{tcs.admin_url}/bridge/drop", {"mode": "abort"})
    assert dropped == {"dropped": True, "mode": "abort"}
    await asyncio.wait_for(conn.closed.wait(), 10)
    assert frame_id not in conn.replies

    second = await gateway.authenticated_connection(2)
    snapshot_ack = await second.reply(1)
    assert snapshot_ack == {"errorCode": 0, "applied": True, "seq": snapshot_seq["bob"]}
    resent_ack = await second.reply(2)
    assert resent_ack == {"errorCode": 0, "applied": False, "seq": snapshot_seq["bob"]}
    assert [row["id"] for row in await calendar(tcs, BOB)] == ["h1", "h2"]

    state = await bridge_state(tcs)
    assert state["authenticated_connections"] == 2
    assert state["acks_lost"] == 1
    assert state["stale_ignored"] + state["duplicates_ignored"] == 1
    assert state["close_history"][0]["code"] == 1006
    assert gateway.violations == []


async def test_close_drop_auth_failure_stay_away_and_resume(gateway: FakeGateway, tcs: EmulatorProcess) -> None:
    conn = await gateway.authenticated_connection(1)
    await http("POST", f"{tcs.admin_url}/bridge/drop", {"mode": "close", "code": 4000})
    await asyncio.wait_for(conn.closed.wait(), 10)
    assert conn.close_code == 4000
    await gateway.authenticated_connection(2)

    # A wrong secret: the gateway answers BAD_SECRET and closes 4001; the emulator keeps retrying.
    await http("PUT", f"{tcs.admin_url}/bridge/target", {"secret": "wrong"})

    async def refused_twice() -> bool:
        state = await bridge_state(tcs)
        return bool(state["auth_failures"] >= 2)

    await wait_for_async(refused_twice, what="two refused auth attempts")
    state = await bridge_state(tcs)
    refused = [close for close in state["close_history"] if close["code"] == 4001]
    assert refused and refused[0]["initiator"] == "gateway"

    await http("PUT", f"{tcs.admin_url}/bridge/target", {"secret": SECRET})
    third = await gateway.authenticated_connection(3)

    await http("POST", f"{tcs.admin_url}/bridge/disconnect")
    await asyncio.wait_for(third.closed.wait(), 10)
    assert third.close_code == 1001
    count = len(gateway.connections)
    await asyncio.sleep(1.5)  # longer than the configured 1 s maximum backoff
    assert len(gateway.connections) == count
    assert (await bridge_state(tcs))["state"] == "stopped"

    await http("POST", f"{tcs.admin_url}/bridge/connect")
    await gateway.authenticated_connection(4)
    assert (await bridge_state(tcs))["state"] == "connected"


async def test_oversized_frame_closes_4009_and_silence_closes_4011(gateway: FakeGateway) -> None:
    tcs = await _start(gateway, ping_interval=0.4)
    try:
        conn = await gateway.authenticated_connection(1)
        await conn.send_raw(json.dumps({"type": 1, "id": 99, "method": "ping", "payload": {"x-pad": "a" * 1_100_000}}))
        await asyncio.wait_for(conn.closed.wait(), 10)
        assert conn.close_code == 4009

        second = await gateway.authenticated_connection(2)
        await wait_for_async(lambda: bool(second.requests_of("ping")), what="the emulator pings an idle gateway")
        gateway.answer_pings = False  # now the gateway stays silent: the emulator closes with 4011
        await asyncio.wait_for(second.closed.wait(), 10)
        assert second.close_code == 4011
        state = await bridge_state(tcs)
        assert {"frame_too_large", "silence"} <= {entry["kind"] for entry in state["protocol_errors"]}
    finally:
        await tcs.astop()


async def test_admin_request_calendar_asks_the_gateway_now(gateway: FakeGateway, tcs: EmulatorProcess) -> None:
    conn = await gateway.authenticated_connection(1)
    await wait_for_async(lambda: len(conn.requests_of("getCalendarList")) == 3, what="initial lists")
    gateway.mailboxes.add(CAROL)
    gateway.set_events(CAROL, [make_event("c1", CAROL, seq=7, subject="On demand")])
    result = await http(
        "POST",
        f"{tcs.admin_url}/bridge/request-calendar",
        {"user": CAROL, "from": iso(DAY - timedelta(days=1)), "to": iso(DAY + timedelta(days=1))},
    )
    assert result["reply"]["errorCode"] == 0 and result["reply"]["seq"] == 7
    assert [row["subject"] for row in await calendar(tcs, CAROL)] == ["On demand"]
    state = await bridge_state(tcs)
    assert CAROL not in state["calendar_list_errors"]
    assert state["users"][CAROL] == {"events": 1, "last_seq": 7}


async def test_a_list_answered_with_retry_after_is_asked_again(gateway: FakeGateway, tcs: EmulatorProcess) -> None:
    """A gateway whose sync-engine is still starting answers getCalendarList 8 with retryAfterMs: the emulator asks
    that user's calendar again after that long (docs/bridge-protocol.md §2), on the same connection."""
    conn = await gateway.authenticated_connection(1)
    await wait_for_async(lambda: len(conn.requests_of("getCalendarList")) == 3, what="initial lists")
    gateway.list_failures[ALICE] = 2
    await http("POST", f"{tcs.admin_url}/bridge/drop", {"mode": "close", "code": 4000})
    again = await gateway.authenticated_connection(2)

    def alice_asked() -> list[dict[str, Any]]:
        return [f for f in again.requests_of("getCalendarList") if f["payload"]["user"] == ALICE]

    await wait_for_async(lambda: len(alice_asked()) == 3, what="alice's list asked three times")

    async def alice_listed() -> bool:
        state = await bridge_state(tcs)
        return ALICE not in state["calendar_list_errors"] and ALICE in state["users"]

    await wait_for_async(alice_listed, what="alice's list applied after the retries")
    assert gateway.list_failures[ALICE] == 0


async def test_fallback_urls_are_tried_in_order_when_the_gateway_url_is_unreachable(gateway: FakeGateway) -> None:
    """gateway_fallback_urls stand for a Kubernetes Service sending a reconnect to another tcs-gateway replica: an
    unreachable gateway_url is skipped, each reconnect starts from it again."""
    (unused,) = free_ports(1)
    dead = f"ws://127.0.0.1:{unused}/bridge/v1"
    tcs = await start_emulator_async(
        gateway_url=dead, extra={"max_in_flight": 8, "gateway_fallback_urls": [gateway.url]}
    )
    try:
        await gateway.authenticated_connection(1)
        state = await bridge_state(tcs)
        assert state["connected_url"] == gateway.url
        assert state["gateway_url"] == dead and state["gateway_fallback_urls"] == [gateway.url]
        assert state["connect_attempts"] == 1 and state["connections"] == 1  # one round: dead, then the fallback

        # the fallback set at run time too, and a bad one refused with its value named
        await http("PUT", f"{tcs.admin_url}/bridge/target", {"gateway_url": gateway.url, "gateway_fallback_urls": []})
        await gateway.authenticated_connection(2)
        assert (await bridge_state(tcs))["gateway_fallback_urls"] == []
        with pytest.raises(AssertionError, match="http://x"):
            await http("PUT", f"{tcs.admin_url}/bridge/target", {"gateway_fallback_urls": ["http://x"]})
    finally:
        await tcs.astop()


async def test_an_incremental_answer_is_applied_strictly_onto_the_seq_it_was_asked_from(
    gateway: FakeGateway, tcs: EmulatorProcess
) -> None:
    """docs/bridge-protocol.md §6.2 "Changes since a sequence": asked again for a window it holds, TCS sends its
    lastSeq as sinceSeq with incremental; an answer of changes based on that seq removes the removed ids from the
    window and stores the events; one based on any other seq is refused (nothing applied, a protocol error)."""
    conn = await gateway.authenticated_connection(1)

    async def alice_listed() -> dict[str, Any] | None:
        state = await bridge_state(tcs)
        return state if state["users"].get(ALICE) == {"events": 3, "last_seq": 5} else None

    await wait_for_async(alice_listed, what="alice's list applied")
    gateway.list_answers[ALICE] = [
        {
            "seq": 9,
            "incremental": True,
            "sinceSeq": 5,
            "removed": ["m2"],
            "events": [
                make_event("m1:occ1", ALICE, seq=9, hour=9, subject="Edited"),
                make_event("m4", ALICE, seq=9, hour=11, subject="New"),
            ],
        }
    ]
    result = await http("POST", f"{tcs.admin_url}/bridge/request-calendar", {"user": ALICE})
    assert result["reply"]["incremental"] is True
    asked = conn.requests_of("getCalendarList")[-1]["payload"]
    assert asked["sinceSeq"] == 5 and asked["incremental"] is True
    assert [(row["id"], row["subject"]) for row in await calendar(tcs, ALICE)] == [
        ("m1:occ1", "Edited"),
        ("m4", "New"),
        ("m3", "Far away"),
    ]
    state = await bridge_state(tcs)
    assert state["users"][ALICE] == {"events": 3, "last_seq": 9}
    lists = state["calendar_lists"]
    assert (lists["incremental"], lists["incremental_events"], lists["incremental_removed"]) == (1, 2, 1)

    # based on a seq this TCS did not ask from: refused, the calendar stays as it is
    gateway.list_answers[ALICE] = [{"seq": 12, "incremental": True, "sinceSeq": 7, "removed": ["m3"], "events": []}]
    refused = await http("POST", f"{tcs.admin_url}/bridge/request-calendar", {"user": ALICE})
    assert "sinceSeq 7 differs from the requested 9" in refused["reply"]["emulator"]
    assert [row["id"] for row in await calendar(tcs, ALICE)] == ["m1:occ1", "m4", "m3"]
    state = await bridge_state(tcs)
    assert state["users"][ALICE] == {"events": 3, "last_seq": 9}
    assert any(e["kind"] == "invalid_reply" and "sinceSeq" in e["detail"] for e in state["protocol_errors"])
    # an incremental answer to a request that did not ask for one is refused too
    gateway.list_answers[ALICE] = [{"seq": 13, "incremental": True, "sinceSeq": 9, "removed": ["m3"], "events": []}]
    window = {"from": iso(DAY - timedelta(days=2)), "to": iso(DAY + timedelta(days=2))}
    unasked = await http("POST", f"{tcs.admin_url}/bridge/request-calendar", {"user": ALICE, **window})
    assert "without incremental" in unasked["reply"]["emulator"]
    assert (await bridge_state(tcs))["users"][ALICE] == {"events": 3, "last_seq": 9}


def test_catch_up_is_snapshots_or_lists_and_anything_else_is_refused_naming_the_key() -> None:
    from trueconf_emulator.config import ConfigError, build_config

    assert build_config({}, {}).catch_up == "snapshots"
    assert build_config({"catch_up": "lists"}, {}).catch_up == "lists"
    with pytest.raises(ConfigError, match=r"'catch_up': got 'pushes'"):
        build_config({"catch_up": "pushes"}, {})

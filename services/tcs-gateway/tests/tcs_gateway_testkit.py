"""Test harness of tcs-gateway: a small SyncService (the sync-engine's query API) served over a real gRPC socket,
the gateway running in-process against real NATS, and TrueConf emulators (real subprocesses) connecting to it.

The in-test SyncService plays the sync-engine's part faithfully: every calendar command the test publishes
also changes what ListEvents answers, with the same per-user sequence numbers, like the engine's `shown` table.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tccal.bus import Bus, BusSettings
from tccal.grpckit import AccessPolicy, GrpcCaller, GrpcServer, service_token
from tccal.subjects import TCS_RESULTS, commands_subject
from tccal_sandbox.embedded import free_port
from tccal_sandbox.testing import wait_for_async
from tcs_gateway.bridge.framing import ErrorCode, error_payload
from tcs_gateway.runtime import Gateway
from tcs_gateway.settings import GatewaySettings, ServerSettings
from trueconf.calendar.v1 import calendar_pb2, commands_pb2, common_pb2, sync_pb2, sync_pb2_grpc
from trueconf_emulator.testing import EmulatorProcess, build_config, start_emulator_async

T = TypeVar("T")
SERVER_ID = "tcs.example.test#vcs"
SECRET = "bridge-secret"
ORGANIZER = "alice@example.test"
BOB = "bob@example.test"
ACCEPT = common_pb2.RESPONSE_TYPE_ACCEPT
_counter = itertools.count(1)


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment.astimezone(UTC))
    return value


def today_at(hour: int, days: int = 1) -> datetime:
    base = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return base + timedelta(days=days, hours=hour)


# --------------------------------------------------------------------------------------------- SyncService
class FakeSync(sync_pb2_grpc.SyncServiceServicer):
    """ListEvents from per-user state; `unavailable` makes it answer UNAVAILABLE, `unavailable_users` only for those
    users."""

    def __init__(self) -> None:
        self.shown: dict[str, dict[str, calendar_pb2.Occurrence]] = {}
        self.seq: dict[str, int] = {}
        #: Per user, the seq of the push that last changed each occurrence (absent: before every since_seq asked) and
        #: of each removal; below `history_floor` removals are forgotten (the engine's calendar_history.py).
        self.changed: dict[str, dict[str, int]] = {}
        self.removals: dict[str, dict[str, int]] = {}
        self.history_floor: dict[str, int] = {}
        self.calls: list[str] = []
        self.unavailable = False
        self.unavailable_users: set[str] = set()

    def next_seq(self, user: str) -> int:
        self.seq[user] = self.seq.get(user, 0) + 1
        return self.seq[user]

    async def ListEvents(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.ListEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sync_pb2.ListEventsResponse:
        self.calls.append(request.user)
        if self.unavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "sync-engine is starting")
        if request.user in self.unavailable_users:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the calendar of {request.user} cannot be read")
        # Instants compared as the Timestamps' integers: a datetime built from each occurrence's two Timestamps made
        # this fake, in the benchmarks' process, cost a tenth of a second per 20,000 occurrences (bench/README.md §6).
        start, end = _instant(getattr(request, "from")), _instant(request.to)
        response = sync_pb2.ListEventsResponse(seq=self.seq.get(request.user, 0))
        if request.since_seq and response.seq <= request.since_seq:  # as the engine's queries.list_events
            response.unchanged = True
            return response
        since = request.since_seq
        floor = self.history_floor.get(request.user, 0)
        changes = bool(since and request.incremental and since >= floor)
        changed = self.changed.get(request.user, {})
        removed: set[str] = set()
        for occurrence in self.shown.get(request.user, {}).values():
            o_start, o_end = _instant(occurrence.start), _instant(occurrence.end)
            inside = (start <= o_start < end) if o_start == o_end else (o_start < end and o_end > start)
            if changes and changed.get(occurrence.id, 0) <= since:
                continue
            if inside:
                response.occurrences.append(occurrence)
            elif changes:
                removed.add(occurrence.id)
        if changes:
            response.incremental = True
            gone = self.removals.get(request.user, {})
            shown = self.shown.get(request.user, {})
            response.removed.extend(sorted(removed | {i for i, s in gone.items() if s > since and i not in shown}))
        elif since and request.incremental:
            response.history_from = floor
        return response

    async def GetMeeting(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.GetMeetingRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sync_pb2.Meeting:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by tcs-gateway")
        raise AssertionError("unreachable")

    async def ListConferences(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.ListConferencesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sync_pb2.ListConferencesResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by tcs-gateway")
        raise AssertionError("unreachable")

    async def ListCommands(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.ListCommandsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sync_pb2.ListCommandsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by tcs-gateway")
        raise AssertionError("unreachable")

    async def ResyncMailbox(  # noqa: N802 - gRPC method name
        self, request: sync_pb2.SyncResyncMailboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sync_pb2.SyncResyncMailboxResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by tcs-gateway")
        raise AssertionError("unreachable")


#: grpc.adminToken of the tests' installation: SyncServer is guarded with it as the sync-engine is, and the gateway
#: under test calls it with tcs-gateway's token derived from it (GATEWAY_CALLER).
ADMIN_TOKEN = "gateway-tests-admin-token"
GATEWAY_CALLER = GrpcCaller(service_token(ADMIN_TOKEN, "tcs-gateway"))


class SyncServer:
    def __init__(self) -> None:
        self.fake = FakeSync()
        policy = AccessPolicy(callers={"/trueconf.calendar.v1.SyncService/ListEvents": frozenset({"tcs-gateway"})})
        self.server = GrpcServer("127.0.0.1", 0, policy=policy, admin_token=ADMIN_TOKEN)
        self.server.add(sync_pb2_grpc.add_SyncServiceServicer_to_server, self.fake, "trueconf.calendar.v1.SyncService")
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> SyncServer:
        self.port = await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop(grace=0)


# --------------------------------------------------------------------------------------------- occurrences
def _instant(stamp: Timestamp) -> tuple[int, int]:
    """A (normalized) Timestamp's instant, ordered as the instants are."""
    return stamp.seconds, stamp.nanos


def occurrence(
    meeting: str,
    *,
    start: datetime | None = None,
    minutes: int = 30,
    subject: str = "Marketing department meeting",
    organizer: str = ORGANIZER,
    attendees: Iterable[tuple[str, int]] = (),
    conference: tuple[str, str] | None = None,
    cancelled: bool = False,
    private: bool = False,
    occurrence_id: str | None = None,
) -> calendar_pb2.Occurrence:
    begin = start or today_at(9)
    value = calendar_pb2.Occurrence(
        id=occurrence_id or meeting,
        meeting_id=meeting,
        uid=f"uid-{meeting}",
        subject=subject,
        body="Discussion of the work done last week.",
        location="Room 4",
        start=stamp(begin),
        end=stamp(begin + timedelta(minutes=minutes)),
        time_zone="Europe/Moscow",
        cancelled=cancelled,
        private=private,
        organizer=common_pb2.Person(email=organizer, name=organizer.split("@")[0].title()),
        my_response=common_pb2.RESPONSE_TYPE_UNSPECIFIED,
        updated_at=stamp(datetime.now(UTC)),
    )
    for email, response in attendees:
        value.attendees.append(
            common_pb2.Attendee(
                person=common_pb2.Person(email=email, name=email.split("@")[0].title()),
                role=common_pb2.ATTENDEE_ROLE_REQUIRED,
                response=common_pb2.ResponseType.ValueType(response),
            )
        )
    if conference is not None:
        value.conference.id, value.conference.url = conference
    return value


def calendar_of(
    user: str, count: int, body: str = "Discussion of the work done last week."
) -> dict[str, calendar_pb2.Occurrence]:
    """`count` occurrences of `user` by id, five minutes apart from today 09:00 on (20,000 span ~70 days, inside the
    emulator's window of 90 days ahead)."""
    shown = {}
    for n in range(count):
        item = occurrence(f"m{n:05d}", start=today_at(9, days=0) + timedelta(minutes=5 * n), attendees=[(user, 4)])
        item.body = body
        shown[item.id] = item
    return shown


# --------------------------------------------------------------------------------------------- calendar lists
def list_window() -> dict[str, str]:
    """getCalendarList's `from`/`to`: yesterday 00:00 UTC to 200 days after today (every calendar_of above)."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "from": (midnight - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "to": (midnight + timedelta(days=200)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def frame_size(frame: dict[str, Any]) -> int:
    """A frame's size on the wire: compact JSON in UTF-8, as the gateway encodes it."""
    return len(json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


async def all_pages(client: RawBridgeClient, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Every page frame of one getCalendarList, asked one after the other (the first must succeed)."""
    first = await client.call("getCalendarList", dict(request, page=0))
    assert first["payload"]["errorCode"] == 0, first
    frames = [first]
    list_id = first["payload"]["listId"]
    for page in range(1, first["payload"]["pageCount"]):
        frames.append(await client.call("getCalendarList", dict(request, page=page, listId=list_id)))
    return frames


# --------------------------------------------------------------------------------------------- settings
def server_settings(
    emulator: EmulatorProcess | None = None, *, server_id: str = SERVER_ID, secret: str = SECRET
) -> ServerSettings:
    rest = emulator.rest_url if emulator is not None else "http://127.0.0.1:9/api/v4"
    return ServerSettings(
        id=server_id,
        secret=secret,
        rest_url=rest,
        client_id="tc-calendar-connector",
        client_secret="connector-secret",
        verify_tls=False,
    )


def gateway_settings(
    sync: SyncServer | str,
    servers: Iterable[ServerSettings],
    *,
    whitelist: Iterable[str] | None = None,
    users: Iterable[str] = (),
    **overrides: Any,
) -> GatewaySettings:
    listed = list(servers)
    settings = GatewaySettings(
        ws_host="127.0.0.1",
        ws_port=free_port(),
        whitelist=tuple(whitelist if whitelist is not None else [s.id for s in listed]),
        servers=tuple(listed),
        configured_users=tuple(users),
        sync_address=sync if isinstance(sync, str) else sync.address,  # a SyncServer here or its host:port
        sync_caller=GATEWAY_CALLER,
        rest_backoff_base=0.05,
        rest_backoff_cap=0.5,
        heartbeat_interval=2.0,
        fetch_timeout=0.25,
        gateway_id="tcs-gateway-test",
    )
    return dataclasses.replace(settings, **overrides)


# --------------------------------------------------------------------------------------------- gateway
class RunningGateway:
    def __init__(self, settings: GatewaySettings, nats_url: str) -> None:
        self.settings = settings
        self.bus = Bus(BusSettings(url=nats_url, name="tcs-gateway-test"))
        self.gateway = Gateway(settings, self.bus)
        self.stop_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return self.gateway.bridge.url

    async def start(self) -> RunningGateway:
        await self.gateway.start_listener()
        self._task = asyncio.get_running_loop().create_task(self.gateway.run(self.stop_event))
        await asyncio.wait_for(self.gateway.started.wait(), 20)
        return self

    async def stop(self) -> None:
        self.stop_event.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)
        await self.bus.close()

    def server(self, server_id: str = SERVER_ID) -> Any:
        return self.gateway.servers[server_id.lower()]


class CommandClient:
    """Publishes TcsCommands like the sync-engine's relay and reads TCS_RESULTS from the stream."""

    def __init__(self, nats_url: str, sync: FakeSync) -> None:
        self.bus = Bus(BusSettings(url=nats_url, name="sync-engine-double"))
        self.sync = sync

    async def open(self) -> CommandClient:
        await self.bus.connect(attempts=20)
        return self

    async def close(self) -> None:
        await self.bus.close()

    async def publish(
        self, command: commands_pb2.TcsCommand, *, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        await self.bus.publish(
            commands_subject(command.server_id),
            command.SerializeToString(),
            msg_id=msg_id or command.command_id,
            headers=headers,
        )

    def upsert_command(
        self, user: str, occ: calendar_pb2.Occurrence, *, server_id: str = SERVER_ID, record: bool = True
    ) -> commands_pb2.TcsCommand:
        """The engine shows `occ` to `user`: new seq, state updated, command built."""
        seq = self.sync.next_seq(user)
        if record:
            self.sync.shown.setdefault(user, {})[occ.id] = occ
            self.sync.changed.setdefault(user, {})[occ.id] = seq
        command = commands_pb2.TcsCommand(command_id=f"{server_id}/calendar/{user}/{seq}", server_id=server_id)
        command.attempt = 1
        command.calendar_upsert.user = user
        command.calendar_upsert.occurrence.CopyFrom(occ)
        command.calendar_upsert.seq = seq
        return command

    def cancel_command(self, user: str, occurrence_id: str, *, server_id: str = SERVER_ID) -> commands_pb2.TcsCommand:
        seq = self.sync.next_seq(user)
        shown = self.sync.shown.setdefault(user, {})
        if occurrence_id in shown:
            shown[occurrence_id].cancelled = True
            self.sync.changed.setdefault(user, {})[occurrence_id] = seq
        command = commands_pb2.TcsCommand(command_id=f"{server_id}/calendar/{user}/{seq}", server_id=server_id)
        command.calendar_cancel.user = user
        command.calendar_cancel.occurrence_id = occurrence_id
        command.calendar_cancel.seq = seq
        return command

    def delete_command(self, user: str, occurrence_id: str, *, server_id: str = SERVER_ID) -> commands_pb2.TcsCommand:
        seq = self.sync.next_seq(user)
        self.sync.shown.setdefault(user, {}).pop(occurrence_id, None)
        self.sync.removals.setdefault(user, {})[occurrence_id] = seq
        command = commands_pb2.TcsCommand(command_id=f"{server_id}/calendar/{user}/{seq}", server_id=server_id)
        command.calendar_delete.user = user
        command.calendar_delete.occurrence_id = occurrence_id
        command.calendar_delete.seq = seq
        return command

    @staticmethod
    def conference_command(kind: str, meeting: str, *, server_id: str = SERVER_ID) -> commands_pb2.TcsCommand:
        command = commands_pb2.TcsCommand(
            command_id=f"{server_id}/conference/{meeting}/{next(_counter)}", server_id=server_id, attempt=1
        )
        getattr(command, kind).meeting_id = meeting
        return command

    async def results(self) -> list[commands_pb2.TcsCommandResult]:
        """Every result stored in the TCS_RESULTS stream, in order (JetStream dropped duplicates by Nats-Msg-Id)."""
        info = await self.bus.js.stream_info(TCS_RESULTS)
        found: list[commands_pb2.TcsCommandResult] = []
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            message = await self.bus.js.get_msg(TCS_RESULTS, sequence)
            found.append(commands_pb2.TcsCommandResult.FromString(message.data or b""))
        return found

    async def result_of(self, command_id: str, timeout: float = 20.0) -> commands_pb2.TcsCommandResult:
        async def find() -> commands_pb2.TcsCommandResult | None:
            for result in await self.results():
                if result.command_id == command_id:
                    return result
            return None

        return await wait_for_async(find, timeout=timeout, what=f"the result of {command_id}")


# --------------------------------------------------------------------------------------------- emulator
async def start_tcs(
    gateway_url: str | None,
    *,
    server_id: str = SERVER_ID,
    secret: str = SECRET,
    users: list[dict[str, str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> EmulatorProcess:
    config = build_config(gateway_url=gateway_url, server_id=server_id, secret=secret, users=users, extra=extra)
    return await start_emulator_async(config)


async def inspect(tcs: EmulatorProcess, path: str) -> Any:
    return await asyncio.to_thread(tcs.inspect, path)


async def admin(tcs: EmulatorProcess, method: str, path: str, body: Any = None) -> Any:
    return await asyncio.to_thread(tcs.admin, method, path, body)


async def bridge_state(tcs: EmulatorProcess) -> dict[str, Any]:
    state: dict[str, Any] = await inspect(tcs, "/bridge")
    return state


async def wait_connected(
    tcs: EmulatorProcess, *, connections: int = 1, directory: int = 3, timeout: float = 20.0
) -> dict[str, Any]:
    """Connected, with `connections` authenticated connections so far, and the calendar lists TCS asks for after
    each auth (one per directory user) answered."""

    async def check() -> dict[str, Any] | None:
        state = await bridge_state(tcs)
        lists = state["calendar_lists"]
        answered = lists["applied"] + lists["errors"] + lists["invalid"]
        ok = (
            state["state"] == "connected"
            and state["authenticated_connections"] >= connections
            and answered >= directory * connections
        )
        return state if ok else None

    return await wait_for_async(
        check, timeout=timeout, what=f"TCS connected ({connections} connections, lists answered)"
    )


async def calendar(tcs: EmulatorProcess, user: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = await inspect(tcs, f"/calendars/{user}")
    return events


async def rest_log(tcs: EmulatorProcess, since: int = 0) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = await inspect(tcs, f"/rest-log?since={since}")
    return entries


def gateway_protocol_errors(state: dict[str, Any], *, allowed: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Protocol errors the emulator blamed on the gateway, except the kinds a test provoked on purpose."""
    skip = set(allowed)
    return [e for e in state["protocol_errors"] if e["by"] == "gateway" and e["kind"] not in skip]


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, default=str)[:4000]


# --------------------------------------------------------------------------------------------- world
class World:
    """Everything one test started, stopped in reverse order at the end."""

    def __init__(self, nats_url: str, sync: SyncServer) -> None:
        self.nats_url = nats_url
        self.sync = sync
        self.commands = CommandClient(nats_url, sync.fake)
        self.gateways: list[RunningGateway] = []
        self.emulators: list[EmulatorProcess] = []

    async def open(self) -> World:
        await self.commands.open()
        return self

    async def gateway(self, settings: GatewaySettings) -> RunningGateway:
        running = await RunningGateway(settings, self.nats_url).start()
        self.gateways.append(running)
        return running

    async def stop_gateway(self, running: RunningGateway) -> None:
        self.gateways.remove(running)
        await running.stop()

    async def tcs(self, gateway_url: str | None, **options: Any) -> EmulatorProcess:
        emulator = await start_tcs(gateway_url, **options)
        self.emulators.append(emulator)
        return emulator

    async def pair(self, **overrides: Any) -> tuple[RunningGateway, EmulatorProcess]:
        """A gateway using an emulator's REST API, and that emulator connected to the gateway's bridge."""
        emulator = await self.tcs(None)
        running = await self.gateway(gateway_settings(self.sync, [server_settings(emulator)], **overrides))
        await admin(emulator, "PUT", "/bridge/target", {"gateway_url": running.url})
        await wait_connected(emulator)
        return running, emulator

    async def close(self) -> None:
        for emulator in reversed(self.emulators):
            await emulator.astop()
        for running in reversed(self.gateways):
            await running.stop()
        await self.commands.close()


# --------------------------------------------------------------------------------------------- raw client
class RawBridgeClient:
    """A hand-driven WebSocket client, to send what a well-behaved TrueConf Server never would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session: Any = None
        self.ws: Any = None
        self.next_id = 0
        self.received: list[dict[str, Any]] = []
        #: CPU seconds (process time) spent parsing the frames received (bench_callist.py tells them apart from
        #: the gateway's, which runs in the same process).
        self.parse_cpu_s = 0.0
        #: Seconds spent waiting for frames to arrive: for a request, how long the gateway took to answer it, without
        #: this client's own work in between (bench_callist.py's "served" time).
        self.wait_s = 0.0

    async def __aenter__(self) -> RawBridgeClient:
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.url, max_msg_size=16 * 1024 * 1024, autoclose=False)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        await self.session.close()

    async def send(self, frame: Any) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    async def request(self, method: str, payload: dict[str, Any]) -> int:
        self.next_id += 1
        await self.send({"type": 1, "id": self.next_id, "method": method, "payload": payload})
        return self.next_id

    async def frame(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame (replies to the gateway's pings are sent automatically)."""
        import aiohttp

        while True:
            waiting = time.monotonic()
            message = await self.ws.receive(timeout=timeout)
            self.wait_s += time.monotonic() - waiting
            if message.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"connection ended: {message.type!r} code {self.ws.close_code}")
            parse_started = time.process_time()
            frame: dict[str, Any] = json.loads(message.data)
            self.parse_cpu_s += time.process_time() - parse_started
            self.received.append(frame)
            return frame

    async def reply_to(self, frame_id: int, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for the gateway's reply to our request `frame_id`, answering its requests meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.frame(timeout=max(0.1, deadline - time.monotonic()))
            if frame["type"] == 2 and frame["id"] == frame_id:
                return frame
            if frame["type"] == 1:
                await self.ack(frame)

    async def ack(self, frame: dict[str, Any]) -> None:
        payload: dict[str, Any] = {"errorCode": 0}
        if frame["method"].startswith("calendar."):
            payload.update({"applied": True, "seq": frame["payload"]["seq"]})
        await self.send({"type": 2, "id": frame["id"], "payload": payload})

    async def call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await self.reply_to(await self.request(method, payload))

    async def auth(self, server_id: str = SERVER_ID, secret: str = SECRET, **extra: Any) -> dict[str, Any]:
        return await self.call("auth", {"serverId": server_id, "secret": secret, "protocolVersion": 1, **extra})

    async def closed(self, timeout: float = 10.0) -> int:
        """Wait for the gateway to close the connection; its close code."""
        import aiohttp

        deadline = time.monotonic() + timeout
        while True:
            message = await self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if message.type == aiohttp.WSMsgType.CLOSE:
                return int(message.data)
            if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return int(self.ws.close_code or 1006)
            if message.type == aiohttp.WSMsgType.TEXT:
                self.received.append(json.loads(message.data))


PUSH_METHODS = ("calendar.upsert", "calendar.cancel", "calendar.delete")


class ScriptedTrueConf:
    """A hand-driven TrueConf Server on a RawBridgeClient: reads every request of the gateway and acknowledges it,
    unless `answer` (overridden by a test) answered it otherwise (returns True), so which snapshot or push fails,
    waits or is acknowledged is exact. Run `run()` as a task; it ends when the connection does."""

    def __init__(self, client: RawBridgeClient) -> None:
        self.client = client
        self.requests: list[dict[str, Any]] = []
        self.acked: list[dict[str, Any]] = []

    async def answer(self, frame: dict[str, Any]) -> bool:
        """Answer `frame` some other way than an acknowledgement (or not at all): True; False to acknowledge it."""
        return False

    async def run(self) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                frame = await self.client.frame(timeout=600)
                if frame["type"] != 1:
                    continue
                self.requests.append(frame)
                if await self.answer(frame):
                    continue
                await self.client.ack(frame)
                self.acked.append(frame)

    @contextlib.asynccontextmanager
    async def answering(self) -> AsyncIterator[ScriptedTrueConf]:
        """`run()` as a task for the block, cancelled after it."""
        task = asyncio.get_running_loop().create_task(self.run())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def overloaded(self, frame: dict[str, Any]) -> None:
        """Answer `frame` OVERLOADED, to be retried after 100 ms."""
        busy = error_payload(ErrorCode.OVERLOADED, "calendar store busy", retry_after_ms=100)
        await self.client.send({"type": 2, "id": frame["id"], "payload": busy})

    def pushes(self, user: str | None = None) -> list[dict[str, Any]]:
        return [
            f for f in self.requests if f["method"] in PUSH_METHODS and (user is None or f["payload"]["user"] == user)
        ]

    def acked_snapshots(self, user: str) -> list[dict[str, Any]]:
        return [f for f in self.acked if f["method"] == "calendar.snapshot" and f["payload"]["user"] == user]

"""Test kit of the sync-engine tests: real PostgreSQL and NATS, the engine in-process or as a process,
builders of CalendarChange protobufs, a reader of TCS_COMMANDS, and a SyncService client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import asyncpg
import grpc

from sync_engine.api import POLICY, SERVICE_NAME, SyncApi
from sync_engine.ids import meeting_id, to_datetime, to_timestamp
from sync_engine.runtime import SyncEngine
from sync_engine.seats import LicensingSeats
from sync_engine.settings import EngineSettings
from tccal.bus import Bus, BusSettings
from tccal.clock import FakeClock
from tccal.config import Config
from tccal.db import Database
from tccal.grpckit import GrpcCaller, GrpcServer
from tccal.subjects import CALENDAR, calendar_subject, results_subject
from tccal_sandbox.testing import free_port, wait_for_async
from trueconf.calendar.v1 import (
    calendar_pb2,
    commands_pb2,
    common_pb2,
    licensing_pb2,
    licensing_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
)

SERVER = "video.example.com#vcs"
PROVIDER = "exchange.example.com"
ANNA = "anna@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
DAVE = "dave@example.com"
ROOM = "room4@example.com"
#: Monday, 2 March 2026, 07:00 UTC (08:00 in Berlin).
T0 = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[3]


def config_dict(pg_dsn: str, nats_url: str, *, licensing: str = "", **overrides: Any) -> dict[str, Any]:
    """The engine's config; `licensing`: the address of the LicensingService it asks for seats."""
    parsed = urlparse(pg_dsn)
    socket_dir = parse_qs(parsed.query)["host"][0]
    document: dict[str, Any] = {
        "allowPlaintextPasswords": True,
        "dbConnectionConfig": {
            "host": socket_dir,
            "port": 5432,
            "user": "postgres",
            "database": parsed.path.lstrip("/"),
            "poolMax": 8,
        },
        "nats": {"url": nats_url},
        "productWhitelist": {"tcs": [SERVER]},
        "calendarProviders": [
            {
                "host": PROVIDER,
                "credentials": [{"login": "svc@example.com", "password": "plain"}],
                "users": [BOB],
            }
        ],
        "grpc": {"services": {"sync-engine": {"grpcPort": free_port(), "httpPort": free_port()}}},
    }
    if licensing:
        host, _, port = licensing.rpartition(":")
        document["grpc"]["services"]["licensing"] = {"host": host, "grpcPort": int(port), "httpPort": free_port()}
    document.update(overrides)
    return document


def make_config(pg_dsn: str, nats_url: str, **overrides: Any) -> Config:
    return Config.model_validate(config_dict(pg_dsn, nats_url, **overrides))


# -------------------------------------------------------------------------------------------------------------
# Builders
# -------------------------------------------------------------------------------------------------------------


def person(email: str) -> common_pb2.Person:
    return common_pb2.Person(email=email, name=email.split("@")[0].title())


def attendee(
    email: str,
    response: int = common_pb2.RESPONSE_TYPE_NO_RESPONSE_RECEIVED,
    role: int = common_pb2.ATTENDEE_ROLE_REQUIRED,
) -> common_pb2.Attendee:
    return common_pb2.Attendee(
        person=person(email),
        role=common_pb2.AttendeeRole.ValueType(role),
        response=common_pb2.ResponseType.ValueType(response),
    )


def full_spec() -> common_pb2.ConferenceSpec:
    """The add-in's settings with every field set (docs/architecture.md §4.5 a)."""
    return common_pb2.ConferenceSpec(
        source=common_pb2.CONFERENCE_SOURCE_EXTENDED_PROPERTY,
        mode=common_pb2.CONFERENCE_MODE_MODERATED,
        access=common_pb2.CONFERENCE_ACCESS_PUBLIC,
        max_participants=42,
        max_podiums=4,
        pin="879651",
        waiting_room_enabled=True,
        recording_enabled=True,
        mute_mic_on_join=True,
        mute_camera_on_join=True,
    )


def event(
    uid: str,
    *,
    start: datetime,
    duration: timedelta = timedelta(minutes=30),
    organizer: str = ANNA,
    attendees: Sequence[common_pb2.Attendee] = (),
    subject: str = "Marketing department meeting",
    body: str = "Discussion of the work done last week.",
    location: str = "Room 4",
    my_response: int = common_pb2.RESPONSE_TYPE_ORGANIZER,
    kind: int = calendar_pb2.ITEM_KIND_SINGLE,
    recurrence: common_pb2.Recurrence | None = None,
    conference: common_pb2.ConferenceSpec | None = None,
    sensitivity: int = common_pb2.SENSITIVITY_NORMAL,
    cancelled: bool = False,
    time_zone: str = "Europe/Berlin",
    sequence: int = 0,
    delegate: str = "",
    modified: Sequence[common_pb2.ModifiedOccurrence] = (),
    deleted: Sequence[datetime] = (),
) -> calendar_pb2.CalendarEvent:
    item = calendar_pb2.CalendarEvent(
        uid=uid,
        kind=calendar_pb2.ItemKind.ValueType(kind),
        subject=subject,
        body=body,
        location=location,
        time_zone=time_zone,
        organizer=person(organizer),
        attendees=list(attendees),
        my_response=common_pb2.ResponseType.ValueType(my_response),
        cancelled=cancelled,
        sensitivity=common_pb2.Sensitivity.ValueType(sensitivity),
        is_meeting=bool(attendees),
        appointment_sequence=sequence,
        modified_occurrences=list(modified),
        deleted_occurrences=[to_timestamp(moment) for moment in deleted],
    )
    item.start.CopyFrom(to_timestamp(start))
    item.end.CopyFrom(to_timestamp(start + duration))
    if recurrence is not None:
        item.recurrence.CopyFrom(recurrence)
    if conference is not None:
        item.conference.CopyFrom(conference)
    if delegate:
        item.created_by_delegate.CopyFrom(person(delegate))
    return item


def as_attendee_copy(organizer_copy: calendar_pb2.CalendarEvent, response: int) -> calendar_pb2.CalendarEvent:
    copy = calendar_pb2.CalendarEvent()
    copy.CopyFrom(organizer_copy)
    copy.my_response = common_pb2.ResponseType.ValueType(response)
    return copy


@dataclass
class Mailboxes:
    """Produces CalendarChanges with a strictly increasing sequence per mailbox, as ews-ingest does."""

    observed_at: datetime = T0
    sequences: dict[str, int] = field(default_factory=dict)

    def next_sequence(self, mailbox: str) -> int:
        self.sequences[mailbox] = self.sequences.get(mailbox, 0) + 1
        return self.sequences[mailbox]

    def item_id(self, mailbox: str, uid: str) -> str:
        return "AAMk" + hashlib.sha1(f"{mailbox}/{uid}".encode()).hexdigest()[:16]

    def upsert(
        self, mailbox: str, item: calendar_pb2.CalendarEvent, *, sequence: int | None = None
    ) -> calendar_pb2.CalendarChange:
        copy = calendar_pb2.CalendarEvent()
        copy.CopyFrom(item)
        copy.item_id = copy.item_id or self.item_id(mailbox, item.uid)
        seq = sequence if sequence is not None else self.next_sequence(mailbox)
        copy.change_key = f"CK{seq}"
        change = calendar_pb2.CalendarChange(
            change_id=f"{mailbox}/{copy.item_id}/{copy.change_key}",
            provider=PROVIDER,
            mailbox=mailbox,
            sequence=seq,
            type=calendar_pb2.CHANGE_TYPE_UPSERT,
            event=copy,
            item_id=copy.item_id,
            origin=calendar_pb2.CHANGE_ORIGIN_SYNC,
        )
        change.observed_at.CopyFrom(to_timestamp(self.observed_at))
        return change

    def delete(self, mailbox: str, uid: str, *, sequence: int | None = None) -> calendar_pb2.CalendarChange:
        item_id = self.item_id(mailbox, uid)
        seq = sequence if sequence is not None else self.next_sequence(mailbox)
        change = calendar_pb2.CalendarChange(
            change_id=f"{mailbox}/{item_id}/deleted",
            provider=PROVIDER,
            mailbox=mailbox,
            sequence=seq,
            type=calendar_pb2.CHANGE_TYPE_DELETE,
            item_id=item_id,
            origin=calendar_pb2.CHANGE_ORIGIN_SYNC,
        )
        change.observed_at.CopyFrom(to_timestamp(self.observed_at))
        return change


def weekly(days: Iterable[int], start_date: str, **range_: Any) -> common_pb2.Recurrence:
    recurrence = common_pb2.Recurrence(start_date=start_date, **range_)
    recurrence.weekly.interval = 1
    recurrence.weekly.days_of_week.extend(common_pb2.DayOfWeek.ValueType(day) for day in days)
    return recurrence


# -------------------------------------------------------------------------------------------------------------
# The engine, the bus, the API
# -------------------------------------------------------------------------------------------------------------


class SeatServer(licensing_pb2_grpc.LicensingServiceServicer):
    """licensing's ListSeats for the engine under test, over a real gRPC socket: the seated mailboxes and their
    remaining leases as the test sets them (`seats`), or UNAVAILABLE while `answering` is off."""

    def __init__(self, seats: dict[str, timedelta] | None = None) -> None:
        self.seats: dict[str, timedelta] = dict(seats or {})
        self.answering = True
        self.calls = 0
        self.callers: list[str] = []
        self.server: GrpcServer | None = None
        self.address = ""

    async def ListSeats(  # noqa: N802 - gRPC method name
        self, request: licensing_pb2.ListSeatsRequest, context: Any
    ) -> licensing_pb2.ListSeatsResponse:
        self.calls += 1
        self.callers.append(dict(context.invocation_metadata()).get("authorization", ""))
        if not self.answering:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the test licensing is down")
        seats = []
        for mailbox, remaining in sorted(self.seats.items()):
            lease = licensing_pb2.SeatLease(mailbox=mailbox)
            lease.remaining.FromTimedelta(remaining)
            seats.append(lease)
        return licensing_pb2.ListSeatsResponse(seats=seats)

    async def start(self) -> SeatServer:
        self.server = GrpcServer("127.0.0.1", 0)
        self.server.add(
            licensing_pb2_grpc.add_LicensingServiceServicer_to_server, self, "trueconf.calendar.v1.LicensingService"
        )
        self.address = f"127.0.0.1:{await self.server.start()}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


class EngineUnderTest:
    """One engine process's components, run in-process (own pool, own NATS connection); with `seats` (a
    SeatServer), seats are enforced as in the service process, asked every 0.05 s."""

    def __init__(
        self, config: Config, clock: FakeClock, *, max_deliver: int = 10, seats: SeatServer | None = None
    ) -> None:
        self.config = config
        self.clock = clock
        self.seat_server = seats
        self.database = Database(config)
        self.bus = Bus(BusSettings(url=config.nats.url, name="sync-engine-test", max_deliver=max_deliver))
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.sync: SyncEngine | None = None

    async def start(self, *, run: bool = True) -> EngineUnderTest:
        await self.database.connect()
        await self.bus.connect(attempts=20)
        source = None
        if self.seat_server is not None:
            source = LicensingSeats(self.seat_server.address, GrpcCaller.for_service(self.config, "sync-engine", str))
        self.sync = SyncEngine(
            EngineSettings.from_config(self.config),
            self.database.pool,
            self.bus,
            self.clock,
            seats=source,
            seat_poll=0.05,
            tick=0.05,
            roll_check=0.1,
        )
        await self.sync.migrate()
        if run:
            self.task = asyncio.create_task(self.sync.run(self.stop))
        return self

    @property
    def engine(self) -> Any:
        assert self.sync is not None
        return self.sync.engine

    async def close(self, *, graceful: bool = True) -> None:
        """Stop the engine: gracefully (finish the messages at hand, ack, close) or, at test teardown, at once."""
        self.stop.set()
        if self.task is not None:
            if not graceful:
                self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 30)
        await self.bus.close()
        await self.database.close()


@dataclass
class Published:
    subject: str
    headers: dict[str, str]
    command: commands_pb2.TcsCommand


class Harness:
    """The outside world of the engine: publishes changes and results, reads commands, calls the API."""

    def __init__(self, pg_dsn: str, nats_url: str) -> None:
        self.pg_dsn = pg_dsn
        self.nats_url = nats_url
        self.clock = FakeClock(T0)
        self.mailboxes = Mailboxes()
        self.bus = Bus(BusSettings(url=nats_url, name="sync-engine-tests"))
        self.commands: list[Published] = []
        self.engines: list[EngineUnderTest] = []
        self.grpc: GrpcServer | None = None
        self.channel: grpc.aio.Channel | None = None
        self.api: sync_pb2_grpc.SyncServiceStub | None = None
        self._subscription: Any = None

    async def open(self) -> Harness:
        await self.bus.connect(attempts=20)
        self._subscription = await self.bus.js.subscribe(
            "tcs.v1.commands.>", cb=self._on_command, ordered_consumer=True
        )
        return self

    async def _on_command(self, message: Any) -> None:
        headers = {str(k): str(v) for k, v in (message.headers or {}).items()}
        self.commands.append(Published(message.subject, headers, commands_pb2.TcsCommand.FromString(message.data)))

    def config(self, **overrides: Any) -> Config:
        return make_config(self.pg_dsn, self.nats_url, **overrides)

    async def start_engine(
        self,
        *,
        api: bool = True,
        run: bool = True,
        max_deliver: int = 10,
        seats: SeatServer | None = None,
        **overrides: Any,
    ) -> EngineUnderTest:
        """An engine in-process; `max_deliver` is nats.maxDeliver (deliveries before a failing change is
        dead-lettered); `seats`: seats enforced, asked from this ListSeats (else every mailbox counts as seated)."""
        under_test = EngineUnderTest(self.config(**overrides), self.clock, max_deliver=max_deliver, seats=seats)
        engine = await under_test.start(run=run)
        self.engines.append(engine)
        if api and self.grpc is None:
            self.grpc = GrpcServer("127.0.0.1", 0, policy=POLICY)
            self.grpc.add(sync_pb2_grpc.add_SyncServiceServicer_to_server, SyncApi(engine.engine), SERVICE_NAME)
            port = await self.grpc.start()
            self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            self.api = sync_pb2_grpc.SyncServiceStub(self.channel)
        return engine

    async def stop_engine(self, engine: EngineUnderTest) -> None:
        await engine.close()
        self.engines.remove(engine)

    async def close(self) -> None:
        await asyncio.gather(*(engine.close(graceful=False) for engine in self.engines))
        if self.channel is not None:
            await self.channel.close(None)
        if self.grpc is not None:
            await self.grpc.stop(0)
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        await self.bus.close()

    # -- publishing --------------------------------------------------------------------------------------------

    async def publish(self, change: calendar_pb2.CalendarChange, headers: dict[str, str] | None = None) -> None:
        await self.bus.js.publish(
            calendar_subject(change.provider, change.mailbox),
            change.SerializeToString(),
            headers={"Nats-Msg-Id": change.change_id, **(headers or {})},
        )

    async def upsert(self, mailbox: str, item: calendar_pb2.CalendarEvent) -> calendar_pb2.CalendarChange:
        change = self.mailboxes.upsert(mailbox, item)
        await self.publish(change)
        return change

    async def delete(self, mailbox: str, uid: str) -> calendar_pb2.CalendarChange:
        change = self.mailboxes.delete(mailbox, uid)
        await self.publish(change)
        return change

    async def result(
        self,
        command: commands_pb2.TcsCommand,
        status: int = commands_pb2.COMMAND_STATUS_OK,
        *,
        conference_id: str = "",
        error: str = "",
    ) -> None:
        result = commands_pb2.TcsCommandResult(
            command_id=command.command_id,
            server_id=command.server_id,
            status=commands_pb2.CommandStatus.ValueType(status),
            error=error,
        )
        which = command.WhichOneof("command")
        if which is not None:
            result.meeting_id = getattr(getattr(command, which), "meeting_id", "")
        if conference_id:
            result.conference.id = conference_id
            result.conference.url = f"https://{command.server_id.split('#')[0]}/c/{conference_id}"
        result.completed_at.CopyFrom(to_timestamp(self.clock.now()))
        await self.bus.js.publish(
            results_subject(command.server_id),
            result.SerializeToString(),
            headers={"Nats-Msg-Id": f"result/{command.command_id}/{status}"},
        )

    # -- reading -------------------------------------------------------------------------------------------------

    def of(self, kind: str, **match: Any) -> list[commands_pb2.TcsCommand]:
        found = []
        for published in self.commands:
            command = published.command
            if command.WhichOneof("command") != kind:
                continue
            body = getattr(command, kind)
            if all(_field(body, key) == value for key, value in match.items()):
                found.append(command)
        return found

    async def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
        """`wait_for_async`, and on a timeout the kinds of the commands published so far."""
        try:
            return await wait_for_async(predicate, timeout=timeout, interval=0.02, what=what)
        except AssertionError as timed_out:
            kinds = [p.command.WhichOneof("command") for p in self.commands]
            raise AssertionError(f"{timed_out}; commands so far: {kinds}") from None

    async def wait_command(self, kind: str, count: int = 1, **match: Any) -> list[commands_pb2.TcsCommand]:
        found: list[commands_pb2.TcsCommand] = await self.wait_for(
            lambda: (lambda f: f if len(f) >= count else None)(self.of(kind, **match)),
            f"{count} × {kind} {match}",
        )
        return found

    async def settle(self) -> None:
        """Wait until the engine consumed everything published and the relay published every command."""

        async def idle() -> bool:
            info = await self.bus.js.consumer_info(CALENDAR, "sync-engine-calendar")
            if info.num_pending or info.num_ack_pending:
                return False
            results = await self.bus.js.consumer_info("TCS_RESULTS", "sync-engine-results")
            if results.num_pending or results.num_ack_pending:
                return False
            async with self.connect() as connection:
                pending = await connection.fetchval(
                    "SELECT count(*) FROM outbox WHERE status = 'pending' AND available_at <= $1", self.clock.now()
                )
                published = await connection.fetchval("SELECT count(*) FROM outbox WHERE status <> 'pending'")
            return int(pending) == 0 and len(self.commands) >= int(published)

        # the durable consumer may not exist yet: any error means "not yet"
        await wait_for_async(idle, timeout=30, what="the engine to settle", tolerate=(Exception,))

    def connect(self) -> _Connection:
        return _Connection(self.pg_dsn)

    async def events(self, user: str, start: datetime | None = None, end: datetime | None = None) -> list[Any]:
        assert self.api is not None
        request = sync_pb2.ListEventsRequest(user=user)
        getattr(request, "from").CopyFrom(to_timestamp(start or T0 - timedelta(days=60)))
        request.to.CopyFrom(to_timestamp(end or T0 + timedelta(days=120)))
        response: sync_pb2.ListEventsResponse = await self.api.ListEvents(request)  # type: ignore[misc]
        return list(response.occurrences)

    async def meeting(self, uid: str) -> sync_pb2.Meeting:
        assert self.api is not None
        result: sync_pb2.Meeting = await self.api.GetMeeting(  # type: ignore[misc]
            sync_pb2.GetMeetingRequest(uid=uid)
        )
        return result

    async def conferences(self) -> list[sync_pb2.ConferenceInfo]:
        assert self.api is not None
        response: sync_pb2.ListConferencesResponse = await self.api.ListConferences(  # type: ignore[misc]
            sync_pb2.ListConferencesRequest()
        )
        return list(response.conferences)

    async def listed_commands(self, which: int) -> list[sync_pb2.CommandInfo]:
        assert self.api is not None
        request = sync_pb2.ListCommandsRequest(filter=sync_pb2.CommandFilter.ValueType(which))
        response: sync_pb2.ListCommandsResponse = await self.api.ListCommands(request)  # type: ignore[misc]
        return list(response.commands)


class _Connection:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.connection: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        self.connection = await asyncpg.connect(self.dsn)
        return self.connection

    async def __aexit__(self, *exc: object) -> None:
        assert self.connection is not None
        await self.connection.close()


def _field(message: Any, path: str) -> Any:
    value = message
    for part in path.split("__"):
        value = getattr(value, part)
    return value


def starts(occurrences: Iterable[Any]) -> list[datetime]:
    return [to_datetime(o.start) for o in occurrences]


def mid(uid: str) -> str:
    return meeting_id(uid)


async def dump_database(dsn: str, leave_out: Iterable[str] = ()) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the public schema, every row, ordered by all columns; `leave_out` names tables ("outbox")
    and columns ("shown.seq") not to dump."""
    left_out = set(leave_out)
    connection = await asyncpg.connect(dsn)
    try:
        tables = [
            str(r["tablename"])
            for r in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        ]
        dump: dict[str, list[tuple[Any, ...]]] = {}
        for table in tables:
            if table in left_out:
                continue
            columns = [
                str(r["column_name"])
                for r in await connection.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = $1"
                    " ORDER BY ordinal_position",
                    table,
                )
                if f"{table}.{r['column_name']}" not in left_out
            ]
            order = ", ".join(f'"{c}"' for c in columns)
            rows = await connection.fetch(f'SELECT {order} FROM "{table}" ORDER BY {order}')
            dump[table] = [tuple(row.values()) for row in rows]
        return dump
    finally:
        await connection.close()


# -------------------------------------------------------------------------------------------------------------
# The engine as a real process
# -------------------------------------------------------------------------------------------------------------


class EngineProcess:
    """`python -m sync_engine --config <file>` as a child process."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        import json

        self.config = config
        self.path = workdir / f"config-{id(self)}.json"
        self.path.write_text(json.dumps(config))
        self.log = workdir / f"engine-{id(self)}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.config['grpc']['services']['sync-engine']['grpcPort']}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.config['grpc']['services']['sync-engine']['httpPort']}"

    def start(self) -> EngineProcess:
        env = dict(os.environ)
        env.pop("TC_CALENDAR_CONFIG", None)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sync_engine", "--config", str(self.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(REPO),
            )
        return self

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"sync-engine did not stop on SIGTERM; log:\n{self.log.read_text()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def wait_ready(process: EngineProcess, timeout: float = 40) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            assert process.process is not None
            if process.process.poll() is not None:
                raise AssertionError(f"sync-engine exited with {process.process.returncode}:\n{process.output()}")
            async with session.get(process.http_url + "/readyz") as response:
                return response.status == 200

        try:
            await wait_for_async(ready, timeout, 0.1, "sync-engine ready", tolerate=(aiohttp.ClientError,))
        except AssertionError as failed:
            if process.process.poll() is not None:  # exited: `ready` said so, with the log
                raise
            raise AssertionError(f"{failed}:\n{process.output()}") from None

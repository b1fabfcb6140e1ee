"""Helpers of the ews-ingest tests (module name unique across the repo).

* FakeLicensing: LicensingService served over a real gRPC socket by the test, with a changeable seat answer.
* Outlook: exchangelib used the way Outlook would (impersonating the service account), blocking - call it through
  `await outlook.do(fn, ...)`, which runs it in a thread so the in-process ews-ingest keeps running.
* ChangeCollector: every CalendarChange stored in JetStream CALENDAR, decoded, with arrival times and headers.
* running_ingest: ews-ingest's IngestRuntime in this process around its own Bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import nats
from exchangelib import IMPERSONATION, NTLM, UTC, Account, Attendee, CalendarItem, Configuration, Credentials
from exchangelib import FaultTolerance as ExchangelibFaultTolerance
from exchangelib.properties import Mailbox

from ews_ingest.runtime import IngestRuntime
from ews_ingest.settings import IngestSettings, Tuning
from exchange_emulator.testing import EmulatorHandle
from exchange_emulator.testing import new_mailboxes as new_mailboxes
from tccal.bus import Bus, BusSettings
from tccal.config import Config
from tccal.grpckit import AccessPolicy, GrpcServer
from tccal.secrets import reveal
from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import calendar_pb2, licensing_pb2, licensing_pb2_grpc

T = TypeVar("T")
SVC_USER = "svc-trueconf@example.com"
SVC_PASSWORD = "Svc-Passw0rd"
SVC2_USER = "svc-second@example.com"
SVC2_PASSWORD = "Svc2-Passw0rd"
TCS_ID = "video.example.com#vcs"
TCS_HOST = "video.example.com"

EMULATOR_CONFIG: dict[str, Any] = {
    "version": "Exchange2016",
    "domain": "EXAMPLE",
    "service_accounts": [
        {"username": SVC_USER, "password": SVC_PASSWORD, "impersonation": True},
        {"username": SVC2_USER, "password": SVC2_PASSWORD, "impersonation": True},
    ],
    "mailboxes": [],
}

FAST = Tuning(
    safety_sync_seconds=3600.0,
    poll_seconds=3600.0,
    seat_refresh_seconds=3600.0,
    pool_wait_warn_seconds=30.0,
    error_backoff_base_seconds=0.2,
    error_backoff_cap_seconds=2.0,
    max_busy_wait_seconds=30.0,
)


# ---------------------------------------------------------------------------------------------- licensing
class FakeLicensing(licensing_pb2_grpc.LicensingServiceServicer):
    """Seats: everyone, unless `capacity` limits them (configured users first) or `denied` names them."""

    def __init__(self) -> None:
        self.capacity: int | None = None
        self.denied: set[str] = set()
        #: The lease the answers state (licensing's is one hour); None: say none, as a licensing of old.
        self.lease: dt.timedelta | None = None
        self.calls = 0
        self.requests: list[licensing_pb2.AllocateSeatsRequest] = []
        #: While not set, AllocateSeats waits for it before answering (counted and recorded already); None: no wait.
        self.hold: asyncio.Event | None = None
        self.address = ""
        self._server: GrpcServer | None = None

    async def AllocateSeats(  # noqa: N802 - gRPC method name
        self, request: licensing_pb2.AllocateSeatsRequest, context: Any
    ) -> licensing_pb2.AllocateSeatsResponse:
        self.calls += 1
        self.requests.append(request)
        if self.hold is not None:
            await self.hold.wait()
        granted: list[str] = []
        refused: list[licensing_pb2.SeatRefusal] = []
        for ask in sorted(request.mailboxes, key=lambda m: not m.configured):
            if ask.mailbox in self.denied:
                refused.append(licensing_pb2.SeatRefusal(mailbox=ask.mailbox, reason="refused by the test licensing"))
            elif self.capacity is not None and len(granted) >= self.capacity:
                reason = f"seat limit reached: the license has {self.capacity} seats"
                refused.append(licensing_pb2.SeatRefusal(mailbox=ask.mailbox, reason=reason))
            else:
                granted.append(ask.mailbox)
        info = licensing_pb2.LicenseInfo(
            tier=licensing_pb2.LICENSE_TIER_STANDARD,
            status=licensing_pb2.LICENSE_STATUS_VALID,
            seats=self.capacity or 1000,
            seats_used=len(granted),
        )
        response = licensing_pb2.AllocateSeatsResponse(granted=granted, refused=refused, license=info)
        if self.lease is not None:
            response.lease.FromTimedelta(self.lease)
        return response

    async def _not_here(self, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the test licensing only allocates seats")

    async def RegisterOnline(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        return await self._not_here(context)

    async def CreateOfflineRequest(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        return await self._not_here(context)

    async def InstallOfflineResponse(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        return await self._not_here(context)

    async def GetLicense(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        return await self._not_here(context)

    async def start(self, port: int = 0, *, admin_token: str = "") -> str:
        """Serve on loopback; with `admin_token`, guarded as licensing is: AllocateSeats for ews-ingest's token."""
        policy = AccessPolicy(
            callers={"/trueconf.calendar.v1.LicensingService/AllocateSeats": frozenset({"ews-ingest"})}
        )
        server = GrpcServer("127.0.0.1", port, policy=policy, admin_token=admin_token)
        server.add(
            licensing_pb2_grpc.add_LicensingServiceServicer_to_server, self, "trueconf.calendar.v1.LicensingService"
        )
        port = await server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)


# ---------------------------------------------------------------------------------------------- Outlook
class Outlook:
    """Writes calendars through EWS as Outlook would (exchangelib impersonating the service account)."""

    def __init__(self, emu: EmulatorHandle, user: str = SVC_USER, password: str = SVC_PASSWORD) -> None:
        self.emu = emu
        self.config = Configuration(
            service_endpoint=emu.ews_url,
            credentials=Credentials(user, password),
            auth_type=NTLM,
            retry_policy=ExchangelibFaultTolerance(max_wait=10),
            max_connections=4,
        )
        self._accounts: dict[str, Account] = {}

    def account(self, email: str) -> Account:
        if email not in self._accounts:
            account = Account(email, config=self.config, access_type=IMPERSONATION, autodiscover=False)
            account.protocol.config.retry_policy = self.config.retry_policy
            self._accounts[email] = account
        return self._accounts[email]

    async def do(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def meeting(
        self,
        organizer: str,
        subject: str,
        *,
        attendees: list[str] = (),  # type: ignore[assignment]
        optional: list[str] = (),  # type: ignore[assignment]
        start: dt.datetime | None = None,
        minutes: int = 60,
        send: str = "SendToAllAndSaveCopy",
        **fields: Any,
    ) -> CalendarItem:
        account = self.account(organizer)
        begin = start or soon()
        item = CalendarItem(
            account=account,
            folder=account.calendar,
            subject=subject,
            start=begin,
            end=begin + dt.timedelta(minutes=minutes),
            required_attendees=[Attendee(mailbox=Mailbox(email_address=a)) for a in attendees] or None,
            optional_attendees=[Attendee(mailbox=Mailbox(email_address=a)) for a in optional] or None,
            **fields,
        )
        item.save(send_meeting_invitations=send)
        return item

    def copy_of(self, mailbox: str, uid: str) -> CalendarItem:
        found = [i for i in self.account(mailbox).calendar.all() if i.uid == uid]
        assert len(found) == 1, f"{mailbox} holds {len(found)} items with UID {uid}"
        return found[0]

    def close(self) -> None:
        for account in self._accounts.values():
            account.protocol.close()


def soon(days: int = 3, hour: int = 10) -> dt.datetime:
    base = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)
    from exchangelib import EWSDateTime

    moment: dt.datetime = EWSDateTime(base.year, base.month, base.day, hour, 0, tzinfo=UTC)
    return moment


# ---------------------------------------------------------------------------------------------- JetStream
@dataclass
class Received:
    at: float
    subject: str
    headers: dict[str, str]
    change: calendar_pb2.CalendarChange


@dataclass
class ChangeCollector:
    url: str
    received: list[Received] = field(default_factory=list)
    _nc: Any = None

    async def start(self) -> None:
        self._nc = await nats.connect(self.url)
        js = self._nc.jetstream()

        async def on_message(msg: Any) -> None:
            change = calendar_pb2.CalendarChange()
            change.ParseFromString(msg.data)
            self.received.append(Received(time.monotonic(), msg.subject, dict(msg.headers or {}), change))

        await wait_for_async(lambda: _stream_exists(js), timeout=20, what="stream CALENDAR")
        await js.subscribe("calendar.v1.changes.>", cb=on_message, ordered_consumer=True)

    async def stop(self) -> None:
        if self._nc is not None:
            await self._nc.close()

    def of(self, mailbox: str) -> list[calendar_pb2.CalendarChange]:
        return [r.change for r in self.received if r.change.mailbox == mailbox]

    async def wait(
        self, predicate: Callable[[calendar_pb2.CalendarChange], bool], timeout: float = 20.0, what: str = ""
    ) -> calendar_pb2.CalendarChange:
        async def find() -> calendar_pb2.CalendarChange | None:
            for received in self.received:
                if predicate(received.change):
                    return received.change
            return None

        found = await wait_for_async(find, timeout=timeout, what=what or "a CalendarChange")
        assert found is not None
        return found

    def received_for(self, predicate: Callable[[calendar_pb2.CalendarChange], bool]) -> Received | None:
        return next((r for r in self.received if predicate(r.change)), None)


async def _stream_exists(js: Any) -> bool:
    try:
        await js.stream_info("CALENDAR")
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------------------------- ews-ingest
def provider_section(
    emu: EmulatorHandle,
    users: list[str],
    *,
    credentials: list[tuple[str, str]] | None = None,
    host: str = "127.0.0.1",
    autodiscover: bool = False,
    max_concurrency: int = 4,
    auth: str = "ntlm",
) -> dict[str, Any]:
    section: dict[str, Any] = {
        "host": host,
        "port": emu.port,
        "scheme": "http",
        "path": "/EWS/Exchange.asmx",
        "auth": auth,
        "maxConcurrency": max_concurrency,
        "credentials": [
            {"login": login, "password": password} for login, password in (credentials or [(SVC_USER, SVC_PASSWORD)])
        ],
        "users": users,
    }
    if autodiscover:
        section["autodiscoverPath"] = "/autodiscover/autodiscover.svc"
    return section


def ingest_config(
    nats_url: str, licensing: str, providers: list[dict[str, Any]], *, auto_sync: bool = True, **extra: Any
) -> dict[str, Any]:
    host, _, port = licensing.rpartition(":")
    config: dict[str, Any] = {
        "allowPlaintextPasswords": True,
        "cache": {"autoSync": auto_sync, "backward": 1, "forward": 2},
        "productWhitelist": {"tcs": [TCS_ID]},
        "nats": {"url": nats_url},
        "calendarProviders": providers,
        "conferenceDefaults": {"mode": "PxP", "access": "private", "maxPodiums": 4, "recordingEnabled": True},
        "grpc": {
            "services": {
                "ews-ingest": {"host": "127.0.0.1", "grpcPort": 0, "httpPort": 0},
                "licensing": {"host": host, "grpcPort": int(port), "httpPort": 0},
            }
        },
        "telemetry": {"logLevel": "INFO", "logFormat": "text"},
    }
    config.update(extra)
    return config


@dataclass
class Harness:
    runtime: IngestRuntime
    bus: Bus
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def scheduler(self) -> Any:
        return self.runtime.scheduler

    def pool_of(self, mailbox: str) -> Any:
        return self.runtime.scheduler.entries[mailbox].pool

    async def synced(self, *mailboxes: str, timeout: float = 30.0) -> None:
        async def done() -> bool:
            entries = self.runtime.scheduler.entries
            return all(m in entries and entries[m].syncs > 0 and entries[m].queued is None for m in mailboxes)

        await wait_for_async(done, timeout=timeout, what=f"first sync of {mailboxes}")

    async def streamed(self, *mailboxes: str, connections: int = 1, timeout: float = 20.0) -> None:
        """Wait until the mailboxes (default: every group member) are subscribed and their streams are open."""

        async def ready() -> bool:
            groups = [g for gs in self.runtime.streams.groups.values() for g in gs]
            wanted = set(mailboxes) or {m for g in groups for m in g.members}
            mine = [g for g in groups if wanted & set(g.members)]
            subscribed = {m for g in mine for m in g.subscriptions}
            return (
                self.runtime.streams.stats.connections >= connections
                and wanted <= subscribed
                and all(g.service is not None for g in mine)
            )

        await wait_for_async(ready, timeout=timeout, what="streaming connections")


async def streams_arrived(emu: EmulatorHandle, harness: Harness, *, exactly_one: bool = False) -> None:
    """Wait (at most 20 s) until Exchange holds a streaming connection for every mailbox the ingest streams - with
    `exactly_one`, exactly one, on one of the mailbox's live subscriptions. `Harness.streamed` counts a connection
    when the ingest sends GetStreamingEvents, the emulator when the request arrives - later on a loaded machine,
    where a test acting on the streams at once found none to act on (CI, three times)."""
    streamed = {
        m
        for gs in harness.runtime.streams.groups.values()
        for g in gs
        if g.service is not None
        for m in g.subscriptions
    }

    async def arrived() -> bool:
        connections: dict[str, list[int]] = {}
        for s in await asyncio.to_thread(emu.admin.subscriptions):
            if not s["expired"]:
                connections.setdefault(s["mailbox"], []).append(s["streaming_connections"])
        if exactly_one:
            return all(connections.get(m, []).count(1) == 1 and max(connections[m]) == 1 for m in streamed)
        return all(max(connections.get(m, [0])) >= 1 for m in streamed)

    how_many = "exactly one streaming connection" if exactly_one else "a streaming connection"
    await wait_for_async(arrived, timeout=20, what=f"{how_many} at Exchange for each of {sorted(streamed)}")


@contextlib.asynccontextmanager
async def running_ingest(config: dict[str, Any], tuning: Tuning = FAST) -> AsyncIterator[Harness]:
    validated = Config.model_validate(config)
    settings = IngestSettings.from_config(validated, lambda v: reveal(v, allow_plaintext=True), tuning)
    bus = Bus(BusSettings(url=validated.nats.url, name="ews-ingest-test"))
    runtime = IngestRuntime(settings, bus)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    harness = Harness(runtime, bus, stop, task)
    try:
        await wait_for_async(lambda: _started(runtime, task), timeout=30, what="ews-ingest start")
        yield harness
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await bus.close()


# the type of the `streaming_ingest` fixture (conftest.py): `async with streaming_ingest(*mailboxes, ...) as h`
StreamingIngest = Callable[..., contextlib.AbstractAsyncContextManager[Harness]]


async def _started(runtime: IngestRuntime, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()
        raise AssertionError("ews-ingest stopped before it started")
    return runtime.started.is_set()

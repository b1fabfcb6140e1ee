"""Helpers of the graph-ingest tests (module name unique across the repo).

* GraphWriter: changes calendars the way another Graph client would (raw HTTP with its own app-only token from the
  emulator's identity endpoint) - never through graph-ingest's code.
* SeatServer: LicensingService over a real gRPC socket, guarded by licensing's own access policy (licensing.api.POLICY)
  and an admin token, so graph-ingest's service token is what gets it seats.
* running_graph: graph-ingest's GraphRuntime in this process, connected to NATS as the graph-ingest identity.
* GraphTestbed: what most tests run against (emulator, NATS, seat server, collector, writer), the `testbed` fixture.
* NotifyEndpoint / notifying_emulator: graph-ingest's HTTPS notification receiver and a Graph emulator trusting it
  (the tests' `notify_endpoint` fixture and bench/bench_graph.py make them the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc
import nats
from ews_ingest_support import ChangeCollector

from graph_emulator.testing import (
    APP_ID,
    APP_SECRET,
    READONLY_APP_ID,
    READONLY_APP_SECRET,
    TENANT_ID,
    EmulatorProcess,
    build_config,
    start_emulator,
)
from graph_emulator.tls import self_signed_certificate
from graph_ingest.runtime import GraphRuntime, MailboxStatus
from graph_ingest.settings import GraphSettings, Tuning
from graph_ingest.subscriptions import SubscriptionKeeper, SubscriptionRecord
from licensing.api import POLICY
from tccal import secrets
from tccal.bus import Bus
from tccal.clock import Clock
from tccal.conference_marker import MARKER_GRAPH_PROPERTY_ID
from tccal.config import Config
from tccal.grpckit import GrpcServer
from tccal.nats_auth import ADMIN
from tccal.secrets import reveal
from tccal_sandbox.embedded import EmbeddedNats, free_port
from tccal_sandbox.testing import nats_settings, wait_for_async
from trueconf.calendar.v1 import licensing_pb2, licensing_pb2_grpc

ADMIN_TOKEN = "graph-ingest-test-admin-token"
TCS_ID = "video.example.com#vcs"
ALICE = "alice@contoso.test"
BOB = "bob@contoso.test"
CAROL = "carol@contoso.test"

FAST = Tuning(poll_seconds=3600.0, page_size=5, seat_refresh_seconds=3600.0, error_backoff_base_seconds=0.2)


# ---------------------------------------------------------------------------------------------- Graph writer
class GraphWriter:
    """Creates, changes and deletes events through the emulator's Graph API with a client of its own."""

    def __init__(self, emu: EmulatorProcess) -> None:
        self.emu = emu
        self.ssl = ssl.create_default_context(cafile=emu.ca_file)
        self._session: aiohttp.ClientSession | None = None
        self._token = ""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _token_now(self) -> str:
        assert self._session is not None
        if not self._token:
            form = {
                "grant_type": "client_credentials",
                "client_id": APP_ID,
                "client_secret": APP_SECRET,
                "scope": "https://graph.microsoft.com/.default",
            }
            async with self._session.post(
                f"{self.emu.authority}/{TENANT_ID}/oauth2/v2.0/token", data=form, ssl=self.ssl
            ) as resp:
                self._token = (await resp.json())["access_token"]
        return self._token

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        while True:
            headers = {"Authorization": f"Bearer {await self._token_now()}"}
            async with self._session.request(
                method, f"{self.emu.graph_url}{path}", json=body, headers=headers, ssl=self.ssl
            ) as resp:
                text = await resp.text()
                if resp.status == 429:  # a test that lowers the limits throttles the writer too: wait as told
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                    continue
                if resp.status == 401 and "expired" in text:  # a test expired every token: get a new one
                    self._token = ""
                    continue
                assert resp.status < 300, f"{method} {path}: HTTP {resp.status}: {text}"
                return await resp.json() if text else None

    async def create(
        self,
        mailbox: str,
        subject: str,
        *,
        start: dt.datetime | None = None,
        minutes: int = 60,
        attendees: tuple[str, ...] = (),
        location: str = "",
        body: str = "",
        marker: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        begin = start or soon()
        event: dict[str, Any] = {
            "subject": subject,
            "start": {"dateTime": begin.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {
                "dateTime": (begin + dt.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "UTC",
            },
            "attendees": [{"emailAddress": {"address": a}, "type": "required"} for a in attendees],
            **extra,
        }
        if location:
            event["location"] = {"displayName": location}
        if body:
            event["body"] = {"contentType": "text", "content": body}
        if marker is not None:
            event["singleValueExtendedProperties"] = [{"id": MARKER_GRAPH_PROPERTY_ID, "value": marker}]
        created: dict[str, Any] = await self._call("POST", f"/users/{quote(mailbox)}/events", event)
        return created

    async def update(self, mailbox: str, event_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("PATCH", f"/users/{quote(mailbox)}/events/{event_id}", changes)
        return result

    async def delete(self, mailbox: str, event_id: str) -> None:
        await self._call("DELETE", f"/users/{quote(mailbox)}/events/{event_id}")

    async def accept(self, mailbox: str, event_id: str) -> None:
        await self._call("POST", f"/users/{quote(mailbox)}/events/{event_id}/accept", {"sendResponse": True})


def soon(days: int = 3, hour: int = 10) -> dt.datetime:
    base = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)
    return dt.datetime(base.year, base.month, base.day, hour, tzinfo=dt.UTC)


# ---------------------------------------------------------------------------------------------- licensing
class SeatServer(licensing_pb2_grpc.LicensingServiceServicer):
    """AllocateSeats for everyone but `denied`, behind licensing's real access policy; a test that clears
    `answering` holds every answer back until it sets it again (licensing that answers late)."""

    def __init__(self) -> None:
        self.denied: set[str] = set()
        self.answering = asyncio.Event()
        self.answering.set()
        self.calls = 0
        #: (mailbox, configured) of the last request.
        self.last: list[tuple[str, bool]] = []
        self.address = ""
        self._server: GrpcServer | None = None

    async def AllocateSeats(  # noqa: N802 - gRPC method name
        self, request: licensing_pb2.AllocateSeatsRequest, context: Any
    ) -> licensing_pb2.AllocateSeatsResponse:
        self.calls += 1
        await self.answering.wait()
        self.last = [(m.mailbox, m.configured) for m in request.mailboxes]
        granted = [m.mailbox for m in request.mailboxes if m.mailbox not in self.denied]
        refused = [
            licensing_pb2.SeatRefusal(mailbox=m.mailbox, reason="refused by the test licensing")
            for m in request.mailboxes
            if m.mailbox in self.denied
        ]
        return licensing_pb2.AllocateSeatsResponse(granted=granted, refused=refused)

    async def start(self) -> str:
        server = GrpcServer("127.0.0.1", 0, policy=POLICY, admin_token=ADMIN_TOKEN)
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


# ---------------------------------------------------------------------------------------------- graph-ingest
def graph_provider(
    emu: EmulatorProcess,
    users: list[str],
    *,
    secret: str = READONLY_APP_SECRET,
    name: str | None = None,
    client_id: str = READONLY_APP_ID,
) -> dict[str, Any]:
    """graph-ingest's entry: the app with Calendars.Read only (reading is all it needs without writeBackJoinLink),
    not the writer's app."""
    section: dict[str, Any] = {
        "type": "graph",
        "tenantId": TENANT_ID,
        "clientId": client_id,
        "clientSecret": secret,
        "authorityUrl": emu.authority,
        "graphUrl": emu.graph_url,
        "caFile": emu.ca_file,
        "users": users,
    }
    if name:
        section["name"] = name
    return section


@dataclass(frozen=True)
class NotifyEndpoint:
    """Where graph-ingest's change-notification receiver serves HTTPS in a test: a free port on 127.0.0.1 and a
    self-signed certificate the Graph emulator trusts (its `subscriptions.ca_file`)."""

    cert_file: str
    key_file: str
    port: int

    @classmethod
    def create(cls, directory: Path) -> NotifyEndpoint:
        """A self-signed certificate written into `directory` and a free port."""
        cert, key = self_signed_certificate(directory)
        return cls(str(cert), str(key), free_port())

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/graph/notify"

    def provider(self, emu: EmulatorProcess, users: list[str], *, name: str) -> dict[str, Any]:
        """A Graph provider entry (`graph_provider`) with change notifications to this endpoint."""
        return {**graph_provider(emu, users, name=name), **self.section()}

    def section(self) -> dict[str, Any]:
        """The keys of a Graph provider entry that turn change notifications on."""
        listen = {"host": "127.0.0.1", "port": self.port, "certFile": self.cert_file, "keyFile": self.key_file}
        return {"notificationUrl": self.url, "notificationListen": listen}

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cert_file)


def emulator_subscriptions(endpoint: NotifyEndpoint) -> dict[str, Any]:
    """The Graph emulator's `subscriptions` config for tests: trust the receiver, retry a failed delivery quickly."""
    return {"ca_file": endpoint.cert_file, "retry_delays_s": [0.1, 0.2], "validation_timeout_s": 10}


@contextlib.contextmanager
def notifying_emulator(endpoint: NotifyEndpoint) -> Iterator[EmulatorProcess]:
    """The Graph emulator (a subprocess) posting change notifications to `endpoint`, trusting its certificate."""
    with start_emulator(build_config(extra={"subscriptions": emulator_subscriptions(endpoint)})) as handle:
        yield handle


def graph_config(
    licensing: str, providers: list[dict[str, Any]], *, auto_sync: bool = True, **extra: Any
) -> dict[str, Any]:
    host, _, port = licensing.rpartition(":")
    return {
        **extra,
        "allowPlaintextPasswords": True,
        "cache": {"autoSync": auto_sync, "backward": 1, "forward": 2},
        "productWhitelist": {"tcs": [TCS_ID]},
        "calendarProviders": providers,
        "conferenceDefaults": {"mode": "PxP", "access": "private", "maxPodiums": 4, "recordingEnabled": True},
        "grpc": {
            "adminToken": ADMIN_TOKEN,
            "services": {"licensing": {"host": host, "grpcPort": int(port), "httpPort": 0}},
        },
    }


@dataclass
class GraphHarness:
    runtime: GraphRuntime
    stop: asyncio.Event
    task: asyncio.Task[None]

    def status(self, mailbox: str) -> MailboxStatus:
        return self.runtime.mailboxes[mailbox]

    async def rounds(self, mailbox: str, count: int = 1, timeout: float = 30.0) -> MailboxStatus:
        """Wait until the mailbox finished `count` delta rounds (successful ones)."""
        status = self.status(mailbox)

        async def done() -> bool:
            if self.task.done():
                self.task.result()
            return status.rounds >= count and status.failures == 0 and status.checkpoint is not None

        await wait_for_async(done, timeout=timeout, what=f"{count} delta round(s) of {mailbox}")
        return status

    def keeper(self, mailbox: str) -> SubscriptionKeeper:
        """The subscription keeper of the mailbox's provider."""
        return self.runtime.keepers[self.status(mailbox).provider]

    async def subscribed(self, mailbox: str, timeout: float = 30.0) -> SubscriptionRecord:
        """Wait until the mailbox has a subscription and the delta round that follows its creation is done (the
        mailbox is idle: only a notification, a lifecycle event or the next poll starts its next round)."""
        keeper = self.keeper(mailbox)

        async def ready() -> SubscriptionRecord | None:
            if self.task.done():
                self.task.result()
            record = keeper.records.get(mailbox)
            status = self.status(mailbox)
            return record if record is not None and status.rounds > 0 and not status.busy else None

        return await wait_for_async(ready, timeout=timeout, what=f"a subscription of {mailbox}")

    async def poll(self, mailbox: str, timeout: float = 30.0) -> MailboxStatus:
        """Ask the mailbox for changes now and wait until that round is done."""
        before = self.status(mailbox).rounds
        self.runtime.trigger(mailbox)
        return await self.rounds(mailbox, before + 1, timeout)


@contextlib.asynccontextmanager
async def running_graph(
    config: dict[str, Any], nats_server: EmbeddedNats, tuning: Tuning = FAST, clock: Clock | None = None
) -> AsyncIterator[GraphHarness]:
    validated = Config.model_validate(config)
    settings = GraphSettings.from_config(validated, lambda v: reveal(v, allow_plaintext=True), tuning)
    bus = Bus(nats_settings(nats_server, "graph-ingest"))
    runtime = GraphRuntime(settings, bus, clock)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        await wait_for_async(lambda: _started(runtime, task), timeout=30, what="graph-ingest start")
        yield GraphHarness(runtime, stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await bus.close()


@dataclass
class GraphTestbed:
    """The fixtures most graph-ingest tests take together (conftest's `testbed`): the module's Graph emulator, the
    test's NATS, a seat server, a CalendarChange collector (started by the test) and a Graph writer."""

    emu: EmulatorProcess
    nats: EmbeddedNats
    seats: SeatServer
    collector: ChangeCollector
    writer: GraphWriter

    @property
    def nats_url(self) -> str:
        """The test NATS's URL with the admin identity's credentials."""
        return self.nats.url_for(ADMIN)

    def running(
        self, providers: list[dict[str, Any]], tuning: Tuning = FAST, **config: Any
    ) -> contextlib.AbstractAsyncContextManager[GraphHarness]:
        """`running_graph` over `providers` (`graph_config` with this seat server and the keys in `config`)."""
        return running_graph(graph_config(self.seats.address, providers, **config), self.nats, tuning)


async def _started(runtime: GraphRuntime, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()
        raise AssertionError("graph-ingest stopped before it started")
    return runtime.started.is_set()


def grpc_code(exc: BaseException) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None


_counter = iter(range(1, 1_000_000))


def new_mailboxes(emu: EmulatorProcess, *names: str) -> list[str]:
    """Fresh mailboxes in the emulator's tenant (control API), unique per call: each test starts empty."""
    made: list[str] = []
    for name in names:
        upn = f"{name}-{next(_counter)}-{dt.datetime.now(dt.UTC).strftime('%H%M%S%f')}@contoso.test"
        emu.control("POST", f"/tenants/{TENANT_ID}/users", {"userPrincipalName": upn, "displayName": name.title()})
        made.append(upn)
    return made


def write_config(tmp_path: Path, *providers: dict[str, Any], name: str = "config.json") -> Path:
    """A config.json with these calendarProviders and one whitelisted TrueConf Server (secrets encrypted)."""
    path = tmp_path / name
    server = {
        "id": TCS_ID,
        "secret": secrets.encrypt("bridge"),
        "restUrl": "https://video.example.com/api/v4",
        "clientId": "connector",
        "clientSecret": secrets.encrypt("client"),
    }
    whitelist = {"productWhitelist": {"tcs": [TCS_ID]}}
    path.write_text(json.dumps({**whitelist, "tcs": {"servers": [server]}, "calendarProviders": list(providers)}))
    return path


async def publish_as_admin(nats_url: str, subject: str, payload: bytes, *, to_stream: bool = False) -> None:
    """What another service sends (tcs-gateway's result into its stream, licensing's CLI a core announcement)."""
    nc = await nats.connect(nats_url)
    try:
        if to_stream:
            await nc.jetstream().publish(subject, payload)
        else:
            await nc.publish(subject, payload)
            await nc.flush()
    finally:
        await nc.close()

"""The gateway: bridge server, per-server state, command consumers, REST clients, persisted state; start and a
graceful stop (stop pulling, finish REST calls, let in-flight pushes be acknowledged, close every WebSocket
with 1001, hand unfinished messages back to JetStream, save state)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time

import aiohttp

from tccal.bus import AnonymousNatsError, Bus
from tccal.http_client import traced_session
from tcs_gateway.bridge.framing import CloseCode, FrameValidator
from tcs_gateway.bridge.server import BridgeServer
from tcs_gateway.bridge.servers import ServerState
from tcs_gateway.bridge.session import SessionContext
from tcs_gateway.commands import CommandConsumer
from tcs_gateway.conference_order import ConferenceOrder
from tcs_gateway.ondemand import OnDemandRequests
from tcs_gateway.rest.conferences import ConferenceService
from tcs_gateway.rest.http import RestClient
from tcs_gateway.rest.users import UserDirectory
from tcs_gateway.server_lease import LeaseBucket, ServerLease, replica_id
from tcs_gateway.settings import GatewaySettings
from tcs_gateway.state import StateStore
from tcs_gateway.sync_client import EventSource
from trueconf.calendar.v1 import gateway_pb2

log = logging.getLogger(__name__)


def _session_here(state: ServerState) -> bool:
    session = state.session
    return session is not None and session.authenticated and not session.closing


class Gateway:
    def __init__(self, settings: GatewaySettings, bus: Bus, *, replicas: int = 1) -> None:
        self.settings = settings
        self.bus = bus
        self.store = StateStore(settings.state_bucket, replicas=replicas)
        self.replicas = replicas
        self.source = EventSource(settings.sync_address, settings.sync_timeout, settings.sync_caller)
        self.servers: dict[str, ServerState] = {
            server.key: ServerState(server, settings, self.store) for server in settings.served_servers()
        }
        self.ondemand = OnDemandRequests(bus, settings.ondemand_interval, settings.configured_users)
        self.context = SessionContext(
            settings=settings,
            servers=self.servers,
            store=self.store,
            source=self.source,
            validator=FrameValidator(),
            on_list=self._on_list,
        )
        self.bridge = BridgeServer(self.context)
        self.consumers: dict[str, CommandConsumer] = {}
        self._http: aiohttp.ClientSession | None = None
        self._consumer_tasks: dict[str, asyncio.Task[None]] = {}
        #: This process's name as a lease owner, and the per-server leases (only a holder consumes the commands).
        self.replica = replica_id()
        self.lease_bucket = LeaseBucket(bus, settings, replicas=replicas)
        self.leases: dict[str, ServerLease] = {}
        self._lease_stop = asyncio.Event()
        self._lease_tasks: list[asyncio.Task[None]] = []
        self._switching: dict[str, asyncio.Lock] = {}
        self._stopping = False
        self.started = asyncio.Event()
        for entry in settings.whitelist:
            if settings.server(entry) is None:
                log.warning(
                    "whitelisted TrueConf Server has no tcs.servers entry (secret, REST API): it cannot connect",
                    extra={"server": entry},
                )
        for server in settings.servers:
            if not settings.is_whitelisted(server.id):
                log.warning(
                    "tcs.servers lists a server that productWhitelist.tcs does not: it is refused",
                    extra={"server": server.id},
                )

    async def _on_list(self, server: ServerState, user: str, engine_seq: int) -> None:
        if engine_seq == 0:
            # Nothing was ever pushed for this mailbox: not synced yet (or empty). Ask ews-ingest for it.
            await self.ondemand.request(user, server.id)

    async def start_listener(self) -> int:
        """Bind wsPort; ValueError (naming the port or file) when the port is taken or TLS files are unusable."""
        try:
            return await self.bridge.start()
        except ssl.SSLError as exc:
            raise ValueError(
                f"tcs.tlsCertFile/tlsKeyFile ({self.settings.tls_cert_file}, {self.settings.tls_key_file}) are not a "
                f"usable certificate and key: {exc}"
            ) from exc
        except OSError as exc:
            raise ValueError(
                f"wsPort {self.settings.ws_port}: cannot listen on {self.settings.ws_host}: {exc.strerror or exc}"
            ) from exc

    async def run(self, stop: asyncio.Event) -> None:
        """Connect NATS, load the state, consume every served server's commands until `stop`, then shut down."""
        self._http = traced_session()
        order = ConferenceOrder(self.bus, replicas=self.replicas)
        for key, state in self.servers.items():
            client = RestClient(state.server, self.settings, self._http)
            users = UserDirectory(client, self.settings.user_cache_ttl, self.settings.user_cache_negative_ttl)
            conferences = ConferenceService(state.server, self.settings, client, users)
            self.consumers[key] = CommandConsumer(self.bus, state, conferences, self.source, self.settings, order)
        try:
            while True:  # the bridge keeps listening meanwhile: leaving run() would close it for good
                connect = asyncio.ensure_future(self.bus.connect())
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait([connect, stopped], return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if not connect.done():
                    connect.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await connect
                    return
                try:
                    connect.result()
                    break
                except AnonymousNatsError:
                    raise
                except Exception as exc:  # JetStream not ready past Bus.connect's patience: connect again
                    log.warning("NATS JetStream not usable yet; connecting again", extra={"error": repr(exc)})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                    if stop.is_set():
                        return
            while True:
                try:
                    await self.store.open(self.bus.js)
                    break
                except Exception as exc:  # NATS trouble: the bucket is needed before serving snapshots
                    log.warning("gateway state not readable yet; retrying", extra={"error": repr(exc)})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                    if stop.is_set():
                        return
            await self.ondemand.listen_for_license_changes()
            for key, state in self.servers.items():
                lease = ServerLease(
                    self.lease_bucket,
                    state.id,
                    replica=self.replica,
                    session_here=functools.partial(_session_here, state),
                    gained=functools.partial(self._start_consuming, key),
                    lost=functools.partial(self._stop_consuming, key),
                )
                self.leases[key] = lease
                state.on_session_change = lease.wake.set
                self._lease_tasks.append(
                    asyncio.get_running_loop().create_task(lease.run(self._lease_stop), name=f"lease-{key}")
                )
            self.started.set()
            await stop.wait()
        finally:
            await self.shutdown()

    def _start_consuming(self, key: str) -> None:
        """The server's lease was taken here: consume its commands."""
        task = self._consumer_tasks.get(key)
        if self._stopping or (task is not None and not task.done()):
            return
        consumer = self.consumers[key]
        consumer.restart()
        self._consumer_tasks[key] = asyncio.get_running_loop().create_task(
            self._consume(consumer), name=consumer.durable
        )

    async def _stop_consuming(self, key: str) -> None:
        """The server's lease is lost or given back: stop pulling (the loop ends within a fetch timeout) and hand
        the pushes not yet sent back to JetStream."""
        lock = self._switching.setdefault(key, asyncio.Lock())
        async with lock:
            consumer = self.consumers[key]
            consumer.stop.set()
            task = self._consumer_tasks.pop(key, None)
            if task is not None:
                await asyncio.wait([task], timeout=self.settings.fetch_timeout + 5.0)
                if not task.done():  # a command's handling outlasted the wait: no second loop may start beside it
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            released = await consumer.hand_back()
            if released:
                log.info(
                    "server's queued commands handed back", extra={"server": consumer.server_id, "messages": released}
                )

    async def _consume(self, consumer: CommandConsumer) -> None:
        while not consumer.stop.is_set():
            try:
                await consumer.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS trouble while (re)binding: try again
                log.warning(
                    "command consumer failed; restarting", extra={"server": consumer.server_id, "error": repr(exc)}
                )
                consumer.state.record_error(f"command consumer: {exc!r}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(consumer.stop.wait(), 1.0)

    async def shutdown(self) -> None:
        log.info("tcs-gateway draining")
        self._stopping = True
        for consumer in self.consumers.values():
            consumer.stop.set()
        if self._consumer_tasks:
            await asyncio.wait(list(self._consumer_tasks.values()), timeout=10.0)
        for consumer in self.consumers.values():
            await consumer.wait_rest(10.0)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(  # noqa: ASYNC110 - a short bounded grace, not a wait for work
            item.in_flight for state in self.servers.values() for item in state.queue.items()
        ):
            await asyncio.sleep(0.05)
        await self.bridge.close_all(CloseCode.GOING_AWAY, "gateway shutting down")
        await self.bridge.stop()
        await self.ondemand.close()
        for state in self.servers.values():
            await state.drain_completions(5.0)
        released = 0
        for consumer in self.consumers.values():
            released += await consumer.release_held()
        if released:
            log.info("unacknowledged pushes handed back to JetStream", extra={"messages": released})
        self._lease_stop.set()  # nothing is consumed any more: give the leases back
        if self._lease_tasks:
            await asyncio.wait(self._lease_tasks, timeout=5.0)
        await self.store.close()
        await self.source.close()
        if self._http is not None:
            await self._http.close()
            self._http = None
        log.info("tcs-gateway drained")

    # ------------------------------------------------------------------ GatewayService
    def server_statuses(self) -> gateway_pb2.ListServersResponse:
        response = gateway_pb2.ListServersResponse()
        listed: list[str] = list(self.settings.whitelist)
        for server_id in listed:
            status = response.servers.add(server_id=server_id)
            state = self.servers.get(server_id.lower())
            if state is None:
                status.last_errors.append("no tcs.servers entry for this server id: it cannot authenticate")
                continue
            status.connected = state.session is not None
            status.peer = state.peer if state.session is not None else ""
            if state.connected_since is not None and state.session is not None:
                status.connected_since.FromDatetime(state.connected_since)
            if state.last_seen is not None:
                status.last_seen.FromDatetime(state.last_seen)
            status.queue_depth = len(state.queue)
            status.last_errors.extend(state.errors)
            status.users = len(self.store.asked_users(state.id))
        return response

"""NATS JetStream: connection with reconnect, the connector's streams and KV bucket, publish and consume.

Streams (names and subjects: tccal.subjects) are declared idempotently by every service that starts. Messages
carry Nats-Msg-Id (dedupe) and traceparent. A consumed message is acked only after its handler returned; a
failing message is redelivered with backoff up to `max_deliver` times, then copied to the dead-letter subject
dlq.<stream>.<durable> with the error in its headers, and acked.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse, urlsplit, urlunsplit

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue
from opentelemetry import trace

from tccal import telemetry
from tccal.nats_auth import IDENTITIES
from tccal.pipelined import PipelinedPublisher, acknowledged_from_first, refusal_error
from tccal.retry import backoff_delay, retry_async
from tccal.stream_limits import (
    DEADLETTER_MAX_AGE_S,
    DEFAULT_DEADLETTER_MAX_BYTES,
    DEFAULT_STREAM_MAX_BYTES,
    DUPLICATE_WINDOW_SECONDS,
    STREAM_MAX_AGE_S,
    StreamLimits,
    declare_stream,
)
from tccal.subjects import INGEST_STATE_BUCKET, STREAM_SUBJECTS, deadletter_subject

if TYPE_CHECKING:
    from tccal.config import Config

log = logging.getLogger(__name__)

#: JetStream API answers of a cluster not ready yet (no meta leader elected): retried when declaring the topology.
TOPOLOGY_NOT_READY: tuple[type[BaseException], ...] = (TimeoutError, ServiceUnavailableError, NoRespondersError)
#: How long Bus.connect keeps declaring the topology against a JetStream that is not ready.
TOPOLOGY_PATIENCE_SECONDS = 60.0
#: How long one fetch of `consume` waits for messages; its pull request expires on the server as long after the
#: server received it.
FETCH_SECONDS = 1.0
#: Beyond FETCH_SECONDS after the last fetch returned, the time its pull request may have taken to reach the server.
PULL_REQUEST_TRANSIT_SECONDS = 0.1
#: The PING/PONG before late deliveries are handed back: longer, and the connection is in no state to hand back over.
HAND_BACK_FLUSH_SECONDS = 2

__all__ = ["DEADLETTER_MAX_AGE_S", "DUPLICATE_WINDOW_SECONDS", "STREAM_MAX_AGE_S", "Bus", "BusSettings"]


async def announce(settings: BusSettings, subject: str, payload: bytes = b"{}", *, timeout: float = 2.0) -> bool:
    """Best-effort core-NATS message from a short-lived process (a CLI); False when NATS is not reachable.

    Never retries and never logs connection noise: nothing running to tell is a normal case (the services
    then ask again on their own schedule).
    """
    servers = settings.servers()

    async def quiet(exc: Exception) -> None:
        log.debug("NATS not reachable for %s: %s", subject, exc)

    async def send() -> None:
        connection = await nats.connect(
            **settings.connect_options(),
            connect_timeout=timeout,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=quiet,
        )
        try:
            await connection.publish(subject, payload)
            await connection.flush(timeout=max(1, int(timeout)))
        finally:
            await connection.close()

    try:
        for server in servers:  # a refused port answers at once; nats-py would wait out its timeout instead
            parsed = urlparse(server if "://" in server else f"nats://{server}")
            _, writer = await asyncio.wait_for(asyncio.open_connection(parsed.hostname, parsed.port or 4222), timeout)
            writer.close()
            break
        await asyncio.wait_for(send(), timeout * 2)
    except Exception as exc:  # unreachable, refused, timed out: the message is only a hint
        await quiet(exc)
        return False
    return True


class AnonymousNatsError(RuntimeError):
    """NATS lets clients in without credentials, and nats.allowAnonymous does not allow that (§4.6)."""


def without_userinfo(url: str) -> str:
    """`url` without `user:password@` (for logs, and for the anonymous probe)."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass(frozen=True)
class BusSettings:
    url: str = "nats://127.0.0.1:4222"
    user: str = ""
    password: str = ""
    token: str = ""
    replicas: int = 1
    max_deliver: int = 10
    name: str = "tc-calendar"
    #: Replies come to `<inbox_prefix>.…`; a service's NATS user may subscribe only to its own (tccal.nats_auth).
    inbox_prefix: str = "_INBOX"
    #: Streams declared at connect (None: all of them); KV buckets declared at connect (None: INGEST_STATE).
    streams: tuple[str, ...] | None = None
    buckets: tuple[str, ...] | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify: bool = True
    #: Test installations only: do not refuse a NATS that lets clients in without credentials.
    allow_anonymous: bool = False
    #: Maximum bytes of the streams (stream_limits: discard new when full) and the share that raises the alert.
    stream_max_bytes: int = DEFAULT_STREAM_MAX_BYTES
    deadletter_max_bytes: int = DEFAULT_DEADLETTER_MAX_BYTES
    stream_alert_percent: int = 80

    @property
    def stream_limits(self) -> StreamLimits:
        return StreamLimits(self.stream_max_bytes, self.deadletter_max_bytes, self.stream_alert_percent)

    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]

    @property
    def uses_tls(self) -> bool:
        files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        return any(files) or any(s.startswith("tls://") for s in self.servers())

    def tls_context(self, *, client_certificate: bool = True) -> ssl.SSLContext | None:
        """TLS for NATS when configured: the server verified (CA file, else the system's) unless tls_verify is off."""
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca_file or None)
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if client_certificate and self.tls_cert_file:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file or None)
        return context

    def connect_options(self, *, anonymous: bool = False) -> dict[str, Any]:
        """nats.connect() keyword arguments for these servers, credentials (unless `anonymous`) and TLS."""
        options: dict[str, Any] = {"servers": self.servers(), "name": self.name, "inbox_prefix": self.inbox_prefix}
        if anonymous:
            options["servers"] = [without_userinfo(s) for s in self.servers()]
        else:
            options.update(
                {k: v for k, v in (("user", self.user), ("password", self.password), ("token", self.token)) if v}
            )
        context = self.tls_context(client_certificate=not anonymous)
        if context is not None:
            options["tls"] = context
        return options

    @classmethod
    def from_config(cls, config: Config, name: str) -> BusSettings:
        """The settings of service (or CLI) `name` from config.json: its secrets revealed, its NATS identity's
        inbox and streams (tccal.nats_auth) when `name` is one."""
        from tccal.secrets import reveal

        nats_config = config.nats
        allow = config.allow_plaintext_passwords
        password = reveal(nats_config.password, allow_plaintext=allow)
        if not password and nats_config.password_file:
            try:
                password = Path(nats_config.password_file).read_text().strip()
            except OSError as exc:
                raise ValueError(f"nats.passwordFile: cannot read {nats_config.password_file}: {exc}") from exc
        who = IDENTITIES.get(name)
        return cls(
            url=nats_config.url,
            user=nats_config.user,
            password=password,
            token=reveal(nats_config.token, allow_plaintext=allow),
            replicas=nats_config.replicas,
            max_deliver=nats_config.max_deliver,
            name=name,
            inbox_prefix=who.inbox_prefix if who is not None else "_INBOX",
            streams=who.streams if who is not None else None,
            buckets=who.buckets if who is not None else None,
            tls_ca_file=nats_config.tls_ca_file,
            tls_cert_file=nats_config.tls_cert_file,
            tls_key_file=nats_config.tls_key_file,
            tls_verify=nats_config.tls_verify,
            allow_anonymous=nats_config.allow_anonymous,
            stream_max_bytes=nats_config.stream_max_bytes,
            deadletter_max_bytes=nats_config.dead_letter_max_bytes,
            stream_alert_percent=nats_config.stream_alert_percent,
        )


async def accepts_anonymous(settings: BusSettings, *, timeout: float = 2.0) -> bool:
    """Whether the NATS of `settings` lets a client in without credentials (and without a client certificate)."""

    async def quiet(exc: Exception) -> None:
        log.debug("anonymous NATS probe: %s", exc)

    try:
        connection = await asyncio.wait_for(
            nats.connect(
                **settings.connect_options(anonymous=True),
                connect_timeout=timeout,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=quiet,
            ),
            timeout * 2,
        )
    except Exception:  # refused (authorization violation, no client certificate, ...): what we want
        return False
    await connection.close()
    return True


def anonymous_refusal(url: str) -> str:
    return (
        f"NATS at {without_userinfo(url)} accepts clients without credentials: anyone who reaches it can read every "
        "calendar change and publish forged changes, commands and control messages. Give NATS users with "
        "permissions (docs/architecture.md §4.6: the sandbox, docker-compose.yml and the Helm chart make them) "
        "and set nats.user and nats.password or nats.passwordFile; only in a test installation, set "
        "nats.allowAnonymous to true (TC_CALENDAR__NATS__ALLOWANONYMOUS=true) to start anyway."
    )


class Bus:
    """One NATS connection with its JetStream context; reconnects forever once connected."""

    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
        self._nc: Client | None = None
        self._pipelined: PipelinedPublisher | None = None
        self._js: JetStreamContext | None = None
        #: Why this bus refuses to connect (a NATS taking anonymous clients), once found out.
        self.refused: str | None = None
        #: Called with the reason when the bus refuses its NATS (the service then stops: tccal.service).
        self.refusal_listeners: list[Callable[[str], None]] = []

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise RuntimeError("bus is not connected")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("bus is not connected")
        return self._js

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def connect(self, *, attempts: int | None = None) -> None:
        """Connect, retrying with backoff (forever unless `attempts`), refuse a NATS that takes anonymous
        clients (AnonymousNatsError, unless allow_anonymous), then declare the topology."""
        if self.refused is not None:
            raise AnonymousNatsError(self.refused)
        attempt = 0
        while True:
            attempt += 1
            try:
                self._nc = await nats.connect(
                    **self.settings.connect_options(),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                break
            except Exception as exc:  # every connect failure is retried the same way
                if attempts is not None and attempt >= attempts:
                    raise
                delay = backoff_delay(attempt, base=0.25, cap=5.0)
                url = ",".join(without_userinfo(s) for s in self.settings.servers())
                log.warning("NATS unreachable, retrying", extra={"url": url, "error": str(exc)})
                await asyncio.sleep(delay)
        if not self.settings.allow_anonymous and await accepts_anonymous(self.settings):
            self.refused = anonymous_refusal(self.settings.url)
            log.error(self.refused)
            await self._nc.close()
            self._nc = None
            for listener in self.refusal_listeners:
                listener(self.refused)
            raise AnonymousNatsError(self.refused)
        self._js = self._nc.jetstream(timeout=10)
        js = self._js

        async def declare() -> None:
            try:
                await ensure_topology(
                    js,
                    replicas=self.settings.replicas,
                    streams=self.settings.streams,
                    buckets=self.settings.buckets,
                    limits=self.settings.stream_limits,
                )
            except TOPOLOGY_NOT_READY as exc:
                log.warning("JetStream not ready to declare the streams yet; retrying", extra={"error": repr(exc)})
                raise

        # A cluster that has just formed (or lost its meta leader) answers JetStream API requests only once it has
        # elected one: until then they time out or get 503. Retried for up to TOPOLOGY_PATIENCE_SECONDS; anything
        # else (a permission refused, a stream whose config cannot change) is raised at once.
        try:
            await retry_async(
                declare,
                retry_on=TOPOLOGY_NOT_READY,
                attempts=None,
                max_seconds=TOPOLOGY_PATIENCE_SECONDS,
                base=0.5,
                cap=5.0,
            )
        except BaseException:
            await self.close(drain_seconds=0.1)  # a later connect starts afresh, never beside a half-set-up client
            raise

    def declared_streams(self) -> tuple[str, ...]:
        """The streams this bus declares (and may read the state of)."""
        return self.settings.streams if self.settings.streams is not None else tuple(STREAM_SUBJECTS)

    async def close(self, *, drain_seconds: float = 1.5) -> None:
        """Drain (deliver what is buffered, end subscriptions) for at most `drain_seconds`, then close: a NATS that
        is unreachable never holds up a stop (a drain while reconnecting waits for the server)."""
        if self._nc is None or self._nc.is_closed:
            return
        try:
            await asyncio.wait_for(self._nc.drain(), drain_seconds)
        except Exception as exc:  # TimeoutError too: already broken or gone, closing is all that is left
            log.warning("NATS drain did not finish; closing", extra={"error": repr(exc)})
        if not self._nc.is_closed:
            await self._nc.close()

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS error", extra={"error": str(exc)})

    async def _on_disconnected(self) -> None:
        log.warning("NATS disconnected")

    async def _on_reconnected(self) -> None:
        log.info("NATS reconnected")

    async def publish(
        self, subject: str, payload: bytes, *, msg_id: str, headers: dict[str, str] | None = None
    ) -> bool:
        """Publish with dedupe id and trace context; True if JetStream stored it, False if it was a duplicate."""
        all_headers = {"Nats-Msg-Id": msg_id, **(headers or {})}
        telemetry.inject_context(all_headers)
        ack = await self.js.publish(subject, payload, headers=all_headers)
        return not ack.duplicate

    async def publish_batch(
        self, messages: Sequence[tuple[str, bytes, str, Mapping[str, str]]], *, timeout: float = 10.0
    ) -> list[bool]:
        """Publish (subject, payload, msg_id, headers) in order without waiting for each ack, then wait for all.

        `headers` are extra headers; the current trace context is added as traceparent unless they carry one.
        What `publish` does for one, for many at the cost of one: the client writes them to the socket together
        (one write instead of one per message, on both ends) and JetStream stores them in this order. Returns per
        message True if JetStream stored it, False if it was a duplicate. Raises (as `publish` does) when any of
        them was not acknowledged within `timeout` or was refused: the first such error in order (naming the
        message), or TimeoutError; those before it are stored, and publishing the batch again is harmless (the ids
        dedupe).
        """
        traced: list[tuple[str, bytes, str, Mapping[str, str]]] = [
            (subject, payload, msg_id, extra if "traceparent" in extra else telemetry.inject_context(dict(extra)))
            for subject, payload, msg_id, extra in messages
        ]
        answers = await self._pipeline().publish(traced, timeout=timeout)
        stored: list[bool] = []
        for answer, (subject, _payload, msg_id, _extra) in zip(answers, messages, strict=True):
            if answer is None:
                raise TimeoutError(f"JetStream did not acknowledge {msg_id!r} on {subject} within {timeout} s")
            if not answer.acknowledged:
                raise refusal_error(answer, subject, msg_id)
            stored.append(not answer.duplicate)
        return stored

    async def publish_pipelined(
        self, messages: list[tuple[str, bytes, str, dict[str, str]]], *, timeout: float = 10.0
    ) -> int:
        """Publish (subject, payload, msg_id, headers) in order without waiting for each ack, then wait for all.

        Returns how many of the messages, from the first, JetStream acknowledged (a duplicate counts) within
        `timeout`; the rest must be published again (their ids make a repeat harmless).
        """
        return acknowledged_from_first(await self._pipeline().publish(messages, timeout=timeout))

    def _pipeline(self) -> PipelinedPublisher:
        """The batch publisher of the current connection (one per connection: its reply subscription)."""
        nc = self.nc
        if self._pipelined is None or self._pipelined.nc is not nc:
            self._pipelined = PipelinedPublisher(nc)
        return self._pipelined

    async def key_value(self, bucket: str = INGEST_STATE_BUCKET) -> KeyValue:
        return await self.js.key_value(bucket)


async def ensure_topology(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    streams: tuple[str, ...] | None = None,
    buckets: tuple[str, ...] | None = None,
    limits: StreamLimits | None = None,
) -> None:
    """Declare the streams (all, or `streams`) with their limits (tccal.stream_limits) and the INGEST_STATE bucket
    (unless `buckets` leaves it out); existing ones are updated in place, never dropped. A service declares only
    what its NATS user may (tccal.nats_auth)."""
    limits = limits or StreamLimits()
    for name in STREAM_SUBJECTS:
        if streams is not None and name not in streams:
            continue
        await declare_stream(js, limits.stream_config(name, replicas=replicas))
    if buckets is not None and INGEST_STATE_BUCKET not in buckets:
        return
    try:
        await js.key_value(INGEST_STATE_BUCKET)
    except (NotFoundError, BadRequestError):
        await js.create_key_value(bucket=INGEST_STATE_BUCKET, history=1, replicas=replicas)


async def ensure_consumer(
    js: JetStreamContext,
    stream: str,
    durable: str,
    *,
    filter_subject: str | None = None,
    max_deliver: int = 10,
    ack_wait: float = 30.0,
    max_ack_pending: int = 1000,
) -> None:
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=max_deliver,
        ack_wait=ack_wait,
        filter_subject=filter_subject,
        max_ack_pending=max_ack_pending,
    )
    await js.add_consumer(stream, config)


Handler = Callable[[Msg], Awaitable[None]]
#: Handles a whole fetched batch at once (e.g. in one database transaction); all are acked when it returns.
BatchHandler = Callable[[list[Msg]], Awaitable[None]]


async def consume(
    bus: Bus,
    stream: str,
    durable: str,
    handler: Handler,
    *,
    stop: asyncio.Event,
    batch: int = 64,
    max_deliver: int | None = None,
    filter_subject: str | None = None,
    ack_wait: float = 30.0,
    batch_handler: BatchHandler | None = None,
    lanes: int = 1,
    prefetch: bool = False,
) -> None:
    """Pull messages of `durable` until `stop` is set; ack after `handler` succeeded, else redeliver/dead-letter.

    With `batch_handler`, a fetch of several messages goes to it first, in one call; if it fails the messages are
    handled one by one by `handler` (so a message that cannot be handled is redelivered and dead-lettered alone).
    With `lanes` > 1 a fetch is split by subject (`lane_of`) into shares, one per lane, and the lanes run side by
    side, each handling its shares as above, one at a time, in fetch order: messages of one subject stay in one
    lane, in stream order. A lane takes its share of the next fetch as soon as it is done with its own (it does not
    wait for the other lanes); at most one share waits per lane, and the next fetch waits for room in every lane
    it has messages for.
    With `prefetch` the next fetch is requested while a fetch is handled (handled after it, in order). On stop,
    every lane finishes the message (or batch) at hand and hands the rest of its shares back (nak) for immediate
    redelivery, and so are messages fetched ahead and those JetStream delivered after the last fetch had returned
    (`hand_back_late_deliveries`): a consumer that returned after `stop` holds no message unacked. (JetStream
    still counts a nak'd message as ack-pending until it is delivered again.)
    """
    limit = max_deliver or bus.settings.max_deliver
    await ensure_consumer(bus.js, stream, durable, filter_subject=filter_subject, max_deliver=limit, ack_wait=ack_wait)
    subscription = await bus.js.pull_subscribe_bind(durable, stream)

    loop = asyncio.get_running_loop()
    fetch_ended = loop.time()

    async def fetch() -> list[Msg]:
        nonlocal fetch_ended
        try:
            return await _fetch(subscription, batch, stream, durable)
        finally:
            fetch_ended = loop.time()

    async def handle(messages: list[Msg]) -> None:
        await _handle_fetched(bus, stream, durable, handler, batch_handler, messages, stop, limit)

    ahead: asyncio.Task[list[Msg]] | None = None
    lanes_at_work = _Lanes(lanes, handle) if lanes > 1 else None
    stopped = False
    try:
        while not stop.is_set():
            if ahead is not None:
                fetched, ahead = ahead, None
                messages = await fetched
            else:
                messages = await fetch()
            if not messages:
                continue
            if prefetch and not stop.is_set():  # the next fetch's round trip overlaps the handling of this one
                ahead = asyncio.create_task(fetch())
            if lanes_at_work is None:
                await handle(messages)
            else:
                await lanes_at_work.hand_over(messages)
        if lanes_at_work is not None:
            await lanes_at_work.finish()
        stopped = True
    finally:
        if lanes_at_work is not None:
            lanes_at_work.cancel()  # only if something went wrong: finish() has ended them otherwise
        if ahead is not None:  # fetched but not handled: handed back for redelivery at once
            for message in await ahead:
                await message.nak()
        if stopped:  # (after an error the connection may be gone: what it held comes back after ack_wait)
            await hand_back_late_deliveries(bus, subscription, fetch_ended, FETCH_SECONDS, stream, durable)
        try:
            await subscription.unsubscribe()
        except Exception as exc:  # connection already gone
            log.debug("unsubscribe failed", extra={"error": str(exc)})


class _Lanes:
    """The lanes of `consume`: one task per lane handling the lane's shares of the fetches in fetch order, with
    room for one share waiting while it works on another."""

    def __init__(self, lanes: int, handle: Callable[[list[Msg]], Awaitable[None]]) -> None:
        self.lanes = lanes
        self.handle = handle
        self.queues: list[asyncio.Queue[list[Msg] | None]] = [asyncio.Queue(maxsize=1) for _ in range(lanes)]
        self.tasks = [asyncio.create_task(self._run(queue)) for queue in self.queues]

    async def _run(self, queue: asyncio.Queue[list[Msg] | None]) -> None:
        while (share := await queue.get()) is not None:
            await self.handle(share)

    async def hand_over(self, messages: list[Msg]) -> None:
        """Give each lane its share of a fetch (`lane_of` the subjects), waiting for room in a busy lane; a lane
        that failed raises its error here."""
        shares: list[list[Msg]] = [[] for _ in range(self.lanes)]
        for message in messages:
            shares[lane_of(message.subject, self.lanes)].append(message)
        for lane, share in enumerate(shares):
            if share:
                await self._put(lane, share)

    async def finish(self) -> None:
        """Let every lane handle what it was given (after a stop: hand it back), then end; a lane's error is raised."""
        for lane in range(self.lanes):
            await self._put(lane, None)
        await asyncio.gather(*self.tasks)

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def _put(self, lane: int, share: list[Msg] | None) -> None:
        task, queue = self.tasks[lane], self.queues[lane]
        if task.done():
            task.result()  # a lane ends early only by an error: raise it
            raise RuntimeError(f"lane {lane} ended before the consumer")
        if not queue.full():
            queue.put_nowait(share)
            return
        put = asyncio.ensure_future(queue.put(share))
        try:
            await asyncio.wait((put, task), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: the share is not handed over
            put.cancel()
            raise
        if not put.done():  # the lane failed while its share waited
            put.cancel()
            task.result()
            raise RuntimeError(f"lane {lane} ended before the consumer")


async def hand_back_late_deliveries(
    bus: Bus,
    subscription: JetStreamContext.PullSubscription,
    fetch_ended: float,
    fetch_seconds: float,
    stream: str,
    durable: str,
) -> int:
    """After a pull consumer's last fetch (it ended at `fetch_ended`, loop time; fetches wait `fetch_seconds`), nak
    what JetStream delivered to a pull request that outlived the fetch that sent it; returns how many.

    A fetch can return before its pull request ends on the server: nats-py stops waiting at a deadline it counts
    from before the request was sent, while the server keeps the request until `fetch_seconds` after it received it
    (or until it is filled); what it delivers meanwhile waits in the subscription's queue for the next fetch. After
    the last fetch there is none: unsubscribed, such a message would stay delivered and unacked for ack_wait (30 s),
    and the next consumer of the durable would get it late, after newer ones. So once the last request has expired,
    a PING/PONG round trip makes sure everything sent to it has arrived, and each message is handed back."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, fetch_ended + fetch_seconds + PULL_REQUEST_TRANSIT_SECONDS - loop.time()))
    try:
        await bus.nc.flush(timeout=HAND_BACK_FLUSH_SECONDS)
    except Exception as exc:  # connection gone or reconnecting: nothing can be handed back over it
        log.debug("flush before handing back late deliveries failed", extra={"error": str(exc)})
        return 0
    inbox = subscription._sub  # where nats-py's fetch finds what arrived between fetches; no public accessor
    handed_back = 0
    while inbox.pending_msgs:
        message = await inbox.next_msg(timeout=FETCH_SECONDS)
        if JetStreamContext.is_status_msg(message) is None:  # not a request's end (404 no messages, 408 expired)
            await message.nak()
            handed_back += 1
    if handed_back:
        log.info(
            "handed back messages delivered after the last fetch",
            extra={"stream": stream, "durable": durable, "messages": handed_back},
        )
    return handed_back


async def _fetch(subscription: JetStreamContext.PullSubscription, batch: int, stream: str, durable: str) -> list[Msg]:
    """Up to `batch` messages; none after a second without any, or when the fetch failed (logged, after a pause)."""
    try:
        return await subscription.fetch(batch, timeout=FETCH_SECONDS)
    except TimeoutError:  # nats-py's own, or the bare one its fetch raises when no time is left for a second request
        return []
    except Exception as exc:  # connection trouble: the client reconnects; wait and fetch again
        error = f"{type(exc).__name__}: {exc}"
        log.warning("fetch failed", extra={"stream": stream, "durable": durable, "error": error})
        await asyncio.sleep(0.5)
        return []


def lane_of(subject: str, lanes: int) -> int:
    """The lane of a subject (stable across processes: CRC-32, not Python's salted hash)."""
    return zlib.crc32(subject.encode()) % lanes


async def _handle_fetched(
    bus: Bus,
    stream: str,
    durable: str,
    handler: Handler,
    batch_handler: BatchHandler | None,
    messages: list[Msg],
    stop: asyncio.Event,
    limit: int,
) -> None:
    """Handle messages of one fetch (or of one lane of it): as a batch if possible, else one by one in order."""
    if (
        batch_handler is not None
        and len(messages) > 1
        and not stop.is_set()
        and await _handle_batch(stream, durable, batch_handler, messages)
    ):
        return
    tracer = telemetry.tracer("tccal.bus")
    for index, message in enumerate(messages):
        if stop.is_set():  # finish the message at hand, hand the rest back for redelivery
            for rest in messages[index:]:
                await rest.nak()
            break
        context = telemetry.extract_context(message.headers)
        with tracer.start_as_current_span(f"consume {stream}", context=context, kind=trace.SpanKind.CONSUMER) as span:
            span.set_attribute("messaging.destination.name", message.subject)
            await _handle_one(bus, stream, durable, handler, message, limit)


async def _handle_batch(stream: str, durable: str, batch_handler: BatchHandler, messages: list[Msg]) -> bool:
    """Hand the batch to `batch_handler` (one consumer span per message); True if it succeeded and all were acked.

    While spans are not recorded (telemetry.recording) only the first message's span is started: it is the current
    span of the handler and carries that trace on; the others would only have been started and ended unseen."""
    tracer = telemetry.tracer("tccal.bus")
    spans = []
    name = f"consume {stream}"
    for message in messages if telemetry.recording() else messages[:1]:
        span = tracer.start_span(
            name,
            context=telemetry.extract_context(message.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={"messaging.destination.name": message.subject, "messaging.batch.message_count": len(messages)},
        )
        spans.append(span)
    try:
        with trace.use_span(spans[0], end_on_exit=False):
            await batch_handler(messages)
    except Exception as exc:
        log.warning(
            "batch failed, handling its messages one by one",
            extra={"stream": stream, "durable": durable, "messages": len(messages), "error": repr(exc)},
        )
        for span in spans:
            span.end()
        return False
    for span in spans:
        span.end()
    for message in messages:
        await message.ack()
    return True


async def _handle_one(bus: Bus, stream: str, durable: str, handler: Handler, message: Msg, limit: int) -> None:
    try:
        await handler(message)
    except Exception as exc:
        delivered = message.metadata.num_delivered or 1
        if delivered >= limit:
            await _dead_letter(bus, stream, durable, message, exc)
            await message.ack()
            log.error(
                "message dead-lettered after %d deliveries",
                delivered,
                extra={"stream": stream, "subject": message.subject, "error": repr(exc)},
            )
        else:
            log.warning(
                "handler failed, redelivering",
                extra={
                    "stream": stream,
                    "subject": message.subject,
                    "attempt": delivered,
                    "error": repr(exc),
                },
            )
            await message.nak(delay=backoff_delay(delivered, base=0.5, cap=30.0))
        return
    await message.ack()


async def _dead_letter(bus: Bus, stream: str, durable: str, message: Msg, exc: Exception) -> None:
    headers: dict[str, Any] = dict(message.headers or {})
    headers.pop("Nats-Msg-Id", None)
    headers.update(
        {
            "Tc-Dlq-Stream": stream,
            "Tc-Dlq-Durable": durable,
            "Tc-Dlq-Subject": message.subject,
            "Tc-Dlq-Error": repr(exc)[:1000],
        }
    )
    await bus.js.publish(deadletter_subject(stream, durable), message.data, headers=headers)

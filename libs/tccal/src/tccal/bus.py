"""NATS JetStream: connection with reconnect, the connector's streams and KV bucket, publish and consume.

Streams (names and subjects: tccal.subjects) are declared idempotently by every service that starts. Messages
carry Nats-Msg-Id (dedupe) and traceparent. A consumed message is acked only after its handler returned; a
failing message is redelivered with backoff up to `max_deliver` times, then copied to the dead-letter subject
dlq.<stream>.<durable> with the error in its headers, and acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from opentelemetry import trace

from tccal import telemetry
from tccal.retry import backoff_delay
from tccal.subjects import DEADLETTER, INGEST_STATE_BUCKET, STREAM_SUBJECTS, deadletter_subject

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_SECONDS = 600.0
#: How long the streams keep a message: also how long one can be (re)delivered.
STREAM_MAX_AGE_S = 30 * 24 * 3600.0
DEADLETTER_MAX_AGE_S = 90 * 24 * 3600.0


async def announce(url: str, subject: str, payload: bytes = b"{}", *, timeout: float = 2.0, **auth: str) -> bool:
    """Best-effort core-NATS message from a short-lived process (a CLI); False when NATS is not reachable.

    Never retries and never logs connection noise: nothing running to tell is a normal case (the services
    then ask again on their own schedule).
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]

    async def quiet(exc: Exception) -> None:
        log.debug("NATS not reachable for %s: %s", subject, exc)

    async def send() -> None:
        connection = await nats.connect(
            servers=servers,
            connect_timeout=timeout,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=quiet,
            **{k: v for k, v in auth.items() if v},
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


@dataclass(frozen=True)
class BusSettings:
    url: str = "nats://127.0.0.1:4222"
    user: str = ""
    password: str = ""
    token: str = ""
    replicas: int = 1
    max_deliver: int = 10
    name: str = "tc-calendar"


class Bus:
    """One NATS connection with its JetStream context; reconnects forever once connected."""

    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

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
        """Connect, retrying with backoff (forever unless `attempts`), then declare the topology."""
        attempt = 0
        while True:
            attempt += 1
            try:
                self._nc = await nats.connect(
                    servers=[u.strip() for u in self.settings.url.split(",") if u.strip()],
                    name=self.settings.name,
                    user=self.settings.user or None,
                    password=self.settings.password or None,
                    token=self.settings.token or None,
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
                log.warning("NATS unreachable, retrying", extra={"url": self.settings.url, "error": str(exc)})
                await asyncio.sleep(delay)
        self._js = self._nc.jetstream(timeout=10)
        await ensure_topology(self._js, replicas=self.settings.replicas)

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except Exception:  # already broken: closing is all that is left
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

    async def publish_pipelined(
        self, messages: list[tuple[str, bytes, str, dict[str, str]]], *, timeout: float = 10.0
    ) -> int:
        """Publish (subject, payload, msg_id, headers) in order without waiting for each ack, then wait for all.

        Returns how many of the messages, from the first, JetStream acknowledged (a duplicate counts) within
        `timeout`; the rest must be published again (their ids make a repeat harmless).
        """
        futures: list[asyncio.Future[Any]] = []
        for subject, payload, msg_id, headers in messages:
            futures.append(await self.js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id, **headers}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout)
        acknowledged = 0
        for future in futures:
            if not future.done() or future.cancelled() or future.exception() is not None:
                break
            acknowledged += 1
        return acknowledged

    async def key_value(self, bucket: str = INGEST_STATE_BUCKET) -> KeyValue:
        return await self.js.key_value(bucket)


async def ensure_topology(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Declare the streams and the KV bucket; existing ones are updated in place, never dropped."""
    for name, subject in STREAM_SUBJECTS.items():
        config = StreamConfig(
            name=name,
            subjects=[subject],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            max_age=STREAM_MAX_AGE_S if name != DEADLETTER else DEADLETTER_MAX_AGE_S,
        )
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
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
    With `lanes` > 1 a fetch is split by subject (`lane_of`) and its lanes are handled concurrently, each as above:
    messages of one subject stay in one lane, in stream order, and the next fetch waits for every lane.
    With `prefetch` the next fetch is requested while a fetch is handled (handled after it, in order); on stop,
    messages fetched ahead are handed back (nak) for redelivery.
    """
    limit = max_deliver or bus.settings.max_deliver
    await ensure_consumer(bus.js, stream, durable, filter_subject=filter_subject, max_deliver=limit, ack_wait=ack_wait)
    subscription = await bus.js.pull_subscribe_bind(durable, stream)
    ahead: asyncio.Task[list[Msg]] | None = None
    try:
        while not stop.is_set():
            if ahead is not None:
                fetched, ahead = ahead, None
                messages = await fetched
            else:
                messages = await _fetch(subscription, batch, stream, durable)
            if not messages:
                continue
            if prefetch and not stop.is_set():  # the next fetch's round trip overlaps the handling of this one
                ahead = asyncio.create_task(_fetch(subscription, batch, stream, durable))
            groups = split_lanes(messages, lanes)
            if len(groups) == 1:
                await _handle_fetched(bus, stream, durable, handler, batch_handler, groups[0], stop, limit)
            else:
                await asyncio.gather(
                    *(_handle_fetched(bus, stream, durable, handler, batch_handler, g, stop, limit) for g in groups)
                )
    finally:
        if ahead is not None:  # fetched but not handled: handed back for redelivery at once
            for message in await ahead:
                await message.nak()
        try:
            await subscription.unsubscribe()
        except Exception as exc:  # connection already gone
            log.debug("unsubscribe failed", extra={"error": str(exc)})


async def _fetch(subscription: JetStreamContext.PullSubscription, batch: int, stream: str, durable: str) -> list[Msg]:
    """Up to `batch` messages; none after a second without any, or when the fetch failed (logged, after a pause)."""
    try:
        return await subscription.fetch(batch, timeout=1.0)
    except NatsTimeoutError:
        return []
    except Exception as exc:  # connection trouble: the client reconnects; wait and fetch again
        error = f"{type(exc).__name__}: {exc}"  # a timeout's str() is empty
        log.warning("fetch failed", extra={"stream": stream, "durable": durable, "error": error})
        await asyncio.sleep(0.5)
        return []


def lane_of(subject: str, lanes: int) -> int:
    """The lane of a subject (stable across processes: CRC-32, not Python's salted hash)."""
    return zlib.crc32(subject.encode()) % lanes


def split_lanes(messages: list[Msg], lanes: int) -> list[list[Msg]]:
    """The fetched messages by lane (`lane_of` their subject), each lane in fetch order; empty lanes left out."""
    if lanes <= 1 or len(messages) <= 1:
        return [messages]
    groups: list[list[Msg]] = [[] for _ in range(lanes)]
    for message in messages:
        groups[lane_of(message.subject, lanes)].append(message)
    return [group for group in groups if group]


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
    """Hand the batch to `batch_handler` (one consumer span per message); True if it succeeded and all were acked."""
    tracer = telemetry.tracer("tccal.bus")
    spans = []
    for message in messages:
        span = tracer.start_span(
            f"consume {stream}", context=telemetry.extract_context(message.headers), kind=trace.SpanKind.CONSUMER
        )
        span.set_attribute("messaging.destination.name", message.subject)
        span.set_attribute("messaging.batch.message_count", len(messages))
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

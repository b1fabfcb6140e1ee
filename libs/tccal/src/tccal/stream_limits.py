"""How much the connector's JetStream streams may hold, what happens when one is full, and the alert before that.

Every stream has a maximum age (30 days; dead letters 90) and a maximum size in bytes (nats.streamMaxBytes,
nats.deadLetterMaxBytes). A full stream **refuses new messages** (discard policy *new*) instead of dropping its
oldest ones (*old*, JetStream's default): under *old* a full CALENDAR stream would silently drop changes
sync-engine has not applied yet. Under *new* the publisher gets an error ("maximum bytes exceeded") and waits:
ews-ingest does not advance its checkpoint and reads the changes again, sync-engine's outbox relay keeps the
commands and publishes them again, tcs-gateway leaves the command unacked so it comes back, and a consumer that
cannot store a dead letter leaves the message unacked. Nothing is lost; work stops until there is room (messages
age out, or the operator raises the limit), which the alert below announces well before.

The retention stays *limits* (messages are kept until they age out, also after being consumed), so a stream's
bytes follow its traffic over the maximum age: size the limit for that (docs/architecture.md §4.2).

The alert: every service watches the streams it declares. When one holds `alert_percent` of its maximum bytes or
more it logs a warning (again every hour while it stays there, and once when it is back under) and the gauge
`tc_calendar_stream_full_ratio{stream}` (bytes held / maximum bytes) shows it on /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from opentelemetry.metrics import CallbackOptions, Observation

from tccal import telemetry
from tccal.subjects import DEADLETTER, STREAM_SUBJECTS

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_SECONDS = 600.0
#: How long the streams keep a message: also how long one can be (re)delivered.
STREAM_MAX_AGE_S = 30 * 24 * 3600.0
DEADLETTER_MAX_AGE_S = 90 * 24 * 3600.0
DEFAULT_STREAM_MAX_BYTES = 1024**3
DEFAULT_DEADLETTER_MAX_BYTES = 256 * 1024**2
#: While a stream stays over the alert threshold, the warning is repeated this often.
ALERT_REPEAT_S = 3600.0


@dataclass(frozen=True)
class StreamLimits:
    max_bytes: int = DEFAULT_STREAM_MAX_BYTES
    deadletter_max_bytes: int = DEFAULT_DEADLETTER_MAX_BYTES
    alert_percent: int = 80

    def max_bytes_of(self, stream: str) -> int:
        return self.deadletter_max_bytes if stream == DEADLETTER else self.max_bytes

    def stream_config(self, stream: str, *, replicas: int) -> StreamConfig:
        return StreamConfig(
            name=stream,
            subjects=[STREAM_SUBJECTS[stream]],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            max_age=DEADLETTER_MAX_AGE_S if stream == DEADLETTER else STREAM_MAX_AGE_S,
            max_bytes=self.max_bytes_of(stream),
            discard=DiscardPolicy.NEW,
        )


async def declare_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update an existing one in place. A smaller maximum than the stream already holds is
    not applied (JetStream would delete its oldest messages to fit, whatever the discard policy): the stream keeps
    its larger limit and a warning says so."""
    from nats.js.errors import NotFoundError

    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    held = info.state.bytes
    wanted = config.max_bytes if config.max_bytes is not None else -1
    if 0 <= wanted < held:
        current = info.config.max_bytes if info.config.max_bytes is not None else -1
        kept = current if current < 0 or current >= held else held
        log.warning(
            "stream %s holds %d bytes, more than the configured maximum of %d: it keeps a maximum of %s until it "
            "holds less (shrinking it would delete unprocessed messages)",
            config.name,
            held,
            wanted,
            "none" if kept < 0 else kept,
            extra={"stream": config.name, "held_bytes": held, "max_bytes": wanted},
        )
        config.max_bytes = kept
    await js.update_stream(config)


class StreamUsageWatch:
    """Reads the byte usage of `streams` every `interval` seconds; warns and exports the gauge (module doc)."""

    def __init__(
        self,
        js: Callable[[], JetStreamContext],
        streams: Iterable[str],
        *,
        alert_percent: int,
        interval: float = 30.0,
    ) -> None:
        #: The JetStream context to read with (raises while NATS is not connected).
        self.js = js
        self.streams = tuple(streams)
        self.alert_ratio = alert_percent / 100
        self.interval = interval
        #: bytes held / maximum bytes, per stream, as last read.
        self.ratios: dict[str, float] = {}
        self._alerted_at: dict[str, float] = {}
        _WATCHES.add(self)

    async def check(self) -> dict[str, float]:
        for stream in self.streams:
            info = await self.js().stream_info(stream)
            limit = info.config.max_bytes or -1
            if limit <= 0:
                self.ratios.pop(stream, None)
                continue
            held = info.state.bytes
            ratio = held / limit
            self.ratios[stream] = ratio
            self._alert(stream, ratio, held, limit)
        return dict(self.ratios)

    def _alert(self, stream: str, ratio: float, held: int, limit: int) -> None:
        now = time.monotonic()
        extra = {"stream": stream, "held_bytes": held, "max_bytes": limit, "full_ratio": round(ratio, 3)}
        if ratio >= self.alert_ratio:
            last = self._alerted_at.get(stream)
            if last is None or now - last >= ALERT_REPEAT_S:
                self._alerted_at[stream] = now
                log.warning(
                    "JetStream stream %s is %.0f%% full (%d of %d bytes): when it is full, publishers wait and the "
                    "connector stops moving changes; raise nats.%s or find why messages pile up",
                    stream,
                    ratio * 100,
                    held,
                    limit,
                    "deadLetterMaxBytes" if stream == DEADLETTER else "streamMaxBytes",
                    extra=extra,
                )
        elif self._alerted_at.pop(stream, None) is not None:
            log.info("JetStream stream %s is back under its alert threshold", stream, extra=extra)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wait = self.interval
            try:
                await self.check()
            except Exception as exc:  # NATS away or the streams not declared yet: read again soon
                log.debug("stream usage not read", extra={"error": repr(exc)})
                wait = min(self.interval, UNREAD_RETRY_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)


#: After a round that could not read (NATS not connected yet at start), the next one comes this soon.
UNREAD_RETRY_S = 1.0

_WATCHES: weakref.WeakSet[StreamUsageWatch] = weakref.WeakSet()


def _observe(options: CallbackOptions) -> Iterable[Observation]:
    latest: dict[str, float] = {}
    for watch in list(_WATCHES):  # one per bus; several in one process read the same streams: the fullest counts
        for stream, ratio in watch.ratios.items():
            latest[stream] = max(ratio, latest.get(stream, 0.0))
    return [Observation(ratio, {"stream": stream}) for stream, ratio in sorted(latest.items())]


telemetry.meter("tccal.stream_limits").create_observable_gauge(
    "tc_calendar_stream_full_ratio",
    callbacks=[_observe],
    unit="1",
    description="Bytes a JetStream stream holds / its maximum bytes (nats.streamMaxBytes); alert at "
    "nats.streamAlertPercent.",
)

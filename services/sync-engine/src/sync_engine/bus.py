"""The engine's JetStream consumers: CALENDAR (calendar changes) and TCS_RESULTS (command results).

CALENDAR is consumed by **one engine at a time** (`consume_calendar_leading`: the holder of a session advisory
lock, leadership.py); the other replicas stand by and take over when it stops or dies. Changes of one mailbox must
be applied in stream order: per-item sequences make a late change of an item harmless, but a mailbox re-read's
BEGIN ... END markers judge the whole mailbox - an END applied by one replica while another still holds its BEGIN,
or changes between the two, would delete nothing or delete items the re-read brought back. A new leader first
waits for what its predecessor had fetched and not acked (`wait_for_predecessor`: after kill -9, until JetStream
redelivers it, at most `ack_wait`), so those come first, in order - unless the predecessor's turn ended cleanly,
everything it had been delivered acked or handed back (nak'd: JetStream delivers those again at once, before newer
ones, but counts them as unacked until then); the predecessor then recorded the durable's delivered sequence
(`record_handover`), and a new leader that finds nothing delivered since goes on at once. TCS_RESULTS is shared by
every replica (each result locks its outbox row; order does not matter).

Both are durable pull consumers with explicit ack (tccal.bus.consume): a message is acked only after its
transaction committed. Calendar changes are fetched up to CALENDAR_BATCH × CALENDAR_LANES at a time, split by
mailbox into CALENDAR_LANES lanes applied concurrently, each lane's share of a fetch in one transaction (a lane goes
on with its share of the next fetch once its own committed and was acked, whatever the other lane is doing: a
mailbox's changes are always in the same lane, in stream order); if a lane's transaction fails its changes are
applied one by one, so a change that cannot be applied is retried and
dead-lettered alone. While PostgreSQL cannot take writes — unreachable, read-only, full: an infrastructure fault
(`faults.classify`) — the handler keeps retrying (telling JetStream the message is in progress) instead of
failing it, so an outage never dead-letters a change or a result; only a change the database refuses for its
data is failed, redelivered and dead-lettered. A message that cannot be parsed is logged and acked (it would
never parse).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import asyncpg
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from sync_engine.engine import Engine
from sync_engine.leadership import lead
from tccal.bus import Bus, consume
from tccal.subjects import CALENDAR, TCS_RESULTS
from trueconf.calendar.v1 import calendar_pb2, commands_pb2

log = logging.getLogger(__name__)

CALENDAR_DURABLE = "sync-engine-calendar"
RESULTS_DURABLE = "sync-engine-results"
#: Calendar changes per lane of a fetch, applied in one transaction (one by one if that fails); a lane holds more
#: when a fetch comes from few mailboxes.
CALENDAR_BATCH = 128
#: Transactions in flight at once: a fetch of CALENDAR_BATCH × CALENDAR_LANES changes is split by mailbox (subject)
#: into this many lanes, applied side by side (each mailbox's changes in one lane, in stream order); while one
#: waits for PostgreSQL the other runs its Python. Lanes that meet on a meeting or a user wait for each other's
#: locks (changes.py), as replicas do.
CALENDAR_LANES = 2
#: Command results fetched at once; on SIGTERM the ones at hand are finished and acked.
RESULTS_BATCH = 8
#: Session advisory lock of the engine consuming CALENDAR (leadership.py).
CALENDAR_LOCK_KEY = int.from_bytes(b"tcsyncca", "big") & 0x7FFF_FFFF_FFFF_FFFF
#: engine_state: CALENDAR's delivered sequence (of the durable) when a leader's turn ended cleanly.
HANDOVER_KEY = "calendar_handover"


def _headers(message: Msg) -> dict[str, str]:
    return {str(k): str(v) for k, v in (message.headers or {}).items()}


async def handle_calendar_message(engine: Engine, message: Msg, stop: asyncio.Event | None = None) -> None:
    try:
        change = calendar_pb2.CalendarChange.FromString(message.data)
    except DecodeError as exc:
        log.error("undecodable calendar change dropped", extra={"subject": message.subject, "error": str(exc)})
        return

    async def still_working() -> None:
        await message.in_progress()

    await engine.apply_change(change, _headers(message), stop=stop, on_wait=still_working)


async def handle_calendar_messages(engine: Engine, messages: list[Msg], stop: asyncio.Event | None = None) -> None:
    """A fetched batch of calendar changes, applied in one transaction (undecodable ones are logged and dropped)."""
    changes: list[tuple[calendar_pb2.CalendarChange, dict[str, str]]] = []
    for message in messages:
        try:
            changes.append((calendar_pb2.CalendarChange.FromString(message.data), _headers(message)))
        except DecodeError as exc:
            log.error("undecodable calendar change dropped", extra={"subject": message.subject, "error": str(exc)})

    async def still_working() -> None:
        await asyncio.gather(*(message.in_progress() for message in messages))

    await engine.apply_changes(changes, stop=stop, on_wait=still_working)


async def handle_result_message(engine: Engine, message: Msg, stop: asyncio.Event | None = None) -> None:
    try:
        result = commands_pb2.TcsCommandResult.FromString(message.data)
    except DecodeError as exc:
        log.error("undecodable command result dropped", extra={"subject": message.subject, "error": str(exc)})
        return

    async def still_working() -> None:
        await message.in_progress()

    await engine.apply_result(result, _headers(message), stop=stop, on_wait=still_working)


async def consume_calendar(engine: Engine, bus: Bus, stop: asyncio.Event) -> None:
    async def handler(message: Msg) -> None:
        await handle_calendar_message(engine, message, stop)

    async def batch_handler(messages: list[Msg]) -> None:
        await handle_calendar_messages(engine, messages, stop)

    await consume(
        bus,
        CALENDAR,
        CALENDAR_DURABLE,
        handler,
        stop=stop,
        batch=CALENDAR_BATCH * CALENDAR_LANES,
        batch_handler=batch_handler,
        lanes=CALENDAR_LANES,
        prefetch=True,
    )


@dataclass
class CalendarTurns:
    """This engine's own turns at consuming CALENDAR. A turn ends with every change it fetched acked or handed back
    (nak'd: JetStream redelivers it at once), so when the same engine takes the lock again without having stood by
    while another held it, what is still pending is its own and comes back now: no predecessor to wait for. (Another
    engine learns the same from `record_handover`.)"""

    own_last: bool = False


async def consume_calendar_leading(
    engine: Engine, bus: Bus, pool: asyncpg.Pool, stop: asyncio.Event, turns: CalendarTurns | None = None
) -> None:
    """Consume CALENDAR while this engine holds the calendar lock (waiting for it first); returns when the lock is
    lost or `stop` is set."""
    mine = turns if turns is not None else CalendarTurns()
    consumed = False

    def stood_by() -> None:
        mine.own_last = False

    async def as_leader(until: asyncio.Event) -> None:
        nonlocal consumed
        if mine.own_last or await wait_for_predecessor(bus, pool, until):
            mine.own_last = True
            await consume_calendar(engine, bus, until)  # returns only with every change acked or handed back
            consumed = True

    async def hand_over(connection: asyncpg.Connection) -> None:
        if consumed:
            await record_handover(bus, connection)

    await lead(pool, CALENDAR_LOCK_KEY, "calendar consumer", stop, as_leader, on_standby=stood_by, finish=hand_over)


async def record_handover(bus: Bus, connection: asyncpg.Connection) -> None:
    """At the clean end of a turn, on the lock's connection: CALENDAR's delivered sequence now. Whatever is still
    unacked then was handed back; if nothing is delivered after it, the next leader need not wait. If it cannot be
    recorded, the next leader waits as after a crash (at most ack_wait)."""
    try:
        info = await bus.js.consumer_info(CALENDAR, CALENDAR_DURABLE)
        await connection.execute(
            "INSERT INTO engine_state (key, value) VALUES ($1, $2)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            HANDOVER_KEY,
            str(info.delivered.consumer_seq),
        )
    except (NatsError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        log.warning(
            "calendar consumer: handover not recorded; the next leader will wait up to ack_wait",
            extra={"error": f"{type(exc).__name__}: {exc}"},
        )


async def wait_for_predecessor(bus: Bus, pool: asyncpg.Pool, until: asyncio.Event, poll: float = 0.5) -> bool:
    """Wait while CALENDAR's durable has messages delivered and not acked - a previous leader's, stopping or
    killed - for at most its `ack_wait` (+ 2 s): after that JetStream delivers the overdue ones again before any
    newer one. Not at all when the previous leader handed them all back (`record_handover`: nothing delivered
    since). True to go on, False when `until` was set first."""
    deadline: float | None = None
    while not until.is_set():
        try:
            info = await bus.js.consumer_info(CALENDAR, CALENDAR_DURABLE)
        except NotFoundError:
            return True  # no consumer yet: nothing was delivered
        if not info.num_ack_pending:
            return True
        async with pool.acquire() as connection:
            handed_over = await connection.fetchval("SELECT value FROM engine_state WHERE key = $1", HANDOVER_KEY)
        if handed_over == str(info.delivered.consumer_seq):
            log.info(
                "calendar consumer: the previous leader handed back its unfinished changes; taking them at once",
                extra={"pending": info.num_ack_pending},
            )
            return True
        ack_wait = float(info.config.ack_wait or 30.0)
        if deadline is None:
            deadline = time.monotonic() + ack_wait + 2.0
            log.info(
                "calendar consumer: waiting for the previous leader's unacked changes to come back",
                extra={"pending": info.num_ack_pending, "ack_wait": ack_wait},
            )
        if time.monotonic() >= deadline:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), poll)
    return False


async def consume_results(engine: Engine, bus: Bus, stop: asyncio.Event) -> None:
    async def handler(message: Msg) -> None:
        await handle_result_message(engine, message, stop)

    await consume(bus, TCS_RESULTS, RESULTS_DURABLE, handler, stop=stop, batch=RESULTS_BATCH)

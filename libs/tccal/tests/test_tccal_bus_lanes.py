"""consume(lanes=…, prefetch=…) through a real nats-server: a fetch split by subject into lanes handled side by side
(each subject in one lane, in order, every message acked once), the next fetch requested while one is handled,
and messages fetched ahead handed back on stop."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from tccal import subjects
from tccal.bus import BatchHandler, Bus, BusSettings, Handler, consume, lane_of
from tccal_sandbox.testing import wait_for_async

LANES = 2
PROVIDER = "lanes-test.example"


def provider_filter(provider: str) -> str:
    """The filter for `provider`'s calendar subjects only (the streams are shared by the whole session)."""
    return subjects.calendar_subject(provider, "x").rsplit(".", 1)[0] + ".>"


LANES_FILTER = provider_filter(PROVIDER)


async def connected(url: str) -> Bus:
    bus = Bus(BusSettings(url=url, max_deliver=3, name="test-lanes"))
    await bus.connect(attempts=3)
    return bus


def subjects_in_every_lane(per_lane: int) -> list[str]:
    found: dict[int, list[str]] = {lane: [] for lane in range(LANES)}
    n = 0
    while any(len(subjects) < per_lane for subjects in found.values()):
        subject = subjects.calendar_subject(PROVIDER, f"box{n}@example.com")
        lane = lane_of(subject, LANES)
        if len(found[lane]) < per_lane:
            found[lane].append(subject)
        n += 1
    return [subject for lane in sorted(found) for subject in found[lane]]


def one_subject_per_lane(provider: str) -> dict[int, str]:
    """A calendar subject of `provider` for each lane, by lane."""
    lane_subjects: dict[int, str] = {}
    n = 0
    while len(lane_subjects) < LANES:
        subject = subjects.calendar_subject(provider, f"box{n}@example.com")
        lane_subjects.setdefault(lane_of(subject, LANES), subject)
        n += 1
    return lane_subjects


async def publish_rounds(bus: Bus, to: list[str], rounds: int, id_prefix: str) -> dict[str, list[bytes]]:
    """`rounds` messages to each subject of `to`, round by round; what was published, by subject, in order."""
    published: dict[str, list[bytes]] = {}
    for n in range(rounds):
        for subject in to:
            data = f"{subject}/{n}".encode()
            published.setdefault(subject, []).append(data)
            await bus.publish(subject, data, msg_id=f"{id_prefix}/{subject}/{n}")
    return published


def start_consume(
    bus: Bus,
    stream: str,
    durable: str,
    handler: Handler,
    stop: asyncio.Event,
    *,
    batch: int,
    filter_subject: str,
    batch_handler: BatchHandler,
    lanes: int = 1,
) -> asyncio.Task[None]:
    """consume as a task, with a batch handler and the next fetch requested while one is handled (prefetch)."""
    return asyncio.create_task(
        consume(
            bus,
            stream,
            durable,
            handler,
            stop=stop,
            batch=batch,
            filter_subject=filter_subject,
            batch_handler=batch_handler,
            lanes=lanes,
            prefetch=True,
        )
    )


async def ack_pending(bus: Bus, stream: str, durable: str) -> int | None:
    """How many messages `durable` delivered and has not had acked yet; None before consume declared it."""
    try:
        info = await bus.js.consumer_info(stream, durable)
    except NotFoundError:
        return None
    return int(info.num_ack_pending)


async def assert_each_acked_once(bus: Bus, stream: str, durable: str, total: int) -> None:
    consumer = await bus.js.consumer_info(stream, durable)
    assert consumer.num_ack_pending == 0 and consumer.num_pending == 0
    assert consumer.delivered.consumer_seq == total  # nothing redelivered


async def never_one_by_one(message: Msg) -> None:
    """The one-by-one handler of a test whose batches all succeed: no lane may fall back to it."""
    raise AssertionError(f"no lane should fall back to one by one: {message.data!r}")


async def test_lanes_run_side_by_side_keep_each_subject_in_order_and_ack_once(nats_url: str) -> None:
    bus = await connected(nats_url)
    published = await publish_rounds(bus, subjects_in_every_lane(2), 6, "lanes")
    total = sum(len(v) for v in published.values())
    handled: dict[str, list[bytes]] = {}
    calls: list[set[int]] = []
    started: dict[int, asyncio.Event] = {lane: asyncio.Event() for lane in range(LANES)}

    async def batch_handler(messages: list[Msg]) -> None:
        lanes = {lane_of(m.subject, LANES) for m in messages}
        calls.append(lanes)
        (lane,) = lanes
        started[lane].set()
        # The first fetch's lanes meet here: handled one after the other, neither would get past this.
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started.values())), 10)
        for message in messages:
            handled.setdefault(message.subject, []).append(message.data)

    stop = asyncio.Event()
    task = start_consume(
        bus,
        subjects.CALENDAR,
        "lanes",
        never_one_by_one,
        stop,
        batch=8,
        filter_subject=LANES_FILTER,
        batch_handler=batch_handler,
        lanes=LANES,
    )

    async def all_handled() -> bool:
        return sum(len(v) for v in handled.values()) == total

    await wait_for_async(all_handled, timeout=30, what="every message handled")
    stop.set()
    await task
    assert handled == published  # each subject in stream order, each message once
    assert all(len(lanes) == 1 for lanes in calls) and len(calls) > LANES  # several fetches, one lane per call
    await assert_each_acked_once(bus, subjects.CALENDAR, "lanes", total)
    await bus.close()


async def test_messages_fetched_ahead_are_handed_back_on_stop(nats_url: str) -> None:
    bus = await connected(nats_url)
    subject = subjects.results_subject("ahead#vcs")
    sent = [f"a{n}".encode() for n in range(12)]
    for n, data in enumerate(sent):
        await bus.publish(subject, data, msg_id=f"ahead/{n}")
    handled: list[bytes] = []
    release = asyncio.Event()

    async def batch_handler(messages: list[Msg]) -> None:
        await release.wait()
        handled.extend(m.data for m in messages)

    async def handler(message: Msg) -> None:
        handled.append(message.data)

    def run(stop: asyncio.Event) -> asyncio.Task[None]:
        return start_consume(
            bus,
            subjects.TCS_RESULTS,
            "ahead",
            handler,
            stop,
            batch=4,
            filter_subject=subject,
            batch_handler=batch_handler,
        )

    stop = asyncio.Event()
    task = run(stop)

    async def fetched_ahead() -> bool:
        return await ack_pending(bus, subjects.TCS_RESULTS, "ahead") == 8  # the fetch at hand and the one ahead

    await wait_for_async(fetched_ahead, timeout=30, what="the next fetch requested while one is handled")
    stop.set()
    release.set()
    await task
    assert handled == sent[:4]

    again = asyncio.Event()
    task = run(again)

    async def rest_handled() -> bool:
        return len(handled) == len(sent)

    # Handed back (nak), the 4 fetched ahead come again at once; left unacked they would wait for ack_wait (30 s).
    await wait_for_async(rest_handled, timeout=10, what="the rest handled by the next consumer run")
    again.set()
    await task
    assert handled == sent  # in stream order, each once
    await bus.close()


async def test_a_lane_goes_on_with_the_next_fetch_while_another_lane_is_still_busy(nats_url: str) -> None:
    bus = await connected(nats_url)
    provider = "lanes-free.example"
    lane_subjects = one_subject_per_lane(provider)
    fast, slow = lane_subjects[0], lane_subjects[1]
    published = await publish_rounds(bus, [fast, slow], 6, "lanes-free")
    handled: dict[str, list[bytes]] = {}
    fast_calls_while_slow_waits: list[int] = []
    slow_waiting = asyncio.Event()
    release = asyncio.Event()

    async def batch_handler(messages: list[Msg]) -> None:
        (subject,) = {m.subject for m in messages}
        if subject == slow and not release.is_set():
            slow_waiting.set()
            await release.wait()  # the slow lane's first share takes long
        elif slow_waiting.is_set() and not release.is_set():
            fast_calls_while_slow_waits.append(len(messages))
        for message in messages:
            handled.setdefault(subject, []).append(message.data)

    stop = asyncio.Event()
    task = start_consume(
        bus,
        subjects.CALENDAR,
        "lanes-free",
        never_one_by_one,
        stop,
        batch=4,  # two of each subject per fetch
        filter_subject=provider_filter(provider),
        batch_handler=batch_handler,
        lanes=LANES,
    )

    async def fast_lane_went_on() -> bool:
        return len(fast_calls_while_slow_waits) >= 2  # shares of later fetches, the slow lane still at its first

    await wait_for_async(fast_lane_went_on, timeout=30, what="the fast lane handling later fetches meanwhile")
    release.set()

    async def all_handled() -> bool:
        return sum(len(v) for v in handled.values()) == 12

    await wait_for_async(all_handled, timeout=30, what="every message handled")
    stop.set()
    await task
    assert handled == published  # each subject in stream order, each message once
    await assert_each_acked_once(bus, subjects.CALENDAR, "lanes-free", 12)
    await bus.close()


async def test_on_stop_every_lane_hands_back_the_shares_it_was_given_and_not_handled(nats_url: str) -> None:
    bus = await connected(nats_url)
    provider = "lanes-stop.example"
    lane_subjects = one_subject_per_lane(provider)
    published = await publish_rounds(bus, list(lane_subjects.values()), 8, "lanes-stop")
    handled: dict[str, list[bytes]] = {}
    release = asyncio.Event()
    first_calls = 0

    async def batch_handler(messages: list[Msg]) -> None:
        nonlocal first_calls
        first_calls += 1
        await release.wait()
        for message in messages:
            handled.setdefault(message.subject, []).append(message.data)

    async def handler(message: Msg) -> None:
        handled.setdefault(message.subject, []).append(message.data)

    def run(until: asyncio.Event) -> asyncio.Task[None]:
        return start_consume(
            bus,
            subjects.CALENDAR,
            "lanes-stop",
            handler,
            until,
            batch=4,
            filter_subject=provider_filter(provider),
            batch_handler=batch_handler,
            lanes=LANES,
        )

    stop = asyncio.Event()
    task = run(stop)

    async def shares_waiting() -> bool:
        pending = await ack_pending(bus, subjects.CALENDAR, "lanes-stop")
        # both lanes at their first share, a share waiting in each, the third fetch waiting for room, the fourth
        # fetched ahead: all 16 delivered, 4 of them being handled
        return first_calls == LANES and pending == 16

    await wait_for_async(shares_waiting, timeout=30, what="shares waiting in the lanes and a fetch ahead")
    stop.set()
    release.set()
    await task
    assert handled == {s: v[:2] for s, v in published.items()}  # only the shares at hand

    again = asyncio.Event()
    task = run(again)

    async def rest_handled() -> bool:
        return sum(len(v) for v in handled.values()) == 16

    # Handed back (nak), the 12 come again at once; left unacked they would wait for ack_wait (30 s).
    await wait_for_async(rest_handled, timeout=10, what="the rest handled by the next consumer run")
    again.set()
    await task
    assert handled == published  # each subject in stream order, each once
    await bus.close()

"""consume(lanes=…, prefetch=…) through a real nats-server: a fetch split by subject into lanes handled side by side
(each subject in one lane, in order, every message acked once), the next fetch requested while one is handled,
and messages fetched ahead handed back on stop."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from tccal import subjects
from tccal.bus import Bus, BusSettings, consume, lane_of
from tccal_sandbox.testing import wait_for_async

LANES = 2
PROVIDER = "lanes-test.example"
#: Only this test's subjects (the streams are shared by the whole session).
LANES_FILTER = subjects.calendar_subject(PROVIDER, "x").rsplit(".", 1)[0] + ".>"


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


async def test_lanes_run_side_by_side_keep_each_subject_in_order_and_ack_once(nats_url: str) -> None:
    bus = await connected(nats_url)
    published: dict[str, list[bytes]] = {}
    for n in range(6):
        for subject in subjects_in_every_lane(2):
            data = f"{subject}/{n}".encode()
            published.setdefault(subject, []).append(data)
            await bus.publish(subject, data, msg_id=f"lanes/{subject}/{n}")
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

    async def handler(message: Msg) -> None:
        raise AssertionError(f"no lane should fall back to one by one: {message.data!r}")

    stop = asyncio.Event()
    task = asyncio.create_task(
        consume(
            bus,
            subjects.CALENDAR,
            "lanes",
            handler,
            stop=stop,
            batch=8,
            filter_subject=LANES_FILTER,
            batch_handler=batch_handler,
            lanes=LANES,
            prefetch=True,
        )
    )

    async def all_handled() -> bool:
        return sum(len(v) for v in handled.values()) == total

    await wait_for_async(all_handled, timeout=30, what="every message handled")
    stop.set()
    await task
    assert handled == published  # each subject in stream order, each message once
    assert all(len(lanes) == 1 for lanes in calls) and len(calls) > LANES  # several fetches, one lane per call
    consumer = await bus.js.consumer_info(subjects.CALENDAR, "lanes")
    assert consumer.num_ack_pending == 0 and consumer.num_pending == 0
    assert consumer.delivered.consumer_seq == total  # nothing redelivered
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

    async def run(stop: asyncio.Event) -> None:
        await consume(
            bus,
            subjects.TCS_RESULTS,
            "ahead",
            handler,
            stop=stop,
            batch=4,
            filter_subject=subject,
            batch_handler=batch_handler,
            prefetch=True,
        )

    stop = asyncio.Event()
    task = asyncio.create_task(run(stop))

    async def fetched_ahead() -> bool:
        try:
            info = await bus.js.consumer_info(subjects.TCS_RESULTS, "ahead")
        except NotFoundError:  # consume has not declared it yet
            return False
        return int(info.num_ack_pending) == 8  # the fetch at hand and the one ahead

    await wait_for_async(fetched_ahead, timeout=30, what="the next fetch requested while one is handled")
    stop.set()
    release.set()
    await task
    assert handled == sent[:4]

    again = asyncio.Event()
    task = asyncio.create_task(run(again))

    async def rest_handled() -> bool:
        return len(handled) == len(sent)

    # Handed back (nak), the 4 fetched ahead come again at once; left unacked they would wait for ack_wait (30 s).
    await wait_for_async(rest_handled, timeout=10, what="the rest handled by the next consumer run")
    again.set()
    await task
    assert handled == sent  # in stream order, each once
    await bus.close()

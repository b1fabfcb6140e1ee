"""A graceful stop of `consume` through a real nats-server leaves no message stranded: what JetStream delivered to
a pull request that outlived the consumer's last fetch is handed back (nak), so the next consumer of the durable
gets it at once rather than after ack_wait."""

from __future__ import annotations

import asyncio
import time

from nats.aio.msg import Msg

from tccal import subjects
from tccal.bus import FETCH_SECONDS, Bus, BusSettings, consume
from tccal_sandbox.slow_nats import slow_upstream
from tccal_sandbox.testing import wait_for_async

PROVIDER = "stop-test.example"
FILTER = subjects.calendar_subject(PROVIDER, "x").rsplit(".", 1)[0] + ".>"
DURABLE = "stop-test"
ACK_WAIT = 30.0
#: How late the consumer's bytes reach the server: its pull requests live on the server that much longer than
#: its fetches wait for them (a loaded host or a slow link does the same).
UPSTREAM_DELAY = 0.3


async def test_the_next_consumer_gets_at_once_what_reached_a_stopped_one_after_its_last_fetch(nats_url: str) -> None:
    """The consumer's bytes reach the server UPSTREAM_DELAY late, so its last fetch, idle, gives up while its pull
    request still lives on the server; changes published in that gap are delivered to it. Stopped there, the
    consumer must hand them back: its successor gets them at once, not after ack_wait (30 s)."""
    direct = Bus(BusSettings(url=nats_url, max_deliver=100, name="test-stop-direct"))
    await direct.connect(attempts=3)
    handled: dict[bytes, float] = {}

    async def handler(message: Msg) -> None:
        handled[message.data] = time.monotonic()

    def start(bus: Bus, stop: asyncio.Event) -> asyncio.Task[None]:
        return asyncio.create_task(
            consume(bus, "CALENDAR", DURABLE, handler, stop=stop, batch=16, filter_subject=FILTER, ack_wait=ACK_WAIT)
        )

    published: list[bytes] = []

    async def publish() -> None:  # straight to the server
        data = f"{len(published)}".encode()
        subject = subjects.calendar_subject(PROVIDER, f"box{len(published) % 7}@example.com")
        await direct.publish(subject, data, msg_id=f"{DURABLE}/{data.decode()}")
        published.append(data)

    async def at(moment: float) -> None:
        await asyncio.sleep(max(0.0, moment - time.monotonic()))

    async with slow_upstream(nats_url, UPSTREAM_DELAY) as link:
        slow = Bus(BusSettings(url=link.url, max_deliver=100, name="test-stop-slow"))
        await slow.connect(attempts=3)
        stop = asyncio.Event()
        consumer = start(slow, stop)
        await publish()
        await wait_for_async(lambda: handled.get(published[0]), timeout=20, what="the first change handled")
        last_fetch = handled[published[0]]  # the consumer's next fetch (idle) began then: it gives up 1 s later
        await at(last_fetch + 0.1)
        stop.set()
        for n in range(4):  # after the fetch gave up, before its request expires on the server
            await at(last_fetch + FETCH_SECONDS + 0.05 * (n + 1))
            await publish()
        await asyncio.wait_for(consumer, ACK_WAIT)
        await slow.close()
    assert set(handled) == {published[0]}  # the stopped consumer took nothing after the stop

    began = time.monotonic()
    stop = asyncio.Event()
    successor = start(direct, stop)
    try:
        await wait_for_async(
            lambda: set(handled) >= set(published),
            timeout=ACK_WAIT / 3,
            what=f"the next consumer handling the {len(set(published) - set(handled))} left of {len(published)}",
        )
        print(f"\nthe next consumer had all {len(published)} within {time.monotonic() - began:.2f} s")
    finally:
        stop.set()
        await asyncio.wait_for(successor, ACK_WAIT)
        await direct.close()

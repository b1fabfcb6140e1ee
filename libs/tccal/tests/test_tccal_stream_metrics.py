"""Stream lag and dead letters of a durable consumer, as the gauges of tccal.stream_metrics report them at
/metrics — through a real nats-server and the Prometheus exporter."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tccal import subjects, telemetry
from tccal.bus import Bus, BusSettings, consume
from tccal.stream_metrics import Consumer, ConsumerMetrics
from tccal_sandbox.testing import wait_for_async

DURABLE = "metrics-durable"


def exported(name: str) -> dict[str, float]:
    """consumer → value of the gauge `name`, as Prometheus scrapes it."""
    text = generate_latest(REGISTRY).decode()
    return {
        sample.labels["consumer"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_pending_messages_and_dead_letters_per_consumer(nats_url: str) -> None:
    telemetry.setup("test-stream-metrics")
    bus = Bus(BusSettings(url=nats_url, max_deliver=2, name="test"))
    await bus.connect(attempts=3)
    subject = subjects.commands_subject("metrics.trueconf.name#vcs")
    await bus.publish(subject, b"poison", msg_id="m0")

    async def refuse(msg: Msg) -> None:
        raise RuntimeError("cannot handle it")

    stop = asyncio.Event()
    task = asyncio.create_task(consume(bus, subjects.TCS_COMMANDS, DURABLE, refuse, stop=stop, batch=10))

    async def dead_lettered() -> bool:
        return (await bus.js.stream_info(subjects.DEADLETTER)).state.messages == 1

    await wait_for_async(dead_lettered, timeout=30, what="the poison message dead-lettered")
    stop.set()
    await task
    for number in range(1, 5):  # four more that nobody reads: the consumer is 4 behind
        await bus.publish(subject, b"later", msg_id=f"m{number}")

    watched = [Consumer(subjects.TCS_COMMANDS, DURABLE), Consumer(subjects.TCS_COMMANDS, "never-created")]
    metrics = ConsumerMetrics(bus, lambda: watched, dead_letters=True)
    await metrics.refresh()
    assert exported("tc_calendar_consumer_pending_messages")[DURABLE] == 4
    assert exported("tc_calendar_consumer_ack_pending_messages")[DURABLE] == 0
    assert exported("tc_calendar_dead_letter_messages")[DURABLE] == 1
    # a consumer that does not exist reports no lag (not a made-up 0); it has no dead letters either
    assert "never-created" not in exported("tc_calendar_consumer_pending_messages")
    assert exported("tc_calendar_dead_letter_messages")["never-created"] == 0
    await bus.close()


def test_a_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval must be positive, not 0"):
        ConsumerMetrics(Bus(BusSettings(url="nats://127.0.0.1:1", name="test")), list, dead_letters=False, interval=0)

"""Push results published in batches (tcs_gateway.results): every result reaches TCS_RESULTS once, with the command
id as Nats-Msg-Id, and its command is acked only after that; a batch JetStream refuses leaves its commands unacked
(real nats-server, real JetStream consumers)."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.errors import NoStreamResponseError

from tccal import subjects
from tccal.bus import Bus, BusSettings, ensure_consumer
from tcs_gateway.results import ResultBatcher
from trueconf.calendar.v1 import commands_pb2

SERVER = "batch.example.com"


async def _commands(bus: Bus, durable: str, count: int) -> list[object]:
    """`count` commands published to the server's subject and fetched (unacked) through a durable consumer."""
    subject = subjects.commands_subject(SERVER)
    await ensure_consumer(bus.js, subjects.TCS_COMMANDS, durable, filter_subject=subject, ack_wait=30.0)
    for n in range(count):
        await bus.publish(subject, b"command", msg_id=f"{durable}-command-{n}")
    pull = await bus.js.pull_subscribe_bind(durable, subjects.TCS_COMMANDS)
    messages: list[object] = []
    while len(messages) < count:
        messages += await pull.fetch(count - len(messages), timeout=5)
    return messages


class CountingBus(Bus):
    """The real Bus, recording how many results each batch carried."""

    batches: list[int]

    async def publish_batch(self, messages, *, timeout=10.0):  # type: ignore[no-untyped-def]
        self.batches.append(len(messages))
        return await super().publish_batch(messages, timeout=timeout)


def _result(command_id: str) -> commands_pb2.TcsCommandResult:
    return commands_pb2.TcsCommandResult(command_id=command_id, server_id=SERVER, status=commands_pb2.COMMAND_STATUS_OK)


async def test_results_finished_together_are_published_once_each_then_their_commands_acked(nats_url: str) -> None:
    bus = CountingBus(BusSettings(url=nats_url, name="results-test"))
    bus.batches = []
    await bus.connect(attempts=3)
    messages = await _commands(bus, "results-batched", 40)
    subject = subjects.results_subject(SERVER)
    before = (await bus.js.stream_info(subjects.TCS_RESULTS)).state.last_seq
    batcher = ResultBatcher(bus, subject)
    results = [_result(f"batched-{n}") for n in range(40)]
    # all finish in one go (as TrueConf's acknowledgements of a window of pushes do), one a second time
    await asyncio.gather(
        *(batcher.publish_and_ack(result, None, [message]) for result, message in zip(results, messages, strict=True))  # type: ignore[list-item]
    )
    assert sum(bus.batches) == 40 and len(bus.batches) < 40  # batched, not one round trip each
    await batcher.publish_and_ack(results[0], None, [])  # a repeat: JetStream's dedupe drops it
    stored = [
        commands_pb2.TcsCommandResult.FromString((await bus.js.get_msg(subjects.TCS_RESULTS, before + n)).data or b"")
        for n in range(1, 41)
    ]
    assert sorted(r.command_id for r in stored) == sorted(r.command_id for r in results)
    assert (await bus.js.stream_info(subjects.TCS_RESULTS)).state.last_seq == before + 40
    consumer = await bus.js.consumer_info(subjects.TCS_COMMANDS, "results-batched")
    assert consumer.num_ack_pending == 0 and consumer.num_pending == 0
    await bus.close()


async def test_a_refused_batch_leaves_its_commands_unacked(nats_url: str) -> None:
    bus = Bus(BusSettings(url=nats_url, name="results-test"))
    await bus.connect(attempts=3)
    messages = await _commands(bus, "results-refused", 3)
    batcher = ResultBatcher(bus, "no.stream.takes.this")
    outcomes = await asyncio.gather(
        *(batcher.publish_and_ack(_result(f"refused-{n}"), None, [m]) for n, m in enumerate(messages)),  # type: ignore[list-item]
        return_exceptions=True,
    )
    assert all(isinstance(outcome, NoStreamResponseError) for outcome in outcomes), outcomes
    consumer = await bus.js.consumer_info(subjects.TCS_COMMANDS, "results-refused")
    assert consumer.num_ack_pending == 3  # redelivered after ack_wait: pushed again, TCS ignores a seq it has
    # the batcher keeps working after a refused batch
    with pytest.raises(NoStreamResponseError):
        await batcher.publish_and_ack(_result("refused-again"), None, [])
    await bus.close()

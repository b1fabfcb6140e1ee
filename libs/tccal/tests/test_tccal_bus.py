"""JetStream through a real nats-server: topology, dedupe, trace context, ack-after-success, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.js.errors import BadRequestError, NoStreamResponseError

from tccal import bus as busmod
from tccal import subjects, telemetry
from tccal.bus import Bus, BusSettings, consume
from tccal.pipelined import DUPLICATE, STORED, PipelinedPublisher
from tccal_sandbox.embedded import EmbeddedNats, free_port, nats_server_binary
from tccal_sandbox.testing import wait_for_async


async def connected(url: str, max_deliver: int = 3) -> Bus:
    bus = Bus(BusSettings(url=url, max_deliver=max_deliver, name="test"))
    await bus.connect(attempts=3)
    return bus


async def test_topology_is_declared_idempotently(nats_url: str) -> None:
    bus = await connected(nats_url)
    await busmod.ensure_topology(bus.js)  # a second service starting declares it again
    for stream, subject in subjects.STREAM_SUBJECTS.items():
        info = await bus.js.stream_info(stream)
        assert info.config.subjects == [subject]
        assert info.config.duplicate_window == busmod.DUPLICATE_WINDOW_SECONDS
    kv = await bus.key_value()
    await kv.put("probe", b"1")
    assert (await kv.get("probe")).value == b"1"
    await bus.close()


async def test_publish_dedupes_on_msg_id_and_carries_traceparent(nats_url: str) -> None:
    telemetry.setup("test-bus")
    bus = await connected(nats_url)
    subject = subjects.calendar_subject("exchange.example.com", "anna@example.com")
    assert subject == "calendar.v1.changes.exchange%2Eexample%2Ecom.anna@example%2Ecom"
    with telemetry.tracer("test").start_as_current_span("read"):
        assert await bus.publish(subject, b"one", msg_id="anna/1/ck1") is True
        assert await bus.publish(subject, b"one again", msg_id="anna/1/ck1") is False
    info = await bus.js.stream_info(subjects.CALENDAR)
    assert info.state.messages == 1
    message = await bus.js.get_msg(subjects.CALENDAR, 1)
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == "anna/1/ck1"
    assert message.headers["traceparent"].startswith("00-")
    await bus.close()


async def test_ack_only_after_success_then_dead_letter(nats_url: str) -> None:
    bus = await connected(nats_url, max_deliver=3)
    subject = subjects.commands_subject("server.trueconf.name#vcs")
    await bus.publish(subject, b"good", msg_id="c1")
    await bus.publish(subject, b"flaky", msg_id="c2")
    await bus.publish(subject, b"poison", msg_id="c3")
    seen: list[tuple[bytes, int]] = []
    done: list[bytes] = []

    async def handler(msg: Msg) -> None:
        seen.append((msg.data, msg.metadata.num_delivered or 0))
        if msg.data == b"poison" or (msg.data == b"flaky" and (msg.metadata.num_delivered or 0) < 2):
            raise RuntimeError(f"cannot handle {msg.data!r}")
        done.append(msg.data)

    stop = asyncio.Event()
    task = asyncio.create_task(consume(bus, subjects.TCS_COMMANDS, "test-durable", handler, stop=stop, batch=10))

    async def dead_lettered() -> bool:
        info = await bus.js.stream_info(subjects.DEADLETTER)
        return info.state.messages == 1

    await wait_for_async(dead_lettered, timeout=30, what="poison message in the dead-letter stream")
    stop.set()
    await task
    assert sorted(done) == [b"flaky", b"good"]
    assert [n for data, n in seen if data == b"poison"] == [1, 2, 3]
    consumer = await bus.js.consumer_info(subjects.TCS_COMMANDS, "test-durable")
    assert consumer.num_ack_pending == 0 and consumer.num_pending == 0
    dead = await bus.js.get_msg(subjects.DEADLETTER, 1)
    assert dead.data == b"poison"
    assert dead.headers is not None and "cannot handle" in dead.headers["Tc-Dlq-Error"]
    assert dead.headers["Tc-Dlq-Subject"] == subject
    await bus.close()


async def test_unacked_message_is_redelivered_to_the_next_consumer(nats_url: str) -> None:
    """A consumer that dies before its handler finished leaves the message for the next one."""
    bus = await connected(nats_url)
    subject = subjects.results_subject("s#vcs")
    await bus.publish(subject, b"r1", msg_id="r1")
    await busmod.ensure_consumer(bus.js, subjects.TCS_RESULTS, "results", ack_wait=1.0)
    first = await bus.js.pull_subscribe_bind("results", subjects.TCS_RESULTS)
    (msg,) = await first.fetch(1, timeout=5)
    assert msg.data == b"r1"  # taken, never acked: the process "crashed"
    got: list[bytes] = []

    async def handler(m: Msg) -> None:
        got.append(m.data)

    stop = asyncio.Event()
    task = asyncio.create_task(consume(bus, subjects.TCS_RESULTS, "results", handler, stop=stop, ack_wait=1.0))

    async def redelivered() -> bool:
        return got == [b"r1"]

    await wait_for_async(redelivered, timeout=15)
    stop.set()
    await task
    await bus.close()


async def test_batch_handler_takes_a_fetch_at_once_and_falls_back_one_by_one(nats_url: str) -> None:
    """A fetched batch goes to the batch handler in one call; a batch it cannot handle is handled one message at
    a time, so only the poison message is redelivered and dead-lettered, and every other is acked once."""
    bus = await connected(nats_url, max_deliver=2)
    subject = subjects.results_subject("batch#vcs")
    for n in range(6):
        await bus.publish(subject, f"m{n}".encode(), msg_id=f"b{n}")
    await bus.publish(subject, b"poison", msg_id="b-poison")
    batches: list[list[bytes]] = []
    singles: list[bytes] = []

    async def batch_handler(messages: list[Msg]) -> None:
        batches.append([m.data for m in messages])
        if any(m.data == b"poison" for m in messages):
            raise RuntimeError("a poison message in the batch")

    async def handler(msg: Msg) -> None:
        singles.append(msg.data)
        if msg.data == b"poison":
            raise RuntimeError("cannot handle the poison message")

    stop = asyncio.Event()
    task = asyncio.create_task(
        consume(bus, subjects.TCS_RESULTS, "batched", handler, stop=stop, batch=16, batch_handler=batch_handler)
    )

    async def dead_lettered() -> bool:
        return (await bus.js.stream_info(subjects.DEADLETTER)).state.messages == 1

    await wait_for_async(dead_lettered, timeout=30, what="the poison message dead-lettered")
    stop.set()
    await task
    assert batches[0] == [f"m{n}".encode() for n in range(6)] + [b"poison"]  # one call for the whole fetch
    assert sorted(set(singles)) == sorted([f"m{n}".encode() for n in range(6)] + [b"poison"])
    assert singles.count(b"m0") == 1 and singles.count(b"poison") == 2  # the good ones acked once, in the fallback
    consumer = await bus.js.consumer_info(subjects.TCS_RESULTS, "batched")
    assert consumer.num_ack_pending == 0 and consumer.num_pending == 0
    await bus.close()


async def test_pipelined_publish_keeps_the_order_and_counts_acknowledged(nats_url: str) -> None:
    bus = await connected(nats_url)
    subject = subjects.commands_subject("pipelined#vcs")
    before = (await bus.js.stream_info(subjects.TCS_COMMANDS)).state.last_seq
    messages = [(subject, f"p{n}".encode(), f"pipelined-{n}", {}) for n in range(5)]
    messages.append((subject, b"p2 again", "pipelined-2", {}))  # a repeat: acknowledged as a duplicate, not stored
    assert await bus.publish_pipelined(messages) == 6
    stored = [(await bus.js.get_msg(subjects.TCS_COMMANDS, before + n)).data for n in range(1, 6)]
    assert stored == [f"p{n}".encode() for n in range(5)]
    assert (await bus.js.stream_info(subjects.TCS_COMMANDS)).state.last_seq == before + 5
    await bus.close()


async def test_pipelined_publish_counts_only_up_to_the_first_message_jetstream_refused(nats_url: str) -> None:
    """Every message is sent; the count stops at the first one not stored: a JetStream error answer (here an
    expected stream that does not match) or a subject no stream takes (a 503 status, no PubAck)."""
    bus = await connected(nats_url)
    subject = subjects.commands_subject("refused#vcs")
    before = (await bus.js.stream_info(subjects.TCS_COMMANDS)).state.last_seq
    wrong_stream = {"Nats-Expected-Stream": "NOT_" + subjects.TCS_COMMANDS}
    messages = [
        (subject, b"r0", "refused-0", {}),
        (subject, b"r1", "refused-1", {}),
        (subject, b"r2", "refused-2", wrong_stream),
        (subject, b"r3", "refused-3", {}),
    ]
    assert await bus.publish_pipelined(messages) == 2
    stored = [(await bus.js.get_msg(subjects.TCS_COMMANDS, before + n)).data for n in range(1, 4)]
    assert stored == [b"r0", b"r1", b"r3"]  # r3 went out too: the caller publishes it again (a duplicate then)
    assert await bus.publish_pipelined([(subject, b"r4", "refused-4", {}), ("no.stream.here", b"x", "n", {})]) == 1
    assert await bus.publish_pipelined(messages[3:]) == 1  # acknowledged as the duplicate it is
    assert await bus.publish_pipelined([]) == 0
    await bus.close()


async def test_batch_publish_keeps_the_order_and_tells_duplicates(nats_url: str) -> None:
    bus = await connected(nats_url)
    subject = subjects.commands_subject("batch#vcs")
    before = (await bus.js.stream_info(subjects.TCS_COMMANDS)).state.last_seq
    messages = [(subject, f"b{n}".encode(), f"batch-{n}", {}) for n in range(5)]
    messages.append((subject, b"b2 again", "batch-2", {}))  # a repeat: acknowledged as a duplicate, not stored
    assert await bus.publish_batch(messages) == [True] * 5 + [False]
    stored = [(await bus.js.get_msg(subjects.TCS_COMMANDS, before + n)).data for n in range(1, 6)]
    assert stored == [f"b{n}".encode() for n in range(5)]
    assert (await bus.js.stream_info(subjects.TCS_COMMANDS)).state.last_seq == before + 5
    assert await bus.publish_batch(messages[:2]) == [False, False]  # the same batch again stores nothing
    assert await bus.publish_batch([]) == []
    await bus.close()


async def test_batch_publish_raises_when_jetstream_refuses_one(nats_url: str) -> None:
    """A message no stream takes is refused: the batch raises as a single publish would (nothing is lost silently)."""
    bus = await connected(nats_url)
    subject = subjects.commands_subject("batch-refused#vcs")
    with pytest.raises(NoStreamResponseError):
        await bus.publish_batch([(subject, b"ok", "refused-0", {}), ("no.stream.here", b"lost", "refused-1", {})])
    await bus.close()


async def test_pipelined_batch_tells_per_message_stored_duplicate_refused(nats_url: str) -> None:
    """One answer per message, whatever the order of the replies: a repeated id is told as a duplicate (the flag in
    its PubAck), a refusal carries JetStream's error, a subject no stream takes its 503 status."""
    bus = await connected(nats_url)
    subject = subjects.commands_subject("answers#vcs")
    publisher = PipelinedPublisher(bus.nc)
    wrong_stream = {"Nats-Expected-Stream": "NOT_" + subjects.TCS_COMMANDS}
    answers = await publisher.publish(
        [
            (subject, b"a0", "answers-0", {}),
            (subject, b"a1", "answers-1", {}),
            (subject, b"a0 again", "answers-0", {}),
            (subject, b"a3", "answers-3", wrong_stream),
            ("no.stream.here", b"a4", "answers-4", {}),
        ],
        timeout=10.0,
    )
    assert answers[:3] == [STORED, STORED, DUPLICATE]
    assert answers[2] is not None and answers[2].duplicate and answers[2].acknowledged
    refused, no_stream = answers[3], answers[4]
    assert refused is not None and not refused.acknowledged
    assert refused.code == 400 and "expected stream" in (refused.error or "")
    assert no_stream is not None and not no_stream.acknowledged and no_stream.status == "503"
    assert (await publisher.publish([(subject, b"a1 again", "answers-1", {})], timeout=10.0)) == [DUPLICATE]
    await bus.close()


async def test_batch_publish_error_names_the_refused_message(nats_url: str) -> None:
    """The first refusal in order is raised as a single publish raises it (nats-py's type for the code) and says
    which message it was; the messages after it do not hide it."""
    bus = await connected(nats_url)
    subject = subjects.commands_subject("batch-named#vcs")
    wrong_stream = {"Nats-Expected-Stream": "NOT_" + subjects.TCS_COMMANDS}
    batch = [
        (subject, b"n0", "named-0", {}),
        (subject, b"n1", "named-1", wrong_stream),
        ("no.stream.here", b"n2", "named-2", {}),
    ]
    with pytest.raises(BadRequestError) as refused:
        await bus.publish_batch(batch)
    assert refused.value.err_code == 10060  # JetStream's "expected stream does not match"
    assert "'named-1'" in str(refused.value) and subject in str(refused.value)
    with pytest.raises(NoStreamResponseError) as no_stream:
        await bus.publish_batch(batch[2:])
    assert "'named-2'" in str(no_stream.value) and "no.stream.here" in str(no_stream.value)
    await bus.close()


async def test_connect_waits_for_a_jetstream_that_is_not_ready_yet(tmp_path: Path) -> None:
    """A NATS whose JetStream does not answer yet (a cluster electing its meta leader; here a server started without
    JetStream, then restarted with it on the same port): Bus.connect keeps declaring the streams instead of failing
    the service's start, and finishes once JetStream answers."""
    port = free_port()
    plain = tmp_path / "plain.conf"
    plain.write_text(f"listen: 127.0.0.1:{port}\n")
    without_jetstream = await asyncio.create_subprocess_exec(nats_server_binary(), "-c", str(plain))
    try:
        await wait_for_async(lambda: _listening(port), timeout=15, what="nats-server without JetStream")
        bus = Bus(BusSettings(url=f"nats://127.0.0.1:{port}", name="test", allow_anonymous=True))
        connecting = asyncio.create_task(bus.connect(attempts=3))
        await asyncio.sleep(2.0)
        assert not connecting.done(), connecting  # still declaring, not failed
    finally:
        without_jetstream.terminate()
        await asyncio.wait_for(without_jetstream.wait(), 10)
    with_jetstream = EmbeddedNats(tmp_path / "js", port=port, auth=False)
    with_jetstream.start()
    try:
        await asyncio.wait_for(connecting, 60)
        info = await bus.js.stream_info(subjects.CALENDAR)
        assert info.config.subjects == [subjects.STREAM_SUBJECTS[subjects.CALENDAR]]
        await bus.close()
    finally:
        with_jetstream.stop()


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False

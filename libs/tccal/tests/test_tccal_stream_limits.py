"""JetStream stream limits through a real nats-server: a full stream refuses new messages (the publisher gets an
error) and keeps every stored one; the alert fires at the threshold, once; a smaller limit never deletes messages."""

from __future__ import annotations

import logging
import re

import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy
from nats.js.errors import APIError
from prometheus_client import REGISTRY, generate_latest

from tccal import subjects, telemetry
from tccal.bus import Bus, BusSettings, ensure_topology
from tccal.stream_limits import (
    DEADLETTER_MAX_AGE_S,
    STREAM_MAX_AGE_S,
    StreamLimits,
    StreamUsageWatch,
    declare_stream,
)

LIMIT = 64 * 1024
PAYLOAD = b"x" * 1024


async def connected(url: str, **settings: int) -> Bus:
    bus = Bus(BusSettings(url=url, name="test", **settings))  # type: ignore[arg-type]
    await bus.connect(attempts=3)
    return bus


def _gauge(stream: str) -> float | None:
    text = generate_latest(REGISTRY).decode()
    found = re.search(rf'^tc_calendar_stream_full_ratio\{{[^}}]*stream="{stream}"[^}}]*\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


async def test_every_stream_is_bounded_in_bytes_and_age_and_discards_new(nats_url: str) -> None:
    bus = await connected(nats_url, stream_max_bytes=LIMIT, deadletter_max_bytes=2 * LIMIT)
    try:
        for stream in subjects.STREAM_SUBJECTS:
            config = (await bus.js.stream_info(stream)).config
            assert config.discard == DiscardPolicy.NEW, stream
            assert config.retention == RetentionPolicy.LIMITS, stream
            if stream == subjects.DEADLETTER:
                assert (config.max_bytes, config.max_age) == (2 * LIMIT, DEADLETTER_MAX_AGE_S)
            else:
                assert (config.max_bytes, config.max_age) == (LIMIT, STREAM_MAX_AGE_S), stream
        # A stream declared before (JetStream's defaults: no byte limit, discard old) is updated in place.
        await bus.js.delete_stream(subjects.TCS_RESULTS)
        await bus.js.add_stream(name=subjects.TCS_RESULTS, subjects=[subjects.STREAM_SUBJECTS[subjects.TCS_RESULTS]])
        await ensure_topology(bus.js, limits=StreamLimits(LIMIT, LIMIT))
        config = (await bus.js.stream_info(subjects.TCS_RESULTS)).config
        assert (config.max_bytes, config.discard) == (LIMIT, DiscardPolicy.NEW)
    finally:
        await bus.close()


async def test_a_full_stream_refuses_the_publisher_and_keeps_every_message_and_alerts_first(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry.setup("test-stream-limits")  # metrics on /metrics's registry; it also replaces the log handlers
    logging.getLogger().addHandler(caplog.handler)
    bus = await connected(nats_url, stream_max_bytes=LIMIT)
    watch = StreamUsageWatch(lambda: bus.js, [subjects.CALENDAR], alert_percent=80)
    caplog.set_level(logging.INFO, logger="tccal.stream_limits")
    subject = subjects.calendar_subject("ex.example.com", "anna@example.com")
    try:
        stored = 0
        alerted_at: int | None = None
        refused: APIError | None = None
        while refused is None and stored < 200:
            try:
                await bus.publish(subject, PAYLOAD, msg_id=f"m{stored}")
            except APIError as exc:  # the publisher is told: nothing is dropped behind its back
                refused = exc
                break
            stored += 1
            ratios = await watch.check()
            if alerted_at is None and ratios[subjects.CALENDAR] >= 0.8:
                alerted_at = stored
        assert refused is not None, "64 KiB never filled"
        assert "maximum bytes" in str(refused).lower(), refused
        state = (await bus.js.stream_info(subjects.CALENDAR)).state
        # Discard new: the first message is still there, and every acknowledged one.
        assert (state.first_seq, state.messages) == (1, stored)
        first = await bus.js.get_msg(subjects.CALENDAR, 1)
        assert first.data == PAYLOAD
        # The alert came before the stream was full, exactly once, naming the stream and the setting.
        assert alerted_at is not None and alerted_at < stored
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "is " in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "CALENDAR" in warnings[0].getMessage() and "nats.streamMaxBytes" in warnings[0].getMessage()
        print(f"\n64 KiB stream: {stored} x 1 KiB stored, alert at message {alerted_at}, then refused: {refused}")
        ratio = _gauge(subjects.CALENDAR)
        assert ratio is not None and ratio >= 0.8, generate_latest(REGISTRY).decode()[-2000:]
        # Room again (here: purged by the operator): the publisher's retry goes through, the alert is lifted.
        await bus.js.purge_stream(subjects.CALENDAR)
        await bus.publish(subject, PAYLOAD, msg_id="retried")
        assert (await watch.check())[subjects.CALENDAR] < 0.8
        assert any("back under" in r.getMessage() for r in caplog.records)
        assert (_gauge(subjects.CALENDAR) or 1.0) < 0.8
    finally:
        await bus.close()


async def test_a_smaller_limit_than_the_stream_holds_deletes_nothing(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """JetStream would delete the oldest messages to fit a smaller maximum; the connector keeps the larger one."""
    bus = await connected(nats_url, stream_max_bytes=LIMIT)
    subject = subjects.calendar_subject("ex.example.com", "bob@example.com")
    try:
        for index in range(40):
            await bus.publish(subject, PAYLOAD, msg_id=f"b{index}")
        before = (await bus.js.stream_info(subjects.CALENDAR)).state
        caplog.set_level(logging.WARNING, logger="tccal.stream_limits")
        await declare_stream(bus.js, StreamLimits(max_bytes=8 * 1024).stream_config(subjects.CALENDAR, replicas=1))
        info = await bus.js.stream_info(subjects.CALENDAR)
        assert (info.state.first_seq, info.state.messages) == (before.first_seq, before.messages) == (1, 40)
        assert info.config.max_bytes == LIMIT
        assert any("shrinking it would delete" in r.getMessage() for r in caplog.records)
        # Once it holds less than the new maximum, the new maximum applies.
        await bus.js.purge_stream(subjects.CALENDAR)
        await declare_stream(bus.js, StreamLimits(max_bytes=8 * 1024).stream_config(subjects.CALENDAR, replicas=1))
        assert (await bus.js.stream_info(subjects.CALENDAR)).config.max_bytes == 8 * 1024
    finally:
        await bus.close()

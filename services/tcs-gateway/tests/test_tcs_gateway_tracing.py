"""One trace from the command message to the WebSocket push and the REST calls (docs/architecture.md §9): the
consumption span continues the `traceparent` of the message, pushes and REST calls are its children, results carry
it on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tcs_gateway_testkit import World, occurrence

from tccal import telemetry
from tccal.subjects import TCS_RESULTS
from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import commands_pb2, common_pb2

EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    processor = SimpleSpanProcessor(EXPORTER)
    provider.add_span_processor(processor)
    EXPORTER.clear()
    yield EXPORTER
    processor.shutdown()
    EXPORTER.clear()


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


async def test_command_trace_continues_into_push_and_rest(world: World, spans: InMemorySpanExporter) -> None:
    await world.pair()

    tracer = telemetry.tracer("test")
    with tracer.start_as_current_span("engine decides") as parent:
        push = world.commands.upsert_command("bob@example.test", occurrence("tr1"))
        create = world.commands.conference_command("conference_upsert", "tr1")
        create.conference_upsert.topic = "Traced"
        create.conference_upsert.owner = "alice@example.test"
        create.conference_upsert.spec.mode = common_pb2.CONFERENCE_MODE_SMART_MEETING
        await world.commands.publish(push)  # Bus.publish puts the current traceparent in the headers
        await world.commands.publish(create)
    trace_id = parent.get_span_context().trace_id
    assert (await world.commands.result_of(push.command_id)).status == commands_pb2.COMMAND_STATUS_OK
    assert (await world.commands.result_of(create.command_id)).status == commands_pb2.COMMAND_STATUS_OK

    def finished() -> list[ReadableSpan]:
        return list(spans.get_finished_spans())

    async def complete() -> list[ReadableSpan] | None:
        found = [s for s in finished() if s.context is not None and s.context.trace_id == trace_id]
        names = {s.name for s in found}
        wanted = {"command calendar_upsert", "command conference_upsert", "bridge push calendar.upsert"}
        return found if wanted <= names else None

    traced = await wait_for_async(complete, what="the spans of both commands")
    by_name = {s.name: s for s in traced}
    consume_push = by_name["command calendar_upsert"]
    consume_rest = by_name["command conference_upsert"]
    for consumed in (consume_push, consume_rest):
        assert consumed.parent is not None and consumed.parent.span_id == parent.get_span_context().span_id
        assert consumed.kind == trace.SpanKind.CONSUMER
    assert [s.name for s in _children(traced, consume_push)] == ["bridge push calendar.upsert"]
    rest_calls = {s.name for s in _children(traced, consume_rest)}
    assert {"GET /users", "GET /conferences/{id}", "POST /conferences"} <= rest_calls
    assert all(s.kind == trace.SpanKind.CLIENT for s in _children(traced, consume_rest))
    # The result carries the trace on to the sync-engine.
    info = await world.commands.bus.js.stream_info(TCS_RESULTS)
    headers = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        message = await world.commands.bus.js.get_msg(TCS_RESULTS, sequence)
        headers.append(dict(message.headers or {}))
    assert all(f"{trace_id:032x}" in h.get("traceparent", "") for h in headers), headers

"""The registration client's HTTP calls are traced by OpenTelemetry's aiohttp-client instrumentation
(tccal.http_client): each request is a CLIENT span, child of the current span, and carries that span's
`traceparent` to the server — checked against a real HTTP server that records what it was sent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from licensing.errors import RegistrationUnreachableError, UnknownKeyError
from licensing.registration_client import RegistrationClient


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()  # one per test: shutting its processor down shuts the exporter down too
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()


class Recorder:
    """A registration server that records each request's headers; keys starting with "unknown" are refused."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def register(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        body = await request.json()
        if str(body["key"]).startswith("unknown"):
            return web.json_response({"error": "unknown_key", "message": "no such key"}, status=404)
        return web.json_response({"license": {"payload": "e30", "signature": {}}})


@pytest.fixture
async def server() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_post("/api/v1/register", recorder.register)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield recorder, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _client_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]


async def test_a_registration_request_is_a_client_span_whose_traceparent_reaches_the_server(
    spans: InMemorySpanExporter, server: tuple[Recorder, str]
) -> None:
    recorder, url = server
    client = RegistrationClient(url, timeout=5.0)
    with trace.get_tracer("test").start_as_current_span("register the installation") as parent:
        envelope = await client.register("TCC-KEY", "fingerprint", "1.0.0")
    assert envelope == {"payload": "e30", "signature": {}}

    [call] = _client_spans(spans)
    assert call.name == "POST /api/v1/register"
    assert call.parent is not None and call.parent.span_id == parent.get_span_context().span_id
    assert call.context is not None and call.context.trace_id == parent.get_span_context().trace_id
    attributes = dict(call.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["url.full"] == f"{url}/api/v1/register"
    assert attributes["url.template"] == "/api/v1/register"
    assert attributes["http.response.status_code"] == 200
    assert call.status.status_code == trace.StatusCode.UNSET

    # W3C traceparent: version-traceid-spanid-flags, naming the client span itself as the server's parent.
    [headers] = recorder.headers
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 0x01, "version 00, sampled"
    assert trace_id == f"{call.context.trace_id:032x}"
    assert span_id == f"{call.context.span_id:016x}"


async def test_a_refused_registration_is_an_error_span(
    spans: InMemorySpanExporter, server: tuple[Recorder, str]
) -> None:
    recorder, url = server
    client = RegistrationClient(url, timeout=5.0)
    with pytest.raises(UnknownKeyError):
        await client.register("unknown-key", "fingerprint", "1.0.0")
    [call] = _client_spans(spans)
    assert dict(call.attributes or {})["http.response.status_code"] == 404
    assert call.status.status_code == trace.StatusCode.ERROR
    # Without a current span the request starts a trace of its own, and still tells the server.
    assert call.parent is None
    assert recorder.headers[0]["traceparent"].split("-")[1] == f"{call.context.trace_id:032x}"


async def test_an_unreachable_server_is_an_error_span_naming_the_failure(spans: InMemorySpanExporter) -> None:
    async def closed_port() -> str:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        await runner.cleanup()
        return f"http://127.0.0.1:{port}"

    client = RegistrationClient(await closed_port(), timeout=5.0)
    with pytest.raises(RegistrationUnreachableError):
        await client.register("TCC-KEY", "fingerprint", "1.0.0")
    [call] = _client_spans(spans)
    assert call.status.status_code == trace.StatusCode.ERROR
    assert dict(call.attributes or {})["error.type"] == "ClientConnectorError"

"""JSON logs with trace ids; no secret reaches a log line or a span; durations in buckets that show 1 s."""

from __future__ import annotations

import io
import json
import logging
import urllib.parse

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, Status, StatusCode

from tccal import secrets, telemetry
from tccal.config import load_config


def capture(service: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(telemetry.JsonFormatter(service))
    logger = logging.getLogger(f"test.{service}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_log_lines_are_json_with_trace_ids() -> None:
    telemetry.setup("test-telemetry")
    logger, stream = capture("svc")
    with telemetry.tracer("t").start_as_current_span("work") as span:
        logger.info("synced %s", "anna@example.com", extra={"mailbox": "anna@example.com", "items": 3})
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "synced anna@example.com"
    assert entry["mailbox"] == "anna@example.com" and entry["items"] == 3
    assert entry["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert entry["level"] == "INFO" and entry["service"] == "svc"


def test_revealed_secrets_never_reach_a_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    password = "Very$ecret-Exchange-Pw"
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "calendarProviders": [
                    {"host": "ex", "credentials": [{"login": "svc", "password": secrets.encrypt(password)}]}
                ]
            }
        )
    )
    config = load_config(path)
    plain = secrets.reveal(config.calendar_providers[0].credentials[0].password)
    assert plain == password
    logger, stream = capture("redact")
    logger.warning("login failed for svc with %s", plain, extra={"password": plain})
    try:
        raise RuntimeError(f"auth error {plain}")
    except RuntimeError:
        logger.exception("boom")
    output = stream.getvalue()
    assert password not in output
    assert output.count("***") >= 3


def test_a_secret_is_redacted_in_every_spelling_a_log_gives_it() -> None:
    """A secret with a quote, a backslash or URL-special characters is escaped in a JSON log line, a repr or a
    URL: each spelling is redacted, not only the raw one."""
    secret = 'pa"ss\\word&key=1/2 x'
    telemetry.register_secret(secret)
    logger, stream = capture("svc")
    logger.info("raw %s", secret)
    logger.info("in a url https://h/token?client_secret=%s", urllib.parse.quote(secret, safe=""))
    logger.info("form body %s", urllib.parse.urlencode({"client_secret": secret}))
    logger.info("repr %r", secret)
    logger.info("in extra", extra={"detail": f"failed with {secret!r}"})
    text = stream.getvalue()
    assert text.count("***") >= 5, text
    for spelling in (secret, json.dumps(secret)[1:-1], repr(secret)[1:-1], urllib.parse.quote(secret, safe="")):
        assert spelling not in text, spelling
    assert urllib.parse.quote_plus(secret, safe="") not in text


def test_spans_are_redacted_before_they_leave_the_process() -> None:
    secret = "span-secret-4711"
    telemetry.register_secret(secret)
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(telemetry.RedactingSpanExporter(exported)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span(f"POST /token?secret={secret}") as span:
        span.set_attribute("url.full", f"https://h/?client_secret={secret}")
        span.set_attribute("tags", [secret, "plain"])
        span.set_attribute("items", 3)
        span.add_event("retry", {"error": f"refused {secret}"})
        span.set_status(Status(StatusCode.ERROR, f"token {secret} rejected"))
    [done] = exported.get_finished_spans()
    text = repr((done.name, dict(done.attributes or {}), [e.attributes for e in done.events], done.status.description))
    assert secret not in text, text
    assert done.attributes is not None and done.attributes["items"] == 3 and done.attributes["tags"][1] == "plain"
    assert done.context == span.get_span_context()  # the same span, only redacted


def test_durations_have_buckets_from_5_ms_to_60_s() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], views=[telemetry.latency_view()])
    histogram = provider.get_meter("t").create_histogram("x_sync_seconds", unit="s")
    for value in (0.004, 0.2, 0.9, 45.0):
        histogram.record(value)
    data = reader.get_metrics_data()
    assert data is not None
    [point] = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points  # type: ignore[attr-defined]
    assert tuple(point.explicit_bounds) == telemetry.LATENCY_BUCKETS_S
    assert point.explicit_bounds[0] == 0.005 and point.explicit_bounds[-1] == 60.0
    counts = dict(zip([*point.explicit_bounds, float("inf")], point.bucket_counts, strict=True))
    assert counts[0.005] == 1 and counts[0.25] == 1 and counts[1.0] == 1 and counts[60.0] == 1


PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def traceparent_of(span: Span, context: Context | None = None) -> str:
    return telemetry.inject_context({}, trace.set_span_in_context(span, context))["traceparent"]


def test_without_a_span_processor_spans_are_not_recorded_yet_carry_the_trace_on() -> None:
    """No exporter configured: nothing is recorded, but a traceparent written from a span is what the SDK's own
    would be - the parent's trace id and sampled flag, a span id of its own; a root span starts a sampled trace."""
    provider = telemetry.ProcessedTracerProvider()
    tracer = provider.get_tracer("t")
    parent = telemetry.extract_context({"traceparent": PARENT})
    child = tracer.start_span("publish", context=parent, kind=trace.SpanKind.PRODUCER, attributes={"a": "b"})
    assert not child.is_recording()
    version, trace_id, span_id, flags = traceparent_of(child, parent).split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span_id not in ("00f067aa0ba902b7", "0" * 16)
    unsampled = telemetry.extract_context({"traceparent": PARENT[:-2] + "00"})
    assert traceparent_of(tracer.start_span("publish", context=unsampled), unsampled).endswith("-00")
    with tracer.start_as_current_span("root") as root:
        assert not root.is_recording()
        assert trace.get_current_span() is root
        _, root_trace, _, root_flags = telemetry.inject_context({})["traceparent"].split("-")
        assert root_trace != "4bf92f3577b34da6a3ce929d0e0e4736" and int(root_flags, 16) & 1  # a sampled new trace
        inner = tracer.start_span("inner")  # the current span is the parent
        assert traceparent_of(inner).split("-")[1] == root_trace


def test_spans_are_recorded_once_a_span_processor_is_added() -> None:
    provider = telemetry.ProcessedTracerProvider()
    tracer = provider.get_tracer("t")  # taken before the processor, as a module's tracer is
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    parent = telemetry.extract_context({"traceparent": PARENT})
    with tracer.start_as_current_span("consume", context=parent, attributes={"n": 2}) as span:
        assert span.is_recording()
    [done] = exported.get_finished_spans()
    assert done.name == "consume" and dict(done.attributes or {}) == {"n": 2}
    assert done.parent is not None and f"{done.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert f"{done.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"

"""OpenTelemetry traces and metrics, JSON logs carrying trace ids, and secret redaction in every log line.

Traces and metrics go to OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT (or telemetry.otlpEndpoint) is set;
metrics are always readable in Prometheus format at the service's /metrics.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from datetime import UTC, datetime
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, TraceFlags
from opentelemetry.util import types
from opentelemetry.util._decorator import _agnosticcontextmanager  # the API's own (its Tracer's return type)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_REDACTED = "***"
_configured = False
_tracer_provider: TracerProvider | None = None
_meter_provider: MeterProvider | None = None


#: Histogram buckets of every duration (unit "s"): 5 ms to 60 s, so that "within a second" can be watched
#: (OpenTelemetry's default buckets start at 5 s and put every sync in the first one).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


def register_secret(value: str) -> None:
    """Never let `value` reach a log line or a span again - as written, and as a JSON string, a Python repr or a
    URL would spell it (a secret with `"`, `\\` or `&` is escaped there). Short values are too common to redact."""
    if len(value) < 4:
        return
    forms = {
        value,
        json.dumps(value, ensure_ascii=False)[1:-1],
        json.dumps(value)[1:-1],
        repr(value)[1:-1],
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value, safe=""),
        urllib.parse.quote(value),
    }
    with _secrets_lock:
        _secrets.update(form for form in forms if len(form) >= 4)


def redact(text: str) -> str:
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, _REDACTED)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, tuple | list):
        return type(value)(_redact_value(item) for item in value)
    return value


def _redact_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: _redact_value(value) for key, value in (attributes or {}).items()}


class RedactingSpanExporter(SpanExporter):
    """Hands spans on with every registered secret redacted from attributes, events and the status text: a
    span attribute or an exception message is as public as a log line once it is in a tracing backend."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([redacted_span(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def redacted_span(span: ReadableSpan) -> ReadableSpan:
    status = span.status
    if status.description:
        status = Status(status.status_code, redact(status.description))
    return ReadableSpan(
        name=redact(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_redact_attributes(span.attributes),
        events=[Event(e.name, _redact_attributes(e.attributes), e.timestamp) for e in span.events],
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ProcessedTracerProvider(TracerProvider):
    """The SDK's provider, recording spans only once a span processor (an exporter) is added: until then its tracers
    start non-recording spans that still carry the trace on exactly as the SDK's would (the parent's trace id, a new
    span id, the sampler's decision in the flags), so a `traceparent` written from one is what it would have been.
    A span nobody will export costs the process nothing but its ids (an SDK span is ~20 µs to start and end)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.processed = False

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self.processed = True

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        tracer = super().get_tracer(*args, **kwargs)
        return ProcessedTracer(tracer, self) if isinstance(tracer, SdkTracer) else tracer


class ProcessedTracer(trace.Tracer):
    """An SDK tracer that records only while its provider has a span processor (ProcessedTracerProvider)."""

    def __init__(self, inner: SdkTracer, provider: ProcessedTracerProvider) -> None:
        self.inner = inner
        self.provider = provider

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        if self.provider.processed:
            return self.inner.start_span(
                name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
            )
        # The SDK's Tracer.start_span up to the span's context (same ids, sampler, flags), without the span.
        parent = trace.get_current_span(context).get_span_context()
        inner = self.inner
        if parent.is_valid:
            trace_id, random_trace_id = parent.trace_id, parent.trace_flags.random_trace_id
        else:
            trace_id, random_trace_id = inner.id_generator.generate_trace_id(), inner.id_generator.is_trace_id_random()
        decision = inner.sampler.should_sample(context, trace_id, name, kind, attributes, links)
        flags = TraceFlags.SAMPLED if decision.decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT
        if random_trace_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        span_context = SpanContext(
            trace_id,
            inner.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=decision.trace_state,
        )
        return NonRecordingSpan(span_context)

    @_agnosticcontextmanager
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        span = self.start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


def recording() -> bool:
    """Whether spans started now can be recorded: False only while the process's provider is a
    ProcessedTracerProvider with no span processor (no exporter configured), whose spans only carry the trace on."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, ProcessedTracerProvider) or provider.processed


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace/span ids, and `extra` fields."""

    _standard = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = f"{span.trace_id:032x}"
            entry["span_id"] = f"{span.span_id:016x}"
        for key, value in record.__dict__.items():
            if key not in self._standard and not key.startswith("_"):
                entry[key] = value if isinstance(value, (int, float, bool, type(None))) else redact(str(value))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        # Each field is redacted as text first (a secret inside a repr or a URL), then the line as JSON spells it.
        return redact(json.dumps(entry, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "aiohttp.access", "grpc", "urllib3", "exchangelib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def setup(service: str, *, otlp_endpoint: str | None = None, log_level: str = "INFO", log_format: str = "json") -> None:
    """Configure logs, traces and metrics for one process (idempotent)."""
    global _configured, _tracer_provider, _meter_provider
    configure_logging(service, log_level, log_format)
    if _configured:
        return
    _configured = True
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or otlp_endpoint
    resource = Resource.create({"service.name": service, "service.namespace": "tc-calendar"})
    _tracer_provider = ProcessedTracerProvider(resource=resource)
    readers: list[MetricReader] = [PrometheusMetricReader()]
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        insecure = endpoint.startswith("http://")
        exporter = RedactingSpanExporter(OTLPSpanExporter(endpoint=endpoint, insecure=insecure))
        _tracer_provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint, insecure=insecure), 15000))
    trace.set_tracer_provider(_tracer_provider)
    # No exemplars: neither the Prometheus exposition nor our dashboards read them, and sampling one costs every
    # histogram record a third more (the engine records one per change and one per command).
    _meter_provider = MeterProvider(
        resource=resource, metric_readers=readers, views=[latency_view()], exemplar_filter=AlwaysOffExemplarFilter()
    )
    metrics.set_meter_provider(_meter_provider)


def latency_view() -> View:
    """Every histogram in seconds gets LATENCY_BUCKETS_S."""
    return View(
        instrument_type=Histogram,
        instrument_unit="s",
        aggregation=ExplicitBucketHistogramAggregation(boundaries=LATENCY_BUCKETS_S),
    )


#: How long the last flush at a service's stop may wait for an OTLP collector (the stop is bounded: service.py).
FLUSH_TIMEOUT_MS = 2000


def shutdown() -> None:
    """Flush spans and metrics (call on graceful shutdown). The providers are flushed, not shut down: OpenTelemetry's
    global providers can be set once per process, so a provider shut down here would leave every later service of
    the same process (tests run several in one) exporting nothing."""
    if _tracer_provider is not None:
        _tracer_provider.force_flush(timeout_millis=FLUSH_TIMEOUT_MS)
    if _meter_provider is not None:
        _meter_provider.force_flush(timeout_millis=FLUSH_TIMEOUT_MS)


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def meter(name: str) -> metrics.Meter:
    return metrics.get_meter(name)


def inject_context(carrier: MutableMapping[str, str], context: Context | None = None) -> MutableMapping[str, str]:
    """Write the current trace context (or `context`'s) as traceparent into headers or metadata."""
    propagate.inject(carrier, context=context)
    return carrier


def extract_context(carrier: Mapping[str, str] | None) -> Context:
    """The trace context carried by headers or metadata (empty context if none)."""
    return propagate.extract(dict(carrier or {}))

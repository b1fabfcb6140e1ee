"""aiohttp client sessions traced by OpenTelemetry's aiohttp-client instrumentation.

Every HTTP call a service makes to another system (TrueConf Server's REST API, Microsoft Graph, the registration
server) goes through a session made here: the standard instrumentation (`opentelemetry-instrumentation-aiohttp-
client`, per session through `create_trace_config`, no global patching) gives each request a CLIENT span with the
stable HTTP semantic conventions (`http.request.method`, `url.full`, `http.response.status_code`, errors from 4xx)
and writes the span's `traceparent` into the request's headers. Its duration histogram
(`http.client.request.duration`, unit s) gets `telemetry.LATENCY_BUCKETS_S` like every other duration.

The instrumentation names a span after the method alone ("GET"); inside `url_template("/users/{id}")` the span is
named "GET /users/{id}" and carries `url.template`, as the conventions name a client span whose low-cardinality
path is known.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import aiohttp
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.trace import Span

_TEMPLATE: ContextVar[str | None] = ContextVar("tccal_http_url_template", default=None)


@contextmanager
def url_template(template: str) -> Iterator[None]:
    """Requests made inside are named `<METHOD> <template>` (the path with its variable parts as `{name}`)."""
    token = _TEMPLATE.set(template)
    try:
        yield
    finally:
        _TEMPLATE.reset(token)


def _name_by_template(span: Span, params: aiohttp.TraceRequestStartParams) -> None:
    template = _TEMPLATE.get()
    if template is None or not span.is_recording():
        return
    span.update_name(f"{params.method} {template}")
    span.set_attribute("url.template", template)


def trace_config() -> aiohttp.TraceConfig:
    """The instrumentation's hooks for one session (stable HTTP conventions, spans named by `url_template`)."""
    config: aiohttp.TraceConfig = create_trace_config(
        request_hook=_name_by_template, sem_conv_opt_in_mode=_StabilityMode.HTTP
    )
    return config


def traced_session(**kwargs: Any) -> aiohttp.ClientSession:
    """An `aiohttp.ClientSession(**kwargs)` whose requests are traced (and carry `traceparent`)."""
    configs = [*(kwargs.pop("trace_configs", None) or []), trace_config()]
    return aiohttp.ClientSession(trace_configs=configs, **kwargs)

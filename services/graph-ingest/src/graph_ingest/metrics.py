"""graph-ingest's Prometheus metrics (OpenTelemetry instruments, read at the service's /metrics; names listed in
tccal.metric_names): Graph requests by status, throttled waits, delta rounds by outcome, change notifications by
verdict and the subscriptions kept. Counters appear once the first event they count has happened."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Observation

from tccal import telemetry

_meter = telemetry.meter("graph_ingest")
graph_requests = _meter.create_counter(
    "graph_ingest_graph_requests", description="Microsoft Graph requests by provider, method and HTTP status"
)
throttled_waits = _meter.create_counter(
    "graph_ingest_throttled_waits", description="Waits for Retry-After after a 429/503 answer (also $batch members)"
)
throttled_wait_seconds = _meter.create_counter(
    "graph_ingest_throttled_wait_seconds", unit="s", description="Seconds waited for Retry-After after 429/503"
)
delta_rounds = _meter.create_counter(
    "graph_ingest_delta_rounds", description="Mailbox delta rounds by outcome: ok, error, auth_error"
)
notifications = _meter.create_counter(
    "graph_ingest_notifications",
    description="Change notifications received by verdict: accepted, wrong_client_state, unknown_subscription, "
    "malformed (a body that is not Graph's)",
)

#: SubscriptionKeeper.accept's answer → the notification verdict (every lifecycle event is an accepted one).
VERDICTS: Mapping[str, str] = {"forged": "wrong_client_state", "unknown": "unknown_subscription"}


def verdict_of(judged: str) -> str:
    return VERDICTS.get(judged, "accepted")


def export_subscriptions(active: Callable[[], Mapping[str, int]]) -> None:
    """Register the gauge of subscriptions kept per provider, `active()` read at each scrape (once per process)."""

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        for provider, count in active().items():
            yield Observation(count, {"provider": provider})

    _meter.create_observable_gauge(
        "graph_ingest_subscriptions_active",
        [observe],
        unit="{subscription}",
        description="Change-notification subscriptions graph-ingest keeps, per provider",
    )

"""Every metric the connector's services export, by the name Prometheus shows (counters with `_total`;
histograms as `<name>_bucket`, `_sum`, `_count`). The Helm alert rules, the Grafana dashboard and their tests use
these names; the tests scrape the running services and check that they export them."""

from __future__ import annotations

from typing import Final

COUNTER: Final = "counter"
GAUGE: Final = "gauge"
HISTOGRAM: Final = "histogram"

#: name (as Prometheus renders it) → (kind, the service that exports it; "*" every service with consumers)
EXPORTED: Final[dict[str, tuple[str, str]]] = {
    # ews-ingest
    "ews_ingest_mailbox_syncs_total": (COUNTER, "ews-ingest"),
    "ews_ingest_changes_published_total": (COUNTER, "ews-ingest"),
    "ews_ingest_sync_seconds": (HISTOGRAM, "ews-ingest"),
    "ews_ingest_ews_calls_total": (COUNTER, "ews-ingest"),
    "ews_ingest_ews_backoffs_total": (COUNTER, "ews-ingest"),
    "ews_ingest_first_sync_mailboxes": (GAUGE, "ews-ingest"),
    "ews_ingest_first_sync_items_total": (COUNTER, "ews-ingest"),
    "ews_ingest_first_sync_items_per_second": (GAUGE, "ews-ingest"),
    "ews_ingest_first_sync_remaining_seconds": (GAUGE, "ews-ingest"),
    # graph-ingest
    "graph_ingest_graph_requests_total": (COUNTER, "graph-ingest"),
    "graph_ingest_throttled_waits_total": (COUNTER, "graph-ingest"),
    "graph_ingest_throttled_wait_seconds_total": (COUNTER, "graph-ingest"),
    "graph_ingest_delta_rounds_total": (COUNTER, "graph-ingest"),
    "graph_ingest_notifications_total": (COUNTER, "graph-ingest"),
    "graph_ingest_subscriptions_active": (GAUGE, "graph-ingest"),
    # sync-engine
    "sync_engine_changes_applied_total": (COUNTER, "sync-engine"),
    "sync_engine_changes_stale_total": (COUNTER, "sync-engine"),
    "sync_engine_commands_emitted_total": (COUNTER, "sync-engine"),
    "sync_engine_commands_published_total": (COUNTER, "sync-engine"),
    "sync_engine_command_results_total": (COUNTER, "sync-engine"),
    "sync_engine_apply_lag_seconds": (HISTOGRAM, "sync-engine"),
    "sync_engine_relay_lag_seconds": (HISTOGRAM, "sync-engine"),
    "sync_engine_launches_total": (COUNTER, "sync-engine"),
    "sync_engine_outbox_backlog": (GAUGE, "sync-engine"),
    "sync_engine_database_retries_total": (COUNTER, "sync-engine"),
    "sync_engine_database_waiting_seconds": (GAUGE, "sync-engine"),
    # tcs-gateway
    "tcs_gateway_bridge_connected": (GAUGE, "tcs-gateway"),
    "tcs_gateway_propagation_seconds": (HISTOGRAM, "tcs-gateway"),
    "tcs_gateway_push_duration_seconds": (HISTOGRAM, "tcs-gateway"),
    "tcs_gateway_pushes_total": (COUNTER, "tcs-gateway"),
    "tcs_gateway_command_results_total": (COUNTER, "tcs-gateway"),
    "tcs_gateway_rest_requests_total": (COUNTER, "tcs-gateway"),
    # licensing
    "licensing_seats_used": (GAUGE, "licensing"),
    "licensing_seats_total": (GAUGE, "licensing"),
    "licensing_license_expires_in_seconds": (GAUGE, "licensing"),
    "licensing_license_status": (GAUGE, "licensing"),
    # every service reading a stream with a durable consumer (tccal.stream_metrics)
    "tc_calendar_consumer_pending_messages": (GAUGE, "*"),
    "tc_calendar_consumer_ack_pending_messages": (GAUGE, "*"),
    "tc_calendar_dead_letter_messages": (GAUGE, "*"),
    # every service declaring streams (tccal.stream_limits)
    "tc_calendar_stream_full_ratio": (GAUGE, "*"),
    # OpenTelemetry's gRPC instrumentation is traces only; the OTel SDK adds target_info to every service; the
    # aiohttp-client instrumentation (tccal.http_client) adds the standard http_client_request_duration_seconds
}


def series_names(name: str) -> tuple[str, ...]:
    """The series names `name` appears as in Prometheus text (a histogram's buckets, sum and count)."""
    kind, _ = EXPORTED[name]
    if kind == HISTOGRAM:
        return (f"{name}_bucket", f"{name}_sum", f"{name}_count")
    return (name,)


def family_of(series: str) -> str | None:
    """The exported metric a series name (as a PromQL expression names it) belongs to, None if none."""
    if series in EXPORTED:
        return series
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and EXPORTED.get(base, ("", ""))[0] == HISTOGRAM:
            return base
    return None

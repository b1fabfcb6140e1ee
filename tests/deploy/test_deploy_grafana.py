"""The Grafana dashboard shipped in deploy/grafana/ (loaded by compose's observability profile): valid JSON a
Grafana provisioning can load, every query parsed as PromQL and selecting only metrics the services export
(tccal.metric_names), and the promises — propagation, bridges, seats, license expiry, stream lag, dead letters —
on it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tccal.metric_names import EXPORTED, family_of

from .conftest import ROOT
from .promql_support import selected_metrics

DASHBOARD = ROOT / "deploy" / "grafana" / "trueconf-calendar.json"
PROMISED = {
    "tcs_gateway_propagation_seconds",
    "tcs_gateway_bridge_connected",
    "sync_engine_apply_lag_seconds",
    "sync_engine_relay_lag_seconds",
    "tcs_gateway_push_duration_seconds",
    "licensing_seats_used",
    "licensing_seats_total",
    "licensing_license_expires_in_seconds",
    "tc_calendar_consumer_pending_messages",
    "tc_calendar_dead_letter_messages",
    "ews_ingest_mailbox_syncs_total",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_is_a_loadable_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_every_query_is_promql_on_exported_metrics(dashboard: dict[str, Any]) -> None:
    shown: set[str] = set()
    for panel in panels(dashboard):
        for target in panel["targets"]:
            names = selected_metrics(target["expr"])
            unknown = {name for name in names if family_of(name) is None}
            assert not unknown, f"panel {panel['title']!r} selects metrics no service exports: {unknown}"
            shown |= {family for name in names if (family := family_of(name)) is not None}
    assert shown >= PROMISED, f"not on the dashboard: {PROMISED - shown}"
    assert shown <= set(EXPORTED)


def test_a_query_on_a_made_up_metric_would_be_caught() -> None:
    names = selected_metrics("sum(rate(tcs_gateway_propagations_total[$__rate_interval]))")
    assert [family_of(name) for name in names] == [None]
    with pytest.raises(ValueError, match="not PromQL"):
        selected_metrics("sum(rate(tcs_gateway_propagation_seconds_bucket[5m])")

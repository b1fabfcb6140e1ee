"""tools/dashboard_preview reads the shipped dashboard as Grafana does: every panel of
deploy/grafana/trueconf-calendar.json is one it draws, Grafana's interval variables become the durations Grafana
sends, legend formats fill in labels, units are written as Grafana writes them, and a dashboard it cannot draw
faithfully is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dashboard_preview.dashboard import legend, load_dashboard, rate_interval_seconds, with_intervals
from dashboard_preview.prometheus import scrape_config
from dashboard_preview.render import format_value, page_height, panel_box

from .conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "trueconf-calendar.json"


def test_every_shipped_panel_is_drawn_in_its_grid_place() -> None:
    dashboard = load_dashboard(DASHBOARD)
    raw = json.loads(DASHBOARD.read_text())["panels"]
    assert [p.id for p in dashboard.panels] == [p["id"] for p in raw]
    assert sum(len(p.targets) for p in dashboard.queried()) == sum(len(p.get("targets", [])) for p in raw)
    boxes = {p.id: panel_box(p) for p in dashboard.panels}
    for first in dashboard.panels:  # panels side by side in the grid do not overlap on the page
        for second in dashboard.panels:
            if first.id < second.id:
                (l1, t1, w1, h1), (l2, t2, w2, h2) = boxes[first.id], boxes[second.id]
                assert l1 + w1 <= l2 or l2 + w2 <= l1 or t1 + h1 <= t2 or t2 + h2 <= t1, (first.title, second.title)
    assert page_height(dashboard) > max(t + h for _, t, _, h in boxes.values())
    bridges = next(p for p in dashboard.panels if p.id == 4)
    assert bridges.value_texts["1"] == ("connected", "green") and bridges.color_for(0) == "red"


def test_interval_variables_become_grafana_durations() -> None:
    assert rate_interval_seconds(1, 15) == 60  # 4 × scrape interval
    assert rate_interval_seconds(60, 15) == 75  # step + scrape interval
    expr = "rate(x_total[$__rate_interval]) + rate(y_total[${__interval}]) + z[$__range]"
    assert with_intervals(expr, step_s=2, scrape_interval_s=1, range_s=600) == (
        "rate(x_total[4000ms]) + rate(y_total[2000ms]) + z[600000ms]"
    )


def test_legend_formats_fill_in_labels() -> None:
    assert legend("{{consumer}} ({{stream}})", {"consumer": "c1", "stream": "S"}) == "c1 (S)"
    assert legend("pushes {{ outcome }}", {}) == "pushes "
    assert legend("", {"__name__": "up", "job": "j"}) == 'up{job="j"}'


def test_units_as_grafana_writes_them() -> None:
    assert format_value(0.25, "s") == "250 ms"
    assert format_value(2.5, "s") == "2.50 s"
    assert format_value(0.987, "percentunit") == "98.7%"
    assert format_value(1500, "short") == "1.5 K"
    assert format_value(364.6, "d") == "365 days"
    with pytest.raises(ValueError, match="'bytes'"):
        format_value(1, "bytes")


def test_a_panel_type_it_cannot_draw_is_refused_by_name(tmp_path: Path) -> None:
    document = json.loads(DASHBOARD.read_text())
    document["panels"].append(
        {"id": 99, "type": "piechart", "title": "Pie", "gridPos": {"x": 0, "y": 99, "w": 4, "h": 4}}
    )
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="'Pie' has type 'piechart'"):
        load_dashboard(path)


def test_scrape_config_labels_components_as_compose_does() -> None:
    config = scrape_config({"licensing": "http://127.0.0.1:8064", "ews-ingest": "http://127.0.0.1:8061"}, 2)
    job = config["scrape_configs"][0]
    assert config["global"]["scrape_interval"] == "2000ms" and job["metrics_path"] == "/metrics"
    assert job["static_configs"][0] == {"targets": ["127.0.0.1:8061"], "labels": {"component": "ews-ingest"}}
    with pytest.raises(ValueError, match="'grpc://x:1'"):
        scrape_config({"x": "grpc://x:1"}, 1)

"""Every target of every panel asked of Prometheus over one time window, as Grafana's Prometheus datasource asks
it: `query_range` with the step Grafana would pick for the panel's width and `$__rate_interval` filled in."""

from __future__ import annotations

from .dashboard import Dashboard, Panel, with_intervals
from .prometheus import Prometheus
from .render import TargetResult, panel_box

#: Grafana asks for about one point per pixel of the panel's width, never more often than the scrape interval.
MIN_STEP_S = 1.0


def step_for(panel: Panel, start: float, end: float, scrape_interval_s: float) -> float:
    """The query step (Grafana's `$__interval`) for `panel` over `start`..`end`."""
    width_px = max(panel_box(panel)[2], 1)
    return max((end - start) / width_px, scrape_interval_s, MIN_STEP_S)


def query_dashboard(
    prometheus: Prometheus, dashboard: Dashboard, start: float, end: float
) -> dict[int, list[TargetResult]]:
    """panel id → each target with the series Prometheus answered; PrometheusError naming the query when
    Prometheus rejects one."""
    results: dict[int, list[TargetResult]] = {}
    for panel in dashboard.queried():
        step = step_for(panel, start, end, prometheus.scrape_interval_s)
        results[panel.id] = [
            TargetResult(
                target,
                prometheus.query_range(
                    with_intervals(
                        target.expr, step_s=step, scrape_interval_s=prometheus.scrape_interval_s, range_s=end - start
                    ),
                    start,
                    end,
                    step,
                ),
            )
            for target in panel.targets
        ]
    return results

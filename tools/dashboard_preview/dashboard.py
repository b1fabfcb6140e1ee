"""The Grafana dashboard JSON as typed panels, and the two pieces of Grafana's query handling a faithful preview
needs: the interval variables in PromQL (`$__rate_interval`, `$__interval`, `$__range`) and legend formats
(`{{label}}`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Panel types this preview draws; any other type in the dashboard is an error naming it.
DRAWN_TYPES = frozenset({"row", "timeseries", "stat", "gauge"})
_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_INTERVAL_VARIABLE = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")


@dataclass(frozen=True)
class Threshold:
    value: float | None  #: None: the base step (Grafana's `-Infinity`)
    color: str


@dataclass(frozen=True)
class Target:
    ref_id: str
    expr: str
    legend_format: str


@dataclass(frozen=True)
class Panel:
    id: int
    type: str
    title: str
    x: int
    y: int
    w: int
    h: int
    unit: str
    thresholds: tuple[Threshold, ...]
    threshold_lines: bool  #: timeseries: fieldConfig.defaults.custom.thresholdsStyle.mode == "line"
    value_texts: dict[str, tuple[str, str | None]]  #: value mappings: "1" → ("connected", "green")
    minimum: float | None
    maximum: float | None
    options: dict[str, Any]
    targets: tuple[Target, ...]

    def color_for(self, value: float) -> str:
        """The color of the last threshold step `value` reaches (Grafana's absolute thresholds)."""
        color = "green"
        for step in self.thresholds:
            if step.value is None or value >= step.value:
                color = step.color
        return color


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    panels: tuple[Panel, ...]

    def queried(self) -> list[Panel]:
        """Every panel with queries (all but the rows)."""
        return [panel for panel in self.panels if panel.type != "row"]


def load_dashboard(path: Path) -> Dashboard:
    """Read a dashboard JSON file; ValueError naming the panel and field when it is not one this preview draws."""
    document = json.loads(path.read_text())
    panels = tuple(_panel(raw, path) for raw in document["panels"])
    return Dashboard(uid=str(document["uid"]), title=str(document["title"]), panels=panels)


def _panel(raw: dict[str, Any], path: Path) -> Panel:
    kind = raw.get("type")
    if kind not in DRAWN_TYPES:
        raise ValueError(f"{path}: panel {raw.get('title')!r} has type {kind!r}; drawn are {sorted(DRAWN_TYPES)}")
    if raw.get("panels"):
        raise ValueError(f"{path}: row {raw.get('title')!r} is collapsed (its panels nested); expand it")
    grid = raw["gridPos"]
    defaults: dict[str, Any] = raw.get("fieldConfig", {}).get("defaults", {})
    steps = defaults.get("thresholds", {}).get("steps", [])
    if defaults.get("thresholds", {}).get("mode", "absolute") != "absolute":
        raise ValueError(f"{path}: panel {raw['title']!r}: only absolute thresholds are drawn")
    texts: dict[str, tuple[str, str | None]] = {}
    for mapping in defaults.get("mappings", []):
        if mapping.get("type") != "value":
            raise ValueError(f"{path}: panel {raw['title']!r}: mapping type {mapping.get('type')!r} is not drawn")
        for value, result in mapping["options"].items():
            texts[str(value)] = (str(result.get("text", value)), result.get("color"))
    return Panel(
        id=int(raw["id"]),
        type=str(kind),
        title=str(raw["title"]),
        x=int(grid["x"]),
        y=int(grid["y"]),
        w=int(grid["w"]),
        h=int(grid["h"]),
        unit=str(defaults.get("unit", "")),
        thresholds=tuple(Threshold(s["value"], str(s["color"])) for s in steps),
        threshold_lines=defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode") == "line",
        value_texts=texts,
        minimum=defaults.get("min"),
        maximum=defaults.get("max"),
        options=dict(raw.get("options", {})),
        targets=tuple(
            Target(str(t["refId"]), str(t["expr"]), str(t.get("legendFormat", ""))) for t in raw.get("targets", [])
        ),
    )


def rate_interval_seconds(step_s: float, scrape_interval_s: float) -> float:
    """Grafana's `$__rate_interval`: max($__interval + scrape interval, 4 × scrape interval)."""
    return max(step_s + scrape_interval_s, 4 * scrape_interval_s)


def with_intervals(expr: str, *, step_s: float, scrape_interval_s: float, range_s: float) -> str:
    """`expr` with Grafana's interval variables replaced by durations, as Grafana sends it to Prometheus."""
    values = {
        "rate_interval": rate_interval_seconds(step_s, scrape_interval_s),
        "interval": step_s,
        "range": range_s,
    }

    def duration(match: re.Match[str]) -> str:
        return f"{round(values[match.group(1) or match.group(2)] * 1000)}ms"

    return _INTERVAL_VARIABLE.sub(duration, expr)


def legend(legend_format: str, labels: dict[str, str]) -> str:
    """A series' name as Grafana writes it: the legend format with `{{label}}` filled in (an absent label: empty),
    or, with no format, the series' labels as `{a="x", b="y"}`."""
    if legend_format:
        return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), legend_format)
    shown = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return labels.get("__name__", "") + "{" + shown + "}" if shown or "__name__" in labels else "{}"

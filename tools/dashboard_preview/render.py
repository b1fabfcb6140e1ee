"""The dashboard's panels drawn in their grid into one HTML page: Grafana's 24-column grid (a grid unit 30 px
high, 8 px between panels), its dark theme's colours, time series and gauges drawn by matplotlib (SVG), stat
panels as Grafana lays them out (the reduced value, its unit, threshold or mapping colour, a sparkline)."""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Wedge
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .dashboard import Dashboard, Panel, Target, legend
from .prometheus import Series

PAGE_WIDTH_PX = 1600
PAGE_PADDING_PX = 16
GRID_COLUMNS = 24
GRID_ROW_PX = 30
GRID_MARGIN_PX = 8
HEADER_PX = 64
PANEL_TITLE_PX = 28
DPI = 96
BACKGROUND = "#111217"
PANEL_BACKGROUND = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
TEXT_WEAK = "#8e8e8e"
#: Grafana's named colours (dark theme) and its classic palette for series without an override.
NAMED_COLORS = {
    "green": "#73BF69",
    "red": "#F2495C",
    "orange": "#FF9830",
    "yellow": "#FADE2A",
    "blue": "#5794F2",
    "purple": "#B877D9",
    "text": TEXT,
}
LEGEND_LINE_PX = 18
LEGEND_MAX_LINES = 3
LEGEND_CHAR_PX = 6.2
LEGEND_ICON_PX = 22
LEGEND_GAP_PX = 12
PALETTE = ("#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9", "#705DA0", "#37872D")


@dataclass(frozen=True)
class TargetResult:
    target: Target
    series: list[Series]


def color(name: str | None) -> str:
    """A Grafana colour name (or a #hex) as CSS."""
    if name is None:
        return TEXT
    return NAMED_COLORS.get(name, name)


def format_value(value: float, unit: str) -> str:
    """`value` in `unit` the way Grafana's value formats write it (the units this dashboard uses)."""
    if math.isnan(value):
        return "NaN"
    if unit == "s":
        if abs(value) < 1e-3 and value != 0:
            return f"{value * 1e6:.0f} µs"
        if abs(value) < 1:
            return f"{value * 1000:.0f} ms"
        if abs(value) < 60:
            return f"{value:.2f} s"
        return f"{value / 60:.1f} min"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "ops":
        return f"{_short(value)} ops/s"
    if unit == "d":
        return f"{value:.0f} days"
    if unit in ("short", ""):
        return _short(value)
    raise ValueError(f"unit {unit!r} is not one this preview formats")


def _short(value: float) -> str:
    for size, suffix in ((1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def panel_box(panel: Panel) -> tuple[int, int, int, int]:
    """(left, top, width, height) in px of a panel in Grafana's grid."""
    column = (PAGE_WIDTH_PX - 2 * PAGE_PADDING_PX + GRID_MARGIN_PX) / GRID_COLUMNS
    left = PAGE_PADDING_PX + round(panel.x * column)
    width = round(panel.w * column) - GRID_MARGIN_PX
    top = HEADER_PX + panel.y * (GRID_ROW_PX + GRID_MARGIN_PX)
    height = panel.h * (GRID_ROW_PX + GRID_MARGIN_PX) - GRID_MARGIN_PX
    return left, top, width, height


def page_height(dashboard: Dashboard) -> int:
    bottom = max(panel_box(p)[1] + panel_box(p)[3] for p in dashboard.panels)
    return bottom + PAGE_PADDING_PX


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", facecolor=figure.get_facecolor())
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _figure(width_px: int, height_px: int) -> Figure:
    figure = plt.figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, facecolor=PANEL_BACKGROUND)
    return figure


def _named(results: Sequence[TargetResult]) -> list[tuple[str, Series]]:
    return [(legend(r.target.legend_format, s.labels), s) for r in results for s in r.series]


def timeseries_svg(
    panel: Panel, results: Sequence[TargetResult], width: int, height: int, window: tuple[float, float]
) -> str:
    named = _named(results)
    names = [name for name, _ in named]
    legend_px = legend_height(names, width)
    figure = _figure(width, height - legend_px)
    axes = figure.add_axes((0.075 if width > 700 else 0.11, 0.13, 0.9 if width > 700 else 0.86, 0.83))
    axes.set_facecolor(PANEL_BACKGROUND)
    for index, (name, series) in enumerate(named):
        times = [t for t, _ in series.points]
        values = [v for _, v in series.points]
        axes.plot(times, values, color=PALETTE[index % len(PALETTE)], linewidth=1.4, label=name)
    if panel.threshold_lines:
        for step in panel.thresholds:
            if step.value is not None:
                axes.axhline(step.value, color=color(step.color), linestyle=(0, (6, 4)), linewidth=1)
    axes.set_xlim(window[0], window[1])
    axes.set_ylim(bottom=0)
    clock = "%H:%M:%S" if window[1] - window[0] < 30 * 60 else "%H:%M"
    axes.xaxis.set_major_formatter(FuncFormatter(lambda t, _: datetime.fromtimestamp(t, UTC).strftime(clock)))
    axes.xaxis.set_major_locator(MaxNLocator(6 if width > 700 else 4, steps=[1, 2, 3, 6, 10], prune="lower"))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, panel.unit)))
    axes.yaxis.set_major_locator(MaxNLocator(5))
    axes.grid(color=BORDER, linewidth=0.8)
    for spine in axes.spines.values():
        spine.set_visible(False)
    axes.tick_params(colors=TEXT_WEAK, labelsize=9, length=0)
    if not named:
        axes.text(0.5, 0.5, "No data", transform=axes.transAxes, ha="center", va="center", color=TEXT_WEAK, fontsize=14)
    return _svg(figure) + legend_html(names, legend_px)


def legend_height(names: Sequence[str], width: int) -> int:
    """Height of a Grafana list legend below a graph: its items wrap, at most LEGEND_MAX_LINES lines show."""
    lines, used = (1 if names else 0), 0.0
    for name in names:
        item = LEGEND_ICON_PX + LEGEND_CHAR_PX * len(name) + LEGEND_GAP_PX
        if used and used + item > width - 16:
            lines, used = lines + 1, 0.0
        used += item
    return min(lines, LEGEND_MAX_LINES) * LEGEND_LINE_PX + (6 if names else 0)


def legend_html(names: Sequence[str], height: int) -> str:
    items = "".join(
        f'<span class="item"><i style="background:{PALETTE[index % len(PALETTE)]}"></i>{html.escape(name)}</span>'
        for index, name in enumerate(names)
    )
    return f'<div class="legend" style="height:{height}px">{items}</div>' if names else ""


def gauge_svg(panel: Panel, value: float | None, width: int, height: int) -> str:
    low = panel.minimum if panel.minimum is not None else 0.0
    high = panel.maximum if panel.maximum is not None else 100.0
    figure = _figure(width, height)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(-1.2, 1.2)
    axes.set_ylim(-0.45, 1.2)
    axes.set_aspect("equal")
    axes.axis("off")

    def angle(v: float) -> float:
        share = min(max((v - low) / (high - low), 0.0), 1.0)
        return 180 - 180 * share

    axes.add_patch(Wedge((0, 0), 1.0, 0, 180, width=0.22, color=BORDER))
    if panel.options.get("showThresholdMarkers", True):
        steps = list(panel.thresholds)
        for index, step in enumerate(steps):
            start = low if step.value is None else step.value
            end = high if index + 1 == len(steps) else steps[index + 1].value or high
            axes.add_patch(Wedge((0, 0), 1.08, angle(end), angle(start), width=0.05, color=color(step.color)))
    if value is not None:
        axes.add_patch(Wedge((0, 0), 1.0, angle(value), 180, width=0.22, color=color(panel.color_for(value))))
        text, shade = format_value(value, panel.unit), color(panel.color_for(value))
    else:
        text, shade = "No data", TEXT_WEAK
    axes.text(0, 0.12, text, ha="center", va="center", fontsize=26, color=shade, fontweight="bold")
    return _svg(figure)


def _sparkline(series: Series, width: int, height: int, stroke: str) -> str:
    numbers = [(t, v) for t, v in series.points if not math.isnan(v)]
    if len(numbers) < 2:
        return ""
    t0, t1 = numbers[0][0], numbers[-1][0]
    v0, v1 = min(v for _, v in numbers), max(v for _, v in numbers)
    span_t = (t1 - t0) or 1.0

    def y(v: float) -> float:  # a constant series runs through the middle, as Grafana draws it
        return height / 2 if v1 == v0 else height - (v - v0) / (v1 - v0) * height * 0.9

    points = " ".join(f"{(t - t0) / span_t * width:.1f},{y(v):.1f}" for t, v in numbers)
    area = f"0,{height} {points} {width},{height}"
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        ' preserveAspectRatio="none">'
        f'<polygon points="{area}" fill="{stroke}" fill-opacity="0.18"/>'
        f'<polyline points="{points}" fill="none" stroke="{stroke}" stroke-width="1.5"/></svg>'
    )


def stat_html(panel: Panel, results: Sequence[TargetResult], width: int, height: int) -> str:
    named = _named(results)
    if not named:
        return '<div class="nodata">No data</div>'
    text_mode = panel.options.get("textMode", "auto")
    background = panel.options.get("colorMode", "value") == "background"
    sparkline = panel.options.get("graphMode", "none") == "area"
    cell_width = max(width // len(named) - 8, 40)
    cells = []
    for name, series in named:
        value = series.last_number()
        if value is None:
            shown, shade = "No data", None
        else:
            key = str(int(value)) if value == int(value) else repr(value)
            mapped = panel.value_texts.get(key)
            shown = mapped[0] if mapped else format_value(value, panel.unit)
            shade = (mapped[1] if mapped and mapped[1] else None) or panel.color_for(value)
        css = color(shade) if shade else TEXT_WEAK
        if text_mode == "name":
            main, caption = name, ""
        else:
            main, caption = shown, (name if len(named) > 1 else "")
        style = f"background:{css};color:#fff" if background else f"color:{css}"
        spark = _sparkline(series, cell_width, height // 3, css) if sparkline and not background else ""
        cells.append(
            f'<div class="stat" style="{style}"><div class="caption">{html.escape(caption)}</div>'
            f'<div class="value">{html.escape(main)}</div>{spark}</div>'
        )
    return f'<div class="stats">{"".join(cells)}</div>'


def render_page(
    dashboard: Dashboard,
    results: Mapping[int, Sequence[TargetResult]],
    window: tuple[float, float],
    caption: str,
) -> str:
    """The whole dashboard as one self-contained HTML page, `caption` under its title."""
    parts = []
    for panel in dashboard.panels:
        left, top, width, height = panel_box(panel)
        box = f"left:{left}px;top:{top}px;width:{width}px;height:{height}px"
        title = html.escape(panel.title)
        if panel.type == "row":
            parts.append(f'<div class="row" style="{box}">{title}</div>')
            continue
        inner_height = height - PANEL_TITLE_PX
        shown = results.get(panel.id, [])
        if panel.type == "timeseries":
            body = timeseries_svg(panel, shown, width, inner_height, window)
        elif panel.type == "gauge":
            values = [s.last_number() for _, s in _named(shown)]
            body = gauge_svg(panel, next((v for v in values if v is not None), None), width, inner_height)
        else:
            body = stat_html(panel, shown, width, inner_height)
        parts.append(
            f'<div class="panel" style="{box}"><div class="title">{title}</div>'
            f'<div class="body" style="height:{inner_height}px">{body}</div></div>'
        )
    start, end = (datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S") for t in window)
    height = page_height(dashboard)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(dashboard.title)}</title><style>
body {{ margin:0; background:{BACKGROUND}; color:{TEXT}; font-family:Inter,"DejaVu Sans",Helvetica,Arial,sans-serif;
  width:{PAGE_WIDTH_PX}px; height:{height}px; position:relative; overflow:hidden; }}
.header {{ position:absolute; left:{PAGE_PADDING_PX}px; top:10px; right:{PAGE_PADDING_PX}px; }}
.header h1 {{ font-size:20px; font-weight:500; margin:0; }}
.header .range {{ position:absolute; right:0; top:2px; font-size:13px; color:{TEXT_WEAK}; }}
.header .caption {{ font-size:12px; color:#FF9830; margin-top:6px; }}
.panel {{ position:absolute; background:{PANEL_BACKGROUND}; border:1px solid {BORDER}; border-radius:2px;
  box-sizing:border-box; overflow:hidden; }}
.panel .title {{ height:{PANEL_TITLE_PX}px; line-height:{PANEL_TITLE_PX}px; font-size:14px; font-weight:500;
  padding:0 8px; white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }}
.panel .body svg {{ display:block; }}
.legend {{ padding:2px 8px 4px; font-size:11px; line-height:{LEGEND_LINE_PX}px; overflow:hidden;
  box-sizing:border-box; }}
.legend .item {{ margin-right:{LEGEND_GAP_PX}px; white-space:nowrap; display:inline-block; }}
.legend i {{ display:inline-block; width:14px; height:4px; border-radius:2px; margin-right:6px;
  vertical-align:middle; }}
.row {{ position:absolute; font-size:17px; font-weight:500; line-height:30px; }}
.stats {{ display:flex; gap:8px; height:100%; padding:0 8px 8px; box-sizing:border-box; }}
.stat {{ flex:1; position:relative; display:flex; flex-direction:column; justify-content:center; align-items:center;
  border-radius:2px; overflow:hidden; min-width:0; }}
.stat .caption {{ font-size:13px; color:{TEXT}; white-space:nowrap; z-index:1; }}
.stat .value {{ font-size:30px; font-weight:500; z-index:1; white-space:nowrap; }}
.stat .spark {{ position:absolute; left:0; bottom:0; }}
.nodata {{ display:flex; height:100%; align-items:center; justify-content:center; color:{TEXT_WEAK}; font-size:16px; }}
</style></head><body>
<div class="header"><h1>{html.escape(dashboard.title)}</h1>
<div class="range">{start} → {end} UTC</div>
<div class="caption">{html.escape(caption)}</div></div>
{"".join(parts)}
</body></html>
"""

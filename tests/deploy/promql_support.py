"""PromQL of the alert rules and the dashboard, read with a real PromQL parser (promql-parser, the Rust
implementation of Prometheus' grammar): the metric names an expression selects."""

from __future__ import annotations

import re

import promql_parser

#: Grafana's built-in interval variables, replaced by a duration before parsing (Grafana does the same).
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")


def selected_metrics(expression: str) -> set[str]:
    """The metric names `expression` selects; ValueError naming the expression when it is not PromQL."""
    try:
        parsed = promql_parser.parse(GRAFANA_INTERVALS.sub("5m", expression))
    except ValueError as exc:
        raise ValueError(f"not PromQL: {expression!r}: {exc}") from None
    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if not node.name:
                raise ValueError(f"{expression!r} selects series without a metric name")
            names.add(node.name)
        return True

    promql_parser.walk(parsed, visit)
    return names

"""tcs-gateway's own metrics (OpenTelemetry; Prometheus text at /metrics): whether each TrueConf Server's bridge
is connected, how long a change took to reach TrueConf, and how long TrueConf took to acknowledge a push."""

from __future__ import annotations

import time

from tccal import telemetry


class _Metrics:
    def __init__(self) -> None:
        meter = telemetry.meter("tcs_gateway")
        self.bridge_connected = meter.create_gauge(
            "tcs_gateway_bridge_connected",
            unit="{connection}",  # an annotation, not "1": an OTLP→Prometheus conversion adds no "_ratio"
            description="1 while the TrueConf Server (label server) is connected over the calendar bridge, else 0.",
        )
        self.propagation = meter.create_histogram(
            "tcs_gateway_propagation_seconds",
            unit="s",
            description="From the change seen in Exchange (or the engine's decision) to TrueConf Server's"
            " acknowledgement of the push that carries it.",
        )
        self.push_duration = meter.create_histogram(
            "tcs_gateway_push_duration_seconds",
            unit="s",
            description="From a bridge push sent to TrueConf Server's reply, by method.",
        )

    def record_propagation(self, caused_at: float, server: str) -> None:
        self.propagation.record(max(0.0, time.time() - caused_at), {"server": server})


METRICS = _Metrics()

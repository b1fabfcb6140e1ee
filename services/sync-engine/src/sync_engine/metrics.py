"""The sync-engine's metrics (OpenTelemetry; exported in Prometheus format at /metrics)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from tccal import telemetry


class _Metrics:
    def __init__(self) -> None:
        meter = telemetry.meter("sync_engine")
        self.changes_applied = meter.create_counter(
            "sync_engine_changes_applied", unit="1", description="Calendar changes applied to the state."
        )
        self.changes_stale = meter.create_counter(
            "sync_engine_changes_stale",
            unit="1",
            description="Calendar changes ignored: older than (or equal to) what is stored, or redelivered.",
        )
        self.commands_emitted = meter.create_counter(
            "sync_engine_commands_emitted", unit="1", description="Commands written to the outbox, by kind."
        )
        self.commands_published = meter.create_counter(
            "sync_engine_commands_published", unit="1", description="Commands published to TCS_COMMANDS."
        )
        self.results = meter.create_counter(
            "sync_engine_command_results", unit="1", description="Command results received, by status."
        )
        self.relay_lag = meter.create_histogram(
            "sync_engine_relay_lag_seconds",
            unit="s",
            description="From the change (observed_at) or decision that caused a command to its publication.",
        )
        self.apply_lag = meter.create_histogram(
            "sync_engine_apply_lag_seconds",
            unit="s",
            description="From the change seen in Exchange (observed_at) to the engine's transaction that stored it.",
        )
        self.launches = meter.create_counter(
            "sync_engine_launches", unit="1", description="Conference launches, by outcome (launched, missed)."
        )
        self.outbox_backlog = 0
        meter.create_observable_gauge(
            "sync_engine_outbox_backlog",
            callbacks=[self._observe_backlog],
            unit="{command}",  # an annotation, not "1": an OTLP→Prometheus conversion adds no "_ratio"
            description="Commands waiting in the outbox for the relay.",
        )

        self.database_retries = meter.create_counter(
            "sync_engine_database_retries",
            unit="1",
            description="Transactions retried because PostgreSQL could not take them (read-only, full, unreachable)"
            " or they lost a race, by fault and SQLSTATE.",
        )
        #: How long the engine has been waiting for PostgreSQL to take writes (set by faults.DatabaseHealth).
        self.database_waiting: Callable[[], float] = lambda: 0.0
        meter.create_observable_gauge(
            "sync_engine_database_waiting_seconds",
            callbacks=[self._observe_waiting],
            unit="s",
            description="Seconds PostgreSQL has not taken the engine's writes (0 when it does); not ready meanwhile.",
        )

    def _observe_waiting(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.database_waiting())]

    def _observe_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.outbox_backlog)]


METRICS = _Metrics()

"""licensing's metrics (OpenTelemetry; Prometheus text at /metrics): seats used and licensed, time left until the
license expires, and the license status - the numbers GetLicense answers, as of the last look at the license."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Observation

from licensing.status import Status
from tccal import telemetry


@dataclass(frozen=True)
class LicenseFigures:
    seats_used: int
    seats_total: int
    #: Seconds until the license expires as of the look (negative once expired); None: no expiry, no license.
    expires_in: float | None
    status: Status


class _Metrics:
    def __init__(self) -> None:
        self.figures: LicenseFigures | None = None
        meter = telemetry.meter("licensing")
        meter.create_observable_gauge(
            "licensing_seats_used",
            callbacks=[self._seats_used],
            unit="{seat}",
            description="Mailboxes holding a seat (GetLicense seats_used).",
        )
        meter.create_observable_gauge(
            "licensing_seats_total",
            callbacks=[self._seats_total],
            unit="{seat}",
            description="Seats the installed license grants (GetLicense seats; 0 without a license).",
        )
        meter.create_observable_gauge(
            "licensing_license_expires_in_seconds",
            callbacks=[self._expires_in],
            unit="s",
            description="Seconds until the installed license expires (negative once expired); absent for a license"
            " without an expiry date or without a license.",
        )
        meter.create_observable_gauge(
            "licensing_license_status",
            callbacks=[self._status],
            unit="{status}",  # an annotation, not "1": an OTLP→Prometheus conversion adds no "_ratio"
            description="1 for the license's current status (label status: valid, grace, suspended, expired,"
            " unregistered), 0 for the others.",
        )

    def observe(self, figures: LicenseFigures) -> None:
        self.figures = figures

    def _seats_used(self, options: CallbackOptions) -> Iterable[Observation]:
        return [] if self.figures is None else [Observation(self.figures.seats_used)]

    def _seats_total(self, options: CallbackOptions) -> Iterable[Observation]:
        return [] if self.figures is None else [Observation(self.figures.seats_total)]

    def _expires_in(self, options: CallbackOptions) -> Iterable[Observation]:
        if self.figures is None or self.figures.expires_in is None:
            return []
        return [Observation(self.figures.expires_in)]

    def _status(self, options: CallbackOptions) -> Iterable[Observation]:
        if self.figures is None:
            return []
        current = self.figures.status
        return [Observation(1 if status is current else 0, {"status": status.value}) for status in Status]


METRICS = _Metrics()

"""licensing assembled: database, store, the license manager, schema readiness and the online-check loop.

`__main__` builds one LicensingRuntime inside a tccal ServiceApp (which serves its manager over gRPC); the
`tc_calendar` commands (cli.py) use a LicenseManager on the database directly, without this runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from licensing.errors import ForeignInstallationError, LicensingError
from licensing.manager import LicenseManager
from licensing.sealing import Sealer
from licensing.settings import LicensingSettings
from licensing.store import LicenseStore
from tccal.clock import Clock
from tccal.db import Database

#: Seconds between two looks at the license for the metrics.
METRICS_INTERVAL = 30.0


class LicensingRuntime:
    def __init__(self, settings: LicensingSettings, database: Database, clock: Clock) -> None:
        self.database = database
        self.store = LicenseStore(lambda: database.pool, Sealer(settings.machine_key))
        self.manager = LicenseManager(self.store, settings, clock)
        self._migrated = False

    async def schema_ready(self) -> None:
        """Readiness: the service answers only once its schema is migrated."""
        if not self._migrated:
            raise ConnectionError("licensing schema not migrated yet")

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, migrate, create the (sealed) installation record, then confirm the license online until ``stop``."""
        await self.database.connect()
        await self.store.migrate()
        try:
            await self.manager.identity()
        except ForeignInstallationError as exc:  # the service runs, suspended, and says why (GetLicense, logs)
            logging.getLogger("licensing").error(f"no license is accepted: {exc.message}")
        self._migrated = True
        refresh = asyncio.create_task(self._refresh_metrics(stop), name="licensing-metrics")
        try:
            await self.manager.run_checks(stop)
        finally:
            refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresh

    async def _refresh_metrics(self, stop: asyncio.Event) -> None:
        """Look at the license every METRICS_INTERVAL seconds so that the metrics follow what time does to it
        (seat leases running out, the expiry coming closer) between GetLicense and AllocateSeats calls."""
        while not stop.is_set():
            try:
                await self.manager.snapshot()  # hands its figures to licensing.metrics
            except LicensingError as exc:
                logging.getLogger("licensing").warning(f"license metrics not refreshed: {exc.message}")
            except Exception as exc:  # the database away for a moment: the next look tries again
                logging.getLogger("licensing").warning(f"license metrics not refreshed: {exc!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), METRICS_INTERVAL)

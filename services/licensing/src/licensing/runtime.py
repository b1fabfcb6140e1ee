"""licensing assembled: database, store, the license manager, schema readiness and the online-check loop.

`__main__` builds one LicensingRuntime inside a tccal ServiceApp (which serves its manager over gRPC); the
`tc_calendar` commands (cli.py) use a LicenseManager on the database directly, without this runtime.
"""

from __future__ import annotations

import asyncio
import logging

from licensing.errors import ForeignInstallationError
from licensing.manager import LicenseManager
from licensing.sealing import Sealer
from licensing.settings import LicensingSettings
from licensing.store import LicenseStore
from tccal.clock import Clock
from tccal.db import Database


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
        await self.manager.run_checks(stop)

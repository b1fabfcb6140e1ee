"""Wiring of licensing: `python -m licensing --config config.json`."""

from __future__ import annotations

from licensing.api import ADMIN_METHODS, SERVICE_NAME, LicensingServicer
from licensing.config import LicensingSettings
from licensing.manager import LicenseManager
from licensing.store import LicenseStore
from tccal.service import ServiceApp, run_service
from trueconf.calendar.v1 import licensing_pb2_grpc

SERVICE = "licensing"


async def build(app: ServiceApp) -> None:
    settings = LicensingSettings.from_config(app.config)  # ValueError: exit code 2 naming the key
    database = app.new_database()
    store = LicenseStore(lambda: database.pool)
    manager = LicenseManager(store, settings, app.clock)
    app.grpc.add(licensing_pb2_grpc.add_LicensingServiceServicer_to_server, LicensingServicer(manager), SERVICE_NAME)
    migrated = False

    async def schema_ready() -> None:
        if not migrated:
            raise ConnectionError("licensing schema not migrated yet")

    app.readiness.add("licensing-schema", schema_ready)

    async def run() -> None:
        nonlocal migrated
        await database.connect()
        await store.migrate()
        await manager.identity()
        migrated = True
        await manager.run_checks(app.stop_event)

    app.task(run)


def main() -> None:
    run_service(SERVICE, build, admin_methods=ADMIN_METHODS)


if __name__ == "__main__":
    main()

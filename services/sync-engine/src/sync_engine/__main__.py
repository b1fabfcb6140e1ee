"""Wiring of sync-engine: `python -m sync_engine --config config.json`."""

from __future__ import annotations

import asyncio
import contextlib
import gc

from sync_engine.api import ADMIN_METHODS, SERVICE_NAME, SyncApi
from sync_engine.runtime import SyncEngine
from sync_engine.settings import EngineSettings
from tccal.service import ServiceApp, run_service
from trueconf.calendar.v1 import sync_pb2_grpc

SERVICE = "sync-engine"


async def build(app: ServiceApp) -> None:
    settings = EngineSettings.from_config(app.config)
    bus = app.new_bus()
    database = app.new_database()
    api = SyncApi()
    app.grpc.add(sync_pb2_grpc.add_SyncServiceServicer_to_server, api, SERVICE_NAME)
    app.task(bus.connect)
    app.task(database.connect)
    migrated = asyncio.Event()

    async def schema_ready() -> None:
        if not migrated.is_set():
            raise ConnectionError("schema migrations not applied yet")

    app.readiness.add("schema", schema_ready)

    async def run_engine() -> None:
        while not bus.connected or not _connected(database):
            if app.stop_event.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(app.stop_event.wait(), 0.1)
        engine = SyncEngine(settings, database.pool, bus, app.clock)
        await engine.migrate()
        # Everything built so far (modules, config, clients) lives as long as the process: kept out of the cyclic
        # collector, whose full passes otherwise re-scan it while batches allocate (a quarter of a batch's CPU).
        gc.freeze()
        migrated.set()
        api.engine = engine.engine
        await engine.run(app.stop_event)

    app.task(run_engine)


def _connected(database: object) -> bool:
    try:
        getattr(database, "pool")  # noqa: B009 - raises until the pool exists
    except ConnectionError:
        return False
    return True


def main() -> None:
    run_service(SERVICE, build, admin_methods=ADMIN_METHODS)


if __name__ == "__main__":
    main()

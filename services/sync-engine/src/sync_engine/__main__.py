"""Wiring of sync-engine: `python -m sync_engine --config config.json`."""

from __future__ import annotations

from sync_engine.api import POLICY, SERVICE_NAME, SyncApi
from sync_engine.bus import CALENDAR_DURABLE, RESULTS_DURABLE
from sync_engine.runtime import SyncEngineService
from sync_engine.seats import LicensingSeats
from sync_engine.settings import EngineSettings
from tccal.grpckit import GrpcCaller
from tccal.service import ServiceApp, run_service
from tccal.stream_metrics import Consumer, ConsumerMetrics
from tccal.subjects import CALENDAR, TCS_RESULTS
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
    # The seats come from licensing, asked with this service's own identity (seats.py).
    seats = LicensingSeats(
        app.config.grpc.address_of("licensing"), GrpcCaller.for_service(app.config, SERVICE, app.secret)
    )
    service = SyncEngineService(settings, database, bus, app.clock, api, seats)
    app.readiness.add("schema", service.schema_ready)
    app.readiness.add("postgres-writes", service.health.check)

    async def run() -> None:
        await service.run(app.stop_event)

    app.task(run)
    # Stream lag and dead letters of the engine's two consumers.
    consumers = [Consumer(CALENDAR, CALENDAR_DURABLE), Consumer(TCS_RESULTS, RESULTS_DURABLE)]
    lag = ConsumerMetrics(bus, lambda: consumers, dead_letters=True)
    app.task(lambda: lag.run(app.stop_event))


def main() -> None:
    run_service(SERVICE, build, policy=POLICY)


if __name__ == "__main__":
    main()

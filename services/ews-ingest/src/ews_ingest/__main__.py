"""Wiring of ews-ingest: `python -m ews_ingest --config config.json`."""

from __future__ import annotations

from ews_ingest.api import POLICY, SERVICE_NAME, IngestApi
from ews_ingest.runtime import IngestRuntime
from ews_ingest.settings import IngestSettings
from tccal.ingest.writeback import watch_writeback
from tccal.service import ServiceApp, run_service
from trueconf.calendar.v1 import ingest_pb2_grpc

SERVICE = "ews-ingest"


async def build(app: ServiceApp) -> None:
    settings = IngestSettings.from_config(app.config, app.secret)  # ValueError: exit code 2 naming the key
    bus = app.new_bus()
    runtime = IngestRuntime(settings, bus)
    app.grpc.add(ingest_pb2_grpc.add_IngestServiceServicer_to_server, IngestApi(runtime.scheduler), SERVICE_NAME)
    app.readiness.add("exchange", runtime.exchange_ready)

    async def run() -> None:
        await runtime.run(app.stop_event)

    app.task(run)
    watch_writeback(app, bus, runtime.writer)  # the join-link write-back consumer's lag and dead letters


def main() -> None:
    run_service(SERVICE, build, policy=POLICY)


if __name__ == "__main__":
    main()

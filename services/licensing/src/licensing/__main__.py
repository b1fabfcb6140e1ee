"""Wiring of licensing: `python -m licensing --config config.json`."""

from __future__ import annotations

from licensing.api import POLICY, SERVICE_NAME, LicensingServicer
from licensing.runtime import LicensingRuntime
from licensing.settings import LicensingSettings
from tccal.service import ServiceApp, run_service
from trueconf.calendar.v1 import licensing_pb2_grpc

SERVICE = "licensing"


async def build(app: ServiceApp) -> None:
    settings = LicensingSettings.from_config(app.config)  # ValueError: exit code 2 naming the key
    runtime = LicensingRuntime(settings, app.new_database(), app.clock)
    servicer = LicensingServicer(runtime.manager)
    app.grpc.add(licensing_pb2_grpc.add_LicensingServiceServicer_to_server, servicer, SERVICE_NAME)
    app.readiness.add("licensing-schema", runtime.schema_ready)

    async def run() -> None:
        await runtime.run(app.stop_event)

    app.task(run)


def main() -> None:
    run_service(SERVICE, build, policy=POLICY)


if __name__ == "__main__":
    main()

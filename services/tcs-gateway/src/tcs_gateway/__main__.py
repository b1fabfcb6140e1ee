"""Wiring of tcs-gateway: `python -m tcs_gateway --config config.json`."""

from __future__ import annotations

from tccal import telemetry
from tccal.service import ServiceApp, run_service
from tcs_gateway.api import POLICY, SERVICE_NAME, GatewayApi
from tcs_gateway.runtime import Gateway
from tcs_gateway.settings import SERVICE, GatewaySettings
from trueconf.calendar.v1 import gateway_pb2_grpc


async def build(app: ServiceApp) -> None:
    settings = GatewaySettings.from_config(app.config, app.secret)  # ValueError: exit code 2 naming the key
    for server in settings.servers:
        telemetry.register_secret(server.secret)
        telemetry.register_secret(server.client_secret)
    bus = app.new_bus()
    gateway = Gateway(settings, bus, replicas=app.config.nats.replicas)
    await gateway.start_listener()
    app.grpc.add(gateway_pb2_grpc.add_GatewayServiceServicer_to_server, GatewayApi(gateway), SERVICE_NAME)

    async def state_loaded() -> None:
        if not gateway.started.is_set():
            raise ConnectionError("served users not loaded from JetStream KV yet")

    app.readiness.add("gateway-state", state_loaded)

    async def run() -> None:
        await gateway.run(app.stop_event)

    app.task(run)


def main() -> None:
    run_service(SERVICE, build, policy=POLICY)


if __name__ == "__main__":
    main()

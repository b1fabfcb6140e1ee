"""Wiring of tcs-gateway: `python -m tcs_gateway --config config.json`."""

from __future__ import annotations

from tccal import telemetry
from tccal.service import ServiceApp, run_service
from tccal.stream_metrics import Consumer, ConsumerMetrics
from tccal.subjects import TCS_COMMANDS
from tcs_gateway.api import POLICY, SERVICE_NAME, GatewayApi
from tcs_gateway.commands import durable_name
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
    # Stream lag of each served server's command consumer (the gateway never dead-letters: no DEADLETTER rights).
    consumers = [Consumer(TCS_COMMANDS, durable_name(state.id)) for state in gateway.servers.values()]
    lag = ConsumerMetrics(bus, lambda: consumers, dead_letters=False)
    app.task(lambda: lag.run(app.stop_event))


def main() -> None:
    run_service(SERVICE, build, policy=POLICY)


if __name__ == "__main__":
    main()

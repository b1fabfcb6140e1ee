"""gRPC kit over a real socket: health, reflection, admin bearer token, loopback rule."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tccal.grpckit import GrpcServer, client_metadata
from trueconf.calendar.v1 import gateway_pb2, gateway_pb2_grpc

ADMIN = "/trueconf.calendar.v1.GatewayService/ListServers"


class Gateway(gateway_pb2_grpc.GatewayServiceServicer):
    async def ListServers(  # noqa: N802 - gRPC method name
        self, request: gateway_pb2.ListServersRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> gateway_pb2.ListServersResponse:
        return gateway_pb2.ListServersResponse(servers=[gateway_pb2.ServerStatus(server_id="a#vcs")])


async def started(token: str = "") -> GrpcServer:
    server = GrpcServer("127.0.0.1", 0, admin_methods={ADMIN}, admin_token=token)
    server.add(
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
        Gateway(),
        gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
    )
    await server.start()
    return server


async def test_health_follows_readiness_and_reflection_lists_services() -> None:
    server = await started()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await server.set_serving(True)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="trueconf.calendar.v1.GatewayService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name async for r in responses for s in r.list_services_response.service}
        assert {"trueconf.calendar.v1.GatewayService", "grpc.health.v1.Health"} <= names
        # loopback without a token configured: admin calls are open to local administrators
        reply2 = await gateway_pb2_grpc.GatewayServiceStub(channel).ListServers(gateway_pb2.ListServersRequest())
        assert reply2.servers[0].server_id == "a#vcs"
    await server.stop(0)


async def test_admin_calls_need_the_bearer_token_when_one_is_set() -> None:
    server = await started(token="s3cret-token")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.ListServers(gateway_pb2.ListServersRequest())
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in (denied.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await stub.ListServers(gateway_pb2.ListServersRequest(), metadata=client_metadata("nope"))
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = await stub.ListServers(gateway_pb2.ListServersRequest(), metadata=client_metadata("s3cret-token"))
        assert reply.servers[0].server_id == "a#vcs"
        # health stays open for probes
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await server.stop(0)


def test_binding_beyond_loopback_without_a_token_is_refused() -> None:
    with pytest.raises(ValueError, match=r"grpc\.adminToken must be set"):
        GrpcServer("0.0.0.0", 0, admin_methods={ADMIN})

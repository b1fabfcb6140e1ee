"""GatewayService (gateway.proto): every whitelisted TrueConf Server, connected or not, and how it fares; the
step-by-step check of a server's REST API and bridge (connectivity.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from tccal.grpckit import AccessPolicy
from tcs_gateway.connectivity import test_servers
from trueconf.calendar.v1 import gateway_pb2, gateway_pb2_grpc

if TYPE_CHECKING:
    from tcs_gateway.runtime import Gateway

SERVICE_NAME = "trueconf.calendar.v1.GatewayService"
#: Who may call what (docs/architecture.md §4.1): ListServers and TestServer are for administrators.
POLICY = AccessPolicy()
Context = grpc.aio.ServicerContext[Any, Any]


class GatewayApi(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def ListServers(  # noqa: N802 - gRPC method name
        self, request: gateway_pb2.ListServersRequest, context: Context
    ) -> gateway_pb2.ListServersResponse:
        return self.gateway.server_statuses()

    async def TestServer(  # noqa: N802 - gRPC method name
        self, request: gateway_pb2.TestServerRequest, context: Context
    ) -> gateway_pb2.TestServerResponse:
        try:
            return await test_servers(self.gateway, request.server_id)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        raise AssertionError("unreachable")

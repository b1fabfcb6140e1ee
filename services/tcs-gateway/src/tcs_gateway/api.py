"""GatewayService (gateway.proto): every whitelisted TrueConf Server, connected or not, and how it fares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from tccal.grpckit import AccessPolicy
from trueconf.calendar.v1 import gateway_pb2, gateway_pb2_grpc

if TYPE_CHECKING:
    from tcs_gateway.runtime import Gateway

SERVICE_NAME = "trueconf.calendar.v1.GatewayService"
#: Who may call what (docs/architecture.md §4.1): ListServers is for administrators.
POLICY = AccessPolicy()
Context = grpc.aio.ServicerContext[Any, Any]


class GatewayApi(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def ListServers(  # noqa: N802 - gRPC method name
        self, request: gateway_pb2.ListServersRequest, context: Context
    ) -> gateway_pb2.ListServersResponse:
        return self.gateway.server_statuses()

"""gRPC server kit: health, reflection, bearer-token guard for admin calls, trace context, graceful stop."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from tccal import telemetry

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _deny(message: str) -> grpc.RpcMethodHandler[Any, Any]:
    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(deny)


class AdminAuthInterceptor(_Interceptor):
    """Admin methods need `authorization: Bearer <token>` when a token is required."""

    def __init__(self, admin_methods: Iterable[str], token: str, required: bool) -> None:
        self.admin_methods = frozenset(admin_methods)
        self.token = token
        self.required = required

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        if self.required and method in self.admin_methods:
            metadata = dict(handler_call_details.invocation_metadata or ())
            presented = str(metadata.get("authorization", ""))
            expected = f"Bearer {self.token}"
            if not self.token or not hmac.compare_digest(presented.encode(), expected.encode()):
                log.warning("admin call refused: missing or wrong bearer token", extra={"method": method})
                return _deny(f"{method} is an admin call: send 'authorization: Bearer <grpc.adminToken>'")
        return await continuation(handler_call_details)


class TracingInterceptor(_Interceptor):
    """Continue the caller's trace (traceparent in metadata) in a server span for unary calls."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner: Any = handler.unary_unary
        method = handler_call_details.method
        tracer = telemetry.tracer("tccal.grpc")

        async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            carrier = {k: str(v) for k, v in context.invocation_metadata() or ()}
            parent = telemetry.extract_context(carrier)
            with tracer.start_as_current_span(method, context=parent, kind=trace.SpanKind.SERVER):
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class GrpcServer:
    """A grpc.aio server with health and reflection; `add` registers a service implementation."""

    def __init__(self, host: str, port: int, *, admin_methods: Iterable[str] = (), admin_token: str = "") -> None:
        self.host = host
        self.requested_port = port
        self.port = 0
        required = bool(admin_token) or not is_loopback(host)
        if required and not admin_token:
            raise ValueError(
                f"gRPC binds {host} beyond loopback: grpc.adminToken must be set so admin calls are protected"
            )
        self.server = grpc.aio.server(
            interceptors=[TracingInterceptor(), AdminAuthInterceptor(admin_methods, admin_token, required)]
        )
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]

    def add(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str) -> None:
        register(servicer, self.server)
        self._service_names.append(full_name)

    async def start(self) -> int:
        reflection.enable_server_reflection([*self._service_names, reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(f"{self.host}:{self.requested_port}")
        await self.server.start()
        await self.set_serving(False)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self._service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def client_metadata(admin_token: str = "") -> list[tuple[str, str]]:
    """Metadata for a call to another service: trace context, plus the admin token when given."""
    carrier: dict[str, str] = {}
    telemetry.inject_context(carrier)
    metadata = list(carrier.items())
    if admin_token:
        metadata.append(("authorization", f"Bearer {admin_token}"))
    return metadata

"""gRPC kit over a real socket: health, reflection, the caller guard (admin and service tokens), loopback rule,
traces by OpenTelemetry's gRPC instrumentation."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tccal.grpckit import (
    AccessPolicy,
    GrpcBindError,
    GrpcCaller,
    GrpcServer,
    RefusalLog,
    client_metadata,
    service_token,
)
from trueconf.calendar.v1 import gateway_pb2, gateway_pb2_grpc

METHOD = "/trueconf.calendar.v1.GatewayService/ListServers"
TOKEN = "s3cret-token"


class Gateway(gateway_pb2_grpc.GatewayServiceServicer):
    async def ListServers(  # noqa: N802 - gRPC method name
        self, request: gateway_pb2.ListServersRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> gateway_pb2.ListServersResponse:
        return gateway_pb2.ListServersResponse(servers=[gateway_pb2.ServerStatus(server_id="a#vcs")])


async def started(
    token: str = "", policy: AccessPolicy | None = None, refusals: RefusalLog | None = None
) -> GrpcServer:
    server = GrpcServer("127.0.0.1", 0, policy=policy, admin_token=token, refusals=refusals)
    server.add(
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
        Gateway(),
        gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
    )
    await server.start()
    return server


async def list_servers(channel: grpc.aio.Channel, token: str | None) -> grpc.StatusCode:
    """The status of one ListServers call sending `token` (None: no authorization header)."""
    metadata = client_metadata(token) if token is not None else []
    try:
        reply = await gateway_pb2_grpc.GatewayServiceStub(channel).ListServers(
            gateway_pb2.ListServersRequest(), metadata=metadata, timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    assert reply.servers[0].server_id == "a#vcs"
    return grpc.StatusCode.OK


async def reflection_lists(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    return {s.name async for r in responses for s in r.list_services_response.service}


async def test_health_follows_readiness_and_reflection_lists_services() -> None:
    server = await started()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await server.set_serving(True)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="trueconf.calendar.v1.GatewayService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert {"trueconf.calendar.v1.GatewayService", "grpc.health.v1.Health"} <= await reflection_lists(channel)
        # loopback without a token configured: the guard is off, calls are open to local administrators
        assert await list_servers(channel, None) == grpc.StatusCode.OK
    await server.stop(0)


async def test_with_a_token_set_an_undeclared_method_is_for_the_admin_only() -> None:
    """The default policy opens nothing: a method nobody wrote down takes the admin token and nothing else, while
    health and reflection stay open."""
    server = await started(token=TOKEN)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert await list_servers(channel, None) == grpc.StatusCode.UNAUTHENTICATED
        assert await list_servers(channel, "nope") == grpc.StatusCode.UNAUTHENTICATED
        assert await list_servers(channel, service_token("another-installation", "tcs-gateway")) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        # a real service identity, but nobody allowed it here
        assert await list_servers(channel, service_token(TOKEN, "tcs-gateway")) == grpc.StatusCode.PERMISSION_DENIED
        assert await list_servers(channel, TOKEN) == grpc.StatusCode.OK
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert "trueconf.calendar.v1.GatewayService" in await reflection_lists(channel)
    await server.stop(0)


async def test_a_method_given_to_a_service_takes_that_service_token_and_the_admin_token() -> None:
    policy = AccessPolicy(callers={METHOD: frozenset({"tcs-gateway"})})
    server = await started(token=TOKEN, policy=policy)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert await list_servers(channel, service_token(TOKEN, "tcs-gateway")) == grpc.StatusCode.OK
        assert await list_servers(channel, TOKEN) == grpc.StatusCode.OK
        assert await list_servers(channel, service_token(TOKEN, "ews-ingest")) == grpc.StatusCode.PERMISSION_DENIED
        forged = service_token(TOKEN, "tcs-gateway")[:-1] + "0"
        assert await list_servers(channel, forged) == grpc.StatusCode.UNAUTHENTICATED
        caller = GrpcCaller(token=service_token(TOKEN, "tcs-gateway"))
        async with caller.aio_channel(f"127.0.0.1:{server.port}") as own:
            reply = await gateway_pb2_grpc.GatewayServiceStub(own).ListServers(
                gateway_pb2.ListServersRequest(), metadata=caller.metadata()
            )
            assert reply.servers[0].server_id == "a#vcs"
    await server.stop(0)


async def test_refusals_are_logged_once_per_interval_not_per_call(caplog: pytest.LogCaptureFixture) -> None:
    server = await started(token=TOKEN, refusals=RefusalLog(interval=1.0))
    caplog.set_level(logging.WARNING, logger="tccal.grpckit")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for _ in range(25):
            assert await list_servers(channel, "nope") == grpc.StatusCode.UNAUTHENTICATED
        refused = [r for r in caplog.records if r.getMessage().startswith("gRPC call refused")]
        assert len(refused) == 1, [r.getMessage() for r in refused]
        assert refused[0].__dict__["method"] == METHOD and refused[0].__dict__["refusals"] == 1
        await asyncio.sleep(1.1)
        assert await list_servers(channel, "nope") == grpc.StatusCode.UNAUTHENTICATED
        refused = [r for r in caplog.records if r.getMessage().startswith("gRPC call refused")]
        assert len(refused) == 2
        assert refused[1].__dict__["refusals"] == 25  # the 24 not logged and this one
    await server.stop(0)


async def test_a_second_server_cannot_take_a_port_already_served() -> None:
    """Two sandboxes on one machine once picked the same free port for their sync-engines. With gRPC's default
    SO_REUSEPORT both listened, the kernel split new connections between them, and one sandbox's tcs-gateway,
    calling with its token, reached the other sandbox's engine (another adminToken): every ListEvents refused
    UNAUTHENTICATED for minutes. The second server must fail to start, naming the address, and every new
    connection must keep reaching the first."""
    first = await started(TOKEN)
    other = GrpcServer("127.0.0.1", first.port, admin_token="another-sandboxs-admin-token")
    try:
        with pytest.raises(GrpcBindError, match=rf"cannot listen on 127\.0\.0\.1:{first.port}: the port is in use"):
            await other.start()
        # A connection of its own per channel (not the process-wide pool's): each is a new accept on the port.
        options = [("grpc.use_local_subchannel_pool", 1)]
        for _ in range(16):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}", options=options) as channel:
                assert await list_servers(channel, TOKEN) == grpc.StatusCode.OK
    finally:
        await other.stop(0)
        await first.stop(0)


async def test_a_service_token_of_another_admin_token_is_named_as_such(caplog: pytest.LogCaptureFixture) -> None:
    """What a caller from another installation or sandbox (the same service, another grpc.adminToken) is told, and
    what the server logs: both name that cause, not just "missing or wrong" as for a made-up token."""
    server = await started(TOKEN, policy=AccessPolicy(callers={METHOD: frozenset({"tcs-gateway"})}))
    caplog.set_level(logging.WARNING, logger="tccal.grpckit")
    foreign = GrpcCaller(service_token("another-sandboxs-admin-token", "tcs-gateway"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListServers(gateway_pb2.ListServersRequest(), metadata=foreign.metadata(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "tcs-gateway token presented is not derived from this server's grpc.adminToken" in str(
            refused.value.details()
        )
        assert await list_servers(channel, "tcs-gateway.not-hex") == grpc.StatusCode.UNAUTHENTICATED
        own = GrpcCaller(service_token(TOKEN, "tcs-gateway"))
        await stub.ListServers(gateway_pb2.ListServersRequest(), metadata=own.metadata(), timeout=10)
    lines = [r.__dict__ for r in caplog.records if r.getMessage().startswith("gRPC call refused")]
    assert [(line["caller"], line["message"]) for line in lines] == [
        ("tcs-gateway (another adminToken)", "gRPC call refused: service token derived from another adminToken"),
        ("unknown", "gRPC call refused: missing or wrong bearer token"),
    ]
    await server.stop(0)


def test_binding_beyond_loopback_without_a_token_is_refused() -> None:
    with pytest.raises(ValueError, match=r"grpc\.adminToken must be set"):
        GrpcServer("0.0.0.0", 0)


def test_service_tokens_are_per_service_and_per_admin_token() -> None:
    tokens = {service_token(TOKEN, s) for s in ("ews-ingest", "sync-engine", "tcs-gateway", "licensing")}
    assert len(tokens) == 4 and TOKEN not in tokens
    assert service_token(TOKEN, "ews-ingest") == service_token(TOKEN, "ews-ingest")
    assert service_token(TOKEN, "ews-ingest") != service_token(TOKEN + "x", "ews-ingest")
    assert service_token(TOKEN, "ews-ingest").startswith("ews-ingest.")


def test_the_refusal_log_stays_bounded_under_a_scan_of_made_up_methods(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog(interval=3600)
    caplog.set_level(logging.WARNING, logger="tccal.grpckit")
    for n in range(3 * RefusalLog.MAX_KEYS):
        refusals.refused(f"/scan.Service/M{n}", "unknown", grpc.StatusCode.UNAUTHENTICATED, "missing token")
    assert len(refusals._last) <= RefusalLog.MAX_KEYS and len(refusals._since) <= RefusalLog.MAX_KEYS
    last = f"/scan.Service/M{3 * RefusalLog.MAX_KEYS - 1}"
    refusals.refused(last, "unknown", grpc.StatusCode.UNAUTHENTICATED, "missing token")
    assert len(caplog.records) == 3 * RefusalLog.MAX_KEYS  # one line per new method, none for a recent repeat


async def test_calls_are_traced_by_opentelemetry_grpc_instrumentation_across_the_socket() -> None:
    """A call made inside a span: the client span (aio_client_interceptors) continues it, the server span
    (aio_server_interceptor) continues the client's traceparent from the metadata; health checks make no span."""
    exported = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    processor = SimpleSpanProcessor(exported)
    provider.add_span_processor(processor)
    server = await started()
    try:
        async with GrpcCaller().aio_channel(f"127.0.0.1:{server.port}") as channel:
            with trace.get_tracer("test").start_as_current_span("caller") as caller:
                assert await list_servers(channel, None) == grpc.StatusCode.OK
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    finally:
        await server.stop(0)
        processor.shutdown()
    spans = exported.get_finished_spans()
    trace_id = caller.get_span_context().trace_id
    calls = [s for s in spans if s.name == METHOD]
    kinds = {s.kind: s for s in calls}
    assert set(kinds) == {trace.SpanKind.CLIENT, trace.SpanKind.SERVER}, [(s.name, s.kind) for s in spans]
    client, served = kinds[trace.SpanKind.CLIENT], kinds[trace.SpanKind.SERVER]
    assert client.context.trace_id == served.context.trace_id == trace_id
    assert client.parent is not None and client.parent.span_id == caller.get_span_context().span_id
    assert served.parent is not None and served.parent.span_id == client.context.span_id
    assert served.attributes is not None and served.attributes.get("rpc.system") == "grpc"
    assert not [s for s in spans if s.kind == trace.SpanKind.SERVER and "Health" in s.name]

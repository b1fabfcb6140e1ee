"""gRPC kit: servers with health, reflection, the caller guard (bearer tokens per caller, docs/architecture.md
§4.1), optional TLS/mTLS (`grpc.tls`), trace context, graceful stop; and `GrpcCaller`, the client side."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation import grpc as otel_grpc
from opentelemetry.instrumentation.grpc import filters as otel_filters

from tccal import telemetry
from tccal.config.schema import ALL_SERVICE_NAMES, Config, GrpcTlsConfig

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


#: Identity of a caller holding `grpc.adminToken` itself (administrators, the CLI).
ADMIN = "admin"
#: Methods every server leaves open: probes and grpcurl's discovery reveal nothing of a calendar.
ALWAYS_OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_TOKEN_CONTEXT = b"tc-calendar grpc caller v1:"


def service_token(admin_token: str, service: str) -> str:
    """The bearer token `service` sends: `<service>.<hex HMAC-SHA256(adminToken, context + service)>`.

    Every service reads the same config.json, so each can derive any other's token: the tokens keep out whoever
    reaches the ports without the config (other hosts on the network), not a compromised service.
    """
    digest = hmac.new(admin_token.encode(), _TOKEN_CONTEXT + service.encode(), hashlib.sha256).hexdigest()
    return f"{service}.{digest}"


_SERVICE_TOKEN = re.compile(r"Bearer ([a-z][a-z-]*)\.[0-9a-f]{64}")


def foreign_service(presented: str) -> str | None:
    """The service an `authorization` value claims to be when it has a service token's shape (`service_token`)
    that `identify` did not know: a token derived from another grpc.adminToken. None for anything else."""
    match = _SERVICE_TOKEN.fullmatch(presented.strip())
    if match is None or match.group(1) not in ALL_SERVICE_NAMES:
        return None
    return match.group(1)


@dataclass(frozen=True)
class AccessPolicy:
    """Who may call what. Everything not declared open is guarded and callable by `ADMIN`; `callers` adds the
    service identities allowed to call a method besides. A method added to a service is therefore admin-only
    until somebody writes it down here."""

    open_methods: frozenset[str] = frozenset()
    callers: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def is_open(self, method: str) -> bool:
        return method in self.open_methods or method.startswith(ALWAYS_OPEN_PREFIXES)

    def allowed(self, method: str) -> frozenset[str]:
        return frozenset({ADMIN}) | self.callers.get(method, frozenset())


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler[Any, Any]:
    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(deny)


class RefusalLog:
    """One warning per (method, caller, status) and `interval` seconds, with the count of refusals it stands
    for: a client retrying a refused call in a loop must not flood the log. At most `MAX_KEYS` are remembered
    (a scan of made-up method names must not grow it without end)."""

    MAX_KEYS = 1024

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str, str], float] = {}
        self._since: dict[tuple[str, str, str], int] = {}

    def refused(self, method: str, caller: str, code: grpc.StatusCode, reason: str) -> None:
        key = (method, caller, code.name)
        now = time.monotonic()
        if key not in self._last and len(self._last) >= self.MAX_KEYS:
            self._forget(now)
        self._since[key] = self._since.get(key, 0) + 1
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return
        self._last[key] = now
        count = self._since.pop(key)
        log.warning(
            "gRPC call refused: %s",
            reason,
            extra={"method": method, "caller": caller, "code": code.name, "refusals": count},
        )

    def _forget(self, now: float) -> None:
        """Drop what is older than an interval; if that frees nothing, start over (a few lines logged twice)."""
        for key in [k for k, last in self._last.items() if now - last >= self.interval]:
            del self._last[key]
            self._since.pop(key, None)
        if len(self._last) >= self.MAX_KEYS:
            self._last.clear()
            self._since.clear()


class CallerAuthInterceptor(_Interceptor):
    """Every call but the open ones needs `authorization: Bearer <token>` when the guard is on; the token says
    who calls (the admin token, or a service token from `service_token`), the policy whether that caller may."""

    def __init__(
        self, policy: AccessPolicy, admin_token: str, required: bool, refusals: RefusalLog | None = None
    ) -> None:
        self.policy = policy
        self.required = required
        self.refusals = refusals or RefusalLog()
        self._tokens: dict[bytes, str] = {}
        if admin_token:
            self._tokens[admin_token.encode()] = ADMIN
            for service in ALL_SERVICE_NAMES:
                self._tokens[service_token(admin_token, service).encode()] = service

    def identify(self, presented: str) -> str | None:
        if not presented.startswith("Bearer "):
            return None
        token = presented[len("Bearer ") :].strip().encode()
        found = None
        for known, identity in self._tokens.items():  # compare with each, in constant time
            if hmac.compare_digest(token, known):
                found = identity
        return found

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        if self.required and not self.policy.is_open(method):
            metadata = dict(handler_call_details.invocation_metadata or ())
            presented = str(metadata.get("authorization", ""))
            caller = self.identify(presented)
            if caller is None:
                code = grpc.StatusCode.UNAUTHENTICATED
                claimed = foreign_service(presented)
                if claimed is not None:
                    # Well formed, but not ours: the caller reads another config (another installation or
                    # sandbox reaching this port, or a config whose grpc.adminToken differs from this one's).
                    self.refusals.refused(
                        method, f"{claimed} (another adminToken)", code, "service token derived from another adminToken"
                    )
                    return _deny(
                        code,
                        f"{method}: the {claimed} token presented is not derived from this server's grpc.adminToken "
                        "(a process of another installation or sandbox answers on this port, or the two configs' "
                        "grpc.adminToken differ)",
                    )
                self.refusals.refused(method, "unknown", code, "missing or wrong bearer token")
                return _deny(
                    code,
                    f"{method} needs 'authorization: Bearer <token>' (grpc.adminToken, or the calling "
                    "service's token derived from it)",
                )
            allowed = self.policy.allowed(method)
            if caller not in allowed:
                code = grpc.StatusCode.PERMISSION_DENIED
                self.refusals.refused(method, caller, code, f"{caller} may not call it")
                return _deny(code, f"{caller} may not call {method} (allowed: {', '.join(sorted(allowed))})")
        return await continuation(handler_call_details)


@dataclass(frozen=True)
class TlsMaterial:
    """`grpc.tls` read from disk: PEM bytes and what to do with them."""

    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None
    require_client_cert: bool = False
    server_name: str | None = None

    @property
    def serves(self) -> bool:
        """Servers speak TLS (a certificate is configured)."""
        return self.cert is not None

    @classmethod
    def from_config(cls, tls: GrpcTlsConfig) -> TlsMaterial | None:
        """None when `grpc.tls` asks for nothing (plaintext). ValueError names the key of a missing file or of a
        combination that cannot work."""
        if not (tls.cert_file or tls.key_file or tls.ca_file or tls.require_client_cert):
            return None
        if bool(tls.cert_file) != bool(tls.key_file):
            raise ValueError("grpc.tls: certFile and keyFile go together (the certificate and its private key)")
        if tls.require_client_cert and not (tls.ca_file and tls.cert_file):
            raise ValueError(
                "grpc.tls.requireClientCert: needs certFile/keyFile (the services' own certificate) and caFile "
                "(the CA client certificates must be signed by)"
            )

        def read(key: str, path: str | None) -> bytes | None:
            if not path:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ValueError(f"grpc.tls.{key}: cannot read {path}: {exc.strerror}") from None

        return cls(
            cert=read("certFile", tls.cert_file),
            key=read("keyFile", tls.key_file),
            ca=read("caFile", tls.ca_file),
            require_client_cert=tls.require_client_cert,
            server_name=tls.server_name or None,
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        assert self.cert is not None and self.key is not None
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.ca if self.require_client_cert else None,
            require_client_auth=self.require_client_cert,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Verify the server against caFile (system roots without one); present our certificate when we have
        one (servers that require client certificates ask for it)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def guard_required(host: str, admin_token: str) -> bool:
    """The guard is on when a token is set or the service binds beyond loopback (then a token is required)."""
    return bool(admin_token) or not is_loopback(host)


#: Server options: bind the port alone. gRPC's default on Linux is SO_REUSEPORT, which let a second process bind
#: a port already served and the kernel then split new connections between both: a sandbox's tcs-gateway once
#: reached another sandbox's sync-engine (started at the same time on the same machine, the same free port
#: picked) and every ListEvents was refused UNAUTHENTICATED for minutes, its bearer token being derived from
#: another adminToken. Bound alone, the second server fails to start instead, naming the port.
EXCLUSIVE_PORT: list[tuple[str, Any]] = [("grpc.so_reuseport", 0)]


class GrpcBindError(ValueError):
    """A gRPC server could not listen on its address (a ValueError: services report it as a config problem)."""


class GrpcServer:
    """A grpc.aio server with health and reflection; `add` registers a service implementation."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        policy: AccessPolicy | None = None,
        admin_token: str = "",
        tls: TlsMaterial | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.port = 0
        self.tls = tls if tls is not None and tls.serves else None
        required = guard_required(host, admin_token)
        if required and not admin_token:
            raise ValueError(
                f"gRPC binds {host} beyond loopback: grpc.adminToken must be set so its calls are protected"
            )
        self.auth = CallerAuthInterceptor(policy or AccessPolicy(), admin_token, required, refusals)
        # OpenTelemetry's gRPC instrumentation: a server span per call (unary and streaming), continuing the
        # caller's traceparent; health checks are left out (probes call them every second).
        untraced = otel_filters.negate(otel_filters.health_check())
        tracing: grpc.aio.ServerInterceptor[Any, Any] = otel_grpc.aio_server_interceptor(  # type: ignore[no-untyped-call]
            filter_=untraced
        )
        self.server = grpc.aio.server(interceptors=[tracing, self.auth], options=EXCLUSIVE_PORT)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]

    def add(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str) -> None:
        register(servicer, self.server)
        self._service_names.append(full_name)

    async def start(self) -> int:
        reflection.enable_server_reflection([*self._service_names, reflection.SERVICE_NAME], self.server)
        address = f"{self.host}:{self.requested_port}"
        try:
            if self.tls is not None:
                self.port = self.server.add_secure_port(address, self.tls.server_credentials())
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc says only "Failed to bind to address ..."
            raise GrpcBindError(
                f"gRPC cannot listen on {address}: the port is in use by another process (or the host is not an "
                f"address of this machine); choose another grpcPort ({exc})"
            ) from None
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


def client_metadata(token: str = "") -> list[tuple[str, str]]:
    """Metadata for a call to another service: trace context, plus the bearer token when given."""
    carrier: dict[str, str] = {}
    telemetry.inject_context(carrier)
    metadata = list(carrier.items())
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    return metadata


@dataclass(frozen=True)
class GrpcCaller:
    """How one of our processes calls a service: who it says it is (its bearer token) and over what channel
    (plaintext, or TLS per `grpc.tls`). The default is plaintext without a token (loopback, no admin token)."""

    token: str = ""
    tls: TlsMaterial | None = None

    @classmethod
    def for_service(cls, config: Config, service: str, reveal: Callable[[str], str]) -> GrpcCaller:
        """`service` calling others: its derived token when grpc.adminToken is set."""
        admin = reveal(config.grpc.admin_token)
        token = service_token(admin, service) if admin else ""
        if token:
            telemetry.register_secret(token)  # redacted from log lines like the admin token itself
        return cls(token, TlsMaterial.from_config(config.grpc.tls))

    @classmethod
    def for_admin(cls, config: Config, reveal: Callable[[str], str]) -> GrpcCaller:
        """An administrator (the CLI): the admin token itself."""
        return cls(reveal(config.grpc.admin_token), TlsMaterial.from_config(config.grpc.tls))

    def metadata(self) -> list[tuple[str, str]]:
        return client_metadata(self.token)

    def aio_channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        # OpenTelemetry's gRPC instrumentation: a client span per call, its traceparent in the metadata.
        tracing: list[grpc.aio.ClientInterceptor] = otel_grpc.aio_client_interceptors()  # type: ignore[no-untyped-call]
        if self.tls is None:
            return grpc.aio.insecure_channel(address, options=list(options), interceptors=tracing)
        return grpc.aio.secure_channel(
            address,
            self.tls.channel_credentials(),
            options=[*options, *self.tls.channel_options()],
            interceptors=tracing,
        )

    def channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking channel (CLI, tests)."""
        if self.tls is None:
            return grpc.insecure_channel(address, options=list(options))
        return grpc.secure_channel(
            address, self.tls.channel_credentials(), options=[*options, *self.tls.channel_options()]
        )

"""What the administration commands share: config.json (`--config`, else $TC_CALENDAR_CONFIG), the admin gRPC
caller (grpc.adminToken, grpc.tls) and each service's address (grpc.services), calls that turn a service that is
down into a `ServiceDownError` naming it (never a traceback), and how times and dates are read and shown.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import grpc
from google.protobuf import json_format, message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tccal import secrets
from tccal.config.loader import CONFIG_ENV
from tccal.config.schema import Config
from tccal.grpckit import GrpcCaller
from tccal.service import load_or_exit

#: Exit codes of the administration commands: 0 done (every check OK), 1 a service refused, failed or is down,
#: or a check failed; 2 configuration (as `config check` and the services).
EXIT_FAILED = 1
#: The gRPC service each of our processes serves: (module in trueconf.calendar.v1, service name).
GRPC_SERVICES = {
    "ews-ingest": ("ingest_pb2", "IngestService"),
    "sync-engine": ("sync_pb2", "SyncService"),
    "tcs-gateway": ("gateway_pb2", "GatewayService"),
    "licensing": ("licensing_pb2", "LicensingService"),
}
M = TypeVar("M", bound=message.Message)
F = TypeVar("F", bound=Callable[..., Any])


def config_option(function: F) -> F:
    """`--config FILE` (default $TC_CALENDAR_CONFIG)."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help=f"config.json (default: ${CONFIG_ENV}).",
    )(function)


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the same as JSON.")(function)


class ServiceDownError(click.ClickException):
    """A service did not answer (or refused): names it, its address and the reason."""

    exit_code = EXIT_FAILED

    def __init__(self, service: str, address: str, reason: str) -> None:
        super().__init__(f"{service} at {address}: {reason}")
        self.service = service
        self.address = address
        self.reason = reason


@dataclass
class Admin:
    """The services as an administrator reaches them."""

    config: Config
    caller: GrpcCaller
    timeout: float = 30.0

    @classmethod
    def load(cls, config_path: str | None, timeout: float = 30.0) -> Admin:
        config = load_or_exit(config_path)
        try:
            caller = GrpcCaller.for_admin(
                config, lambda value: secrets.reveal(value, allow_plaintext=config.allow_plaintext_passwords)
            )
        except secrets.SecretError as exc:
            raise click.ClickException(f"grpc.adminToken cannot be decrypted on this machine: {exc}") from None
        except (OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        return cls(config, caller, timeout)

    def address(self, service: str) -> str:
        return self.config.grpc.address_of(service)

    def call(self, service: str, method: str, request: message.Message, response: type[M]) -> M:
        """Call `method` of `service` as admin; ServiceDownError when it cannot be reached or refuses."""
        module_name, service_name = GRPC_SERVICES[service]
        module = importlib.import_module(f"trueconf.calendar.v1.{module_name}")
        full_name = module.DESCRIPTOR.services_by_name[service_name].full_name
        address = self.address(service)
        with self.caller.channel(address) as channel:
            rpc = channel.unary_unary(
                f"/{full_name}/{method}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=response.FromString,
            )
            try:
                answer: M = rpc(request, metadata=tuple(self.caller.metadata()), timeout=self.timeout)
            except grpc.RpcError as exc:
                raise ServiceDownError(service, address, describe_rpc_error(exc)) from None
        return answer

    def health(self, service: str) -> str:
        """The service's gRPC health: SERVING, NOT_SERVING, or why it could not be asked (down)."""
        address = self.address(service)
        with self.caller.channel(address) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=min(self.timeout, 5.0)
                )
            except grpc.RpcError as exc:
                return f"DOWN ({describe_rpc_error(exc)})"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def describe_rpc_error(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE and details and ("connect" in details.lower() or "refused" in details):
        return f"not reachable ({details})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer in time (DEADLINE_EXCEEDED)"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"refused the admin token: {details} (grpc.adminToken must be the services' own)"
    name = code.name if code is not None else "error"
    return f"{name}: {details}"


def as_dict(answer: message.Message) -> dict[str, Any]:
    """A message as JSON-ready data: proto field names, enums by name, every scalar and list even when empty or
    false (`"connected": false`), 64-bit numbers as numbers; unset messages (timestamps) left out."""
    data: dict[str, Any] = json_format.MessageToDict(
        answer,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    return data


def when(stamp: Timestamp, empty: str = "-") -> str:
    """A Timestamp as 2026-12-05T19:51:08Z, `empty` when unset."""
    if not stamp.seconds and not stamp.nanos:
        return empty
    return stamp.ToDatetime(tzinfo=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_date(value: str, option: str) -> dt.datetime:
    """DATE or DATE-TIME (ISO 8601; without a zone: UTC) as an aware UTC datetime; BadParameter names the value."""
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date (2026-12-01) or date and time (2026-12-01T08:00, UTC unless a zone is given)",
            param_hint=option,
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def timestamp(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp

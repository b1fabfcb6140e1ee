"""Settings of tcs-gateway, derived once from the connector's config.json (tccal.config) at start.

Nothing here adds configuration keys: the bridge listens on `wsPort` (TLS with `tcs.tlsCertFile`/`tlsKeyFile`),
at `tcs.bridgePath`, on the host of `grpc.services.tcs-gateway`; servers come from `productWhitelist.tcs` and
`tcs.servers`; served users start with every provider's `users`. The protocol limits are those of
docs/bridge-protocol.md §9; what an unauthenticated peer may cost (handshake and auth timeouts, per-address and
total caps, back-off after failed auths, refusal logging) comes from `tcs.bridgeLimits` (§11). Tests shorten
timers with `dataclasses.replace`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tccal.config import Config
from tccal.grpckit import GrpcCaller
from tccal.subjects import GATEWAY_STATE_BUCKET

SERVICE = "tcs-gateway"
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_FRAME_BYTES = 1_048_576
DEFAULT_MAX_IN_FLIGHT = 64
MAX_IN_FLIGHT_CAP = 1024
STATE_BUCKET = GATEWAY_STATE_BUCKET


@dataclass(frozen=True)
class ConferenceDefaultsSettings:
    mode: str = "S|L Auto"
    access: str = "private"


@dataclass(frozen=True)
class ServerSettings:
    """One TrueConf Server: bridge secret (revealed) and REST API v4 access."""

    id: str
    secret: str
    rest_url: str
    client_id: str
    client_secret: str
    verify_tls: bool = True

    @property
    def key(self) -> str:
        return self.id.lower()

    @property
    def host(self) -> str:
        """Host of join links `https://<host>/c/<id>`: the server id's name part."""
        return self.id.split("#", 1)[0]

    @property
    def token_url(self) -> str:
        """The OAuth2 token endpoint next to the API: `https://<server>/oauth2/v1/token`."""
        parts = urlsplit(self.rest_url.rstrip("/"))
        path = parts.path
        for suffix in ("/api/v4", "/api/v4/"):
            if path.endswith(suffix):
                path = path[: -len(suffix)]
        return urlunsplit((parts.scheme, parts.netloc, f"{path}/oauth2/v1/token", "", ""))

    @property
    def api_token_url(self) -> str:
        """The token endpoint under the API, `https://<server>/api/v4/oauth2/token`, where TrueConf's own clients
        (trueconf-eraser, trueconf-server-mcp) ask; used when `token_url` answers 404."""
        return f"{self.rest_url.rstrip('/')}/oauth2/token"


@dataclass(frozen=True)
class GatewaySettings:
    # Bridge listener
    ws_host: str = "127.0.0.1"
    ws_port: int = 4315
    bridge_path: str = "/bridge/v1"
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Who may connect
    whitelist: tuple[str, ...] = ()
    servers: tuple[ServerSettings, ...] = ()
    configured_users: tuple[str, ...] = ()
    # Cache window (months around today, UTC)
    window_backward_months: int = 2
    window_forward_months: int = 3
    conference_defaults: ConferenceDefaultsSettings = field(default_factory=ConferenceDefaultsSettings)
    # Protocol limits and timers (docs/bridge-protocol.md §9)
    max_frame_bytes: int = MAX_FRAME_BYTES
    auth_timeout: float = 10.0
    ping_interval: float = 30.0
    reply_timeout: float = 30.0
    # Unauthenticated peers (tcs.bridgeLimits; docs/bridge-protocol.md §11)
    handshake_timeout: float = 5.0
    max_unauthenticated: int = 256
    max_unauthenticated_per_address: int = 8
    auth_failures_before_backoff: int = 3
    auth_backoff_initial: float = 1.0
    auth_backoff_max: float = 60.0
    refusal_log_interval: float = 60.0
    #: An address that authenticated this recently is not held to `max_unauthenticated` (only to its own cap).
    known_address_ttl: float = 86_400.0
    # Outbound queue and JetStream consumption
    queue_capacity: int = 512
    fetch_batch: int = 32
    fetch_timeout: float = 1.0
    ack_wait: float = 30.0
    heartbeat_interval: float = 10.0
    # Replicas (tcs_gateway.server_lease): a server's lease lives this long unless renewed (TCS_GATEWAY_LEASES TTL),
    # is renewed this often, and its holder stops consuming this long before it could expire. Environment:
    # TCS_GATEWAY_LEASE_SECONDS, TCS_GATEWAY_LEASE_RENEW_SECONDS, TCS_GATEWAY_LEASE_MARGIN_SECONDS.
    lease_seconds: float = 10.0
    lease_renew_seconds: float = 2.5
    lease_margin_seconds: float = 3.0
    # REST API v4
    rest_concurrency: int = 8
    rest_backlog: int = 64
    rest_attempts: int = 5
    rest_backoff_base: float = 0.2
    rest_backoff_cap: float = 5.0
    rest_timeout: float = 30.0
    user_cache_ttl: float = 600.0
    user_cache_negative_ttl: float = 60.0
    # SyncService (sync-engine)
    sync_address: str = "127.0.0.1:50062"
    sync_timeout: float = 15.0
    #: How SyncService.ListEvents is called: tcs-gateway's token (derived from grpc.adminToken) and grpc.tls.
    sync_caller: GrpcCaller = field(default_factory=GrpcCaller)
    snapshot_concurrency: int = 4
    ondemand_interval: float = 60.0
    # Identity
    gateway_id: str = field(default_factory=lambda: f"tcs-gateway-{socket.gethostname()}"[:128])
    state_bucket: str = STATE_BUCKET

    def server(self, server_id: str) -> ServerSettings | None:
        key = server_id.lower()
        for server in self.servers:
            if server.key == key:
                return server
        return None

    def is_whitelisted(self, server_id: str) -> bool:
        key = server_id.lower()
        return any(entry.lower() == key for entry in self.whitelist)

    def served_servers(self) -> tuple[ServerSettings, ...]:
        """Servers that can connect: whitelisted and configured with a secret."""
        return tuple(server for server in self.servers if self.is_whitelisted(server.id))

    @classmethod
    def from_config(cls, config: Config, reveal: Callable[[str], str]) -> GatewaySettings:
        """Settings from the validated config; `reveal` decrypts secrets (ServiceApp.secret). ValueError names a
        bad value."""
        tcs = config.tcs
        if (tcs.tls_cert_file is None) != (tcs.tls_key_file is None):
            raise ValueError(
                "tcs.tlsCertFile and tcs.tlsKeyFile go together: got "
                f"tlsCertFile={tcs.tls_cert_file!r}, tlsKeyFile={tcs.tls_key_file!r}"
            )
        for name, value in (("tcs.tlsCertFile", tcs.tls_cert_file), ("tcs.tlsKeyFile", tcs.tls_key_file)):
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{name}: {value!r} is not a readable file")
        servers: list[ServerSettings] = []
        seen: set[str] = set()
        for index, server in enumerate(tcs.servers):
            if server.id.lower() in seen:
                raise ValueError(f"tcs.servers[{index}].id: {server.id!r} is listed twice")
            seen.add(server.id.lower())
            scheme = urlsplit(server.rest_url).scheme
            if scheme not in ("http", "https"):
                raise ValueError(
                    f"tcs.servers[{index}].restUrl: {server.rest_url!r} is not an http(s) URL "
                    "(expected e.g. https://video.example.com/api/v4)"
                )
            servers.append(
                ServerSettings(
                    id=server.id,
                    secret=reveal(server.secret),
                    rest_url=server.rest_url.rstrip("/"),
                    client_id=server.client_id,
                    client_secret=reveal(server.client_secret),
                    verify_tls=server.verify_tls,
                )
            )
        users: list[str] = []
        for provider in config.calendar_providers:
            for user in provider.users:
                if user not in users:
                    users.append(user.lower())
        endpoint = config.grpc.endpoint(SERVICE)
        limits = tcs.bridge_limits
        timings = lease_timings(os.environ)
        return cls(
            ws_host=endpoint.host,
            ws_port=config.ws_port,
            bridge_path=tcs.bridge_path,
            tls_cert_file=tcs.tls_cert_file,
            tls_key_file=tcs.tls_key_file,
            whitelist=tuple(config.product_whitelist.tcs),
            servers=tuple(servers),
            configured_users=tuple(users),
            window_backward_months=config.cache.backward,
            window_forward_months=config.cache.forward,
            conference_defaults=ConferenceDefaultsSettings(
                mode=config.conference_defaults.mode, access=config.conference_defaults.access
            ),
            auth_timeout=limits.auth_timeout_sec,
            handshake_timeout=limits.handshake_timeout_sec,
            max_unauthenticated=limits.max_unauthenticated,
            max_unauthenticated_per_address=limits.max_unauthenticated_per_address,
            auth_failures_before_backoff=limits.auth_failures_before_backoff,
            auth_backoff_initial=limits.backoff_initial_sec,
            auth_backoff_max=max(limits.backoff_max_sec, limits.backoff_initial_sec),
            refusal_log_interval=limits.log_interval_sec,
            sync_address=config.grpc.address_of("sync-engine"),
            sync_caller=GrpcCaller.for_service(config, SERVICE, reveal),
            gateway_id=(os.environ.get("HOSTNAME") or f"tcs-gateway-{socket.gethostname()}")[:128],
            lease_seconds=timings.get("lease_seconds", cls.lease_seconds),
            lease_renew_seconds=timings.get("lease_renew_seconds", cls.lease_renew_seconds),
            lease_margin_seconds=timings.get("lease_margin_seconds", cls.lease_margin_seconds),
        )

    def __post_init__(self) -> None:
        if not 0 < self.lease_renew_seconds < self.lease_seconds / 3:
            raise ValueError(
                f"lease_renew_seconds={self.lease_renew_seconds}: must be above 0 and below a third of "
                f"lease_seconds={self.lease_seconds}"
            )
        if not self.fetch_timeout < self.lease_margin_seconds < self.lease_seconds - 2 * self.lease_renew_seconds:
            raise ValueError(
                f"lease_margin_seconds={self.lease_margin_seconds}: must be above fetch_timeout={self.fetch_timeout} "
                f"(a fenced replica's last pull ends within it) and leave two renewals (lease_seconds - 2 * "
                f"lease_renew_seconds = {self.lease_seconds - 2 * self.lease_renew_seconds})"
            )


LEASE_ENV = {
    "lease_seconds": "TCS_GATEWAY_LEASE_SECONDS",
    "lease_renew_seconds": "TCS_GATEWAY_LEASE_RENEW_SECONDS",
    "lease_margin_seconds": "TCS_GATEWAY_LEASE_MARGIN_SECONDS",
}


def lease_timings(environ: Mapping[str, str]) -> dict[str, float]:
    """The lease timings set in the environment; ValueError names a variable that is not a positive number."""
    found: dict[str, float] = {}
    for name, variable in LEASE_ENV.items():
        raw = environ.get(variable)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{variable}={raw!r} is not a number of seconds") from None
        if not value > 0:
            raise ValueError(f"{variable}={raw!r} must be above 0")
        found[name] = value
    return found

"""The configuration schema, defined once.

Keys are spelled as in the TrueConf Calendar Connector guide (camelCase). Every field carries its meaning
(`description`) and default; README.md's reference table and docs/config.schema.json are generated from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

ServiceName = Literal["ews-ingest", "sync-engine", "tcs-gateway", "licensing", "graph-ingest"]
#: The services every installation runs (the sandbox starts these).
SERVICE_NAMES: tuple[ServiceName, ...] = ("ews-ingest", "sync-engine", "tcs-gateway", "licensing")
#: Services an installation runs only when it needs them: graph-ingest serves `"type": "graph"` providers.
OPTIONAL_SERVICE_NAMES: tuple[ServiceName, ...] = ("graph-ingest",)
#: Every service with an endpoint (defaults 50061-50065 / 8061-8065 in this order) and a gRPC caller identity.
ALL_SERVICE_NAMES: tuple[ServiceName, ...] = (*SERVICE_NAMES, *OPTIONAL_SERVICE_NAMES)


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PydanticCustomError("port", "is not a port (1-65535)")
    return value


def _port_or_zero(value: Any) -> int:
    if value == 0 and not isinstance(value, bool):
        return 0
    return _port(value)


def _email(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
        raise PydanticCustomError("email", "is not an e-mail address")
    return value.lower()


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]")


def _mail_domain(value: Any) -> str:
    if not isinstance(value, str) or not _DOMAIN.fullmatch(value.strip().lower()):
        raise PydanticCustomError("mail_domain", "is not a mail domain (contoso.com, no @)")
    return value.strip().lower()


def _server_id(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9.\-_]+#vcs", value):
        raise PydanticCustomError("server_id", "is not a TrueConf Server id (name#vcs)")
    return value


_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _guid(value: Any) -> str:
    if not isinstance(value, str) or not _GUID.fullmatch(value):
        raise PydanticCustomError("guid", "is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return value.lower()


def _https_url(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https://[^/\s]+(/[^\s]*)?", value):
        raise PydanticCustomError("https_url", "is not an https:// URL")
    return value.rstrip("/")


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise PydanticCustomError("url_path", "is not a URL path (starts with /)")
    return value


Port = Annotated[int, BeforeValidator(_port)]
PortOrZero = Annotated[int, BeforeValidator(_port_or_zero)]
Email = Annotated[str, BeforeValidator(_email)]
MailDomain = Annotated[str, BeforeValidator(_mail_domain)]
ServerId = Annotated[str, BeforeValidator(_server_id)]
UrlPath = Annotated[str, BeforeValidator(_path)]
Guid = Annotated[str, BeforeValidator(_guid)]
HttpsUrl = Annotated[str, BeforeValidator(_https_url)]
# A secret value: `tc-calendar --hash_pass` output (base64 of "tc_..."), or plaintext where allowed.
Secret = Annotated[str, Field(json_schema_extra={"secret": True})]
SECRET_KEYS = frozenset({"password", "secret", "clientSecret", "privateKey", "adminToken", "token"})


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=False, frozen=True, strict=True
    )


class DbConnectionConfig(_Section):
    host: str = Field("localhost", description="PostgreSQL host name, or a Unix socket directory.")
    port: Port = Field(5441, description="PostgreSQL port.")
    user: str = Field("bridge", description="PostgreSQL user.")
    password: Secret = Field("", description="Encrypted password (tc-calendar --hash_pass); empty: none.")
    database: str = Field("calendar", description="Database name.")
    pool_min: int = Field(1, ge=0, le=100, description="Smallest connection pool size per service.")
    pool_max: int = Field(10, ge=1, le=200, description="Largest connection pool size per service.")
    ssl_mode: Literal["disable", "require", "verify-ca", "verify-full"] | None = Field(
        None,
        description="TLS to PostgreSQL, as libpq's sslmode: disable; require (encrypted, certificate not checked "
        "unless sslRootCert is set); verify-ca (certificate signed by sslRootCert, else the system's CAs); "
        "verify-full (and naming host). Unset: verify-full, or disable for a Unix socket or a loopback host.",
        json_schema_extra={"defaultText": "verify-full; disable for a socket or loopback host"},
    )
    ssl_root_cert: str | None = Field(
        None, description="PEM CA bundle PostgreSQL's certificate is verified with; unset: the system's CAs."
    )
    ssl_cert: str | None = Field(None, description="PEM client certificate presented to PostgreSQL (optional).")
    ssl_key: str | None = Field(None, description="PEM private key of sslCert.")


class CacheConfig(_Section):
    auto_sync: bool = Field(
        False,
        description="true: publish every event of the window at first start; false: only changes from now.",
    )
    backward: int = Field(2, ge=0, le=120, description="Months before today kept in the TrueConf calendar.")
    forward: int = Field(3, ge=0, le=120, description="Months after today kept in the TrueConf calendar.")


class ProductWhitelist(_Section):
    tcs: list[ServerId] = Field(
        default_factory=list, description="TrueConf Server ids (name#vcs) allowed to connect on wsPort."
    )


class Credential(_Section):
    login: str = Field(description="Impersonation account (user@domain or DOMAIN\\user).", min_length=1)
    password: Secret = Field(description="Its encrypted password (tc-calendar --hash_pass).")


class CalendarProvider(_Section):
    host: str = Field(description="Exchange server (or load balancer) host name.", min_length=1)
    path: UrlPath = Field("/EWS/Exchange.asmx", description="EWS path.")
    autodiscover_path: UrlPath | None = Field(
        None, description="Autodiscover path (DAG/clusters); when set, EWS URLs are discovered per mailbox."
    )
    port: Port = Field(443, description="EWS port.")
    type: Literal["ews"] = Field(
        "ews", description='Calendar protocol: "ews" (Exchange Server on premises) or "graph" (Exchange Online).'
    )
    scheme: Literal["https", "http"] = Field("https", description="http only for test installations.")
    auth: Literal["ntlm", "basic"] = Field("ntlm", description="EWS authentication.")
    verify_tls: bool = Field(True, description="Verify the Exchange TLS certificate.")
    max_concurrency: int = Field(
        8, ge=1, le=27, description="Parallel EWS calls per credential (Exchange's EWSMaxConcurrency is 27)."
    )
    exchange_version: Literal["Exchange2016", "Exchange2019", "ExchangeSE"] | None = Field(
        None, description="Pin the EWS version instead of probing it."
    )
    credentials: list[Credential] = Field(
        min_length=1, description="Impersonation accounts; mailboxes are spread over them."
    )
    users: list[Email] = Field(default_factory=list, description="Mailboxes synced at start, first in line for seats.")


#: Endpoints of the Microsoft clouds: (identity platform authority host, Microsoft Graph base URL).
#: https://learn.microsoft.com/en-us/graph/deployments#microsoft-graph-and-graph-explorer-service-root-endpoints
GRAPH_CLOUDS: dict[str, tuple[str, str]] = {
    "global": ("https://login.microsoftonline.com", "https://graph.microsoft.com/v1.0"),
    "usgov": ("https://login.microsoftonline.us", "https://graph.microsoft.us/v1.0"),
    "china": ("https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn/v1.0"),
}


class NotificationListen(_Section):
    """Where graph-ingest's change-notification receiver listens (behind the public `notificationUrl`)."""

    host: str = Field("0.0.0.0", min_length=1, description="Address the receiver binds (0.0.0.0: every interface).")
    port: Port = Field(8066, description="Its TCP port.")
    cert_file: str | None = Field(
        None,
        description="PEM certificate (chain) to serve HTTPS itself; without it the receiver speaks plain HTTP and a "
        "reverse proxy terminates the public HTTPS.",
    )
    key_file: str | None = Field(None, description="The certificate's PEM private key (with certFile).")


class GraphClientCertificate(_Section):
    """The app's certificate credential (https://learn.microsoft.com/en-us/entra/identity-platform/certificate-credentials)."""

    certificate: str = Field(
        min_length=1,
        description="The certificate uploaded to the app registration: a PEM file path, or the PEM text itself.",
    )
    private_key: Secret = Field(
        min_length=1, description="Its private key: the PEM text, encrypted with tc-calendar --hash_pass."
    )


class GraphCalendarProvider(_Section):
    """Exchange Online (Microsoft 365) through Microsoft Graph with an app-only (client credentials) token."""

    type: Literal["graph"] = Field(description='"graph": Exchange Online through Microsoft Graph.')
    name: str | None = Field(
        None,
        min_length=1,
        description="Provider name in subjects and CalendarChange.provider; default graph-<tenantId>.",
    )
    tenant_id: Guid = Field(description="Microsoft Entra tenant (directory) id, a GUID.")
    client_id: Guid = Field(description="Application (client) id of the Entra app registration, a GUID.")
    client_secret: Secret | None = Field(
        None, description="Its encrypted client secret (tc-calendar --hash_pass); or clientCertificate."
    )
    client_certificate: GraphClientCertificate | None = Field(
        None, description="Its certificate and encrypted private key, instead of clientSecret."
    )
    cloud: Literal["global", "usgov", "china"] = Field(
        "global", description="Microsoft cloud: global, usgov (GCC High) or china (21Vianet); sets both endpoints."
    )
    authority_url: HttpsUrl | None = Field(
        None, description="Identity platform host instead of the cloud's (e.g. https://login.microsoftonline.com)."
    )
    graph_url: HttpsUrl | None = Field(
        None, description="Microsoft Graph base URL instead of the cloud's (e.g. https://graph.microsoft.com/v1.0)."
    )
    ca_file: str | None = Field(
        None,
        description="PEM CA bundle to verify both endpoints with instead of the system's "
        "(private CAs, test emulators).",
    )
    max_concurrency: int = Field(
        4, ge=1, le=4, description="Parallel Graph requests per mailbox (Outlook allows 4 per app and mailbox)."
    )
    notification_url: HttpsUrl | None = Field(
        None,
        description="Public HTTPS URL Microsoft Graph posts change notifications to (it must reach "
        "notificationListen); without it the mailboxes are polled with calendarView/delta only.",
    )
    notification_listen: NotificationListen = Field(
        default_factory=NotificationListen,
        description="The local address of the change-notification receiver (used with notificationUrl).",
    )
    users: list[Email] = Field(default_factory=list, description="Mailboxes synced at start, first in line for seats.")
    domains: list[MailDomain] = Field(
        default_factory=list,
        description="Mail domains of the tenant: a TrueConf user listed in no entry's users whose address is in one "
        "of them is synced on demand through this entry (mailboxes an EWS entry lists stay with EWS).",
    )

    @model_validator(mode="after")
    def _one_credential(self) -> GraphCalendarProvider:
        if self.client_secret and self.client_certificate:
            raise PydanticCustomError(
                "graph_credential", "has both clientSecret and clientCertificate: give the app's credential once"
            )
        if not self.client_secret and self.client_certificate is None:
            raise PydanticCustomError(
                "graph_credential",
                "has neither clientSecret nor clientCertificate: give the app's client secret or certificate",
            )
        return self

    @property
    def provider_name(self) -> str:
        return (self.name or f"graph-{self.tenant_id}").lower()

    @property
    def authority(self) -> str:
        return self.authority_url or GRAPH_CLOUDS[self.cloud][0]

    @property
    def graph_base(self) -> str:
        return self.graph_url or GRAPH_CLOUDS[self.cloud][1]


def _provider_type(value: Any) -> str:
    """The tag of a calendarProviders entry: its `type`, "ews" when left out (configs before Graph)."""
    kind = value.get("type", "ews") if isinstance(value, dict) else getattr(value, "type", "ews")
    return kind if kind in PROVIDER_TYPES else "ews"


#: Values of calendarProviders[].type (pydantic puts the tag in error locations; the loader leaves it out).
PROVIDER_TYPES = ("ews", "graph")
AnyCalendarProvider = Annotated[
    Annotated[CalendarProvider, Tag("ews")] | Annotated[GraphCalendarProvider, Tag("graph")],
    Discriminator(_provider_type),
]


class ServiceEndpoint(_Section):
    host: str = Field("127.0.0.1", description="Address the service's gRPC and HTTP servers bind to.")
    grpc_port: PortOrZero = Field(
        description="gRPC port (0: pick a free one); defaults 50061-50064 "
        "(ews-ingest, sync-engine, tcs-gateway, licensing).",
        json_schema_extra={"defaultText": "50061-50064"},
    )
    http_port: PortOrZero = Field(
        description="HTTP port for /healthz, /readyz, /metrics; defaults 8061-8064 in the same order.",
        json_schema_extra={"defaultText": "8061-8064"},
    )
    address: str | None = Field(None, description="host:port other services use to reach its gRPC.")


def _default_ports(service: str) -> dict[str, int]:
    index = ALL_SERVICE_NAMES.index(service)
    return {"grpcPort": 50061 + index, "httpPort": 8061 + index}


def _default_endpoints() -> dict[ServiceName, ServiceEndpoint]:
    return {name: ServiceEndpoint.model_validate(_default_ports(name)) for name in SERVICE_NAMES}


def _with_default_ports(services: Any) -> Any:
    """A service entry that leaves out a port keeps that service's default (`grpc.services.sync-engine.host`
    alone, e.g. from TC_CALENDAR__GRPC__SERVICES__SYNC_ENGINE__HOST, moves only the address)."""
    if not isinstance(services, dict):
        return services
    filled: dict[Any, Any] = {}
    for name, entry in services.items():
        if name in ALL_SERVICE_NAMES and isinstance(entry, dict):
            entry = {**_default_ports(name), **entry}
        filled[name] = entry
    return filled


class GrpcTlsConfig(_Section):
    cert_file: str | None = Field(
        None,
        description="PEM certificate of the gRPC servers, also their client certificate for mTLS; "
        "set: gRPC is served over TLS.",
    )
    key_file: str | None = Field(None, description="PEM private key of certFile.")
    ca_file: str | None = Field(
        None,
        description="PEM CA bundle clients verify the servers with (and servers the client certificates); "
        "set alone: a client (the CLI) speaks TLS.",
    )
    require_client_cert: bool = Field(
        False, description="mTLS: servers refuse clients without a certificate signed by caFile."
    )
    server_name: str | None = Field(
        None,
        description="Name clients expect in the servers' certificate instead of the address's host (IP-only setups).",
    )


class GrpcConfig(_Section):
    admin_token: Secret = Field(
        "",
        description="Bearer token of administrators; every gRPC call but health and reflection needs it or a "
        "service token derived from it whenever it is set or a service binds beyond loopback "
        "(required then).",
    )
    tls: GrpcTlsConfig = Field(default_factory=GrpcTlsConfig)
    services: Annotated[dict[ServiceName, ServiceEndpoint], BeforeValidator(_with_default_ports)] = Field(
        default_factory=_default_endpoints, description="Where each service listens."
    )

    def endpoint(self, service: str) -> ServiceEndpoint:
        for name, endpoint in self.services.items():
            if name == service:
                return endpoint
        for name, endpoint in _default_endpoints().items():
            if name == service:
                return endpoint
        if service in ALL_SERVICE_NAMES:
            return ServiceEndpoint.model_validate(_default_ports(service))
        raise KeyError(f"no such service: {service}")

    def address_of(self, service: str) -> str:
        endpoint = self.endpoint(service)
        return endpoint.address or f"{endpoint.host}:{endpoint.grpc_port}"


class NatsConfig(_Section):
    url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated.")
    user: str = Field("", description="This service's NATS user (one per service, docs/architecture.md §4.6).")
    password: Secret = Field("", description="Encrypted NATS password.")
    token: Secret = Field("", description="Encrypted NATS token.")
    password_file: str | None = Field(
        None,
        description="File holding this service's NATS password in plaintext (a mounted Compose or Kubernetes "
        "secret); used when password is empty.",
    )
    tls_ca_file: str | None = Field(None, description="PEM CA bundle NATS's certificate is verified with.")
    tls_cert_file: str | None = Field(None, description="PEM client certificate for NATS (mutual TLS).")
    tls_key_file: str | None = Field(None, description="PEM key of tlsCertFile.")
    tls_verify: bool = Field(
        True, description="Verify NATS's certificate and host name (TLS is on with tls:// or any tls*File)."
    )
    allow_anonymous: bool = Field(
        False,
        description="Test installations only: start even though NATS accepts clients without credentials.",
    )
    replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of the connector's streams.")
    max_deliver: int = Field(10, ge=1, le=1000, description="Deliveries of a message before dead-lettering.")
    stream_max_bytes: int = Field(
        1024**3,
        ge=64 * 1024,
        le=2**50,
        description="Bytes each of the streams CALENDAR, TCS_COMMANDS and TCS_RESULTS may hold (JetStream reserves "
        "it on the server). A full stream refuses new messages (discard new): publishers get an error and retry, "
        "nothing stored is dropped.",
    )
    dead_letter_max_bytes: int = Field(
        256 * 1024**2, ge=64 * 1024, le=2**50, description="Bytes the DEADLETTER stream may hold (discard new too)."
    )
    stream_alert_percent: int = Field(
        80,
        ge=1,
        le=100,
        description="A warning is logged and tc_calendar_stream_full_ratio shows it when a "
        "stream holds this share of its bytes.",
    )


class TcsServer(_Section):
    id: ServerId = Field(description="The server id as whitelisted (name#vcs).")
    secret: Secret = Field(description="Encrypted secret the server presents on the bridge.")
    rest_url: str = Field(description="REST API v4 base, e.g. https://video.example.com/api/v4.")
    client_id: str = Field(description="OAuth2 client id for the REST API.")
    client_secret: Secret = Field(description="Encrypted OAuth2 client secret.")
    verify_tls: bool = Field(True, description="Verify the server's TLS certificate.")


class BridgeLimits(_Section):
    """What a connection to wsPort may cost before it authenticates (docs/bridge-protocol.md §9, §11)."""

    handshake_timeout_sec: float = Field(
        5.0, ge=0.1, le=120, description="Seconds a new connection has to send its whole WebSocket upgrade request."
    )
    auth_timeout_sec: float = Field(
        10.0, ge=0.1, le=300, description="Seconds from the upgrade to a successful auth, else close 4008."
    )
    max_unauthenticated_per_address: int = Field(
        8, ge=1, le=10000, description="Connections one remote address may hold open before it authenticates."
    )
    max_unauthenticated: int = Field(
        256,
        ge=1,
        le=100000,
        description="Unauthenticated connections from all addresses together; an address that authenticated "
        "in the last 24 h is not held to it.",
    )
    auth_failures_before_backoff: int = Field(
        3, ge=1, le=1000, description="Failed auths from one address before that address is backed off."
    )
    backoff_initial_sec: float = Field(
        1.0, ge=0.01, le=3600, description="First back-off of an address; doubles with every further failure."
    )
    backoff_max_sec: float = Field(60.0, ge=0.01, le=86400, description="Longest back-off of an address.")
    log_interval_sec: float = Field(
        60.0, ge=0.1, le=86400, description="At most one log line per remote address per interval about refusals."
    )


class TcsConfig(_Section):
    servers: list[TcsServer] = Field(default_factory=list, description="TrueConf Servers served.")
    bridge_path: UrlPath = Field("/bridge/v1", description="WebSocket path of the calendar bridge.")
    tls_cert_file: str | None = Field(None, description="PEM certificate for wss:// on wsPort.")
    tls_key_file: str | None = Field(None, description="PEM key for wss:// on wsPort.")
    bridge_limits: BridgeLimits = Field(default_factory=BridgeLimits)


class TelemetryConfig(_Section):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    otlp_endpoint: str | None = Field(
        None, description="OTLP/gRPC endpoint; OTEL_EXPORTER_OTLP_ENDPOINT wins when set."
    )


class LicenseConfig(_Section):
    test_authority_public_key: str = Field(
        "",
        description="TEST ONLY: trust this Ed25519 key (base64 raw or PEM) besides the built-in authority key, "
        "e.g. the registration emulator's; refused when TC_CALENDAR_PRODUCTION=1 (the product images).",
    )
    registration_url: str = Field("https://reg.trueconf.com:4310", description="Registration server.")
    grace_period_days: int = Field(7, ge=0, le=90, description="Free tier: days of work without the server.")
    check_interval_hours: int = Field(12, ge=1, le=168, description="Free tier: online check period.")


class ConferenceDefaults(_Section):
    mode: Literal["S|L Auto", "S|L", "PxP", "OxP"] = Field("S|L Auto", description="Mode for @trueconf.")
    access: Literal["private", "public"] = Field("private", description="Access for @trueconf meetings.")
    max_participants: int = Field(0, ge=0, le=10000, description="0: server default.")
    max_podiums: int = Field(0, ge=0, le=100, description="0: server default.")
    waiting_room_enabled: bool = Field(False, description="Waiting room.")
    recording_enabled: bool = Field(False, description="Record automatically.")
    mute_mic_on_join: bool = Field(False, description="Mute microphones on entry.")
    mute_camera_on_join: bool = Field(False, description="Stop cameras on entry.")


class Config(_Section):
    ws_port: Port = Field(4315, description="Port of the WebSocket bridge TrueConf Server connects to.")
    db_connection_config: DbConnectionConfig = Field(default_factory=DbConnectionConfig)
    launch_conference: bool = Field(True, description="Run the conference when the meeting starts.")
    sync_conference_participants: bool = Field(
        True, description="Keep conference invitations equal to the attendees who have not declined."
    )
    temporal_conf_participants_mode: bool = Field(
        False, description="true: invite attendees at launch only; false: as scheduled participants."
    )
    cache: CacheConfig = Field(default_factory=CacheConfig)
    product_whitelist: ProductWhitelist = Field(default_factory=ProductWhitelist)
    calendar_providers: list[AnyCalendarProvider] = Field(
        default_factory=list,
        description="Exchange servers (EWS) and Exchange Online tenants (Microsoft Graph) whose calendars are synced.",
    )
    nats: NatsConfig = Field(default_factory=NatsConfig)
    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    tcs: TcsConfig = Field(default_factory=TcsConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    license: LicenseConfig = Field(default_factory=LicenseConfig)
    conference_defaults: ConferenceDefaults = Field(default_factory=ConferenceDefaults)
    write_back_join_link: bool = Field(False, description="Write the join link into the organizer's item.")
    allow_plaintext_passwords: bool = Field(
        False, description="Accept secrets not made by --hash_pass (test installations only)."
    )

    @property
    def ews_providers(self) -> list[tuple[int, CalendarProvider]]:
        """(index in calendarProviders, entry) of the EWS providers."""
        return [(i, p) for i, p in enumerate(self.calendar_providers) if isinstance(p, CalendarProvider)]

    @property
    def graph_providers(self) -> list[tuple[int, GraphCalendarProvider]]:
        """(index in calendarProviders, entry) of the Microsoft Graph providers."""
        return [(i, p) for i, p in enumerate(self.calendar_providers) if isinstance(p, GraphCalendarProvider)]

    @property
    def mailbox_routing(self) -> MailboxRouting:
        """Which entries serve which addresses (ews-ingest and graph-ingest decide by this one rule)."""
        graph_users: dict[str, str] = {}
        graph_domains: dict[str, str] = {}
        for _, provider in self.graph_providers:
            for user in provider.users:
                graph_users.setdefault(user, provider.provider_name)
            for domain in provider.domains:
                graph_domains.setdefault(domain, provider.provider_name)
        ews_users = frozenset(user for _, provider in self.ews_providers for user in provider.users)
        return MailboxRouting(ews_users, graph_users, graph_domains)


@dataclass(frozen=True)
class MailboxRouting:
    """Which calendarProviders entry serves an address. An entry listing it in `users` does (a Graph entry first:
    `config check` warns about a mailbox listed on both sides); an address no entry lists belongs to the first Graph
    entry whose `domains` hold its domain (on demand, through graph-ingest), else to EWS (ews-ingest's on-demand
    search over its providers)."""

    ews_users: frozenset[str]
    #: address -> name of the Graph provider listing it
    graph_users: Mapping[str, str]
    #: mail domain -> name of the first Graph provider claiming it
    graph_domains: Mapping[str, str]

    def graph_provider(self, address: str) -> str | None:
        """The Graph provider serving `address`, or None when it is EWS's."""
        address = address.strip().lower()
        listed = self.graph_users.get(address)
        if listed is not None:
            return listed
        if address in self.ews_users:
            return None
        return self.graph_domains.get(address.rpartition("@")[2])


def iter_secrets(model: BaseModel, prefix: str = "") -> list[tuple[str, str]]:
    """Every secret field of the config as (JSON path, value)."""
    found: list[tuple[str, str]] = []
    for name, field in type(model).model_fields.items():
        alias = field.alias or name
        path = f"{prefix}.{alias}" if prefix else alias
        value = getattr(model, name)
        found.extend(_secrets_in(value, path, alias))
    return found


def _secrets_in(value: object, path: str, key: str) -> list[tuple[str, str]]:
    if isinstance(value, BaseModel):
        return iter_secrets(value, path)
    if isinstance(value, list):
        return [item for i, v in enumerate(value) for item in _secrets_in(v, f"{path}[{i}]", key)]
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _secrets_in(v, f"{path}.{k}", key)]
    if isinstance(value, str) and key in SECRET_KEYS:
        return [(path, value)]
    return []

"""graph-ingest's view of config.json (the `"type": "graph"` calendarProviders, cache, conference options) plus its
tuning knobs.

Configuration comes from the shared schema (tccal.config). The knobs are operational timings without a key in
config.json; each can be overridden with an environment variable (`GRAPH_INGEST_<NAME>`, e.g.
`GRAPH_INGEST_POLL_SECONDS=30`) and tests set them directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from tccal.conference_marker import tcs_hosts
from tccal.config import Config
from tccal.config.checks import notification_problems
from tccal.config.schema import (
    GRAPH_CLOUDS,
    ConferenceDefaults,
    GraphCalendarProvider,
    MailboxRouting,
    NotificationListen,
)
from tccal.graph_certificate import CertificateError, ClientCertificate, check_private_key, read_certificate
from tccal.grpckit import GrpcCaller
from tccal.ingest.tuning import knobs_from_env, refuse_shared_names, unique_users
from tccal.secrets import SecretError

SERVICE = "graph-ingest"
ENV_PREFIX = "GRAPH_INGEST_"
#: The scope of an app-only token for Microsoft Graph: the resource's `/.default` (client credentials flow).
GRAPH_SCOPE_SUFFIX = "/.default"


@dataclass(frozen=True)
class Tuning:
    """Operational timings and sizes (environment: GRAPH_INGEST_<FIELD NAME IN CAPITALS>)."""

    #: Delta polling: every seated mailbox asks calendarView/delta for changes this often.
    poll_seconds: float = 60.0
    #: `Prefer: odata.maxpagesize` of calendarView/delta (Graph's default page is 10 events).
    page_size: int = 100
    #: AllocateSeats is asked again this often (seats are 1-hour leases).
    seat_refresh_seconds: float = 300.0
    #: Attempts of one Graph request answered 429/503 or failing in transport (Retry-After honoured between).
    attempts: int = 6
    #: Longest Retry-After honoured; a longer one ends the round (the next poll tries again).
    max_retry_after_seconds: float = 300.0
    #: HTTP timeout of one Graph or token request.
    http_timeout_seconds: float = 60.0
    #: Base and cap of the back-off of a mailbox whose round failed.
    error_backoff_base_seconds: float = 2.0
    error_backoff_cap_seconds: float = 300.0
    #: With change notifications (notificationUrl set) a notification starts a round at once; polling stays as the
    #: safety net at this longer interval.
    notified_poll_seconds: float = 900.0
    #: Lifetime asked for each subscription (Outlook events allow at most 10,080 minutes).
    subscription_minutes: float = 10_080.0 - 10.0
    #: A subscription is renewed this long before it expires.
    subscription_renew_margin_seconds: float = 3600.0
    #: Largest notification POST body accepted (larger: 413).
    notification_max_body_bytes: int = 1_048_576

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Tuning:
        return cls(**knobs_from_env(cls, ENV_PREFIX, environ, allow_zero=False))  # type: ignore[arg-type]


@dataclass(frozen=True)
class GraphProviderSettings:
    """One `"type": "graph"` calendarProviders entry, its secret revealed."""

    #: Name in subjects and CalendarChange.provider.
    name: str
    #: Where it is in config.json, for error messages: "calendarProviders[1]".
    key: str
    tenant_id: str
    client_id: str
    client_secret: str
    #: Identity platform host (https://login.microsoftonline.com) and Graph base (https://graph.microsoft.com/v1.0).
    authority: str
    graph_url: str
    ca_file: str | None
    max_concurrency: int
    users: tuple[str, ...]
    #: Mail domains whose addresses listed nowhere are synced on demand through this entry (MailboxRouting).
    domains: tuple[str, ...] = ()

    @property
    def authority_url(self) -> str:
        """The tenant's authority as MSAL takes it."""
        return f"{self.authority}/{self.tenant_id}"

    #: Change notifications: the public URL Graph posts to and where the receiver listens; None: polling only.
    notification_url: str | None = None
    notification_listen: NotificationListen | None = None

    #: The app-only token's scope: the cloud's Graph resource + `/.default` (https://graph.microsoft.com/.default),
    #: also when graphUrl points elsewhere (a proxy, an emulator): the token is for Microsoft Graph all the same.
    scope: str = ""
    #: clientCertificate instead of clientSecret (then client_secret is ""): the certificate and its private key
    #: (PEM, decrypted), which signs the client assertion.
    client_certificate: ClientCertificate | None = None
    private_key: str = field(default="", repr=False)

    @property
    def credential_key(self) -> str:
        """The config key of the app's credential, for messages."""
        return f"{self.key}.clientCertificate" if self.client_certificate else f"{self.key}.clientSecret"


@dataclass(frozen=True)
class GraphSettings:
    providers: tuple[GraphProviderSettings, ...]
    auto_sync: bool
    backward_months: int
    forward_months: int
    conference_defaults: ConferenceDefaults
    #: Host names of whitelisted TrueConf Servers: join links https://<host>/c/<id> are recognised for these.
    tcs_hosts: frozenset[str]
    licensing_address: str
    #: writeBackJoinLink: the join link of a conference created for an organizer's event is written into it.
    write_back_join_link: bool = False
    #: Every calendarProviders entry, EWS ones included: licensing judges the multiple-providers feature on it.
    total_providers: int = 1
    tuning: Tuning = field(default_factory=Tuning)
    #: How AllocateSeats is called: graph-ingest's service token (derived from grpc.adminToken) and grpc.tls.
    licensing_caller: GrpcCaller = field(default_factory=GrpcCaller)
    #: Which entry serves an address (an on-demand request is answered only for this service's providers).
    routing: MailboxRouting = field(default_factory=lambda: MailboxRouting(frozenset(), {}, {}))

    @classmethod
    def from_config(cls, config: Config, reveal: Callable[[str], str], tuning: Tuning | None = None) -> GraphSettings:
        providers: list[GraphProviderSettings] = []
        for index, provider in config.graph_providers:
            key = f"calendarProviders[{index}]"
            secret, certificate, private_key = _credential(provider, key, reveal)
            providers.append(
                GraphProviderSettings(
                    name=provider.provider_name,
                    key=key,
                    tenant_id=provider.tenant_id,
                    client_id=provider.client_id,
                    client_secret=secret,
                    client_certificate=certificate,
                    private_key=private_key,
                    authority=provider.authority,
                    graph_url=provider.graph_base,
                    ca_file=provider.ca_file,
                    max_concurrency=provider.max_concurrency,
                    scope=_scope(GRAPH_CLOUDS[provider.cloud][1]),
                    users=unique_users(provider.users),
                    domains=tuple(dict.fromkeys(provider.domains)),
                    notification_url=provider.notification_url,
                    notification_listen=provider.notification_listen if provider.notification_url else None,
                )
            )
        problems = notification_problems(config)
        if problems:
            raise ValueError("; ".join(str(p) for p in problems))
        refuse_shared_names([p.name for p in providers], "two Graph providers share the name")
        return cls(
            providers=tuple(providers),
            auto_sync=config.cache.auto_sync,
            backward_months=config.cache.backward,
            forward_months=config.cache.forward,
            conference_defaults=config.conference_defaults,
            tcs_hosts=tcs_hosts(config),
            licensing_address=config.grpc.address_of("licensing"),
            write_back_join_link=config.write_back_join_link,
            total_providers=len(config.calendar_providers),
            tuning=tuning or Tuning.from_env(),
            licensing_caller=GrpcCaller.for_service(config, SERVICE, reveal),
            routing=config.mailbox_routing,
        )


def _credential(
    provider: GraphCalendarProvider, key: str, reveal: Callable[[str], str]
) -> tuple[str, ClientCertificate | None, str]:
    """(client secret, certificate, private key) of the entry, revealed and checked; ValueError names the key."""
    given = provider.client_certificate
    if given is None:
        try:
            return reveal(provider.client_secret or ""), None, ""
        except (ValueError, SecretError) as exc:
            raise ValueError(f"{key}.clientSecret: {exc}") from exc
    try:
        certificate = read_certificate(given.certificate)
    except CertificateError as exc:
        raise ValueError(f"{key}.clientCertificate.certificate: {exc}") from exc
    try:
        private_key = reveal(given.private_key)
        check_private_key(private_key, certificate)
    except (ValueError, SecretError) as exc:
        raise ValueError(f"{key}.clientCertificate.privateKey: {exc}") from exc
    return "", certificate, private_key


def _scope(graph_url: str) -> str:
    parsed = urlparse(graph_url)
    return f"{parsed.scheme}://{parsed.netloc}{GRAPH_SCOPE_SUFFIX}"

"""ews-ingest's view of config.json (calendarProviders, cache, conference options) plus its tuning knobs.

Everything that is configuration comes from the shared schema (tccal.config). The knobs below are operational
timings that have no key in config.json; each can be overridden with an environment variable
(`EWS_INGEST_<NAME>`, e.g. `EWS_INGEST_SAFETY_SYNC_SECONDS=600`) and tests set them directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tccal.conference_marker import tcs_hosts
from tccal.config import Config
from tccal.config.schema import ConferenceDefaults, MailboxRouting
from tccal.grpckit import GrpcCaller
from tccal.ingest.tuning import knobs_from_env, refuse_shared_names, unique_users
from tccal.secrets import SecretError

#: A credential always gets at least this many connections for ordinary calls.
MIN_CONNECTIONS = 2
#: Streaming connections per credential when not set: 200 subscriptions each, room for 10,000 mailboxes.
MAX_STREAMS_PER_CREDENTIAL = 50
ENV_PREFIX = "EWS_INGEST_"


@dataclass(frozen=True)
class Tuning:
    """Operational timings and sizes (environment: EWS_INGEST_<FIELD NAME IN CAPITALS>)."""

    #: Every mailbox is synced at least this often, whatever the notifications say (safety net).
    safety_sync_seconds: float = 172800.0
    #: Mailboxes that found no room on a streaming connection are polled this often.
    poll_seconds: float = 60.0
    #: AllocateSeats is asked again this often (seats are 1-hour leases).
    seat_refresh_seconds: float = 300.0
    #: GetStreamingEvents ConnectionTimeout in minutes (Exchange allows 1-30).
    stream_minutes: int = 30
    #: Subscriptions per GetStreamingEvents connection (Exchange allows 200).
    stream_group_size: int = 200
    #: Streaming connections per credential, besides maxConcurrency; 0 = MAX_STREAMS_PER_CREDENTIAL (opened as needed).
    streams_per_credential: int = 0
    #: Waiting longer than this for a free EWS connection logs "Cant get free socket from pool".
    pool_wait_warn_seconds: float = 30.0
    #: Items per GetItem request.
    get_item_batch: int = 50
    #: MaxChangesReturned of SyncFolderItems (1-512).
    sync_page_size: int = 100
    #: Longest back-off honoured per call before the mailbox sync gives up and retries later.
    max_busy_wait_seconds: float = 300.0
    #: Attempts of a call failing with a transient error (jittered exponential back-off between them).
    transient_attempts: int = 4
    #: Base and cap of the retry back-off of a mailbox whose sync failed.
    error_backoff_base_seconds: float = 2.0
    error_backoff_cap_seconds: float = 300.0
    #: HTTP timeout of one EWS request (exchangelib's default is 120 s).
    http_timeout_seconds: float = 120.0
    #: Readiness: how long a provider probe result is reused.
    probe_cache_seconds: float = 5.0
    #: Replicas (ews_ingest.ownership): a mailbox-shard lease lives this long unless renewed (INGEST_LEASES TTL).
    lease_seconds: float = 15.0
    #: Leases and the replica's heartbeat are renewed this often (less than a third of lease_seconds).
    lease_renew_seconds: float = 4.0
    #: A replica whose renewal did not succeed stops a shard's mailboxes this long before the lease could expire.
    lease_margin_seconds: float = 3.0
    #: Mailboxes are hashed into this many shards, the unit of ownership (the first replica fixes it in KV).
    lease_shards: int = 64

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Tuning:
        tuning = cls(**knobs_from_env(cls, ENV_PREFIX, environ))  # type: ignore[arg-type]
        tuning.validate()
        return tuning

    def validate(self) -> None:
        if not 1 <= self.stream_minutes <= 30:
            raise ValueError(f"stream_minutes={self.stream_minutes}: Exchange allows 1-30 minutes")
        if not 1 <= self.stream_group_size <= 200:
            raise ValueError(f"stream_group_size={self.stream_group_size}: Exchange allows 1-200 subscriptions")
        if not 1 <= self.sync_page_size <= 512:
            raise ValueError(f"sync_page_size={self.sync_page_size}: SyncFolderItems allows 1-512")
        if self.get_item_batch < 1:
            raise ValueError(f"get_item_batch={self.get_item_batch}: must be at least 1")
        if not 0 < self.lease_renew_seconds < self.lease_seconds / 3:
            raise ValueError(
                f"lease_renew_seconds={self.lease_renew_seconds}: must be above 0 and below a third of "
                f"lease_seconds={self.lease_seconds}"
            )
        if not 0 < self.lease_margin_seconds < self.lease_seconds - 2 * self.lease_renew_seconds:
            raise ValueError(
                f"lease_margin_seconds={self.lease_margin_seconds}: must be above 0 and leave two renewals "
                f"(lease_seconds - 2 * lease_renew_seconds = {self.lease_seconds - 2 * self.lease_renew_seconds})"
            )
        if not 1 <= self.lease_shards <= 4096:
            raise ValueError(f"lease_shards={self.lease_shards}: must be 1-4096")


@dataclass(frozen=True)
class CredentialSettings:
    login: str
    password: str


@dataclass(frozen=True)
class ProviderSettings:
    """One calendarProviders entry, secrets revealed."""

    #: Name used in subjects and CalendarChange.provider: the host (host:port when two providers share a host).
    name: str
    host: str
    port: int
    scheme: str
    path: str
    autodiscover_path: str | None
    auth: str
    verify_tls: bool
    max_concurrency: int
    exchange_version: str | None
    credentials: tuple[CredentialSettings, ...]
    users: tuple[str, ...]

    @property
    def ews_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    @property
    def autodiscover_url(self) -> str | None:
        if self.autodiscover_path is None:
            return None
        return f"{self.scheme}://{self.host}:{self.port}{self.autodiscover_path}"

    @property
    def connections(self) -> int:
        """EWS connections per credential: maxConcurrency, never below MIN_CONNECTIONS."""
        return max(MIN_CONNECTIONS, self.max_concurrency)


@dataclass(frozen=True)
class IngestSettings:
    providers: tuple[ProviderSettings, ...]
    auto_sync: bool
    backward_months: int
    forward_months: int
    conference_defaults: ConferenceDefaults
    #: Host names of whitelisted TrueConf Servers: join links https://<host>/c/<id> are recognised for these.
    tcs_hosts: frozenset[str]
    write_back_join_link: bool
    licensing_address: str
    tuning: Tuning = field(default_factory=Tuning)
    #: How AllocateSeats is called: ews-ingest's token (derived from grpc.adminToken) and grpc.tls.
    licensing_caller: GrpcCaller = field(default_factory=GrpcCaller)
    #: Which entry serves an address: those a Graph entry lists (first, whatever an EWS entry lists) or claims by its
    #: `domains` are graph-ingest's - it answers their control requests, ews-ingest stays silent.
    routing: MailboxRouting = field(default_factory=lambda: MailboxRouting(frozenset(), {}, {}))

    def graph_serves(self, mailbox: str) -> bool:
        """Whether the config gives `mailbox` to a Graph provider (graph-ingest answers and syncs it)."""
        return self.routing.graph_provider(mailbox) is not None

    @classmethod
    def from_config(cls, config: Config, reveal: Callable[[str], str], tuning: Tuning | None = None) -> IngestSettings:
        hosts = [p.host.lower() for _, p in config.ews_providers]
        providers: list[ProviderSettings] = []
        for index, provider in config.ews_providers:  # "type": "graph" entries are graph-ingest's
            name = provider.host.lower()
            if hosts.count(name) > 1:
                name = f"{name}:{provider.port}"
            credentials = []
            for number, credential in enumerate(provider.credentials):
                try:
                    password = reveal(credential.password)
                except (ValueError, SecretError) as exc:
                    raise ValueError(f"calendarProviders[{index}].credentials[{number}].password: {exc}") from exc
                credentials.append(CredentialSettings(credential.login, password))
            providers.append(
                ProviderSettings(
                    name=name,
                    host=provider.host,
                    port=provider.port,
                    scheme=provider.scheme,
                    path=provider.path,
                    autodiscover_path=provider.autodiscover_path,
                    auth=provider.auth,
                    verify_tls=provider.verify_tls,
                    max_concurrency=provider.max_concurrency,
                    exchange_version=provider.exchange_version,
                    credentials=tuple(credentials),
                    users=unique_users(provider.users),
                )
            )
        refuse_shared_names([p.name for p in providers], "the same host and port appear twice")
        return cls(
            providers=tuple(providers),
            auto_sync=config.cache.auto_sync,
            backward_months=config.cache.backward,
            forward_months=config.cache.forward,
            conference_defaults=config.conference_defaults,
            tcs_hosts=tcs_hosts(config),
            write_back_join_link=config.write_back_join_link,
            licensing_address=config.grpc.address_of("licensing"),
            tuning=tuning or Tuning.from_env(),
            licensing_caller=GrpcCaller.for_service(config, "ews-ingest", reveal),
            routing=config.mailbox_routing,
        )

    def provider(self, name: str) -> ProviderSettings:
        for provider in self.providers:
            if provider.name == name:
                return provider
        raise KeyError(f"no calendar provider named {name!r}")

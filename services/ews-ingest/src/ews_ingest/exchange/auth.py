"""exchangelib credentials and protocols for one impersonation account.

Every pool gets credentials that compare unequal to any other (a private token), so exchangelib's process-wide
protocol cache (keyed by endpoint + credentials) never hands one pool's connections, retry policy or connection
limit to another - the cache otherwise keeps the first retry policy it saw for an endpoint and login.
"""

from __future__ import annotations

import uuid
from typing import Any

from exchangelib import BASIC, NTLM, Build, Configuration, Credentials, FailFast, Version
from exchangelib.errors import SessionPoolMinSizeReached
from exchangelib.protocol import Protocol

from ews_ingest.exchange.http import IngestHTTPAdapter, NoVerifyIngestHTTPAdapter

AUTH_TYPES = {"ntlm": NTLM, "basic": BASIC}
# RequestServerVersion Exchange 2016 and later accept (exchangelib's names), with a matching build.
VERSIONS = {
    "Exchange2016": (Build(15, 1), "Exchange2016"),
    "Exchange2019": (Build(15, 2), "Exchange2016"),
    "ExchangeSE": (Build(15, 2), "Exchange2016"),
}


class PoolCredentials(Credentials):  # type: ignore[misc]  # exchangelib is untyped
    """Username + password plus a private token that keeps this pool's protocol to itself."""

    def __init__(self, username: str, password: str) -> None:
        super().__init__(username=username, password=password)
        self.pool_token = uuid.uuid4().hex


class IngestProtocol(Protocol):  # type: ignore[misc]
    """exchangelib's Protocol whose session pool never shrinks: ews-ingest bounds concurrency itself, and a pool
    shrunk below the streaming connections it holds would starve every other call. Its responses give the XML
    parser a body already read in one piece (ews_ingest.exchange.http)."""

    HTTP_ADAPTER_CLS = IngestHTTPAdapter

    def decrease_poolsize(self) -> None:
        raise SessionPoolMinSizeReached("ews-ingest keeps its session pool size")


class NoVerifyIngestProtocol(IngestProtocol):
    """The same without TLS certificate verification (calendarProviders[].verifyTls = false)."""

    HTTP_ADAPTER_CLS = NoVerifyIngestHTTPAdapter


def version_of(name: str | None) -> Version | None:
    if name is None:
        return None
    build, api = VERSIONS[name]
    return Version(build=build, api_version=api)


def make_configuration(
    endpoint: str,
    credentials: PoolCredentials,
    *,
    auth: str,
    max_connections: int,
    version: str | None,
) -> Configuration:
    return Configuration(
        service_endpoint=endpoint,
        credentials=credentials,
        auth_type=AUTH_TYPES[auth],
        retry_policy=FailFast(),
        max_connections=max_connections,
        version=version_of(version),
    )


def make_protocol(config: Configuration, *, verify_tls: bool, timeout: float) -> Any:
    """Create (and cache, for Account) this configuration's protocol of our own class."""
    cls = IngestProtocol if verify_tls else NoVerifyIngestProtocol
    try:
        existing, _ = Protocol[config]
    except KeyError:
        existing = None
    if existing is not None and not isinstance(existing, cls):
        del Protocol[config]
    protocol = cls(config=config)
    protocol.TIMEOUT = timeout
    # The cache may have held an instance with another policy: this pool's is FailFast, retries are ours.
    protocol.config.retry_policy = FailFast()
    return protocol


def forget_protocol(config: Configuration) -> None:
    """Close this configuration's sessions and drop it from exchangelib's cache."""
    try:
        protocol, _ = Protocol[config]
    except KeyError:
        return
    if not isinstance(protocol, Exception):
        protocol.close()
    del Protocol[config]

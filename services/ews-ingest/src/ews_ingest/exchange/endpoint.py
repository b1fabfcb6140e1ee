"""Where a mailbox's EWS lives: the provider's fixed endpoint scheme://host:port/path, or, with autodiscoverPath,
the URL autodiscover (SOAP GetUserSettings) names for that mailbox - needed behind a DAG or a cluster.

Only the URL is taken from autodiscover. Its EwsSupportedSchemas would make exchangelib pick a build of 15.20
(its "Office 365" row) for an on-premises server; the version is probed on the EWS endpoint itself (or pinned with
exchangeVersion) instead.
"""

from __future__ import annotations

import logging
import threading

from exchangelib import Configuration, FailFast
from exchangelib.autodiscover.protocol import AutodiscoverProtocol
from exchangelib.errors import AutoDiscoverFailed, ErrorNonExistentMailbox
from exchangelib.protocol import NoVerifyHTTPAdapter

from ews_ingest.exchange.auth import AUTH_TYPES, PoolCredentials
from ews_ingest.settings import ProviderSettings

log = logging.getLogger(__name__)


class _NoVerifyAutodiscoverProtocol(AutodiscoverProtocol):  # type: ignore[misc]  # exchangelib is untyped
    HTTP_ADAPTER_CLS = NoVerifyHTTPAdapter


class EndpointResolver:
    """EWS URL per mailbox for one provider and credential (blocking: call it from a worker thread)."""

    def __init__(self, provider: ProviderSettings, credentials: PoolCredentials) -> None:
        self.provider = provider
        self.credentials = credentials
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self._autodiscover: AutodiscoverProtocol | None = None

    def _protocol(self) -> AutodiscoverProtocol:
        with self._lock:
            if self._autodiscover is None:
                cls = AutodiscoverProtocol if self.provider.verify_tls else _NoVerifyAutodiscoverProtocol
                self._autodiscover = cls(
                    config=Configuration(
                        service_endpoint=self.provider.autodiscover_url,
                        credentials=self.credentials,
                        auth_type=AUTH_TYPES[self.provider.auth],
                        retry_policy=FailFast(),
                    )
                )
            return self._autodiscover

    def ews_url(self, mailbox: str) -> str:
        if self.provider.autodiscover_url is None:
            return self.provider.ews_url
        with self._lock:
            cached = self._cache.get(mailbox)
        if cached is not None:
            return cached
        response = self._protocol().get_user_settings(
            user=mailbox, settings=["internal_ews_url", "external_ews_url", "user_display_name"]
        )
        if isinstance(response, Exception):
            raise response
        response.raise_errors()
        settings = response.user_settings or {}
        url = settings.get("internal_ews_url") or settings.get("external_ews_url")
        if not url:
            if response.error_code == "InvalidUser":
                raise ErrorNonExistentMailbox(f"autodiscover does not know {mailbox}")
            raise AutoDiscoverFailed(f"autodiscover named no EWS URL for {mailbox} ({response.error_code})")
        log.info("autodiscover", extra={"mailbox": mailbox, "ews_url": url, "provider": self.provider.name})
        with self._lock:
            self._cache[mailbox] = str(url)
        return str(url)

    def forget(self, mailbox: str) -> None:
        """Drop the cached URL (after the mailbox moved: the next call asks autodiscover again)."""
        with self._lock:
            self._cache.pop(mailbox, None)

    def close(self) -> None:
        with self._lock:
            if self._autodiscover is not None:
                self._autodiscover.close()
                self._autodiscover = None

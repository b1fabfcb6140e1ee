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
#: Where Exchange serves SOAP autodiscover when the config names no autodiscoverPath.
STANDARD_AUTODISCOVER_PATH = "/autodiscover/autodiscover.svc"


class _NoVerifyAutodiscoverProtocol(AutodiscoverProtocol):  # type: ignore[misc]  # exchangelib is untyped
    HTTP_ADAPTER_CLS = NoVerifyHTTPAdapter


class EndpointResolver:
    """EWS URL per mailbox for one provider and credential (blocking: call it from a worker thread)."""

    def __init__(self, provider: ProviderSettings, credentials: PoolCredentials) -> None:
        self.provider = provider
        self.credentials = credentials
        self._cache: dict[str, str] = {}
        self._groupings: dict[str, str] = {}  # mailbox -> "GroupingInformation|ExternalEwsUrl" ("" unknown)
        self._grouping_warned = False
        self._lock = threading.Lock()
        self._autodiscover: AutodiscoverProtocol | None = None
        self._autodiscover_url = provider.autodiscover_url or (
            f"{provider.scheme}://{provider.host}:{provider.port}{STANDARD_AUTODISCOVER_PATH}"
        )

    def _protocol(self) -> AutodiscoverProtocol:
        with self._lock:
            if self._autodiscover is None:
                cls = AutodiscoverProtocol if self.provider.verify_tls else _NoVerifyAutodiscoverProtocol
                self._autodiscover = cls(
                    config=Configuration(
                        service_endpoint=self._autodiscover_url,
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

    def grouping(self, mailbox: str) -> str:
        """The streaming-subscription group of `mailbox`: its GroupingInformation and ExternalEwsUrl from
        autodiscover ("Maintain affinity between a group of subscriptions and the Mailbox server in Exchange":
        only mailboxes that share both may share a group and its anchor). Asked at the configured autodiscover
        path, else at Exchange's standard one on the EWS host; "" when autodiscover does not answer it (one
        server, or none reachable): such mailboxes are grouped by credential alone."""
        with self._lock:
            cached = self._groupings.get(mailbox)
        if cached is not None:
            return cached
        try:
            response = self._protocol().get_user_settings(
                user=mailbox, settings=["external_ews_url", "internal_ews_url", "grouping_information"]
            )
            if isinstance(response, Exception):
                raise response
            settings = response.user_settings or {}
        except Exception as exc:  # no autodiscover where looked: group by credential
            if not self._grouping_warned:
                self._grouping_warned = True
                log.warning(
                    "autodiscover gives no GroupingInformation: streaming groups by credential only",
                    extra={"provider": self.provider.name, "url": self._autodiscover_url, "error": repr(exc)},
                )
            settings = {}
        information = str(settings.get("grouping_information") or "")
        url = str(settings.get("external_ews_url") or settings.get("internal_ews_url") or "")
        key = f"{information}|{url}" if information else ""
        with self._lock:
            self._groupings[mailbox] = key
        return key

    def cached_grouping(self, mailbox: str) -> str | None:
        with self._lock:
            return self._groupings.get(mailbox)

    def forget(self, mailbox: str) -> None:
        """Drop the cached URL and group (after the mailbox moved: the next call asks autodiscover again)."""
        with self._lock:
            self._cache.pop(mailbox, None)
            self._groupings.pop(mailbox, None)

    def close(self) -> None:
        with self._lock:
            if self._autodiscover is not None:
                self._autodiscover.close()
                self._autodiscover = None

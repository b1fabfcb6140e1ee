"""IngestService.TestMailbox: can ews-ingest read this mailbox, and if not, what is wrong - step by step, with the
configuration and the credential that serve it (`tc-calendar test exchange USER` needs no secret of its own).

Steps: dns, tcp, tls (the EWS endpoint; autodiscover first when the provider uses it), auth (the credential alone,
no impersonation: IIS answers 401 to a wrong password before EWS looks at the request), impersonation (GetFolder
of the mailbox's calendar as the mailbox: ErrorImpersonateUserDenied, ErrorNonExistentMailbox), read (one FindItem
of the calendar). A fresh connection is used, so a check never rides on a session the syncs authenticated earlier.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from exchangelib import IMPERSONATION, UTC, Account
from exchangelib import errors as ews

from ews_ingest.exchange.auth import PoolCredentials, forget_protocol, make_configuration, make_protocol
from ews_ingest.exchange.endpoint import EndpointResolver
from ews_ingest.exchange.errors import describe
from ews_ingest.exchange.pool import CredentialPool
from ews_ingest.scheduler import Scheduler
from ews_ingest.settings import ProviderSettings
from tccal.connectivity import Checklist, StepFailedError, connect, handshake, resolve
from trueconf.calendar.v1 import ingest_pb2

#: A request every EWS accepts from any authenticated account: the root folder of the caller's own mailbox.
#: Only the HTTP status matters to the auth step (401: the credential is refused); a service account without a
#: mailbox of its own gets an EWS error in a 200/500 answer, which still proves the password.
_PROBE = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
    'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">'
    '<soap:Header><t:RequestServerVersion Version="Exchange2016"/></soap:Header>'
    "<soap:Body><m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
    '<m:FolderIds><t:DistinguishedFolderId Id="msgfolderroot"/></m:FolderIds></m:GetFolder></soap:Body>'
    "</soap:Envelope>"
)


@dataclass(frozen=True)
class Target:
    """What the check uses: the mailbox, its provider and credential, and their config keys (for the fixes)."""

    mailbox: str
    provider: ProviderSettings
    pool: CredentialPool
    provider_key: str
    credential_key: str


def target_of(scheduler: Scheduler, mailbox: str) -> Target:
    """The credential serving `mailbox`, or the first provider's first one for a mailbox ews-ingest does not sync."""
    entry = scheduler.entries.get(mailbox)
    providers = list(scheduler.settings.providers)
    if entry is not None:
        pool = entry.pool
    else:
        if not providers:
            raise ValueError("no calendarProviders are configured")
        pool = scheduler.pools[providers[0].name][0]
    provider_index = next(i for i, p in enumerate(providers) if p.name == pool.provider.name)
    credential_index = scheduler.pools[pool.provider.name].index(pool)
    provider_key = f"calendarProviders[{provider_index}]"
    return Target(mailbox, pool.provider, pool, provider_key, f"{provider_key}.credentials[{credential_index}]")


async def test_mailbox(scheduler: Scheduler, mailbox: str) -> ingest_pb2.TestMailboxResponse:
    target = target_of(scheduler, mailbox)
    provider = target.provider
    checks = Checklist()
    response = ingest_pb2.TestMailboxResponse(provider=provider.name, credential=target.pool.login)
    credentials = PoolCredentials(target.pool.login, target.pool.credentials.password)
    timeout = scheduler.tuning.http_timeout_seconds
    ews_url = provider.ews_url
    if provider.autodiscover_path:
        discover = urlsplit(f"{provider.scheme}://{provider.host}:{provider.port}{provider.autodiscover_path}")
        await _network_steps(checks, discover.hostname or provider.host, discover.port or provider.port, target)
        resolver = EndpointResolver(provider, credentials)

        async def autodiscover() -> str:
            nonlocal ews_url
            try:
                ews_url = await asyncio.to_thread(resolver.ews_url, mailbox)
            except Exception as exc:
                raise StepFailedError(
                    f"autodiscover gives no EWS URL for {mailbox}: {describe(exc)}",
                    f"check {target.provider_key}.autodiscoverPath and that {mailbox} is a mailbox of this "
                    "organization (its primary SMTP address)",
                ) from None
            finally:
                resolver.close()
            return f"autodiscover names {ews_url}"

        await checks.run("autodiscover", autodiscover)
    response.ews_url = ews_url
    endpoint = urlsplit(ews_url)
    host, port = endpoint.hostname or provider.host, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if not checks.failed:
        await _network_steps(checks, host, port, target, https=endpoint.scheme == "https")
    config = make_configuration(ews_url, credentials, auth=provider.auth, max_connections=1,
                                version=provider.exchange_version)  # fmt: skip
    protocol = make_protocol(config, verify_tls=provider.verify_tls, timeout=timeout)
    try:
        await checks.run("auth", lambda: asyncio.to_thread(_authenticate, protocol, ews_url, target))
        account = Account(
            primary_smtp_address=mailbox,
            config=config,
            access_type=IMPERSONATION,
            autodiscover=False,
            default_timezone=UTC,
            locale="en_US",
        )
        await checks.run("impersonation", lambda: asyncio.to_thread(_impersonate, account, target))
        await checks.run("read", lambda: asyncio.to_thread(_read, account, target))
    finally:
        await asyncio.to_thread(forget_protocol, config)
    response.steps.extend(checks.steps)
    return response


async def _network_steps(checks: Checklist, host: str, port: int, target: Target, *, https: bool = True) -> None:
    key = f"{target.provider_key}.host"
    await checks.run("dns", lambda: resolve(host, port, key))
    await checks.run("tcp", lambda: connect(host, port, f"{target.provider_key}.port"))
    if https:
        await checks.run(
            "tls",
            lambda: handshake(
                host, port, verify=target.provider.verify_tls, verify_key=f"{target.provider_key}.verifyTls"
            ),
        )
    else:
        checks.skip("tls", f"{target.provider_key}.scheme is http: EWS and its passwords go unencrypted")


def _authenticate(protocol: Any, url: str, target: Target) -> str:
    login = target.pool.login
    session = protocol.create_session()
    try:
        answer = session.post(
            url, data=_PROBE.encode(), headers={"Content-Type": "text/xml; charset=utf-8"}, timeout=30,
            allow_redirects=False,
        )  # fmt: skip
    except OSError as exc:
        raise StepFailedError(f"EWS request failed: {exc!r}", "see the tcp and tls steps; check any proxy") from None
    finally:
        session.close()
    if answer.status_code == 401:
        raise StepFailedError(
            f"Exchange refuses {login}: HTTP 401 with {target.provider.auth} authentication",
            f"set {target.credential_key}.password to the current password of {login}, encrypted with "
            f"`tc-calendar hash-pass` on this machine (or with TC_CALENDAR_KEY); check {target.provider_key}.auth "
            "(ntlm or basic) is enabled on the EWS virtual directory",
        )
    if answer.status_code in (301, 302, 303, 307, 308, 404):
        raise StepFailedError(
            f"{url} answered HTTP {answer.status_code}: no EWS there",
            f"check {target.provider_key}.path (usually /EWS/Exchange.asmx) and the scheme/port",
        )
    return f"{login} authenticated ({target.provider.auth}, HTTP {answer.status_code})"


def _impersonate(account: Any, target: Target) -> str:
    login, mailbox = target.pool.login, target.mailbox
    try:
        folder = account.calendar
    except (ews.ErrorImpersonateUserDenied, ews.ErrorImpersonationDenied, ews.ErrorImpersonationFailed) as exc:
        raise StepFailedError(
            f"{login} may not impersonate {mailbox}: {describe(exc)}",
            f"give {login} the ApplicationImpersonation role with {mailbox} in its scope "
            f"(New-ManagementRoleAssignment -Role ApplicationImpersonation -User {login})",
        ) from None
    except (ews.ErrorNonExistentMailbox, ews.ErrorMailboxMoveInProgress) as exc:
        raise StepFailedError(
            f"Exchange has no mailbox {mailbox}: {describe(exc)}",
            f"use the mailbox's primary SMTP address (in {target.provider_key}.users and in TrueConf Server)",
        ) from None
    except (ews.UnauthorizedError, ews.ErrorAccessDenied) as exc:
        raise StepFailedError(
            f"access to {mailbox} denied for {login}: {describe(exc)}",
            f"give {login} the ApplicationImpersonation role (see Exchange's 'Configure impersonation')",
        ) from None
    except Exception as exc:
        raise StepFailedError(
            f"opening the calendar of {mailbox} failed: {describe(exc)}", "see the Exchange server's EWS logs"
        ) from None
    return f"{login} opens the calendar of {mailbox} ({folder.name or 'Calendar'})"


def _read(account: Any, target: Target) -> str:
    try:
        items = list(account.calendar.all().only("start", "end")[:1])
        total = account.calendar.total_count
    except Exception as exc:
        raise StepFailedError(
            f"reading the calendar of {target.mailbox} failed: {describe(exc)}",
            "the calendar folder cannot be read: check the folder's permissions and the Exchange server's EWS logs",
        ) from None
    count = f"{total} item(s) in the calendar" if total is not None else "the calendar"
    return f"FindItem read {len(items)} item(s) of {count}"

"""The licensing service's settings, read from the shared config (`license` section and `calendarProviders`).

Keys read (defaults from tccal.config.schema.LicenseConfig):

* ``license.authorityPublicKey`` (default empty): the registration authority's Ed25519 public key, base64 of
  the raw 32 bytes or a PEM block. Empty: the service runs but accepts no license (status UNREGISTERED, and
  registration is refused naming the key); a value that is not such a key stops the service (exit code 2).
* ``license.registrationUrl`` (``https://reg.trueconf.com:4310``): the registration server.
* ``license.gracePeriodDays`` (7): Free tier — days of work while the registration server is unreachable.
* ``license.checkIntervalHours`` (12): Free tier — how often the license is confirmed online.
* ``calendarProviders[].users``: the configured mailboxes, first in line for seats; the only source of that
  priority (AllocateSeats' ``configured`` flag is the caller's word and is ignored).

Fixed here (no config key yet): a failed check is retried every 5 minutes (or the check interval if shorter),
a seat lease lasts 1 hour, a call to the registration server times out after 10 seconds, and the registration
server's TLS certificate is verified against the system CA store (``SSL_CERT_FILE`` selects another bundle).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from licensing.document import TrustedAuthorities
from licensing.errors import NotConfiguredError
from licensing.registration_client import validate_url
from licensing.seats import normalize_mailbox
from tccal.config import Config

PRODUCT_VERSION = "1.0.0"
NOT_CONFIGURED = (
    "license.authorityPublicKey is not set, so no license can be verified: set it to the registration "
    "authority's public key (base64 of the raw Ed25519 key, or PEM)"
)
RETRY_INTERVAL = timedelta(minutes=5)
SEAT_LEASE = timedelta(hours=1)
REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class LicensingSettings:
    trusted: TrustedAuthorities | None
    registration_url: str
    grace_period: timedelta
    check_interval: timedelta
    retry_interval: timedelta
    seat_lease: timedelta
    request_timeout: float
    configured_users: frozenset[str]
    product_version: str = PRODUCT_VERSION

    def authorities(self) -> TrustedAuthorities:
        if self.trusted is None:
            raise NotConfiguredError(NOT_CONFIGURED)
        return self.trusted

    @classmethod
    def from_config(cls, config: Config) -> LicensingSettings:
        """Raises ``ValueError`` naming the key and the bad value (the service then exits with code 2)."""
        lic = config.license
        trusted = None
        if lic.authority_public_key.strip():
            try:
                trusted = TrustedAuthorities.from_config(lic.authority_public_key)
            except ValueError as exc:
                raise ValueError(f"license.authorityPublicKey: {exc}") from None
        try:
            url = validate_url(lic.registration_url)
        except ValueError as exc:
            raise ValueError(f"license.registrationUrl: {exc}") from None
        check_interval = timedelta(hours=lic.check_interval_hours)
        users = frozenset(normalize_mailbox(u) for p in config.calendar_providers for u in p.users)
        return cls(
            trusted=trusted,
            registration_url=url,
            grace_period=timedelta(days=lic.grace_period_days),
            check_interval=check_interval,
            retry_interval=min(RETRY_INTERVAL, check_interval),
            seat_lease=SEAT_LEASE,
            request_timeout=REQUEST_TIMEOUT_SECONDS,
            configured_users=users,
        )

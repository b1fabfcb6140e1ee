"""The licensing service's settings, read from the shared config (`license` section and `calendarProviders`).

Keys read (defaults from tccal.config.schema.LicenseConfig):

* ``license.testAuthorityPublicKey`` (default empty, TEST ONLY): an Ed25519 public key (base64 of the raw 32
  bytes or a PEM block) trusted besides the authority key built into the product (``licensing.authority``) —
  the registration emulator's, in tests and the sandbox. Refused (exit code 2, naming the setting) when
  ``TC_CALENDAR_PRODUCTION`` is set, as in the product images; a value that is not such a key stops the
  service too.
* ``license.registrationUrl`` (``https://reg.trueconf.com:4310``): the registration server.
* ``license.gracePeriodDays`` (7): Free tier — days of work while the registration server is unreachable.
* ``license.checkIntervalHours`` (12): Free tier — how often the license is confirmed online.
* ``calendarProviders[].users``: the configured mailboxes, first in line for seats; the only source of that
  priority (AllocateSeats' ``configured`` flag is the caller's word and is ignored).

The machine key (``tccal.secrets``: ``TC_CALENDAR_KEY``, ``TC_CALENDAR_KEY_FILE`` or
``~/.config/tc-calendar/machine.key``) is read too: the installation's fingerprint and the seals of the licensing
rows are derived from it (``licensing.sealing``).

Fixed here (no config key yet): a failed check is retried every 5 minutes (or the check interval if shorter),
a call to the registration server times out after 10 seconds, and the registration server's TLS certificate is
verified against the system CA store (``SSL_CERT_FILE`` selects another bundle).

A seat lease lasts 1 hour; the environment variable ``LICENSING_SEAT_LEASE_SECONDS`` (10 to 86400) sets another
length (tests make it short). ews-ingest stops syncing, and sync-engine stops showing, a mailbox whose lease ran
out without licensing renewing it — so this is also how long seats outlive an unreachable licensing service.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from licensing.authority import AUTHORITY_PUBLIC_KEY, TEST_KEY_SETTING, refuse_test_key_in_production
from licensing.document import TrustedAuthorities
from licensing.registration_client import validate_url
from licensing.seats import normalize_mailbox
from tccal.config import Config
from tccal.secrets import SecretError, load_key

PRODUCT_VERSION = "1.0.0"
RETRY_INTERVAL = timedelta(minutes=5)
SEAT_LEASE = timedelta(hours=1)
SEAT_LEASE_ENV = "LICENSING_SEAT_LEASE_SECONDS"
SEAT_LEASE_BOUNDS = (10, 86400)
REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class LicensingSettings:
    trusted: TrustedAuthorities
    machine_key: bytes
    registration_url: str
    grace_period: timedelta
    check_interval: timedelta
    retry_interval: timedelta
    seat_lease: timedelta
    request_timeout: float
    configured_users: frozenset[str]
    product_version: str = PRODUCT_VERSION

    def authorities(self) -> TrustedAuthorities:
        return self.trusted

    @classmethod
    def from_config(cls, config: Config) -> LicensingSettings:
        """Raises ``ValueError`` naming the key and the bad value (the service then exits with code 2)."""
        lic = config.license
        keys = [AUTHORITY_PUBLIC_KEY]
        if lic.test_authority_public_key.strip():
            refuse_test_key_in_production()
            keys.append(lic.test_authority_public_key)
        try:
            trusted = TrustedAuthorities.from_config(keys)
        except ValueError as exc:
            raise ValueError(f"{TEST_KEY_SETTING}: {exc}") from None
        try:
            machine_key = load_key()
        except (SecretError, OSError) as exc:
            raise ValueError(f"the machine key (TC_CALENDAR_KEY / TC_CALENDAR_KEY_FILE): {exc}") from None
        try:
            url = validate_url(lic.registration_url)
        except ValueError as exc:
            raise ValueError(f"license.registrationUrl: {exc}") from None
        check_interval = timedelta(hours=lic.check_interval_hours)
        users = frozenset(normalize_mailbox(u) for p in config.calendar_providers for u in p.users)
        return cls(
            trusted=trusted,
            machine_key=machine_key,
            registration_url=url,
            grace_period=timedelta(days=lic.grace_period_days),
            check_interval=check_interval,
            retry_interval=min(RETRY_INTERVAL, check_interval),
            seat_lease=seat_lease(os.environ),
            request_timeout=REQUEST_TIMEOUT_SECONDS,
            configured_users=users,
        )


def seat_lease(environ: Mapping[str, str]) -> timedelta:
    """The seat lease: LICENSING_SEAT_LEASE_SECONDS when set, else 1 hour; ValueError naming a bad value."""
    raw = environ.get(SEAT_LEASE_ENV, "").strip()
    if not raw:
        return SEAT_LEASE
    low, high = SEAT_LEASE_BOUNDS
    try:
        seconds = int(raw)
    except ValueError:
        raise ValueError(f"{SEAT_LEASE_ENV}={raw!r} is not a whole number of seconds") from None
    if not low <= seconds <= high:
        raise ValueError(f"{SEAT_LEASE_ENV}={raw!r} must be between {low} and {high} seconds")
    return timedelta(seconds=seconds)

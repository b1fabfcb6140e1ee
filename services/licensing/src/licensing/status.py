"""What the installed license allows right now (pure: everything comes in as arguments)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from licensing.document import SignedLicense, format_timestamp
from licensing.fingerprint import short_fingerprint


class Status(enum.Enum):
    VALID = "valid"
    GRACE = "grace"
    SUSPENDED = "suspended"
    EXPIRED = "expired"
    UNREGISTERED = "unregistered"

    @property
    def may_sync(self) -> bool:
        return self in (Status.VALID, Status.GRACE)


@dataclass(frozen=True)
class CheckState:
    """Online checks of a Free license.

    ``last_success``: when the registration server last confirmed the license (registration counts).
    ``failing_since`` / ``last_error``: set while the latest attempts fail to reach the server.
    ``refusal``: the server answered and refused the license (revoked, unknown) — no grace for that.
    """

    last_success: datetime | None = None
    failing_since: datetime | None = None
    last_error: str | None = None
    refusal: str | None = None


@dataclass(frozen=True)
class Evaluation:
    status: Status
    reason: str
    grace_until: datetime | None
    seat_capacity: int

    @property
    def may_sync(self) -> bool:
        return self.status.may_sync


def _ts(moment: datetime) -> str:
    return format_timestamp(moment)


def evaluate(
    signed: SignedLicense | None,
    fingerprint: str,
    check: CheckState,
    now: datetime,
    grace: timedelta,
    registration_url: str,
) -> Evaluation:
    if signed is None:
        return Evaluation(
            Status.UNREGISTERED,
            "no license is installed: run tc_calendar --register KEY (or --offline_reg FILE)",
            None,
            0,
        )
    lic = signed.license
    if lic.installation_fingerprint != fingerprint:
        return Evaluation(
            Status.SUSPENDED,
            f"the installed license {lic.license_id} belongs to installation "
            f"{short_fingerprint(lic.installation_fingerprint)}, this is {short_fingerprint(fingerprint)}; "
            "register this installation",
            None,
            0,
        )
    if lic.expires_at is not None and now >= lic.expires_at:
        return Evaluation(
            Status.EXPIRED,
            f"license {lic.license_id} ({lic.tier.label}) expired at {_ts(lic.expires_at)}; sync is stopped",
            None,
            0,
        )
    capacity = lic.seat_capacity
    if not lic.tier.requires_online_check:
        return Evaluation(Status.VALID, f"{lic.tier.label} license {lic.license_id} is valid", None, capacity)
    if check.refusal is not None:
        return Evaluation(
            Status.SUSPENDED,
            f"the registration server {registration_url} refused the Free license {lic.license_id}: "
            f"{check.refusal}; sync is stopped",
            None,
            0,
        )
    if check.last_success is None:
        return Evaluation(
            Status.SUSPENDED,
            f"the Free license {lic.license_id} has never been confirmed by the registration server "
            f"{registration_url}; sync is stopped until it answers",
            None,
            0,
        )
    deadline = check.last_success + grace
    if now >= deadline:
        return Evaluation(
            Status.SUSPENDED,
            f"the Free license needs the registration server {registration_url}, not reached since "
            f"{_ts(check.last_success)}; the grace period ended at {_ts(deadline)} and sync is stopped "
            "until the server answers" + (f" (last error: {check.last_error})" if check.last_error else ""),
            deadline,
            0,
        )
    if check.last_error is not None:
        since = check.failing_since or check.last_success
        return Evaluation(
            Status.GRACE,
            f"the registration server {registration_url} is unreachable since {_ts(since)} "
            f"({check.last_error}); the Free license keeps working until {_ts(deadline)}",
            deadline,
            capacity,
        )
    return Evaluation(
        Status.VALID,
        f"Free license {lic.license_id} is valid, last confirmed online at {_ts(check.last_success)}",
        deadline,
        capacity,
    )

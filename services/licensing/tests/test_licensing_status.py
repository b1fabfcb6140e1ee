"""What the installed license allows: tiers, expiry, foreign installation, the Free grace period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from licensing.document import SignedLicense, TrustedAuthorities
from licensing.status import CheckState, Status, evaluate
from licensing.tiers import Tier
from registration_emulator.document import AuthorityKey, LicenseTerms
from registration_emulator.tiers import Tier as AuthorityTier

FP = "ab" * 32
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(days=7)
URL = "http://127.0.0.1:1"
SIGNER = AuthorityKey.generate()  # the registration emulator's side of the format
TRUSTED = TrustedAuthorities.from_config(SIGNER.public_text)


def signed(tier: Tier, seats: int = 100, expires_at: datetime | None = None, fp: str = FP) -> SignedLicense:
    granted = AuthorityTier(tier.value)
    terms = LicenseTerms("lic-1", granted, seats, granted.default_features, fp, T0, expires_at, "cd" * 32, "online")
    return TRUSTED.verify_envelope(SIGNER.sign_license(terms))


def test_no_license_is_unregistered_and_says_how_to_register() -> None:
    ev = evaluate(None, FP, CheckState(), T0, GRACE, URL)
    assert ev.status is Status.UNREGISTERED
    assert "--register KEY" in ev.reason
    assert ev.seat_capacity == 0 and not ev.may_sync


def test_paid_tiers_need_no_registration_server() -> None:
    for tier in (Tier.STANDARD, Tier.ENTERPRISE):
        ev = evaluate(signed(tier, 300), FP, CheckState(), T0 + timedelta(days=365), GRACE, URL)
        assert ev.status is Status.VALID
        assert ev.seat_capacity == 300
        assert ev.grace_until is None


def test_expiry_stops_every_tier_at_the_exact_moment() -> None:
    end = T0 + timedelta(days=30)
    for tier in Tier:
        lic = signed(tier, expires_at=end)
        ok = CheckState(last_success=end - timedelta(seconds=2))
        assert evaluate(lic, FP, ok, end - timedelta(seconds=1), GRACE, URL).may_sync
        ev = evaluate(lic, FP, ok, end, GRACE, URL)
        assert ev.status is Status.EXPIRED
        assert "expired at 2026-03-31T12:00:00Z" in ev.reason
        assert ev.seat_capacity == 0


def test_a_license_for_another_installation_is_suspended() -> None:
    ev = evaluate(signed(Tier.STANDARD, fp="ef" * 32), FP, CheckState(), T0, GRACE, URL)
    assert ev.status is Status.SUSPENDED
    assert "efef-efef-efef-efef" in ev.reason and "abab-abab-abab-abab" in ev.reason


def test_free_grace_period_runs_from_the_last_successful_check() -> None:
    lic = signed(Tier.FREE, 50)
    ok = CheckState(last_success=T0)
    assert evaluate(lic, FP, ok, T0 + timedelta(days=3), GRACE, URL).status is Status.VALID

    failing = CheckState(last_success=T0, failing_since=T0 + timedelta(hours=1), last_error="connection refused")
    inside = evaluate(lic, FP, failing, T0 + GRACE - timedelta(seconds=1), GRACE, URL)
    assert inside.status is Status.GRACE
    assert inside.may_sync and inside.seat_capacity == 50
    assert inside.grace_until == T0 + GRACE
    assert "connection refused" in inside.reason and "2026-03-08T12:00:00Z" in inside.reason

    over = evaluate(lic, FP, failing, T0 + GRACE, GRACE, URL)
    assert over.status is Status.SUSPENDED
    assert not over.may_sync and over.seat_capacity == 0
    assert URL in over.reason and "grace period ended at 2026-03-08T12:00:00Z" in over.reason

    recovered = CheckState(last_success=T0 + GRACE + timedelta(hours=5))
    assert evaluate(lic, FP, recovered, T0 + GRACE + timedelta(hours=5), GRACE, URL).status is Status.VALID


def test_free_license_refused_by_the_server_is_suspended_without_grace() -> None:
    ev = evaluate(signed(Tier.FREE, 50), FP, CheckState(last_success=T0, refusal="key revoked"), T0, GRACE, URL)
    assert ev.status is Status.SUSPENDED and "key revoked" in ev.reason


def test_free_seats_are_capped_at_50_whatever_the_document_says() -> None:
    ev = evaluate(signed(Tier.FREE, 500), FP, CheckState(last_success=T0), T0, GRACE, URL)
    assert ev.seat_capacity == 50

"""License documents: canonical form, Ed25519 signature, verification refusals, fixed test vectors
(docs/license-format.md §12). Signed documents come from the registration emulator, the authority's side."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from licensing.document import (
    CheckReceipt,
    License,
    TrustedAuthorities,
    canonical_json,
    parse_public_key,
)
from licensing.errors import RegistrationProtocolError, TamperedLicenseError
from licensing.tiers import Tier
from registration_emulator.document import AuthorityKey, LicenseTerms
from registration_emulator.tiers import Tier as AuthorityTier

SEED = bytes(range(32))
PUBLIC_KEY_TEXT = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
KEY_ID = "56475aa75463474c"
CANONICAL = (
    b'{"expires_at":"2027-01-31T00:00:00Z","features":["offline_registration"],"format":"tccal-license/1",'
    b'"installation_fingerprint":"abababababababababababababababababababababababababababababababab",'
    b'"issued_at":"2026-01-31T10:00:00Z","key_sha256":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",'
    b'"license_id":"lic-0001","registration":"online","seats":200,"tier":"standard"}'
)
SIGNATURE = "uOJBRLhgnhpMFpwM9AttG6pYsGPN68srDcy0Lq9mo9rwhlXotHd7u2zlrqJX0wvY6V6Nmb0WYdiG/599YG5oBQ=="


FIXED_FIELDS: dict[str, Any] = dict(
    license_id="lic-0001",
    seats=200,
    features=("offline_registration",),
    installation_fingerprint="ab" * 32,
    issued_at=datetime(2026, 1, 31, 10, 0, tzinfo=UTC),
    expires_at=datetime(2027, 1, 31, tzinfo=UTC),
    key_sha256="cd" * 32,
    registration="online",
)


def fixed_signer() -> AuthorityKey:
    """The authority of the test vector, as the registration emulator holds it."""
    return AuthorityKey(Ed25519PrivateKey.from_private_bytes(SEED))


def fixed_license(**changes: Any) -> License:
    return License(**{**FIXED_FIELDS, "tier": Tier.STANDARD, **changes})


def fixed_terms() -> LicenseTerms:
    """The same license as the authority writes it."""
    return LicenseTerms(**FIXED_FIELDS, tier=AuthorityTier.STANDARD)


def fixed_envelope() -> dict[str, Any]:
    return fixed_signer().sign_license(fixed_terms())


def test_fixed_vector_canonical_bytes_and_signature() -> None:
    signer = fixed_signer()
    assert signer.public_text == PUBLIC_KEY_TEXT
    assert signer.key_id == KEY_ID
    lic = fixed_license()
    assert canonical_json(lic.to_json()) == CANONICAL
    envelope = signer.sign_license(fixed_terms())
    assert envelope["signature"] == {"alg": "Ed25519", "key_id": KEY_ID, "value": SIGNATURE}
    assert TrustedAuthorities.from_config(PUBLIC_KEY_TEXT).verify_envelope(envelope).envelope() == envelope
    # The signature is over the documented prefix + canonical bytes, checked with the raw public key alone.
    raw_public = Ed25519PublicKey.from_public_bytes(base64.b64decode(PUBLIC_KEY_TEXT))
    raw_public.verify(base64.b64decode(SIGNATURE), b"TCCAL-LICENSE/1\x00" + CANONICAL)


def test_verification_round_trip_through_text_ignores_whitespace() -> None:
    trusted = TrustedAuthorities.from_config(PUBLIC_KEY_TEXT)
    signed = trusted.verify_envelope(fixed_envelope())
    assert signed.license == fixed_license()
    text = signed.to_text()
    compact = json.dumps(json.loads(text), separators=(",", ":"))
    for form in (text, compact):
        again = trusted.verify_envelope_text(form)
        assert again.license == signed.license
        assert again.key_id == KEY_ID


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seats", 100000),
        ("tier", "enterprise"),
        ("features", ["multiple_providers", "offline_registration"]),
        ("installation_fingerprint", "ef" * 32),
        ("expires_at", None),
        ("expires_at", "2099-01-31T00:00:00Z"),
        ("license_id", "lic-0002"),
        ("registration", "offline"),
    ],
)
def test_any_changed_field_breaks_the_signature(field: str, value: Any) -> None:
    trusted = TrustedAuthorities.from_config(PUBLIC_KEY_TEXT)
    envelope = fixed_envelope()
    tampered = copy.deepcopy(envelope)
    tampered["license"][field] = value
    with pytest.raises(TamperedLicenseError, match="modified after the authority signed it") as info:
        trusted.verify_envelope(tampered)
    assert info.value.exit_code == 15


@settings(max_examples=40, deadline=None)
@given(seats=st.integers(min_value=0, max_value=10**9).filter(lambda s: s != 200))
def test_no_seat_count_but_the_signed_one_verifies(seats: int) -> None:
    trusted = TrustedAuthorities.from_config(PUBLIC_KEY_TEXT)
    envelope = fixed_envelope()
    envelope["license"]["seats"] = seats
    with pytest.raises(TamperedLicenseError):
        trusted.verify_envelope(envelope)


def test_a_license_from_another_authority_is_refused_naming_both_keys() -> None:
    other = AuthorityKey.generate()
    trusted = TrustedAuthorities.from_config(PUBLIC_KEY_TEXT)
    with pytest.raises(TamperedLicenseError) as info:
        trusted.verify_envelope(other.sign_license(fixed_terms()))
    assert other.key_id in info.value.message
    assert KEY_ID in info.value.message
    assert "not signed by the registration authority" in info.value.message


def test_a_forged_key_id_does_not_help() -> None:
    other = AuthorityKey.generate()
    envelope = other.sign_license(fixed_terms())
    envelope["signature"]["key_id"] = KEY_ID
    with pytest.raises(TamperedLicenseError, match="does not verify"):
        TrustedAuthorities.from_config(PUBLIC_KEY_TEXT).verify_envelope(envelope)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda e: e.pop("signature"), "no field 'signature'"),
        (lambda e: e.__setitem__("format", "tccal-signed-license/9"), "not supported"),
        (lambda e: e["signature"].__setitem__("alg", "RSA"), "algorithm 'RSA'"),
        (lambda e: e["signature"].__setitem__("value", "%%%"), "not valid base64"),
        (lambda e: e.__setitem__("extra", 1), "unexpected field"),
    ],
)
def test_damaged_envelopes_are_refused_with_the_reason(mutate: Any, expected: str) -> None:
    envelope = fixed_envelope()
    mutate(envelope)
    with pytest.raises(TamperedLicenseError, match=expected):
        TrustedAuthorities.from_config(PUBLIC_KEY_TEXT).verify_envelope(envelope)


def test_not_json_is_refused() -> None:
    with pytest.raises(TamperedLicenseError, match="not valid JSON"):
        TrustedAuthorities.from_config(PUBLIC_KEY_TEXT).verify_envelope_text("{nope")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("seats", -1, "'seats' must be >= 0"),
        ("seats", "12", "'seats' must be an integer"),
        ("seats", True, "'seats' must be an integer"),
        ("tier", "gold", "'tier' must be free, standard or enterprise, got 'gold'"),
        ("issued_at", "2026-01-31 10:00", "like 2026-01-31T10:00:00Z"),
        ("installation_fingerprint", "XYZ", "64 lower-case hex"),
        ("features", ["Bad Feature"], "malformed feature name"),
        ("registration", "fax", "online or offline"),
    ],
)
def test_license_fields_are_validated_naming_field_and_value(field: str, value: Any, expected: str) -> None:
    obj = fixed_license().to_json()
    obj[field] = value
    with pytest.raises(ValueError, match=expected):
        License.from_json(obj)


def test_signed_but_invalid_license_is_refused() -> None:
    """Even a correctly signed document must be a valid license (an authority bug must not pass)."""
    signer = fixed_signer()
    obj = fixed_license().to_json()
    obj["seats"] = -5
    from licensing.document import LICENSE_SIGNING_PREFIX, b64encode

    envelope = {
        "format": "tccal-signed-license/1",
        "license": obj,
        "signature": {
            "alg": "Ed25519",
            "key_id": KEY_ID,
            "value": b64encode(
                Ed25519PrivateKey.from_private_bytes(SEED).sign(LICENSE_SIGNING_PREFIX + canonical_json(obj))
            ),
        },
    }
    with pytest.raises(TamperedLicenseError, match="'seats' must be >= 0"):
        TrustedAuthorities.from_config(signer.public_text).verify_envelope(envelope)


def test_floats_are_not_canonical() -> None:
    with pytest.raises(ValueError, match="floats are not allowed"):
        canonical_json({"seats": 1.5})


def test_public_key_forms() -> None:
    pem = (
        Ed25519PrivateKey.from_private_bytes(SEED)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert TrustedAuthorities.from_config([pem]).key_ids == [KEY_ID]
    assert TrustedAuthorities.from_config(PUBLIC_KEY_TEXT).key_ids == [KEY_ID]
    with pytest.raises(ValueError, match="32 bytes"):
        parse_public_key(base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="neither base64"):
        parse_public_key("not a key!")
    with pytest.raises(ValueError, match="at least one"):
        TrustedAuthorities.from_config([])


def test_check_receipts_verify_and_refuse_forgeries() -> None:
    signer = fixed_signer()
    trusted = TrustedAuthorities.from_config(PUBLIC_KEY_TEXT)
    receipt = CheckReceipt("lic-0001", "ab" * 32, "n" * 32, datetime(2026, 2, 1, tzinfo=UTC))
    answer = signer.sign_receipt("lic-0001", "ab" * 32, "n" * 32, datetime(2026, 2, 1, tzinfo=UTC))
    assert trusted.verify_receipt(answer) == receipt
    forged = copy.deepcopy(answer)
    forged["receipt"]["nonce"] = "m" * 32
    with pytest.raises(RegistrationProtocolError, match="bad signature"):
        trusted.verify_receipt(forged)
    # A license signature cannot be replayed as a receipt (different signing prefix).
    lic_sig = signer.sign_license(fixed_terms())["signature"]
    with pytest.raises(RegistrationProtocolError):
        trusted.verify_receipt({"receipt": answer["receipt"], "signature": lic_sig})


def test_constructed_licenses_are_validated_too() -> None:
    with pytest.raises(ValueError, match="'seats' must be >= 0"):
        fixed_license(seats=-1)
    lic = fixed_license(features=("offline_registration", "multiple_providers", "offline_registration"))
    assert lic.features == ("multiple_providers", "offline_registration")
    assert fixed_license(tier=Tier.FREE, seats=500).seat_capacity == 50
    assert fixed_license(seats=500).seat_capacity == 500


def test_the_built_in_authority_key_is_the_documented_one() -> None:
    """docs/license-format.md §4 names the key the product trusts; no configuration replaces it."""
    from licensing.authority import AUTHORITY_KEY_ID, AUTHORITY_PUBLIC_KEY
    from licensing.document import key_id_of, parse_public_key
    from tccal_sandbox.testing import repo_root

    assert key_id_of(parse_public_key(AUTHORITY_PUBLIC_KEY)) == AUTHORITY_KEY_ID
    page = (repo_root() / "docs" / "license-format.md").read_text()
    assert f"`{AUTHORITY_PUBLIC_KEY}`, `key_id` `{AUTHORITY_KEY_ID}`" in page
    # The test vector's key (whose private seed is public) is not trusted by default.
    assert TrustedAuthorities.from_config(AUTHORITY_PUBLIC_KEY).key_ids == [AUTHORITY_KEY_ID] != [KEY_ID]

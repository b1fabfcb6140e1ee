"""The connector and the registration authority agree through docs/license-format.md, not through shared code.

The authority's side is the registration emulator (`registration_emulator`, its own implementation of the page);
the connector's side is licensing's parsing and verification. Each test makes a document on one side and reads
it on the other: signed licenses (§6), check receipts (§7), registration keys (§2), offline files (§9), and
the refusals of a tampered document, an untrusted key and a bad checksum (§11)."""

from __future__ import annotations

import copy
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from licensing.document import License, TrustedAuthorities, canonical_json
from licensing.errors import (
    InvalidRegistrationFileError,
    MalformedKeyError,
    RegistrationProtocolError,
    TamperedLicenseError,
)
from licensing.fingerprint import new_install_id
from licensing.keys import ALPHABET, parse_key
from licensing.offline import OfflineRequest, OfflineResponse
from licensing.sealing import Sealer
from licensing.tiers import Tier
from registration_emulator import document as authority_document
from registration_emulator.authority import Authority
from registration_emulator.document import AuthorityKey, LicenseTerms
from registration_emulator.keys import generate_key
from registration_emulator.offline import RequestFileError, read_request, write_response
from registration_emulator.state import StateDir
from registration_emulator.tiers import Tier as AuthorityTier

AUTHORITY = AuthorityKey.generate()
TRUSTED = TrustedAuthorities.from_config(AUTHORITY.public_text)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FEATURES = ("multiple_providers", "offline_registration")


def terms(**changes: Any) -> LicenseTerms:
    fields: dict[str, Any] = dict(
        license_id=authority_document.new_license_id(),
        tier=AuthorityTier.ENTERPRISE,
        seats=300,
        features=FEATURES,
        installation_fingerprint=random_fingerprint(),
        issued_at=NOW,
        expires_at=NOW + timedelta(days=365),
        key_sha256=generate_key(AuthorityTier.ENTERPRISE).sha256,
        registration="online",
    )
    fields.update(changes)
    return LicenseTerms(**fields)


def as_licensing(t: LicenseTerms) -> License:
    """What licensing should read from the document the authority signed for ``t``."""
    return License(
        t.license_id,
        Tier(t.tier.value),
        t.seats,
        t.features,
        t.installation_fingerprint,
        t.issued_at,
        t.expires_at,
        t.key_sha256,
        t.registration,
    )


# --------------------------------------------------------------------------------------------- §6 licenses


def test_a_license_signed_by_the_authority_verifies_in_licensing() -> None:
    t = terms()
    envelope = AUTHORITY.sign_license(t)
    signed = TRUSTED.verify_envelope(envelope)
    assert signed.license == as_licensing(t)
    assert signed.key_id == AUTHORITY.key_id
    # Both sides produce the same canonical bytes and the same envelope.
    assert canonical_json(signed.license.to_json()) == authority_document.canonical_json(envelope["license"])
    assert signed.envelope() == envelope
    # Stored as licensing stores it (indented text), it still verifies.
    assert TRUSTED.verify_envelope_text(signed.to_text()).license == signed.license


@settings(max_examples=30, deadline=None)
@given(
    tier=st.sampled_from(list(AuthorityTier)),
    seats=st.integers(min_value=0, max_value=10**9),
    features=st.lists(st.sampled_from(FEATURES), unique=True),
    expires_days=st.one_of(st.none(), st.integers(min_value=-1000, max_value=100000)),
    registration=st.sampled_from(["online", "offline"]),
    license_id=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"),
    seconds=st.integers(min_value=0, max_value=10**9),
)
def test_any_license_the_authority_signs_verifies_field_for_field(
    tier: AuthorityTier,
    seats: int,
    features: list[str],
    expires_days: int | None,
    registration: str,
    license_id: str,
    seconds: int,
) -> None:
    issued = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    t = terms(
        tier=tier,
        seats=seats,
        features=tuple(features),
        issued_at=issued,
        expires_at=None if expires_days is None else issued + timedelta(days=expires_days),
        registration=registration,
        license_id=license_id,
    )
    assert TRUSTED.verify_envelope(AUTHORITY.sign_license(t)).license == as_licensing(t)


@pytest.mark.parametrize(
    ("field", "value"),
    [("seats", 100000), ("tier", "enterprise"), ("expires_at", None), ("installation_fingerprint", "ef" * 32)],
)
def test_a_tampered_authority_document_is_refused_by_licensing(field: str, value: Any) -> None:
    envelope = AUTHORITY.sign_license(terms(tier=AuthorityTier.STANDARD, features=("offline_registration",)))
    tampered = copy.deepcopy(envelope)
    tampered["license"][field] = value
    with pytest.raises(TamperedLicenseError, match="modified after the authority signed it") as info:
        TRUSTED.verify_envelope(tampered)
    assert (info.value.code, info.value.exit_code) == ("tampered_license", 15)


def test_a_license_from_an_authority_licensing_does_not_trust_is_refused() -> None:
    stranger = AuthorityKey.generate()
    with pytest.raises(TamperedLicenseError, match="which this installation does not trust") as info:
        TRUSTED.verify_envelope(stranger.sign_license(terms()))
    assert stranger.key_id in info.value.message and AUTHORITY.key_id in info.value.message
    # Claiming the trusted key's id does not help: the trusted key does not verify the stranger's signature.
    forged = stranger.sign_license(terms())
    forged["signature"]["key_id"] = AUTHORITY.key_id
    with pytest.raises(TamperedLicenseError, match="does not verify"):
        TRUSTED.verify_envelope(forged)


def test_the_authority_public_key_text_is_what_licensing_configures() -> None:
    assert TrustedAuthorities.from_config(AUTHORITY.public_text).key_ids == [AUTHORITY.key_id]


# --------------------------------------------------------------------------------------------- §7 receipts


def test_a_check_receipt_from_the_authority_verifies_and_a_forged_one_does_not() -> None:
    answer = AUTHORITY.sign_receipt("lic-0001", "ab" * 32, "n" * 32, NOW)
    receipt = TRUSTED.verify_receipt(answer)
    assert (receipt.license_id, receipt.installation_fingerprint, receipt.nonce) == ("lic-0001", "ab" * 32, "n" * 32)
    assert (receipt.checked_at, receipt.status) == (NOW, "valid")
    forged = copy.deepcopy(answer)
    forged["receipt"]["nonce"] = "m" * 32
    with pytest.raises(RegistrationProtocolError, match="bad signature"):
        TRUSTED.verify_receipt(forged)
    # A license signature is not a receipt signature (different prefix).
    license_signature = AUTHORITY.sign_license(terms())["signature"]
    with pytest.raises(RegistrationProtocolError, match="bad signature"):
        TRUSTED.verify_receipt({"receipt": answer["receipt"], "signature": license_signature})


# --------------------------------------------------------------------------------------------- §2 keys


@pytest.mark.parametrize("tier", list(AuthorityTier))
def test_keys_generated_by_the_authority_parse_in_licensing(tier: AuthorityTier) -> None:
    for _ in range(100):
        issued = generate_key(tier)
        key = parse_key(issued.text)
        assert (key.text, key.tier.value, key.sha256, key.masked()) == (
            issued.text,
            tier.value,
            issued.sha256,
            issued.masked(),
        )


def test_an_authority_key_with_a_wrong_checksum_is_refused_by_licensing() -> None:
    text = generate_key(AuthorityTier.STANDARD).text
    last = text[-1]
    typo = text[:-1] + (ALPHABET[(ALPHABET.index(last) + 1) % len(ALPHABET)])
    with pytest.raises(MalformedKeyError, match="checksum") as info:
        parse_key(typo)
    assert (info.value.code, info.value.exit_code) == ("malformed_key", 10)
    assert typo in info.value.message


# --------------------------------------------------------------------------------------------- §9 offline files


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(StateDir(tmp_path / "registration"), AUTHORITY)


def test_an_offline_request_from_licensing_is_answered_by_the_authority_and_installed(authority: Authority) -> None:
    issued = authority.issue_key(AuthorityTier.STANDARD, 25, None)
    fingerprint = random_fingerprint()
    written = OfflineRequest.new(parse_key(issued.key.text), fingerprint, NOW, "1.0.0")

    read = read_request(written.encode())
    assert (read.request_id, read.key.text, read.installation_fingerprint, read.created_at) == (
        written.request_id,
        written.key.text,
        fingerprint,
        NOW,
    )
    answer = write_response(read.request_id, authority.sign_offline(read, now=NOW))

    response = OfflineResponse.decode(answer)
    assert response.request_id == written.request_id
    lic = TRUSTED.verify_envelope(response.envelope).license
    assert (lic.tier, lic.seats, lic.features) == (Tier.STANDARD, 25, ("offline_registration",))
    assert (lic.installation_fingerprint, lic.registration, lic.issued_at) == (fingerprint, "offline", NOW)
    assert lic.key_sha256 == written.key.sha256


def test_a_free_request_from_licensing_is_refused_by_the_authority_with_the_guide_sentence(
    authority: Authority,
) -> None:
    from registration_emulator.authority import AuthorityRefusalError

    issued = authority.issue_key(AuthorityTier.FREE, None, None)
    written = OfflineRequest.new(parse_key(issued.key.text), random_fingerprint(), NOW, "1.0.0")
    with pytest.raises(AuthorityRefusalError) as info:
        authority.sign_offline(read_request(written.encode()), now=NOW)
    assert (info.value.http_status, info.value.code) == (403, "free_offline_refused")
    assert info.value.message.startswith("A free license cannot be registered offline.")


def test_files_in_the_wrong_direction_are_refused_on_both_sides(authority: Authority) -> None:
    issued = authority.issue_key(AuthorityTier.ENTERPRISE, 10, None)
    request = OfflineRequest.new(parse_key(issued.key.text), random_fingerprint(), NOW, "1.0.0").encode()
    answer = write_response("r", authority.sign_offline(read_request(request), now=NOW))
    with pytest.raises(InvalidRegistrationFileError, match="not the authority's answer"):
        OfflineResponse.decode(request)
    with pytest.raises(RequestFileError, match="is an authority's answer"):
        read_request(answer)
    # A bare signed envelope pasted as plain JSON is a response licensing accepts (§9).
    envelope = json.loads(json.dumps(OfflineResponse.decode(answer).envelope))
    assert TRUSTED.verify_envelope(OfflineResponse.decode(json.dumps(envelope).encode()).envelope).license.seats == 10


def random_fingerprint() -> str:
    """The fingerprint of some other installation (its own install id and machine key)."""
    return Sealer(os.urandom(32)).fingerprint(new_install_id())

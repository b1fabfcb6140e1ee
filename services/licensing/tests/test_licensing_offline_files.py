"""Offline registration files (.crg) and the installation fingerprint."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest

from licensing.errors import InvalidRegistrationFileError
from licensing.fingerprint import fingerprint_of, new_install_id, short_fingerprint
from licensing.keys import parse_key
from licensing.offline import OfflineRequest, OfflineResponse, encode_crg
from registration_emulator.document import AuthorityKey, LicenseTerms
from registration_emulator.offline import write_response
from registration_emulator.tiers import Tier

KEY = parse_key("TCCAL-STD-0123A-BCDEF-GHJKM-NPQRS-X74E")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_fingerprint_is_a_stable_function_of_the_install_id() -> None:
    install_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert fingerprint_of(install_id) == "4a6ae0a9162673ea0ca733ac1cff97e50ab4896fc2c40d0d38a7df9b80fa7c8d"
    assert fingerprint_of(install_id) == fingerprint_of(uuid.UUID(str(install_id)))
    assert fingerprint_of(new_install_id()) != fingerprint_of(new_install_id())
    assert short_fingerprint(fingerprint_of(install_id)) == "4a6a-e0a9-1626-73ea"


def test_request_round_trip_and_layout() -> None:
    request = OfflineRequest.new(KEY, "ab" * 32, NOW, "1.0.0")
    data = request.encode()
    lines = data.decode().splitlines()
    assert all(len(line) <= 76 for line in lines)
    assert data.endswith(b"\n")
    decoded = json.loads(base64.b64decode(b"".join(data.split())))
    assert decoded["format"] == "tccal-offline-request/1"
    assert decoded["key"] == KEY.text
    assert decoded["installation_fingerprint"] == "ab" * 32
    assert decoded["created_at"] == "2026-03-01T12:00:00Z"
    assert OfflineRequest.decode(data) == request


def test_response_round_trip() -> None:
    signer = AuthorityKey.generate()  # the authority's side: the registration emulator
    terms = LicenseTerms(
        "lic-1", Tier.STANDARD, 10, ("offline_registration",), "ab" * 32, NOW, None, KEY.sha256, "offline"
    )
    envelope = signer.sign_license(terms)
    data = write_response("req-1", envelope)
    again = OfflineResponse.decode(data)
    assert again.request_id == "req-1"
    assert again.envelope == envelope
    # A bare signed envelope (plain JSON) is accepted as well.
    assert OfflineResponse.decode(json.dumps(envelope).encode()).envelope == envelope


def test_a_request_installed_as_a_response_is_refused_with_advice() -> None:
    data = OfflineRequest.new(KEY, "ab" * 32, NOW, "1.0.0").encode()
    with pytest.raises(InvalidRegistrationFileError, match="send it to your manager") as info:
        OfflineResponse.decode(data, "regoffline.crg")
    assert info.value.exit_code == 18


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "not a registration file|empty"),
        (b"this is not base64 !!!", "not base64"),
        (base64.b64encode(b"\x00\x01garbage"), "not JSON"),
        (encode_crg({"hello": "world"}), "no 'format'"),
        (encode_crg({"format": "tccal-offline-response/7"}), "this version reads 'tccal-offline-response/1'"),
        (encode_crg({"format": "tccal-license/1"}), "unsigned license"),
        (encode_crg({"format": "tccal-offline-response/1", "request_id": "x"}), "'license' is missing"),
    ],
)
def test_bad_response_files_are_refused_with_their_reason(data: bytes, expected: str) -> None:
    with pytest.raises(InvalidRegistrationFileError, match=expected):
        OfflineResponse.decode(data, "regoffline2.crg")


def test_bad_request_files_are_refused() -> None:
    good = OfflineRequest.new(KEY, "ab" * 32, NOW, "1.0.0").to_json()
    good["product"] = "something-else"
    with pytest.raises(InvalidRegistrationFileError, match="'product'"):
        OfflineRequest.decode(encode_crg(good))
    with pytest.raises(InvalidRegistrationFileError, match="authority's answer"):
        OfflineRequest.decode(encode_crg({"format": "tccal-offline-response/1"}))

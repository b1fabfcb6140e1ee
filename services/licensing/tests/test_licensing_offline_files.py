"""Offline registration files (.crg) and the installation fingerprint."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime

import pytest

from licensing.errors import InvalidRegistrationFileError
from licensing.fingerprint import new_install_id, short_fingerprint
from licensing.keys import parse_key
from licensing.offline import OfflineRequest, OfflineResponse, encode_crg
from licensing.sealing import Sealer
from registration_emulator.document import AuthorityKey, LicenseTerms
from registration_emulator.offline import write_response
from registration_emulator.tiers import Tier

KEY = parse_key("TCCAL-STD-0123A-BCDEF-GHJKM-NPQRS-X74E")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_fingerprint_is_the_machine_keyed_hmac_of_the_install_id() -> None:
    """docs/license-format.md §8 vector, recomputed here from RFC 5869 / RFC 2104 by hand."""
    machine_key, install_id = bytes(range(32)), uuid.UUID("00000000-0000-4000-8000-000000000000")
    prk = hmac.new(b"\x00" * 32, machine_key, hashlib.sha256).digest()
    okm = hmac.new(prk, b"tccal-installation/2\x01", hashlib.sha256).digest()
    by_hand = hmac.new(okm, f"tccal-installation/2:{install_id}".encode(), hashlib.sha256).hexdigest()
    fingerprint = Sealer(machine_key).fingerprint(install_id)
    assert fingerprint == by_hand == "5353c31e5e8b704b61d4446791825a2573b4cb358e6ac145391f88267efea791"
    assert short_fingerprint(fingerprint) == "5353-c31e-5e8b-704b"
    # Stable for one installation; another install id or another machine key is another installation.
    assert Sealer(machine_key).fingerprint(uuid.UUID(str(install_id))) == fingerprint
    assert Sealer(machine_key).fingerprint(new_install_id()) != fingerprint
    assert Sealer(bytes(32)).fingerprint(install_id) != fingerprint


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

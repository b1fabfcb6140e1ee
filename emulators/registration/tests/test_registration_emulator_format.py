"""The emulator's own implementation of docs/license-format.md, checked against the page's worked examples and
test vectors (§1, §2, §4, §6, §7, §9, §12) — without licensing: the agreement of the two sides is proved in
services/licensing/tests/test_licensing_format_agreement.py."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from registration_emulator.document import AuthorityKey, LicenseTerms, canonical_json, parse_timestamp
from registration_emulator.keys import ALPHABET, KeyFormatError, checksum, generate_key, key_sha256, parse_key
from registration_emulator.offline import RequestFileError, encode_crg, read_request, write_response
from registration_emulator.tiers import Tier

# §12, copied from the page.
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
FIXED_KEY = "TCCAL-STD-0123A-BCDEF-GHJKM-NPQRS-X74E"
FIXED_KEY_SHA256 = "31f34008fcea6eac58f094815019fbd855616ca36b1d638015b1113daf805047"


def fixed_terms() -> LicenseTerms:
    return LicenseTerms(
        license_id="lic-0001",
        tier=Tier.STANDARD,
        seats=200,
        features=("offline_registration",),
        installation_fingerprint="ab" * 32,
        issued_at=datetime(2026, 1, 31, 10, 0, tzinfo=UTC),
        expires_at=datetime(2027, 1, 31, tzinfo=UTC),
        key_sha256="cd" * 32,
        registration="online",
    )


def test_canonical_json_example_of_section_1() -> None:
    assert canonical_json({"b": "é\n", "a": [1, True, None]}) == '{"a":[1,true,null],"b":"é\\n"}'.encode()
    with pytest.raises(ValueError, match="floats are not allowed"):
        canonical_json({"seats": 1.5})


def test_timestamps_of_section_1() -> None:
    assert parse_timestamp("2026-01-31T10:00:00Z", "t") == datetime(2026, 1, 31, 10, tzinfo=UTC)
    for bad in ("2026-01-31 10:00:00", "2026-01-31T10:00:00.5Z", "2026-02-30T00:00:00Z", 5):
        with pytest.raises(ValueError, match="t "):
            parse_timestamp(bad, "t")


def test_the_fixed_key_and_its_checksum_of_section_2() -> None:
    assert checksum("TCCAL-STD-0123A-BCDEF-GHJKM-NPQRS") == "X74E"
    key = parse_key(" " + FIXED_KEY.lower() + "\n")
    assert (key.text, key.tier, key.sha256) == (FIXED_KEY, Tier.STANDARD, FIXED_KEY_SHA256)
    assert key_sha256(FIXED_KEY.lower()) == FIXED_KEY_SHA256
    assert key.masked() == "TCCAL-STD-0123A-*****-*****-*****-X74E"
    with pytest.raises(KeyFormatError, match="checksum"):
        parse_key(FIXED_KEY.replace("-STD-", "-ENT-"))
    with pytest.raises(KeyFormatError, match=re.escape("TCCAL-<FREE|STD|ENT>-XXXXX-XXXXX-XXXXX-XXXXX-CCCC")):
        parse_key("TCCAL-STD-0123I-BCDEF-GHJKM-NPQRS-X74E")


@pytest.mark.parametrize("tier", list(Tier))
def test_generated_keys_follow_section_2(tier: Tier) -> None:
    for _ in range(20):
        key = generate_key(tier)
        parts = key.text.split("-")
        assert parts[1] == {"free": "FREE", "standard": "STD", "enterprise": "ENT"}[tier.value]
        assert [len(p) for p in parts[2:]] == [5, 5, 5, 5, 4]
        assert all(ch in ALPHABET for ch in "".join(parts[2:]))
        assert parts[-1] == checksum("-".join(parts[:-1]))


def test_the_fixed_authority_key_and_license_signature_of_section_12() -> None:
    authority = AuthorityKey(Ed25519PrivateKey.from_private_bytes(SEED))
    assert authority.public_text == PUBLIC_KEY_TEXT
    assert authority.key_id == KEY_ID
    envelope = authority.sign_license(fixed_terms())
    assert canonical_json(envelope["license"]) == CANONICAL
    assert envelope["format"] == "tccal-signed-license/1"
    assert envelope["signature"] == {"alg": "Ed25519", "key_id": KEY_ID, "value": SIGNATURE}
    again = AuthorityKey.from_pem(authority.private_pem())
    assert again.key_id == KEY_ID


def test_receipts_are_signed_with_their_own_prefix_of_section_7() -> None:
    authority = AuthorityKey(Ed25519PrivateKey.from_private_bytes(SEED))
    answer = authority.sign_receipt("lic-0001", "ab" * 32, "n" * 32, datetime(2026, 2, 1, tzinfo=UTC))
    receipt = answer["receipt"]
    assert receipt == {
        "format": "tccal-check-receipt/1",
        "license_id": "lic-0001",
        "installation_fingerprint": "ab" * 32,
        "nonce": "n" * 32,
        "checked_at": "2026-02-01T00:00:00Z",
        "status": "valid",
    }
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(PUBLIC_KEY_TEXT))
    public.verify(
        base64.b64decode(answer["signature"]["value"]), b"TCCAL-CHECK-RECEIPT/1\x00" + canonical_json(receipt)
    )


def request_object(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "format": "tccal-offline-request/1",
        "request_id": "0" * 32,
        "key": FIXED_KEY,
        "installation_fingerprint": "ab" * 32,
        "created_at": "2026-01-31T10:00:00Z",
        "product": "tc-calendar-connector",
        "product_version": "1.0.0",
    }
    obj.update(changes)
    return obj


def test_an_offline_request_written_by_hand_from_section_9_is_read() -> None:
    data = base64.b64encode(json.dumps(request_object(), indent=1).encode())
    wrapped = b"\r\n".join(data[i : i + 60] for i in range(0, len(data), 60))
    request = read_request(wrapped)
    assert (request.request_id, request.key.text, request.installation_fingerprint) == ("0" * 32, FIXED_KEY, "ab" * 32)
    assert request.created_at == datetime(2026, 1, 31, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"hello", "not a registration file: its content is not base64"),
        (encode_crg({"format": "tccal-offline-response/1"}), "is an authority's answer"),
        (encode_crg({"format": "tccal-offline-request/2"}), "this version reads 'tccal-offline-request/1'"),
        (encode_crg(request_object(product="other")), "field 'product'"),
        (encode_crg(request_object(created_at="yesterday")), "field 'created_at'"),
        (encode_crg(request_object(key="MY-REG-KEY")), "malformed registration key"),
        (base64.b64encode(b"\x00garbage"), "not JSON"),
    ],
)
def test_offline_requests_that_are_refused(data: bytes, expected: str) -> None:
    with pytest.raises(RequestFileError, match=expected):
        read_request(data)


def test_the_offline_response_layout_of_section_9() -> None:
    envelope = {"format": "tccal-signed-license/1", "license": {"seats": 1}, "signature": {}}
    data = write_response("r-1", envelope)
    lines = data.decode().split("\n")
    assert lines[-1] == "" and all(len(line) == 76 for line in lines[:-2]) and 0 < len(lines[-2]) <= 76
    decoded = base64.b64decode("".join(lines))
    assert decoded == canonical_json({"format": "tccal-offline-response/1", "request_id": "r-1", "license": envelope})

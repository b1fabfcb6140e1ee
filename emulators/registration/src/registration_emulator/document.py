"""The documents the authority signs (docs/license-format.md §1, §4–§7): licenses and check receipts.

The emulator writes these from its own state; it never needs to read a signed document back, so there is no
verification here (that is the connector's side).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from registration_emulator.tiers import Tier

LICENSE_FORMAT = "tccal-license/1"  # §5
ENVELOPE_FORMAT = "tccal-signed-license/1"  # §6
RECEIPT_FORMAT = "tccal-check-receipt/1"  # §7
LICENSE_PREFIX = b"TCCAL-LICENSE/1\x00"  # §6
RECEIPT_PREFIX = b"TCCAL-CHECK-RECEIPT/1\x00"  # §7
SIGNATURE_ALG = "Ed25519"  # §4
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_TIMESTAMP_FORM = "%Y-%m-%dT%H:%M:%SZ"


def canonical_json(value: Any) -> bytes:
    """§1: UTF-8, keys sorted, no whitespace, non-ASCII as itself, no floats."""
    _no_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _no_floats(value: Any) -> None:
    if isinstance(value, float):
        raise ValueError(f"floats are not allowed in signed documents (got {value!r})")
    if isinstance(value, dict):
        for item in value.values():
            _no_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _no_floats(item)


def format_timestamp(moment: datetime) -> str:
    """§1: UTC, whole seconds, ``Z``."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: timestamps must carry a time zone")
    return moment.astimezone(UTC).strftime(_TIMESTAMP_FORM)


def parse_timestamp(text: Any, what: str) -> datetime:
    """§1: exactly ``YYYY-MM-DDTHH:MM:SSZ`` and a real date/time."""
    if not isinstance(text, str) or not _TIMESTAMP.match(text):
        raise ValueError(f"{what} must be a UTC timestamp like 2026-01-31T10:00:00Z, got {text!r}")
    try:
        return datetime.strptime(text, _TIMESTAMP_FORM).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid date/time: {text!r} ({exc})") from None


def new_license_id() -> str:
    """§5: ``lic-`` + a random UUID4 as 32 hex."""
    return f"lic-{uuid.uuid4().hex}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class LicenseTerms:
    """What the authority puts in a license (§5); ``document()`` is the JSON object that gets signed."""

    license_id: str
    tier: Tier
    seats: int
    features: tuple[str, ...]
    installation_fingerprint: str
    issued_at: datetime
    expires_at: datetime | None
    key_sha256: str
    registration: str  # "online" | "offline"

    def document(self) -> dict[str, Any]:
        return {
            "format": LICENSE_FORMAT,
            "license_id": self.license_id,
            "tier": self.tier.value,
            "seats": self.seats,
            "features": sorted(set(self.features)),
            "installation_fingerprint": self.installation_fingerprint,
            "issued_at": format_timestamp(self.issued_at),
            "expires_at": None if self.expires_at is None else format_timestamp(self.expires_at),
            "key_sha256": self.key_sha256,
            "registration": self.registration,
        }


class AuthorityKey:
    """The authority's Ed25519 key (§4) and the signatures made with it (§6, §7)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self._public_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = hashlib.sha256(self._public_raw).hexdigest()[:16]  # §4

    @classmethod
    def generate(cls) -> AuthorityKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> AuthorityKey:
        """§4: PKCS#8 PEM, unencrypted."""
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"authority private key must be Ed25519, got {type(key).__name__}")
        return cls(key)

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def public_text(self) -> str:
        """§4: base64 of the raw 32-byte public key (the connector's test-only ``license.testAuthorityPublicKey``)."""
        return _b64(self._public_raw)

    def _signature(self, prefix: bytes, obj: dict[str, Any]) -> dict[str, str]:
        return {
            "alg": SIGNATURE_ALG,
            "key_id": self.key_id,
            "value": _b64(self._key.sign(prefix + canonical_json(obj))),
        }

    def sign_license(self, terms: LicenseTerms) -> dict[str, Any]:
        """§6: the signed envelope ``{"format", "license", "signature"}``."""
        document = terms.document()
        return {"format": ENVELOPE_FORMAT, "license": document, "signature": self._signature(LICENSE_PREFIX, document)}

    def sign_receipt(self, license_id: str, fingerprint: str, nonce: str, checked_at: datetime) -> dict[str, Any]:
        """§7: the answer to a check, ``{"receipt", "signature"}``."""
        receipt = {
            "format": RECEIPT_FORMAT,
            "license_id": license_id,
            "installation_fingerprint": fingerprint,
            "nonce": nonce,
            "checked_at": format_timestamp(checked_at),
            "status": "valid",
        }
        return {"receipt": receipt, "signature": self._signature(RECEIPT_PREFIX, receipt)}

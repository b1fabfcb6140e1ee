"""The signed license document: parsing, canonical serialization and Ed25519 verification
(docs/license-format.md §1, §4–§7).

Licensing only reads and verifies; signing is the registration authority's (emulators/registration implements
it from the same page, without sharing this code).

A license (``format: tccal-license/1``) is a flat JSON object::

    {"format": "tccal-license/1", "license_id": "lic-…", "tier": "standard", "seats": 200,
     "features": ["offline_registration"], "installation_fingerprint": "<64 hex>",
     "issued_at": "2026-01-31T10:00:00Z", "expires_at": "2027-01-31T00:00:00Z" | null,
     "key_sha256": "<64 hex>", "registration": "online" | "offline"}

The authority signs ``b"TCCAL-LICENSE/1\\x00" + canonical_json(license)`` with Ed25519. The canonical form is
UTF-8 JSON with keys sorted, no insignificant whitespace and no floats (for these value types it is byte for
byte RFC 8785). The signed license travels in an envelope::

    {"format": "tccal-signed-license/1", "license": {…},
     "signature": {"alg": "Ed25519", "key_id": "<16 hex>", "value": "<base64>"}}

``key_id`` is the first 16 hex digits of SHA-256 over the authority's raw 32-byte public key. Verification
recomputes the canonical bytes from the parsed object, so whitespace in a file does not matter but any change
of a value does.

Online checks (Free tier) are answered with a *check receipt* signed the same way with the prefix
``b"TCCAL-CHECK-RECEIPT/1\\x00"``; it echoes the connector's random nonce, so an old answer cannot be
replayed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from licensing.errors import RegistrationProtocolError, TamperedLicenseError
from licensing.tiers import Tier

LICENSE_FORMAT = "tccal-license/1"
ENVELOPE_FORMAT = "tccal-signed-license/1"
RECEIPT_FORMAT = "tccal-check-receipt/1"
LICENSE_SIGNING_PREFIX = b"TCCAL-LICENSE/1\x00"
RECEIPT_SIGNING_PREFIX = b"TCCAL-CHECK-RECEIPT/1\x00"
SIGNATURE_ALG = "Ed25519"
REGISTRATION_MODES = ("online", "offline")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_LICENSE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FEATURE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


# --------------------------------------------------------------------------------------------- helpers


def canonical_json(value: Any) -> bytes:
    """The canonical bytes of ``value``: sorted keys, no whitespace, UTF-8, no floats/NaN."""
    _reject_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise ValueError(f"floats are not allowed in signed documents (got {value!r})")
    if isinstance(value, Mapping):
        for item in value.values():
            _reject_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_floats(item)


def format_timestamp(moment: datetime) -> str:
    """UTC, whole seconds, ``Z`` suffix: the only timestamp form in signed documents."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: timestamps must carry a time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str, what: str) -> datetime:
    if not isinstance(text, str) or not _TIMESTAMP.match(text):
        raise ValueError(f"{what} must be a UTC timestamp like 2026-01-31T10:00:00Z, got {text!r}")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid date/time: {text!r} ({exc})") from None


def truncate_to_second(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


def _field(obj: Mapping[str, Any], name: str, kind: type, what: str) -> Any:
    if name not in obj:
        raise ValueError(f"{what} has no field {name!r}")
    value = obj[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{what} field {name!r} must be an integer, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise ValueError(f"{what} field {name!r} must be a {kind.__name__}, got {value!r}")
    return value


def _exact_fields(obj: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise ValueError(f"{what} has unexpected field(s) {', '.join(map(repr, extra))}")


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


# --------------------------------------------------------------------------------------------- license


@dataclass(frozen=True)
class License:
    license_id: str
    tier: Tier
    seats: int
    features: tuple[str, ...]
    installation_fingerprint: str
    issued_at: datetime
    expires_at: datetime | None
    key_sha256: str
    registration: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(sorted(set(self.features))))
        object.__setattr__(self, "issued_at", truncate_to_second(self.issued_at))
        if self.expires_at is not None:
            object.__setattr__(self, "expires_at", truncate_to_second(self.expires_at))
        # Validate through the JSON form so a constructed license obeys the same rules as a parsed one.
        License.from_json(self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": LICENSE_FORMAT,
            "license_id": self.license_id,
            "tier": self.tier.value,
            "seats": self.seats,
            "features": list(self.features),
            "installation_fingerprint": self.installation_fingerprint,
            "issued_at": format_timestamp(self.issued_at),
            "expires_at": None if self.expires_at is None else format_timestamp(self.expires_at),
            "key_sha256": self.key_sha256,
            "registration": self.registration,
        }

    @classmethod
    def from_json(cls, obj: Any) -> License:
        """Parse and validate; raises ``ValueError`` naming the field and the bad value."""
        what = "license"
        if not isinstance(obj, Mapping):
            raise ValueError(f"license must be a JSON object, got {type(obj).__name__}")
        _exact_fields(
            obj,
            (
                "format",
                "license_id",
                "tier",
                "seats",
                "features",
                "installation_fingerprint",
                "issued_at",
                "expires_at",
                "key_sha256",
                "registration",
            ),
            what,
        )
        fmt = _field(obj, "format", str, what)
        if fmt != LICENSE_FORMAT:
            raise ValueError(f"license format {fmt!r} is not supported (expected {LICENSE_FORMAT!r})")
        license_id = _field(obj, "license_id", str, what)
        if not _LICENSE_ID.match(license_id):
            raise ValueError(f"license field 'license_id' is malformed: {license_id!r}")
        tier_text = _field(obj, "tier", str, what)
        try:
            tier = Tier(tier_text)
        except ValueError:
            raise ValueError(f"license field 'tier' must be free, standard or enterprise, got {tier_text!r}") from None
        seats = _field(obj, "seats", int, what)
        if seats < 0:
            raise ValueError(f"license field 'seats' must be >= 0, got {seats}")
        features = _field(obj, "features", list, what)
        for feature in features:
            if not isinstance(feature, str) or not _FEATURE.match(feature):
                raise ValueError(f"license field 'features' holds a malformed feature name {feature!r}")
        if len(set(features)) != len(features):
            raise ValueError(f"license field 'features' repeats a feature: {features!r}")
        fingerprint = _field(obj, "installation_fingerprint", str, what)
        if not _HEX64.match(fingerprint):
            raise ValueError(
                f"license field 'installation_fingerprint' must be 64 lower-case hex digits, got {fingerprint!r}"
            )
        issued_at = parse_timestamp(_field(obj, "issued_at", str, what), "license field 'issued_at'")
        if "expires_at" not in obj:
            raise ValueError("license has no field 'expires_at' (use null for a license that never expires)")
        expires_raw = obj["expires_at"]
        expires_at = None if expires_raw is None else parse_timestamp(expires_raw, "license field 'expires_at'")
        key_hash = _field(obj, "key_sha256", str, what)
        if not _HEX64.match(key_hash):
            raise ValueError(f"license field 'key_sha256' must be 64 lower-case hex digits, got {key_hash!r}")
        registration = _field(obj, "registration", str, what)
        if registration not in REGISTRATION_MODES:
            raise ValueError(f"license field 'registration' must be online or offline, got {registration!r}")
        lic = object.__new__(cls)
        for name, value in (
            ("license_id", license_id),
            ("tier", tier),
            ("seats", seats),
            ("features", tuple(sorted(features))),
            ("installation_fingerprint", fingerprint),
            ("issued_at", issued_at),
            ("expires_at", expires_at),
            ("key_sha256", key_hash),
            ("registration", registration),
        ):
            object.__setattr__(lic, name, value)
        return lic

    def has_feature(self, feature: str) -> bool:
        return feature in self.features

    @property
    def seat_capacity(self) -> int:
        return self.tier.seat_capacity(self.seats)


@dataclass(frozen=True)
class SignedLicense:
    license: License
    key_id: str
    signature: bytes = field(repr=False)

    def envelope(self) -> dict[str, Any]:
        return {
            "format": ENVELOPE_FORMAT,
            "license": self.license.to_json(),
            "signature": {"alg": SIGNATURE_ALG, "key_id": self.key_id, "value": b64encode(self.signature)},
        }

    def to_text(self) -> str:
        """The envelope as stored and shipped: readable, stable JSON."""
        return json.dumps(self.envelope(), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------- receipts


@dataclass(frozen=True)
class CheckReceipt:
    license_id: str
    installation_fingerprint: str
    nonce: str
    checked_at: datetime
    status: str = "valid"

    @classmethod
    def from_json(cls, obj: Any) -> CheckReceipt:
        what = "check receipt"
        if not isinstance(obj, Mapping):
            raise ValueError("check receipt must be a JSON object")
        _exact_fields(obj, ("format", "license_id", "installation_fingerprint", "nonce", "checked_at", "status"), what)
        if _field(obj, "format", str, what) != RECEIPT_FORMAT:
            raise ValueError(f"check receipt format {obj['format']!r} is not {RECEIPT_FORMAT!r}")
        return cls(
            license_id=_field(obj, "license_id", str, what),
            installation_fingerprint=_field(obj, "installation_fingerprint", str, what),
            nonce=_field(obj, "nonce", str, what),
            checked_at=parse_timestamp(_field(obj, "checked_at", str, what), "check receipt field 'checked_at'"),
            status=_field(obj, "status", str, what),
        )


# --------------------------------------------------------------------------------------------- keys


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Accept base64 of the raw 32-byte key, or a PEM ``PUBLIC KEY`` block."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped.encode("ascii"))
        except ValueError as exc:
            raise ValueError(f"authority public key PEM could not be read: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"authority public key must be Ed25519, got {type(key).__name__}")
        return key
    try:
        raw = base64.b64decode(stripped.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError(
            f"authority public key {stripped[:60]!r} is neither base64 of a raw Ed25519 key nor a PEM block"
        ) from None
    if len(raw) != 32:
        raise ValueError(f"authority public key must be 32 bytes once base64-decoded, got {len(raw)} bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


class TrustedAuthorities:
    """The authority public keys an installation trusts: the built-in one (``licensing.authority``) and, in tests
    and the sandbox only, ``license.testAuthorityPublicKey``."""

    def __init__(self, keys: Sequence[Ed25519PublicKey]) -> None:
        if not keys:
            raise ValueError("at least one authority public key must be configured")
        self._keys = {key_id_of(key): key for key in keys}

    @classmethod
    def from_config(cls, value: str | Sequence[str]) -> TrustedAuthorities:
        texts = [value] if isinstance(value, str) else list(value)
        return cls([parse_public_key(text) for text in texts])

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def _key_for(self, key_id: str, what: str) -> Ed25519PublicKey:
        key = self._keys.get(key_id)
        if key is None:
            raise TamperedLicenseError(
                f"{what} is signed by authority key {key_id!r}, which this installation does not trust "
                f"(trusted: {', '.join(self.key_ids)}): it was not signed by the registration authority"
            )
        return key

    def verify_envelope(self, envelope: Any) -> SignedLicense:
        """Verify a parsed envelope: structure, trusted key, signature, then the license fields."""
        what = "signed license"
        try:
            if not isinstance(envelope, Mapping):
                raise ValueError("signed license must be a JSON object")
            _exact_fields(envelope, ("format", "license", "signature"), what)
            fmt = _field(envelope, "format", str, what)
            if fmt != ENVELOPE_FORMAT:
                raise ValueError(f"signed license format {fmt!r} is not supported (expected {ENVELOPE_FORMAT!r})")
            lic_obj = _field(envelope, "license", dict, what)
            sig = _field(envelope, "signature", dict, what)
            _exact_fields(sig, ("alg", "key_id", "value"), "signature")
            alg = _field(sig, "alg", str, "signature")
            if alg != SIGNATURE_ALG:
                raise ValueError(f"signature algorithm {alg!r} is not supported (expected {SIGNATURE_ALG})")
            key_id = _field(sig, "key_id", str, "signature")
            if not _KEY_ID.match(key_id):
                raise ValueError(f"signature key_id {key_id!r} is malformed")
            value = b64decode(_field(sig, "value", str, "signature"), "signature value")
            message = LICENSE_SIGNING_PREFIX + canonical_json(lic_obj)
        except ValueError as exc:
            raise TamperedLicenseError(f"the license is damaged: {exc}") from None
        key = self._key_for(key_id, "the license")
        try:
            key.verify(value, message)
        except InvalidSignature:
            raise TamperedLicenseError(
                "the license signature does not verify: the document was modified after the authority signed it"
            ) from None
        try:
            lic = License.from_json(lic_obj)
        except ValueError as exc:
            raise TamperedLicenseError(f"the signed license is not a valid {LICENSE_FORMAT} document: {exc}") from None
        return SignedLicense(license=lic, key_id=key_id, signature=value)

    def verify_envelope_text(self, text: str | bytes) -> SignedLicense:
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TamperedLicenseError(f"the license is not valid JSON: {exc}") from None
        return self.verify_envelope(obj)

    def verify_receipt(self, answer: Any) -> CheckReceipt:
        """Verify a check answer ``{"receipt": {...}, "signature": {...}}`` from the registration server."""
        try:
            if not isinstance(answer, Mapping):
                raise ValueError("check answer must be a JSON object")
            receipt_obj = _field(answer, "receipt", dict, "check answer")
            sig = _field(answer, "signature", dict, "check answer")
            key_id = _field(sig, "key_id", str, "signature")
            value = b64decode(_field(sig, "value", str, "signature"), "signature value")
            receipt = CheckReceipt.from_json(receipt_obj)
            message = RECEIPT_SIGNING_PREFIX + canonical_json(receipt_obj)
        except ValueError as exc:
            raise RegistrationProtocolError(f"the registration server sent a malformed check answer: {exc}") from None
        key = self._key_for(key_id, "the check answer")
        try:
            key.verify(value, message)
        except InvalidSignature:
            raise RegistrationProtocolError(
                "the registration server's check answer has a bad signature (not the trusted authority?)"
            ) from None
        return receipt

"""What the registration authority does: issue keys, register installations, sign offline requests, confirm
(docs/license-format.md §10).

Every refusal is an :class:`AuthorityRefusalError` with the error code and HTTP status of the online API (§10).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from registration_emulator.document import (
    AuthorityKey,
    LicenseTerms,
    format_timestamp,
    new_license_id,
    parse_timestamp,
)
from registration_emulator.keys import KeyFormatError, RegistrationKey, generate_key, parse_key
from registration_emulator.offline import OfflineRequest
from registration_emulator.state import StateDir
from registration_emulator.tiers import FREE_OFFLINE_MESSAGE, FREE_SEATS, Tier

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class AuthorityRefusalError(Exception):
    def __init__(self, http_status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class IssuedKey:
    key: RegistrationKey
    tier: Tier
    seats: int
    features: tuple[str, ...]
    expires_at: datetime | None


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Authority:
    def __init__(self, state: StateDir, signer: AuthorityKey) -> None:
        self.state = state
        self.signer = signer

    # ----------------------------------------------------------------------------------------- keys

    def issue_key(
        self,
        tier: Tier,
        seats: int | None,
        expires_at: datetime | None,
        features: tuple[str, ...] | None = None,
        installations: int = 1,
        now: datetime | None = None,
    ) -> IssuedKey:
        if tier is Tier.FREE:
            if seats not in (None, FREE_SEATS):
                raise ValueError(f"a Free key always has {FREE_SEATS} seats, not {seats}")
            seats = FREE_SEATS
        elif seats is None:
            raise ValueError(f"--seats is required for a {tier.label} key")
        if seats < 1:
            raise ValueError(f"--seats must be at least 1, got {seats}")
        if installations < 1:
            raise ValueError(f"--installations must be at least 1, got {installations}")
        feats = tuple(sorted(set(features if features is not None else tier.default_features)))
        key = generate_key(tier)
        issued_at = now or utcnow()
        with self.state.transaction() as data:
            data["keys"][key.sha256] = {
                "key": key.text,
                "tier": tier.value,
                "seats": seats,
                "features": list(feats),
                "issued_at": format_timestamp(issued_at),
                "expires_at": None if expires_at is None else format_timestamp(expires_at),
                "revoked": False,
                "max_installations": installations,
                "activations": {},
            }
        return IssuedKey(key, tier, seats, feats, expires_at)

    def revoke_key(self, key_text: str) -> None:
        key = self._parse_key(key_text)
        with self.state.transaction() as data:
            record = data["keys"].get(key.sha256)
            if record is None:
                raise AuthorityRefusalError(404, "unknown_key", f"key {key.masked()} was never issued")
            record["revoked"] = True

    def list_keys(self) -> list[dict[str, Any]]:
        with self.state.locked():
            data = self.state.read_keys()
        return [dict(record, key_sha256=digest) for digest, record in sorted(data["keys"].items())]

    # ----------------------------------------------------------------------------------------- licenses

    @staticmethod
    def _parse_key(key_text: str) -> RegistrationKey:
        try:
            return parse_key(key_text)
        except KeyFormatError as exc:
            raise AuthorityRefusalError(400, "malformed_key", exc.message) from None

    def _activate(
        self,
        key_text: str,
        fingerprint: str,
        registration: str,
        now: datetime,
        expires_override: datetime | None = None,
        allow_expired: bool = False,
    ) -> dict[str, Any]:
        """§10 register / offline signing: the signed envelope (§6)."""
        key = self._parse_key(key_text)
        if not isinstance(fingerprint, str) or not _HEX64.match(fingerprint):
            raise AuthorityRefusalError(
                400,
                "invalid_request",
                f"installation_fingerprint must be 64 lower-case hex digits: {fingerprint!r}",
            )
        with self.state.transaction() as data:
            record = data["keys"].get(key.sha256)
            if record is None:
                raise AuthorityRefusalError(
                    404, "unknown_key", f"the key {key.masked()} is not known to this authority"
                )
            tier = Tier(record["tier"])
            if record["revoked"]:
                raise AuthorityRefusalError(403, "key_revoked", f"the key {key.masked()} has been revoked")
            if registration == "offline" and not tier.offline_registration:
                raise AuthorityRefusalError(
                    403,
                    "free_offline_refused",
                    FREE_OFFLINE_MESSAGE,
                )
            expires_at = (
                expires_override
                if expires_override is not None
                else (None if record["expires_at"] is None else parse_timestamp(record["expires_at"], "expires_at"))
            )
            if expires_at is not None and now >= expires_at and not allow_expired:
                raise AuthorityRefusalError(
                    410, "key_expired", f"the key {key.masked()} expired at {format_timestamp(expires_at)}"
                )
            activations: dict[str, Any] = record["activations"]
            allowed = int(record.get("max_installations", 1))
            if fingerprint not in activations and len(activations) >= allowed:
                raise AuthorityRefusalError(
                    409,
                    "key_in_use",
                    f"the key {key.masked()} is already registered to another installation "
                    f"({len(activations)} of {allowed} allowed)",
                )
            previous = activations.get(fingerprint)
            license_id = previous["license_id"] if previous else new_license_id()
            terms = LicenseTerms(
                license_id=license_id,
                tier=tier,
                seats=int(record["seats"]),
                features=tuple(record["features"]),
                installation_fingerprint=fingerprint,
                issued_at=now,
                expires_at=expires_at,
                key_sha256=key.sha256,
                registration=registration,
            )
            activations[fingerprint] = {
                "license_id": license_id,
                "registration": registration,
                "activated_at": format_timestamp(now),
                "expires_at": None if expires_at is None else format_timestamp(expires_at),
                "last_check": None,
                "checks": previous.get("checks", 0) if previous else 0,
            }
            data["licenses"][license_id] = {"key_sha256": key.sha256, "installation_fingerprint": fingerprint}
        return self.signer.sign_license(terms)

    def register_online(self, key_text: str, fingerprint: str, now: datetime | None = None) -> dict[str, Any]:
        return self._activate(key_text, fingerprint, "online", now or utcnow())

    def sign_offline(
        self,
        request: OfflineRequest,
        now: datetime | None = None,
        expires_override: datetime | None = None,
    ) -> dict[str, Any]:
        """Answer an offline request. ``expires_override`` lets the manager give this license its own term
        (even one already over: that is how the connector's refusal of an expired file is exercised)."""
        return self._activate(
            request.key.text,
            request.installation_fingerprint,
            "offline",
            now or utcnow(),
            expires_override=expires_override,
            allow_expired=expires_override is not None,
        )

    def check(
        self, license_id: str, key_hash: str, fingerprint: str, nonce: str, now: datetime | None = None
    ) -> dict[str, Any]:
        moment = now or utcnow()
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
            raise AuthorityRefusalError(400, "invalid_request", "nonce must be a string of 16 to 128 characters")
        with self.state.transaction() as data:
            entry = data["licenses"].get(license_id) if isinstance(license_id, str) else None
            if entry is None or entry["key_sha256"] != key_hash:
                raise AuthorityRefusalError(404, "unknown_license", f"license {license_id!r} was not issued here")
            if entry["installation_fingerprint"] != fingerprint:
                raise AuthorityRefusalError(
                    409, "foreign_installation", f"license {license_id} belongs to another installation"
                )
            record = data["keys"][key_hash]
            if record["revoked"]:
                raise AuthorityRefusalError(403, "key_revoked", f"the key of license {license_id} has been revoked")
            activation = record["activations"][fingerprint]
            expires_raw = activation.get("expires_at")
            if expires_raw is not None and moment >= parse_timestamp(expires_raw, "expires_at"):
                raise AuthorityRefusalError(410, "key_expired", f"license {license_id} expired at {expires_raw}")
            activation["last_check"] = format_timestamp(moment)
            # answered checks of this activation, for tests (how many calls N licensing replicas make per period)
            activation["checks"] = int(activation.get("checks", 0)) + 1
        return self.signer.sign_receipt(license_id, fingerprint, nonce, moment)

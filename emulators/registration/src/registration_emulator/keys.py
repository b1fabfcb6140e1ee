"""Registration keys as the authority issues and reads them (docs/license-format.md §2).

``TCCAL-<FREE|STD|ENT>-XXXXX-XXXXX-XXXXX-XXXXX-CCCC``: 100 random bits in Crockford base32, then a checksum of
the first 20 bits of SHA-256 over everything before it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from registration_emulator.tiers import Tier

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # §2: value = position
TIER_CODES: dict[Tier, str] = {Tier.FREE: "FREE", Tier.STANDARD: "STD", Tier.ENTERPRISE: "ENT"}
_CODE_TIERS = {code: tier for tier, code in TIER_CODES.items()}
_SYMBOL = f"[{ALPHABET}]"
_KEY_RE = re.compile(
    rf"^TCCAL-(FREE|STD|ENT)-({_SYMBOL}{{5}}-{_SYMBOL}{{5}}-{_SYMBOL}{{5}}-{_SYMBOL}{{5}})-({_SYMBOL}{{4}})$"
)
KEY_PATTERN = "TCCAL-<FREE|STD|ENT>-XXXXX-XXXXX-XXXXX-XXXXX-CCCC"


class KeyFormatError(ValueError):
    """§2: the text is not a well-formed key (pattern or checksum); ``message`` names the value."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _symbols(value: int, count: int) -> str:
    """``value`` as ``count`` alphabet symbols, most significant first (§2)."""
    return "".join(ALPHABET[(value >> (5 * (count - 1 - i))) & 31] for i in range(count))


def checksum(prefix: str) -> str:
    """§2: the first 20 bits of SHA-256(prefix) as 4 symbols."""
    digest = hashlib.sha256(prefix.encode("ascii")).digest()
    return _symbols(int.from_bytes(digest[:3], "big") >> 4, 4)


def normalize(text: str) -> str:
    """§2: trimmed and upper-cased."""
    return text.strip().upper()


def key_sha256(text: str) -> str:
    """§2: hex SHA-256 of the normalised key."""
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RegistrationKey:
    text: str
    tier: Tier

    @property
    def sha256(self) -> str:
        return key_sha256(self.text)

    def masked(self) -> str:
        """§2: ``TCCAL-STD-0123A-*****-*****-*****-X74E``."""
        parts = self.text.split("-")
        return "-".join([*parts[:3], "*****", "*****", "*****", parts[-1]])


def parse_key(text: str) -> RegistrationKey:
    norm = normalize(text)
    match = _KEY_RE.match(norm)
    if match is None:
        shown = text if len(text) <= 64 else text[:61] + "..."
        raise KeyFormatError(f"malformed registration key {shown!r}: expected {KEY_PATTERN}")
    code, groups, check = match.groups()
    if check != checksum(f"TCCAL-{code}-{groups}"):
        raise KeyFormatError(
            f"malformed registration key {norm!r}: the checksum group {check!r} does not match the key "
            "(a typo?); check the key you received"
        )
    return RegistrationKey(norm, _CODE_TIERS[code])


def generate_key(tier: Tier) -> RegistrationKey:
    """§2: 100 random bits as 20 symbols in groups of 5, then the checksum."""
    body = _symbols(secrets.randbits(100), 20)
    prefix = f"TCCAL-{TIER_CODES[tier]}-" + "-".join(body[i : i + 5] for i in range(0, 20, 5))
    return RegistrationKey(f"{prefix}-{checksum(prefix)}", tier)

"""Registration keys: ``TCCAL-<TIER>-XXXXX-XXXXX-XXXXX-XXXXX-CCCC`` (docs/license-format.md §2).

* ``<TIER>`` is ``FREE``, ``STD`` or ``ENT``; it is advisory (the signed license decides the tier) but lets
  the connector refuse a free key for offline registration before anything is written.
* The four groups are 100 random bits in Crockford base32 (``0-9A-Z`` without ``I L O U``).
* ``CCCC`` is a checksum: the first 20 bits of SHA-256 over ``TCCAL-<TIER>-<groups>`` (dashes included),
  in the same alphabet. A typo is caught locally, before the registration server is asked.

Keys are compared after normalisation (surrounding whitespace removed, upper case). The license stores only
``key_sha256``, the SHA-256 of the normalised key, never the key itself.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from licensing.errors import MalformedKeyError
from licensing.tiers import Tier

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TIER_CODES: dict[Tier, str] = {Tier.FREE: "FREE", Tier.STANDARD: "STD", Tier.ENTERPRISE: "ENT"}
_CODE_TIERS: dict[str, Tier] = {code: tier for tier, code in _TIER_CODES.items()}
_GROUP = f"[{ALPHABET}]{{5}}"
_KEY_RE = re.compile(rf"^TCCAL-(FREE|STD|ENT)-({_GROUP}-{_GROUP}-{_GROUP}-{_GROUP})-([{ALPHABET}]{{4}})$")
KEY_PATTERN_TEXT = "TCCAL-<FREE|STD|ENT>-XXXXX-XXXXX-XXXXX-XXXXX-CCCC"


def _encode_bits(value: int, chars: int) -> str:
    out = []
    for _ in range(chars):
        out.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def _checksum(prefix: str) -> str:
    digest = hashlib.sha256(prefix.encode("ascii")).digest()
    return _encode_bits(int.from_bytes(digest[:3], "big") >> 4, 4)


@dataclass(frozen=True)
class RegistrationKey:
    """A well-formed key (format and checksum verified)."""

    text: str
    tier: Tier

    @property
    def sha256(self) -> str:
        return key_sha256(self.text)

    def masked(self) -> str:
        """The key with its random part hidden, for logs and messages."""
        parts = self.text.split("-")
        return "-".join(parts[:3] + ["*****"] * 3 + parts[-1:])

    def __str__(self) -> str:
        return self.text


def normalize_key(text: str) -> str:
    return text.strip().upper()


def key_sha256(text: str) -> str:
    return hashlib.sha256(normalize_key(text).encode("utf-8")).hexdigest()


def parse_key(text: str) -> RegistrationKey:
    """Check the format and checksum of ``text``; raise :class:`MalformedKeyError` naming the problem."""
    norm = normalize_key(text)
    match = _KEY_RE.match(norm)
    if match is None:
        shown = text if len(text) <= 64 else text[:61] + "..."
        raise MalformedKeyError(f"malformed registration key {shown!r}: expected {KEY_PATTERN_TEXT}")
    code, groups, check = match.group(1), match.group(2), match.group(3)
    expected = _checksum(f"TCCAL-{code}-{groups}")
    if check != expected:
        raise MalformedKeyError(
            f"malformed registration key {norm!r}: the checksum group {check!r} does not match the key "
            "(a typo?); check the key you received"
        )
    return RegistrationKey(text=norm, tier=_CODE_TIERS[code])

"""What ties the licensing rows to this installation: keys derived from the machine key (docs/license-format.md §8).

The machine key (``tccal.secrets``: the key that encrypts the config's secrets) is not in the database, so
neither is anything derived from it:

* the **installation fingerprint** is an HMAC of the install id under a key derived from the machine key. A copy
  of the database on another installation (another machine key) has another fingerprint, so the licenses in it
  are foreign there;
* every row of ``licensing.installation``, ``licensing.licenses`` and ``licensing.online_check`` carries a
  **seal**: an HMAC-SHA256, under another derived key, of the row's kind and values. A row edited in the
  database (a revoked Free license made valid again, an older high-water mark of the clock) no longer matches
  its seal and is not trusted.

Keys: HKDF-SHA256 (RFC 5869, no salt) of the 32-byte machine key with info ``tccal-installation/2`` (the
fingerprint key) or ``tccal-licensing-seal/1`` (the seal key). Sealed bytes: canonical JSON (§1) of the list
``[kind, value, ...]``, timestamps as ISO 8601 with microseconds, booleans and null as JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FINGERPRINT_INFO = b"tccal-installation/2"
SEAL_INFO = b"tccal-licensing-seal/1"

SealValue = str | int | bool | datetime | uuid.UUID | None


def derive(machine_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(machine_key)


def _plain(value: SealValue) -> str | int | bool | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


class Sealer:
    """The installation's fingerprint and the seals of its rows, from the machine key."""

    def __init__(self, machine_key: bytes) -> None:
        self._fingerprint_key = derive(machine_key, FINGERPRINT_INFO)
        self._seal_key = derive(machine_key, SEAL_INFO)

    def fingerprint(self, install_id: uuid.UUID) -> str:
        message = f"{FINGERPRINT_INFO.decode()}:{install_id}".encode("ascii")
        return hmac.new(self._fingerprint_key, message, hashlib.sha256).hexdigest()

    def seal(self, kind: str, *values: SealValue) -> str:
        message = json.dumps(
            [kind, *(_plain(v) for v in values)], ensure_ascii=False, separators=(",", ":"), sort_keys=True
        ).encode("utf-8")
        return hmac.new(self._seal_key, message, hashlib.sha256).hexdigest()

    def verify(self, seal: str | None, kind: str, *values: SealValue) -> bool:
        return seal is not None and hmac.compare_digest(seal, self.seal(kind, *values))

"""The installation fingerprint a license is bound to.

An installation is identified by a random *install id* (UUID4) created once and kept with the data, in the
``licensing.installation`` table of PostgreSQL: it survives restarts and container re-creation, and a copy of
the database is the same installation. The fingerprint is ``sha256("tccal-installation/1:" + install_id)`` in
lower-case hex; only the fingerprint leaves the installation (in requests and in licenses).
"""

from __future__ import annotations

import hashlib
import uuid

FINGERPRINT_DOMAIN = "tccal-installation/1"


def new_install_id() -> uuid.UUID:
    return uuid.uuid4()


def fingerprint_of(install_id: uuid.UUID) -> str:
    return hashlib.sha256(f"{FINGERPRINT_DOMAIN}:{install_id}".encode("ascii")).hexdigest()


def short_fingerprint(fingerprint: str) -> str:
    """``abcd-ef01-2345-6789``: the first 16 hex digits, for messages."""
    head = fingerprint[:16]
    return "-".join(head[i : i + 4] for i in range(0, 16, 4))

"""The installation fingerprint a license is bound to (docs/license-format.md §8).

An installation is identified by a random *install id* (UUID4) created once and kept with the data, in the
``licensing.installation`` table of PostgreSQL, and by its machine key (``tccal.secrets``), which is not in the
database. The fingerprint is an HMAC of the install id under a key derived from the machine key
(``licensing.sealing.Sealer.fingerprint``): it survives restarts, new containers and new config directories, but
a copy of the database used with another machine key is another installation. Only the fingerprint leaves the
installation (in requests and in licenses).
"""

from __future__ import annotations

import uuid


def new_install_id() -> uuid.UUID:
    return uuid.uuid4()


def short_fingerprint(fingerprint: str) -> str:
    """``abcd-ef01-2345-6789``: the first 16 hex digits, for messages."""
    head = fingerprint[:16]
    return "-".join(head[i : i + 4] for i in range(0, 16, 4))

"""The registration authority's public key, built into the product (docs/license-format.md §4).

Licenses are verified with this key and no configuration can replace it: a key in a config file would let
whoever edits the config sign their own licenses. The private half is not in this repository: the key pair was
generated once, only the public key was kept, and the private key was discarded. The real vendor puts its
authority key here.

Tests and the sandbox sign with the registration emulator's own key pair. That key is accepted only through
the test-only setting ``license.testAuthorityPublicKey``, which a production installation refuses: the
connector's container images set ``TC_CALENDAR_PRODUCTION=1`` (deploy/docker/Dockerfile), and the service and
the ``tc_calendar`` commands then stop with exit code 2 naming the setting.
"""

from __future__ import annotations

import os

from tccal.production import PRODUCTION_ENV, is_production

__all__ = [
    "AUTHORITY_KEY_ID",
    "AUTHORITY_PUBLIC_KEY",
    "PRODUCTION_ENV",
    "TEST_KEY_SETTING",
    "is_production",
    "refuse_test_key_in_production",
]

AUTHORITY_PUBLIC_KEY = "U5ZOCAcGeavdPDnJuSkJVyLGC4AUXUSW+Dv4jrjjJj8="
AUTHORITY_KEY_ID = "6c0603ad67104ff4"

TEST_KEY_SETTING = "license.testAuthorityPublicKey"


def refuse_test_key_in_production() -> None:
    """Raise ``ValueError`` naming the setting when a test authority key meets a production installation."""
    if is_production():
        raise ValueError(
            f"{TEST_KEY_SETTING} is a test-only setting (the registration emulator's key), and this is a "
            f"production installation ({PRODUCTION_ENV}={os.environ.get(PRODUCTION_ENV)}): it is refused. Remove "
            f"{TEST_KEY_SETTING}; licenses are verified with the built-in authority key {AUTHORITY_KEY_ID}"
        )

"""A production installation (``TC_CALENDAR_PRODUCTION=1``, set by the product images) refuses the demo's secrets.

docker-compose.yml starts out of the box with a machine key and a PostgreSQL password that are committed to the
public repository (deploy/compose/secrets/): whoever has the repository can decrypt every secret of an
installation that kept the key, and log into its database. They are for the demo only. A service that starts in
a production installation with either of them stops at once with exit code 2 naming the setting to change; the
demo itself (docker-compose.yml sets ``TC_CALENDAR_PRODUCTION`` from ``TCCAL_PRODUCTION``, default 0) is not held.

The demo values are known here by their SHA-256 only.
"""

from __future__ import annotations

import hashlib
import os

from tccal import secrets
from tccal.config import Config

PRODUCTION_ENV = "TC_CALENDAR_PRODUCTION"
_FALSE = ("", "0", "false", "no", "off")

#: SHA-256 of the 32 key bytes of deploy/compose/secrets/machine.key (the compose demo's machine key).
DEMO_MACHINE_KEY_SHA256 = "c3b484c4e11e05edeb5491f65d6e080e258c2d933a08dc3d10a89d42bab86220"
#: SHA-256 of deploy/compose/secrets/postgres-password's text (the compose demo's PostgreSQL password; the
#: postgres image strips the file's trailing newline).
DEMO_DB_PASSWORD_SHA256 = "f5f89751fc539631a732faa550d78ce270e8cd3e6763fc47c1392e5a1d1b9b06"


def is_production() -> bool:
    """``TC_CALENDAR_PRODUCTION`` set to anything but empty/0/false/no/off."""
    return os.environ.get(PRODUCTION_ENV, "").strip().lower() not in _FALSE


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_demo_machine_key(key: bytes) -> bool:
    return _sha256(key) == DEMO_MACHINE_KEY_SHA256


def is_demo_db_password(password: str) -> bool:
    return _sha256(password.encode("utf-8")) == DEMO_DB_PASSWORD_SHA256


def demo_secret_refusals(config: Config) -> list[str]:
    """Why this production installation must not start: each demo secret it uses, naming the setting. Empty when
    it is not a production installation, or uses none."""
    if not is_production():
        return []
    refusals: list[str] = []
    where = f"{PRODUCTION_ENV}={os.environ.get(PRODUCTION_ENV)}"
    key_source = (
        f"environment variable {secrets.KEY_ENV}"
        if os.environ.get(secrets.KEY_ENV)
        else f"{secrets.KEY_FILE_ENV} ({secrets.key_file_path()})"
    )
    try:
        key: bytes | None = secrets.load_key(create=False)
    except secrets.SecretError:
        key = None  # no key (yet): nothing encrypted can be read with the demo's either
    if key is not None and is_demo_machine_key(key):
        refusals.append(
            f"the machine key ({key_source}) is the public demo key of docker-compose.yml "
            f"(deploy/compose/secrets/machine.key), and this is a production installation ({where}): anyone can "
            "decrypt its secrets. Make a key of your own (TCCAL_MACHINE_KEY_FILE, deploy/README.md) and encrypt "
            "the config's secrets with it"
        )
    try:
        password = secrets.reveal(
            config.db_connection_config.password, allow_plaintext=config.allow_plaintext_passwords
        )
    except secrets.SecretError:
        password = ""  # unreadable: the service says so itself when it connects
    if password and is_demo_db_password(password):
        refusals.append(
            "dbConnectionConfig.password is the public demo PostgreSQL password of docker-compose.yml "
            f"(deploy/compose/secrets/postgres-password), and this is a production installation ({where}). Choose "
            "a password of your own (TCCAL_POSTGRES_PASSWORD_FILE, deploy/README.md) and set it there"
        )
    return refusals

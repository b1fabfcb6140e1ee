"""The authority's state directory.

``authority_ed25519.pem``  private key (PKCS#8 PEM, mode 0600; docs/license-format.md §4)
``authority_ed25519.pub``  the public key as the connector's test-only ``license.testAuthorityPublicKey`` takes it
``keys.json``              issued keys, their activations and the licenses signed for them
``state.lock``             ``flock`` lock serialising every read-modify-write of ``keys.json``

The server and the commands share the directory; every change is written to a temporary file and renamed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from registration_emulator.document import AuthorityKey

STATE_FORMAT = "tccal-registration-state/1"
PRIVATE_KEY_FILE = "authority_ed25519.pem"
PUBLIC_KEY_FILE = "authority_ed25519.pub"
KEYS_FILE = "keys.json"
LOCK_FILE = "state.lock"


class StateError(Exception):
    """The state directory is missing something or holds something unreadable."""


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def private_key_path(self) -> Path:
        return self.path / PRIVATE_KEY_FILE

    @property
    def public_key_path(self) -> Path:
        return self.path / PUBLIC_KEY_FILE

    def has_authority_key(self) -> bool:
        return self.private_key_path.exists()

    def create_authority_key(self, force: bool = False) -> AuthorityKey:
        self.path.mkdir(parents=True, exist_ok=True)
        if self.has_authority_key() and not force:
            existing = self.load_authority_key()
            raise StateError(
                f"an authority key already exists at {self.private_key_path} "
                f"(public key {existing.public_text}); use --force to replace it — licenses signed with the "
                "old key will no longer verify"
            )
        signer = AuthorityKey.generate()
        tmp = self.private_key_path.with_suffix(".pem.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(signer.private_pem())
        os.replace(tmp, self.private_key_path)
        self._write_text(self.public_key_path, signer.public_text + "\n")
        return signer

    def load_authority_key(self) -> AuthorityKey:
        try:
            data = self.private_key_path.read_bytes()
        except FileNotFoundError:
            raise StateError(
                f"no authority key in {self.path}: run "
                f"`python -m registration_emulator --state-dir {self.path} keygen` first"
            ) from None
        try:
            return AuthorityKey.from_pem(data)
        except ValueError as exc:
            raise StateError(f"the authority key {self.private_key_path} is unreadable: {exc}") from None

    def load_or_create_authority_key(self) -> tuple[AuthorityKey, bool]:
        with self.locked():
            if self.has_authority_key():
                return self.load_authority_key(), False
            return self.create_authority_key(), True

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def read_keys(self) -> dict[str, Any]:
        path = self.path / KEYS_FILE
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return {"format": STATE_FORMAT, "keys": {}, "licenses": {}}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StateError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise StateError(f"{path} is not a {STATE_FORMAT} file")
        return data

    def write_keys(self, data: dict[str, Any]) -> None:
        self._write_text(self.path / KEYS_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Lock, read ``keys.json``, yield it for changes, write it back if the block succeeds."""
        with self.locked():
            data = self.read_keys()
            yield data
            self.write_keys(data)

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, "utf-8")
        os.replace(tmp, path)

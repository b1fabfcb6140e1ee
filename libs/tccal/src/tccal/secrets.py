"""Encrypted secrets in the `tc_` format of `tc-calendar --hash_pass`.

A value is base64( b"tc_" + version (1 byte) + nonce (12 bytes) + AES-256-GCM ciphertext with tag ). Its
base64 text therefore starts with "dGNf". The 256-bit key comes from, in order: the environment variable
TC_CALENDAR_KEY (base64, for containers fed from a Kubernetes Secret), the file named by TC_CALENDAR_KEY_FILE,
or the machine key file ~/.config/tc-calendar/machine.key, created on first use with mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"tc_"
VERSION = 1
NONCE_SIZE = 12
KEY_SIZE = 32
ENCRYPTED_PREFIX_B64 = "dGNf"
KEY_ENV = "TC_CALENDAR_KEY"
KEY_FILE_ENV = "TC_CALENDAR_KEY_FILE"
_AAD = b"tc-calendar secret v1"


class SecretError(Exception):
    """A secret could not be encrypted or decrypted; the message says why (never the secret)."""


def default_key_file() -> Path:
    return Path.home() / ".config" / "tc-calendar" / "machine.key"


def key_file_path() -> Path:
    configured = os.environ.get(KEY_FILE_ENV)
    return Path(configured) if configured else default_key_file()


def load_key(*, create: bool = True) -> bytes:
    """The machine key; with `create`, a missing key file is made (0600) on first use."""
    from_env = os.environ.get(KEY_ENV)
    if from_env:
        return _decode_key(from_env, f"environment variable {KEY_ENV}")
    path = key_file_path()
    if path.exists():
        return _decode_key(path.read_text().strip(), f"key file {path}")
    if not create:
        raise SecretError(f"machine key file {path} does not exist")
    key = AESGCM.generate_key(bit_length=256)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(key).decode() + "\n")
    return key


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise SecretError(f"{where} does not hold a base64 key") from exc
    if len(key) != KEY_SIZE:
        raise SecretError(f"{where} holds a {len(key)}-byte key; a {KEY_SIZE}-byte AES-256 key is expected")
    return key


def encrypt(plaintext: str, key: bytes | None = None) -> str:
    """Encrypt `plaintext` into the `tc_` format (a fresh nonce each time)."""
    key = load_key() if key is None else key
    nonce = os.urandom(NONCE_SIZE)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), _AAD)
    return base64.b64encode(MAGIC + bytes([VERSION]) + nonce + sealed).decode("ascii")


def is_encrypted(value: str) -> bool:
    return value.startswith(ENCRYPTED_PREFIX_B64)


def decrypt(value: str, key: bytes | None = None) -> str:
    """Decrypt a `tc_` value; a wrong key or a damaged value raises SecretError, never returns garbage."""
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise SecretError("the value is not base64 (was it copied whole?)") from exc
    if not raw.startswith(MAGIC):
        raise SecretError("the value is not a tc_ secret (make one with tc-calendar --hash_pass)")
    if len(raw) < len(MAGIC) + 1 + NONCE_SIZE + 16:
        raise SecretError("the value is truncated")
    version = raw[len(MAGIC)]
    if version != VERSION:
        raise SecretError(f"the value has format version {version}; this build reads version {VERSION}")
    nonce_at = len(MAGIC) + 1
    nonce, sealed = raw[nonce_at : nonce_at + NONCE_SIZE], raw[nonce_at + NONCE_SIZE :]
    key = load_key(create=False) if key is None else key
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, _AAD)
    except InvalidTag as exc:
        raise SecretError(
            "the value cannot be decrypted: it was made with another machine key, or it is damaged"
        ) from exc
    return plain.decode("utf-8")


def reveal(value: str, *, allow_plaintext: bool = False) -> str:
    """The usable form of a configured secret: decrypted, or as written where plaintext is allowed."""
    if not value:
        return ""
    if is_encrypted(value):
        from tccal.telemetry import register_secret

        plain = decrypt(value)
        register_secret(plain)
        return plain
    if allow_plaintext:
        from tccal.telemetry import register_secret

        register_secret(value)
        return value
    raise SecretError("the value is not encrypted (make it with tc-calendar --hash_pass)")

"""`tc_` secrets: format, machine key handling, clear errors, and the guide's --hash_pass command."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tccal import secrets


def test_round_trip_and_format(isolated_machine_key: Path) -> None:
    token = secrets.encrypt("Пароль с пробелами")
    assert token.startswith("dGNf")
    raw = base64.b64decode(token)
    assert raw[:3] == b"tc_" and raw[3] == secrets.VERSION
    assert secrets.decrypt(token) == "Пароль с пробелами"
    assert secrets.encrypt("same") != secrets.encrypt("same"), "a fresh nonce every time"


def test_machine_key_is_created_once_with_0600(isolated_machine_key: Path) -> None:
    assert not isolated_machine_key.exists()
    key = secrets.load_key()
    assert stat.S_IMODE(isolated_machine_key.stat().st_mode) == 0o600
    assert secrets.load_key() == key


def test_key_from_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv("TC_CALENDAR_KEY", base64.b64encode(key).decode())
    token = secrets.encrypt("k8s")
    assert secrets.decrypt(token, key) == "k8s"
    monkeypatch.setenv("TC_CALENDAR_KEY", "not base64!")
    with pytest.raises(secrets.SecretError, match="TC_CALENDAR_KEY does not hold a base64 key"):
        secrets.load_key()
    monkeypatch.setenv("TC_CALENDAR_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(secrets.SecretError, match="5-byte key"):
        secrets.load_key()


def test_wrong_key_is_a_clear_error_not_garbage() -> None:
    token = secrets.encrypt("secret", key=b"\x01" * 32)
    with pytest.raises(secrets.SecretError, match="another machine key, or it is damaged"):
        secrets.decrypt(token, key=b"\x02" * 32)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda t: t[:-6] + ("AAAA" if not t.endswith("AAAA==") else "BBBB") + "==", "cannot be decrypted"),
        (lambda t: t[:20], "truncated|not base64"),
        (lambda t: "%%%" + t, "not base64"),
        (lambda t: base64.b64encode(b"xx_" + base64.b64decode(t)[3:]).decode(), "not a tc_ secret"),
        (lambda t: base64.b64encode(b"tc_\x09" + base64.b64decode(t)[4:]).decode(), "format version 9"),
    ],
)
def test_corrupted_values_are_clear_errors(mangle: object, message: str) -> None:
    key = b"\x07" * 32
    token = secrets.encrypt("value", key=key)
    with pytest.raises(secrets.SecretError, match=message):
        secrets.decrypt(mangle(token), key=key)  # type: ignore[operator]


def test_hash_pass_as_the_guide_writes_it(isolated_machine_key: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tccal.cli", "--hash_pass", "a", "b", "p@ss word"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    prefix = "Your encrypted data: "
    assert all(line.startswith(prefix + "dGNf") for line in lines)
    assert [secrets.decrypt(line[len(prefix) :]) for line in lines] == ["a", "b", "p@ss word"]
    assert stat.S_IMODE(isolated_machine_key.stat().st_mode) == 0o600


def test_hash_pass_without_passwords_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "tccal.cli", "--hash_pass"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Missing argument 'PASSWORDS...'" in result.stderr

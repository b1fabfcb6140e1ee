"""Helpers for tests: start the emulator as a real subprocess on a free port and stop it.

    with start_emulator(users=[{"id": "alice", "email": "alice@example.test"}], gateway_url=url) as tcs:
        token = tcs.token()
        tcs.get_json(f"{tcs.inspect_url}/calendars/alice@example.test")

`start_emulator_async` does the same without blocking an event loop (for asyncio tests that also run
an in-process gateway). The emulator binds 127.0.0.1 port 0 and reports its URLs in a ready-file, so
concurrent test runs never collide.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, overload

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_USERS: tuple[dict[str, str], ...] = (
    {"id": "alice", "email": "alice@example.test", "display_name": "Alice Archer"},
    {"id": "bob", "email": "bob@example.test", "display_name": "Bob Baker"},
    {"id": "carol", "email": "carol@example.test", "display_name": "Carol Cole"},
)
DEFAULT_SERVER_ID = "tcs.example.test#vcs"
DEFAULT_SECRET = "bridge-secret"
DEFAULT_CLIENT_ID = "tc-calendar-connector"
DEFAULT_CLIENT_SECRET = "connector-secret"


class EmulatorStartError(RuntimeError):
    pass


class HttpError(RuntimeError):
    def __init__(self, status: int, body: Any, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}: {body}")
        self.status = status
        self.body = body
        self.url = url


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (for servers that cannot bind port 0 themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    # An https:// emulator serves a self-signed test certificate (self_signed_certificate): not verified here.
    context = ssl._create_unverified_context() if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            text = response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        raw = exc.read().decode("utf-8", errors="replace")
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw
        raise HttpError(exc.code, parsed, url) from exc
    return json.loads(text) if text else None


class _ReadyValue:
    """A read-only string attribute of `EmulatorProcess`: one entry of its ready-file, by its path of keys."""

    def __init__(self, *keys: str) -> None:
        self._keys = keys

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> _ReadyValue: ...

    @overload
    def __get__(self, instance: EmulatorProcess, owner: type[Any]) -> str: ...

    def __get__(self, instance: EmulatorProcess | None, owner: type[Any]) -> _ReadyValue | str:
        if instance is None:
            return self
        value: Any = instance.ready
        for key in self._keys:
            value = value[key]
        return str(value)

    def __set__(self, instance: EmulatorProcess, value: object) -> None:
        raise AttributeError("read from the ready-file; not settable")


@dataclass
class EmulatorProcess:
    """A running emulator subprocess and the URLs from its ready-file."""

    process: subprocess.Popen[bytes]
    ready: dict[str, Any]
    workdir: Path
    log_path: Path
    config: dict[str, Any]
    _owns_workdir: bool = field(default=True, repr=False)

    base_url = _ReadyValue("base_url")
    rest_url = _ReadyValue("rest_url")
    token_url = _ReadyValue("token_url")
    inspect_url = _ReadyValue("inspect_url")
    admin_url = _ReadyValue("admin_url")
    server_id = _ReadyValue("server_id")
    client_id = _ReadyValue("oauth", "client_id")
    client_secret = _ReadyValue("oauth", "client_secret")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    # -------------------------------------------------------------- small synchronous HTTP helpers
    def get_json(self, url: str) -> Any:
        return _request("GET", url)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """Call the admin API, e.g. admin("PUT", "/bridge/acks", {"delay_ms": 500})."""
        return _request(method, f"{self.admin_url}{path}", body)

    def inspect(self, path: str) -> Any:
        """GET the inspection API, e.g. inspect("/bridge") or inspect("/calendars/alice@example.test")."""
        return _request("GET", f"{self.inspect_url}{path}")

    def token(self) -> str:
        reply = _request(
            "POST",
            self.token_url,
            {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self.client_secret},
        )
        return str(reply["access_token"])

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """Call REST API v4 (`path` below /api/v4) with a bearer token (a fresh one when not given)."""
        bearer = token or self.token()
        return _request(method, f"{self.rest_url}{path}", body, {"Authorization": f"Bearer {bearer}"})

    # -------------------------------------------------------------- lifecycle
    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code. Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        if self._owns_workdir and os.environ.get("TRUECONF_EMULATOR_KEEP_LOGS") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)
        return int(self.process.returncode)

    async def astop(self, timeout: float = 10.0) -> int:
        return await asyncio.to_thread(self.stop, timeout)

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate and key (PEM files in `directory`) for an https:// emulator
    (`extra={"tls_cert_file": ..., "tls_key_file": ...}`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def build_config(
    *,
    gateway_url: str | None = None,
    server_id: str = DEFAULT_SERVER_ID,
    secret: str = DEFAULT_SECRET,
    users: Sequence[Mapping[str, str]] | None = None,
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    token_lifetime: int = 3600,
    reconnect_initial: float = 0.1,
    reconnect_max: float = 1.0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A config file object with test-friendly defaults (fast reconnects)."""
    config: dict[str, Any] = {
        "server_id": server_id,
        "secret": secret,
        "gateway_url": gateway_url,
        "users": [dict(user) for user in (DEFAULT_USERS if users is None else users)],
        "oauth": {"client_id": client_id, "client_secret": client_secret, "token_lifetime": token_lifetime},
        "reconnect": {"initial_delay": reconnect_initial, "max_delay": reconnect_max},
        "host": "127.0.0.1",
        "port": 0,
    }
    if extra:
        config.update(extra)
    return config


def _launch(config: Mapping[str, Any], workdir: Path | None, env: Mapping[str, str] | None) -> EmulatorProcess:
    owns = workdir is None
    directory = Path(tempfile.mkdtemp(prefix="trueconf-emulator-")) if workdir is None else Path(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "config.json"
    ready_path = directory / "ready.json"
    log_path = directory / "emulator.log"
    ready_path.unlink(missing_ok=True)
    data = dict(config)
    data["ready_file"] = str(ready_path)
    config_path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    process_env = dict(os.environ if env is None else env)
    process_env.setdefault("PYTHONUNBUFFERED", "1")
    with log_path.open("wb") as log_stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "trueconf_emulator", "--config", str(config_path)],
            stdout=log_stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=process_env,
            cwd=str(directory),
        )
    return EmulatorProcess(
        process=process, ready={}, workdir=directory, log_path=log_path, config=data, _owns_workdir=owns
    )


def _poll_ready(handle: EmulatorProcess) -> bool:
    """True once the ready-file is there; raises if the process died."""
    ready_path = Path(handle.config["ready_file"])
    if ready_path.is_file():
        try:
            handle.ready = json.loads(ready_path.read_text(encoding="utf-8"))
            return True
        except ValueError:
            return False
    code = handle.process.poll()
    if code is not None:
        raise EmulatorStartError(f"emulator exited with code {code} before it was ready:\n{handle.log_text()[-4000:]}")
    return False


def _fail_start(handle: EmulatorProcess, timeout: float) -> EmulatorStartError:
    log_text = handle.log_text()
    handle.stop()
    return EmulatorStartError(f"emulator not ready within {timeout} s:\n{log_text[-4000:]}")


def _begin(
    config: Mapping[str, Any] | None,
    config_options: Mapping[str, Any],
    workdir: Path | None,
    env: Mapping[str, str] | None,
    startup_timeout: float,
) -> tuple[EmulatorProcess, float]:
    """Launch the emulator for `start_emulator(_async)`; returns its handle and the deadline of its ready-file."""
    if config is not None and config_options:
        raise TypeError("pass either a config object or build_config keyword options, not both")
    handle = _launch(config if config is not None else build_config(**config_options), workdir, env)
    return handle, time.monotonic() + startup_timeout


def start_emulator(
    config: Mapping[str, Any] | None = None,
    *,
    startup_timeout: float = 30.0,
    workdir: Path | None = None,
    env: Mapping[str, str] | None = None,
    **config_options: Any,
) -> EmulatorProcess:
    """Start `python -m trueconf_emulator` and wait for its ready-file.

    Pass a full config object, or keyword options for `build_config` (gateway_url, server_id, secret,
    users, client_id, client_secret, token_lifetime, reconnect_initial, reconnect_max, extra)."""
    handle, deadline = _begin(config, config_options, workdir, env, startup_timeout)
    while time.monotonic() < deadline:
        if _poll_ready(handle):
            return handle
        time.sleep(0.05)
    raise _fail_start(handle, startup_timeout)


async def start_emulator_async(
    config: Mapping[str, Any] | None = None,
    *,
    startup_timeout: float = 30.0,
    workdir: Path | None = None,
    env: Mapping[str, str] | None = None,
    **config_options: Any,
) -> EmulatorProcess:
    """`start_emulator` for asyncio code: waits without blocking the event loop."""
    handle, deadline = _begin(config, config_options, workdir, env, startup_timeout)
    while time.monotonic() < deadline:
        if _poll_ready(handle):
            return handle
        await asyncio.sleep(0.05)
    raise _fail_start(handle, startup_timeout)

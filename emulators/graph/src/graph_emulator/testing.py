"""Start the Graph emulator as a real subprocess for tests and talk to its control API.

    with start_emulator() as graph:
        graph.ca_file, graph.authority, graph.graph_url      # for an SDK client
        graph.control("POST", "/delta/expire", {})           # the /_emulator control API

The emulator binds 127.0.0.1 port 0, serves https with a self-signed certificate and reports its URLs and the
certificate (to trust as CA) in a ready-file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TENANT_ID = "6b4c1b7e-0f1d-4c55-9a3e-2f4b8c0d1e2f"
APP_ID = "0c1e4f0a-1b2c-4d3e-8f90-a1b2c3d4e5f6"
APP_SECRET = "graph-app-secret"
READONLY_APP_ID = "7d2e5a1b-2c3d-4e5f-9a01-b2c3d4e5f607"
READONLY_APP_SECRET = "graph-readonly-secret"
CERTIFICATE_APP_ID = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"
USERS: tuple[dict[str, str], ...] = (
    {"userPrincipalName": "alice@contoso.test", "displayName": "Alice Archer"},
    {"userPrincipalName": "bob@contoso.test", "displayName": "Bob Baker"},
    {"userPrincipalName": "carol@contoso.test", "displayName": "Carol Cole"},
)


class EmulatorStartError(RuntimeError):
    pass


class ControlError(RuntimeError):
    def __init__(self, status: int, text: str, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}: {text}")
        self.status = status
        self.text = text


def build_config(*, extra: dict[str, Any] | None = None, certificate: str | None = None) -> dict[str, Any]:
    """One tenant with a Calendars.ReadWrite app, a Calendars.Read app and three mailboxes; with `certificate`
    (PEM) also a Calendars.Read app CERTIFICATE_APP_ID that has that certificate and no secret."""
    config: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "tenants": [
            {
                "id": TENANT_ID,
                "apps": [
                    {"client_id": APP_ID, "client_secret": APP_SECRET, "permissions": ["Calendars.ReadWrite"]},
                    {
                        "client_id": READONLY_APP_ID,
                        "client_secret": READONLY_APP_SECRET,
                        "permissions": ["Calendars.Read"],
                    },
                ],
                "users": [dict(u) for u in USERS],
            }
        ],
    }
    if certificate is not None:
        app = {"client_id": CERTIFICATE_APP_ID, "certificates": [certificate], "permissions": ["Calendars.Read"]}
        config["tenants"][0]["apps"].append(app)
    config.update(extra or {})
    return config


@dataclass
class EmulatorProcess:
    process: subprocess.Popen[bytes]
    workdir: Path
    ready: dict[str, Any]

    @property
    def base_url(self) -> str:
        return str(self.ready["base_url"])

    @property
    def graph_url(self) -> str:
        return str(self.ready["graph_url"])

    @property
    def authority(self) -> str:
        return str(self.ready["authority"])

    @property
    def ca_file(self) -> str:
        return str(self.ready["ca_file"])

    def user_id(self, upn: str) -> str:
        for tenant in self.ready["tenants"]:
            for user in tenant["users"]:
                if user["userPrincipalName"].lower() == upn.lower():
                    return str(user["id"])
        raise KeyError(upn)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.ready['control_url']}{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.ssl_context()) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise ControlError(exc.code, exc.read().decode(errors="replace"), url) from exc
        return json.loads(text) if text else None

    def log_text(self) -> str:
        try:
            return (self.workdir / "emulator.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if os.environ.get("GRAPH_EMULATOR_KEEP_LOGS") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)
        return int(self.process.returncode)

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_emulator(config: dict[str, Any] | None = None, startup_timeout: float = 30.0) -> EmulatorProcess:
    """Run `python -m graph_emulator` with `config` (default `build_config()`) and wait for its ready-file."""
    workdir = Path(tempfile.mkdtemp(prefix="graph-emulator-"))
    data = dict(config if config is not None else build_config())
    data["ready_file"] = str(workdir / "ready.json")
    (workdir / "config.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    with (workdir / "emulator.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "graph_emulator", "--config", str(workdir / "config.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(workdir),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    handle = EmulatorProcess(process, workdir, {})
    deadline = time.monotonic() + startup_timeout
    ready_path = workdir / "ready.json"
    while time.monotonic() < deadline:
        if ready_path.is_file():
            handle.ready = json.loads(ready_path.read_text(encoding="utf-8"))
            return handle
        if process.poll() is not None:
            text = handle.log_text()
            handle.stop()
            raise EmulatorStartError(f"graph emulator exited with {process.returncode}:\n{text[-4000:]}")
        time.sleep(0.05)
    text = handle.log_text()
    handle.stop()
    raise EmulatorStartError(f"graph emulator not ready within {startup_timeout} s:\n{text[-4000:]}")

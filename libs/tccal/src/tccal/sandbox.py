"""`tc-calendar sandbox`: the whole product on one machine.

Starts embedded PostgreSQL and NATS (unless URLs are given), the emulators that are installed, and the four
services as separate processes; waits until every one reports ready; writes the ready-file (DESIGN.md §8);
stays up until SIGINT/SIGTERM, then stops everything it started, children first, leaving no process behind.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tccal import secrets
from tccal.config.schema import SERVICE_NAMES
from tccal.embedded import EmbeddedNats, EmbeddedPostgres, create_database, free_port

log = logging.getLogger(__name__)
SERVICE_MODULES = {
    "ews-ingest": "ews_ingest",
    "sync-engine": "sync_engine",
    "tcs-gateway": "tcs_gateway",
    "licensing": "licensing",
}
_PR_SET_PDEATHSIG = 1
SANDBOX_TCS_ID = "sandbox.trueconf.local#vcs"


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the sandbox itself dies, so nothing is orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    http: str | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Sandbox:
    state_dir: Path
    postgres_dsn: str | None = None
    nats_url: str | None = None
    python: str = sys.executable
    children: list[Child] = field(default_factory=list)
    _pg: EmbeddedPostgres | None = None
    _nats: EmbeddedNats | None = None
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def key_file(self) -> Path:
        return self.state_dir / "machine.key"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TC_CALENDAR_KEY_FILE"] = str(self.key_file)
        env.pop("TC_CALENDAR_KEY", None)
        env["TC_CALENDAR_CONFIG"] = str(self.state_dir / "config.json")
        return env

    def start_infrastructure(self) -> tuple[dict[str, Any], str]:
        """Start (or reuse) PostgreSQL and NATS; return the dbConnectionConfig section and the NATS URL."""
        import asyncio

        if self.postgres_dsn is None:
            self._pg = EmbeddedPostgres(self.state_dir / "pg")
            admin = self._pg.start()
            asyncio.run(create_database(admin, "calendar"))
            db = {
                "host": self._pg.socket_dir,
                "port": self._pg.port,
                "user": "postgres",
                "database": "calendar",
            }
            self.ready["postgres"] = {"dsn": self._pg.dsn("calendar")}
        else:
            from urllib.parse import urlparse

            parsed = urlparse(self.postgres_dsn)
            db = {
                "host": parsed.hostname or "localhost",
                "port": parsed.port or 5432,
                "user": parsed.username or "postgres",
                "database": (parsed.path or "/calendar").lstrip("/") or "calendar",
            }
            if parsed.password:
                db["password"] = secrets.encrypt(parsed.password, secrets.load_key())
            self.ready["postgres"] = {"dsn": self.postgres_dsn}
        if self.nats_url is None:
            self._nats = EmbeddedNats(self.state_dir / "nats")
            url = self._nats.start()
        else:
            url = self.nats_url
        self.ready["nats"] = {"url": url}
        return db, url

    def write_config(self, db: dict[str, Any], nats_url: str, extra: dict[str, Any] | None = None) -> Path:
        services = {}
        for name in SERVICE_NAMES:
            services[name] = {"host": "127.0.0.1", "grpcPort": free_port(), "httpPort": free_port()}
        ws_port = free_port()
        config: dict[str, Any] = {
            "wsPort": ws_port,
            "dbConnectionConfig": db,
            "nats": {"url": nats_url},
            "productWhitelist": {"tcs": [SANDBOX_TCS_ID]},
            "grpc": {"services": services},
            "telemetry": {"logLevel": "INFO", "logFormat": "json"},
        }
        config.update(extra or {})
        path = self.state_dir / "config.json"
        path.write_text(json.dumps(config, indent=2))
        self.ready["config"] = str(path)
        self.ready["services"] = {
            name: {
                "grpc": f"127.0.0.1:{s['grpcPort']}",
                "http": f"http://127.0.0.1:{s['httpPort']}",
            }
            for name, s in services.items()
        }
        self.ready["services"]["tcs-gateway"]["ws"] = f"ws://127.0.0.1:{ws_port}/bridge/v1"
        return path

    def start_services(self) -> None:
        env = self.env()
        for name in SERVICE_NAMES:
            child = Child(
                name,
                [self.python, "-m", SERVICE_MODULES[name], "--config", str(self.state_dir / "config.json")],
                self.state_dir / "logs" / f"{name}.log",
                http=self.ready["services"][name]["http"],
            )
            child.start(env)
            self.children.append(child)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        pending = [c for c in self.children if c.http]
        while pending:
            for child in list(pending):
                code = child.exited()
                if code is not None:
                    raise RuntimeError(f"{child.name} exited with code {code}:\n{child.log_tail()}")
                if _is_ready(f"{child.http}/readyz"):
                    pending.remove(child)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise TimeoutError(f"not ready after {timeout:.0f}s: {names}")
            time.sleep(0.2)

    def write_ready_file(self, path: Path) -> None:
        self.ready["processes"] = {c.name: c.pid for c in self.children}
        if self._pg is not None and self._pg.pid:
            self.ready["processes"]["postgres"] = self._pg.pid
        if self._nats is not None and self._nats.pid:
            self.ready["processes"]["nats-server"] = self._nats.pid
        self.ready["state_dir"] = str(self.state_dir)
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(json.dumps(self.ready, indent=2))
        temporary.replace(path)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every child (SIGTERM, then SIGKILL after `timeout`), then NATS and PostgreSQL."""
        for child in reversed(self.children):
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        if self._nats is not None:
            self._nats.stop()
        if self._pg is not None:
            self._pg.stop()


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False

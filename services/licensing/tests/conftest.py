"""Fixtures of the licensing tests: the real registration emulator process, a config pointing at the embedded
PostgreSQL database of the test, the real `tc_calendar` CLI and the real `python -m licensing` process."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
from click.testing import CliRunner

from registration_emulator.testing import RunningEmulator, start_emulator
from tccal.cli.main import main as tc_calendar_main
from tccal_sandbox.embedded import EmbeddedPostgres, create_database, free_port
from tccal_sandbox.testing import wait_for
from trueconf.calendar.v1 import licensing_pb2_grpc

ADMIN_TOKEN = "licensing-test-admin-token"
TC_CALENDAR = str(Path(sys.executable).parent / "tc_calendar")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    emu = start_emulator(tmp_path_factory.mktemp("registration"))
    yield emu
    emu.stop()


def db_section(dsn: str) -> dict[str, Any]:
    parts = urlsplit(dsn)
    host = parse_qs(parts.query)["host"][0]
    return {"host": host, "port": 5432, "user": "postgres", "database": parts.path.lstrip("/")}


def write_config(
    directory: Path,
    dsn: str,
    emulator_url: str,
    public_key: str,
    *,
    grpc_port: int = 0,
    http_port: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    config: dict[str, Any] = {
        "dbConnectionConfig": db_section(dsn),
        "license": {"testAuthorityPublicKey": public_key, "registrationUrl": emulator_url},
        "grpc": {
            "adminToken": ADMIN_TOKEN,
            "services": {"licensing": {"grpcPort": grpc_port, "httpPort": http_port}},
        },
        "telemetry": {"logFormat": "json"},
        "allowPlaintextPasswords": True,
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture
def config_writer() -> Callable[..., Path]:
    """`write_config(directory, dsn, emulator_url, public_key, *, grpc_port, http_port, extra)`."""
    return write_config


@dataclass
class Installation:
    """One connector installation: its config (and so its database), and a working directory."""

    config: Path
    workdir: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the real `tc_calendar` with this installation's config, in its working directory."""
        env = {**os.environ, "TC_CALENDAR_CONFIG": str(self.config)}
        return subprocess.run(
            [TC_CALENDAR, *args], cwd=self.workdir, env=env, capture_output=True, text=True, timeout=120, check=False
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The same CLI in this process (click's isolation of stdin/stdout/stderr/env): the real commands and
        the real legacy-flag mapping, without the interpreter start-up of a subprocess."""
        runner = CliRunner()
        with contextlib.chdir(self.workdir), runner.isolation(env={"TC_CALENDAR_CONFIG": str(self.config)}) as io:
            try:
                tc_calendar_main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            out, err = io[0].getvalue().decode(), io[1].getvalue().decode()
        return subprocess.CompletedProcess(["tc_calendar", *args], code, out, err)

    def license(self) -> dict[str, Any]:
        proc = self.run("license", "--json")
        assert proc.returncode == 0, proc.stderr
        data: dict[str, Any] = json.loads(proc.stdout)
        return data


@pytest.fixture
def installation(tmp_path: Path, pg_dsn: str, emulator: RunningEmulator) -> Installation:
    return Installation(write_config(tmp_path / "etc", pg_dsn, emulator.url, emulator.public_key), tmp_path)


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return lines

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(config_dir: Path, dsn: str, emulator: RunningEmulator, name: str = "svc") -> ServiceProcess:
    grpc_port, http_port = free_port(), free_port()
    config = write_config(
        config_dir / name, dsn, emulator.url, emulator.public_key, grpc_port=grpc_port, http_port=http_port
    )
    log_path = config_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "licensing", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    service = ServiceProcess(process, grpc_port, http_port, log_path)
    try:
        wait_for(lambda: service.ready() or process.poll() is not None, timeout=60, what="licensing ready")
    except AssertionError:
        service.stop()
        raise
    if process.poll() is not None:
        raise RuntimeError(f"licensing exited with {process.returncode}: {log_path.read_text()}")
    return service


@pytest.fixture
def service(tmp_path: Path, pg_dsn: str, emulator: RunningEmulator) -> Iterator[ServiceProcess]:
    svc = start_service(tmp_path, pg_dsn, emulator)
    yield svc
    svc.stop()


@pytest.fixture
def stub(service: ServiceProcess) -> Iterator[licensing_pb2_grpc.LicensingServiceStub]:
    with grpc.insecure_channel(service.address) as channel:
        yield licensing_pb2_grpc.LicensingServiceStub(channel)


@pytest.fixture
def admin() -> tuple[tuple[str, str], ...]:
    """gRPC metadata of an admin call."""
    return (("authorization", f"Bearer {ADMIN_TOKEN}"),)


@pytest.fixture
async def other_installation(tmp_path: Path, pg_server: EmbeddedPostgres, emulator: RunningEmulator) -> Installation:
    """A second installation: its own database (so its own install id), its own directory."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await create_database(pg_server.dsn("postgres"), name)
    directory = tmp_path / "other"
    return Installation(
        write_config(directory / "etc", pg_server.dsn(name), emulator.url, emulator.public_key), directory
    )


@pytest.fixture
def make_service(tmp_path: Path, pg_dsn: str, emulator: RunningEmulator) -> Iterator[Callable[[str], ServiceProcess]]:
    started: list[ServiceProcess] = []

    def make(name: str) -> ServiceProcess:
        svc = start_service(tmp_path, pg_dsn, emulator, name)
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()

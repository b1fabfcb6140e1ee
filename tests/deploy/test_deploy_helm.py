"""The Helm chart: `helm lint` (helm-sdkpy), rendering (helm-python-sdk), strict Kubernetes schemas
(kubernetes-validate), all run by tools/helm_check.py in its Python 3.12 venv; then the rendered manifests are
checked here against the code: config.json validates with tccal exactly as a pod would load it (ConfigMap +
environment + credentials Secret + machine key), ports and addresses agree, pods are locked down, and each
NetworkPolicy opens only what its component needs."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tccal import secrets
from tccal.config import Config, load_config
from tccal.config.schema import SECRET_KEYS, NotificationListen, iter_secrets
from tccal.nats_auth import IDENTITIES

from .conftest import CONNECTOR_SERVICES, OPTIONAL_SERVICES, ROOT

TOOL = ROOT / "tools" / "helm_check.py"
CHART = ROOT / "deploy" / "helm" / "trueconf-calendar-connector"
VALUES_DIR = Path(__file__).parent / "helm-values"
GOOD = {"full": "full.yaml", "existing": "existing-secrets.yaml"}
#: Rendered for one test each: a type graph entry with graph-ingest left off.
OTHER = {"graph-off": "graph-off.yaml"}
BAD = {
    "plaintext": ("plaintext-secret.yaml", "does not match pattern '^dGNf"),
    "secret-in-config": ("secret-in-config.yaml", "secrets go in credentials.values"),
    "invalid-volume": ("invalid-volume.yaml", "'notAVolumeField' was unexpected"),
    "chart-owned-key": ("chart-owned-key.yaml", "'not' failed"),
    "grpc-tls-without-secret": ("grpc-tls-without-secret.yaml", "at '/grpcTls/secretName': minLength"),
    "shared-nats-password": ("shared-nats-password.yaml", "'not' failed"),
    "graph-secret-in-config": ("graph-secret-in-config.yaml", "calendarProviders[0].clientSecret: secrets go in"),
    "graph-two-replicas": ("graph-two-replicas.yaml", "at '/components/graphIngest/replicas': maximum"),
    "graph-notify-port-mismatch": (
        "graph-notify-port-mismatch.yaml",
        "config.calendarProviders[0].notificationListen.port is 9066 but graphNotifications.port is 8066",
    ),
}
#: Value sets with graph-ingest on (components.graphIngest.enabled); the others render nothing of it.
GRAPH_ON = {"full"}
NAMESPACE = "calendar"
MOUNT = {"config": "/etc/tc-calendar/config.json", "key": "/var/run/secrets/tc-calendar/machine.key"}
FULL_PLAINTEXT = {  # what tests/deploy/helm-values/full.yaml's encrypted values hold
    "grpc.adminToken": "test-admin-token",
    "dbConnectionConfig.password": "test-db-password",
    "calendarProviders[0].credentials[0].password": "test-ews-password-1",
    "calendarProviders[0].credentials[1].password": "test-ews-password-2",
    "calendarProviders[1].clientSecret": "test-graph-client-secret",
    "tcs.servers[0].secret": "test-bridge-secret",
    "tcs.servers[0].clientSecret": "test-client-secret",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("helm") / "report.json"
    args = [sys.executable, str(TOOL), "--report", str(out)]
    for name, file in {**GOOD, **OTHER, **{k: v[0] for k, v in BAD.items()}}.items():
        args += ["--values", f"{name}={VALUES_DIR / file}"]
    completed = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    if completed.returncode == 3:
        pytest.fail(f"the Helm checks cannot run: {completed.stderr.strip()}")
    assert completed.returncode in (0, 1), completed.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def manifests(report: dict[str, Any], value_set: str, kind: str | None = None) -> list[dict[str, Any]]:
    found = [m["manifest"] for m in report["value_sets"][value_set]["manifests"]]
    return [m for m in found if kind is None or m["kind"] == kind]


def components_of(value_set: str) -> dict[str, str]:
    """The connector services a value set renders: service name -> Python module."""
    return {**CONNECTOR_SERVICES, **(OPTIONAL_SERVICES if value_set in GRAPH_ON else {})}


def by_component(report: dict[str, Any], value_set: str, kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["labels"]["app.kubernetes.io/component"]: m for m in manifests(report, value_set, kind)}


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return {**data, **(secret.get("stringData") or {})}


def pod_environment(report: dict[str, Any], value_set: str, deployment: dict[str, Any]) -> dict[str, str]:
    """The environment the container gets: its env values, and every key of the Secrets it takes envFrom."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    rendered = {s["metadata"]["name"]: s for s in manifests(report, value_set, "Secret")}
    for source in container.get("envFrom", []):
        name = source["secretRef"]["name"]
        if name in rendered:
            env.update(secret_data(rendered[name]))
    return env


def rendered_config(report: dict[str, Any], value_set: str) -> tuple[Path, dict[str, Any]]:
    (configmap,) = manifests(report, value_set, "ConfigMap")
    text = configmap["data"]["config.json"]
    return Path(MOUNT["config"]), json.loads(text)


def load_as_pod(
    report: dict[str, Any], value_set: str, deployment: dict[str, Any], tmp_path: Path, *, check_secrets: bool
) -> Config:
    _, document = rendered_config(report, value_set)
    path = tmp_path / f"{deployment['metadata']['name']}.json"
    path.write_text(json.dumps(document))
    return load_config(path, environ=pod_environment(report, value_set, deployment), check_secrets=check_secrets)


# ------------------------------------------------------------------------------------------- helm itself


def test_helm_lint_passes(report: dict[str, Any]) -> None:
    lint = report["helm_lint"]
    assert lint["helm_sdkpy_version"] == "0.1.32"
    assert lint["charts_linted"] == 1
    assert lint["problems"] == []


@pytest.mark.parametrize("value_set", ["default", *GOOD])
def test_renders_clean_and_valid_against_kubernetes_schemas(report: dict[str, Any], value_set: str) -> None:
    result = report["value_sets"][value_set]
    assert result["problems"] == []
    assert len(result["manifests"]) >= 15


@pytest.mark.parametrize("value_set", sorted(BAD))
def test_bad_values_are_refused(report: dict[str, Any], value_set: str) -> None:
    problems = "\n".join(report["value_sets"][value_set]["problems"])
    assert BAD[value_set][1] in problems


def test_chart_defaults_match_the_config_schema_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    defaults = Config()
    assert values["bridge"]["port"] == defaults.ws_port
    keys = {
        "ews-ingest": "ewsIngest",
        "sync-engine": "syncEngine",
        "tcs-gateway": "tcsGateway",
        "licensing": "licensing",
        "graph-ingest": "graphIngest",
    }
    assert values["components"]["graphIngest"]["enabled"] is False, "graph-ingest is optional: off by default"
    notifications = values["graphNotifications"]
    assert notifications["enabled"] is False and notifications["port"] == NotificationListen().port
    for name, key in keys.items():
        endpoint = defaults.grpc.endpoint(name)
        component = values["components"][key]
        assert (component["grpcPort"], component["httpPort"]) == (endpoint.grpc_port, endpoint.http_port)
    assert set(keys) == set(CONNECTOR_SERVICES) | set(OPTIONAL_SERVICES)


# ---------------------------------------------------------------------------------------------- topology


@pytest.mark.parametrize("value_set", ["default", *GOOD])
def test_one_deployment_service_and_policy_per_component(report: dict[str, Any], value_set: str) -> None:
    for kind in ("Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget"):
        found = by_component(report, value_set, kind)
        if kind == "NetworkPolicy" and value_set == "existing":
            assert found == {}
            continue
        expected = set(components_of(value_set))
        if kind == "PodDisruptionBudget" and value_set == "full":
            expected -= {"tcs-gateway"}  # pdb.enabled: false there
        assert set(found) == expected, f"{value_set}: {kind}"
    deployments = by_component(report, value_set, "Deployment")
    for name, module in components_of(value_set).items():
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert container["image"].split("/")[-1].startswith(f"{name}:")
        assert "command" not in container and "args" not in container, f"{name}: the image runs python -m {module}"


@pytest.mark.parametrize("value_set", ["default", *GOOD])
def test_config_json_validates_as_each_pod_loads_it(report: dict[str, Any], value_set: str, tmp_path: Path) -> None:
    for name, deployment in by_component(report, value_set, "Deployment").items():
        env = pod_environment(report, value_set, deployment)
        assert env["TC_CALENDAR_CONFIG"] == MOUNT["config"]
        assert env[secrets.KEY_FILE_ENV] == MOUNT["key"]
        config = load_as_pod(report, value_set, deployment, tmp_path, check_secrets=False)
        assert config.grpc.endpoint(name).host == "0.0.0.0"


@pytest.mark.parametrize("value_set", ["default", *GOOD])
def test_ports_and_addresses_agree(report: dict[str, Any], value_set: str) -> None:
    _, document = rendered_config(report, value_set)
    config = Config.model_validate({**document, "calendarProviders": [], "tcs": {}})
    deployments = by_component(report, value_set, "Deployment")
    services = {s["metadata"]["name"]: s for s in manifests(report, value_set, "Service")}
    for name in components_of(value_set):
        endpoint = config.grpc.endpoint(name)
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert (ports["grpc"], ports["http"]) == (endpoint.grpc_port, endpoint.http_port)
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        host, port = (endpoint.address or "").rsplit(":", 1)
        service_name, namespace, _ = host.split(".", 2)
        assert namespace == NAMESPACE and int(port) == endpoint.grpc_port
        service = services[service_name]
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
            "grpc": ports["grpc"],
            "http": ports["http"],
        }
        assert (
            service["spec"]["selector"].items() <= deployments[name]["spec"]["template"]["metadata"]["labels"].items()
        )
        if name == "tcs-gateway":
            assert ports["bridge"] == config.ws_port
        if name == "graph-ingest":  # the receiver's port is the graph entries' notificationListen.port
            listens = {
                (entry.get("notificationListen") or {}).get("port", NotificationListen().port)
                for entry in document["calendarProviders"]
                if entry.get("type") == "graph" and entry.get("notificationUrl")
            }
            assert {ports["graph-notify"]} == listens
    bridge = [s for n, s in services.items() if n.endswith("-bridge")]
    assert len(bridge) == 1 and bridge[0]["spec"]["ports"][0]["targetPort"] == "bridge"
    notify = [s for n, s in services.items() if n.endswith("-graph-notifications")]
    assert len(notify) == (1 if value_set in GRAPH_ON else 0)
    for service in notify:
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["graph-notify"]
        assert service["spec"]["selector"].items() <= (
            deployments["graph-ingest"]["spec"]["template"]["metadata"]["labels"].items()
        )


def test_graph_notifications_service_fronts_the_receiver(report: dict[str, Any]) -> None:
    """full.yaml: graphNotifications on a LoadBalancer (443 → the receiver's 9066), annotations and source ranges
    as given; NOTES say a public HTTPS name must front it and that notificationUrl is that name."""
    (service,) = [
        s for s in manifests(report, "full", "Service") if s["metadata"]["name"].endswith("-graph-notifications")
    ]
    assert service["metadata"]["name"] == "tccal-trueconf-calendar-connector-graph-notifications"
    spec = service["spec"]
    assert spec["type"] == "LoadBalancer" and spec["loadBalancerSourceRanges"] == ["0.0.0.0/0"]
    assert spec["ports"] == [{"name": "graph-notify", "port": 443, "targetPort": "graph-notify", "protocol": "TCP"}]
    assert service["metadata"]["annotations"] == {"service.beta.kubernetes.io/azure-load-balancer-internal": "false"}
    notes = " ".join(report["value_sets"]["full"]["notes"].split())
    assert "-graph-notifications (LoadBalancer, port 443)" in notes
    assert "public HTTPS name" in notes and "notificationUrl" in notes
    assert "graph-notifications" not in report["value_sets"]["default"]["notes"]


def test_bridge_service_types(report: dict[str, Any]) -> None:
    def bridge(value_set: str) -> dict[str, Any]:
        (found,) = [s for s in manifests(report, value_set, "Service") if s["metadata"]["name"].endswith("-bridge")]
        return dict(found["spec"])

    assert bridge("default")["type"] == "ClusterIP"
    full = bridge("full")
    assert full["type"] == "LoadBalancer" and full["externalTrafficPolicy"] == "Local"
    assert full["loadBalancerSourceRanges"] == ["203.0.113.0/24"] and full["ports"][0]["port"] == 443
    existing = bridge("existing")
    assert existing["type"] == "NodePort" and existing["ports"][0]["nodePort"] == 30415


# ----------------------------------------------------------------------------------------------- secrets


def test_every_secret_decrypts_with_the_rendered_machine_key(
    report: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (key_secret,) = [s for s in manifests(report, "full", "Secret") if s["metadata"]["name"].endswith("-machine-key")]
    key_text = secret_data(key_secret)["machine.key"]
    monkeypatch.delenv(secrets.KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(secrets.KEY_ENV, key_text.strip())
    for deployment in manifests(report, "full", "Deployment"):
        config = load_as_pod(report, "full", deployment, tmp_path, check_secrets=True)
        revealed = {path: secrets.decrypt(value) for path, value in iter_secrets(config) if value}
        assert revealed == FULL_PLAINTEXT


def test_config_map_holds_no_secret(report: dict[str, Any]) -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                assert not (key in SECRET_KEYS and value), f"{path}.{key} is a secret inside the ConfigMap"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    for value_set in ("default", *GOOD):
        walk(rendered_config(report, value_set)[1], "config.json")


def test_credentials_secret_holds_only_overrides_of_secret_keys(report: dict[str, Any]) -> None:
    (credentials,) = [s for s in manifests(report, "full", "Secret") if s["metadata"]["name"].endswith("-credentials")]
    names = set(secret_data(credentials))
    assert len(names) == len(FULL_PLAINTEXT)
    for name in names:
        assert name.startswith("TC_CALENDAR__")
        last = name.split("__")[-1]
        assert last.lower() in {k.lower() for k in SECRET_KEYS}, name


def test_machine_key_secret(report: dict[str, Any]) -> None:
    (generated,) = [s for s in manifests(report, "default", "Secret") if s["metadata"]["name"].endswith("-machine-key")]
    assert generated["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = base64.b64decode(secret_data(generated)["machine.key"], validate=True)
    assert len(key) == secrets.KEY_SIZE
    assert not [s for s in manifests(report, "existing", "Secret")], "existing Secrets must not be rendered"
    for deployment in manifests(report, "existing", "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["machine-key"]["secret"]["secretName"] == "tccal-machine-key"
        assert spec["containers"][0]["envFrom"] == [{"secretRef": {"name": "tccal-credentials"}}]


# ------------------------------------------------------------------------------------------------ hardening


@pytest.mark.parametrize("value_set", ["default", *GOOD])
def test_pods_are_locked_down(report: dict[str, Any], value_set: str) -> None:
    for deployment in manifests(report, value_set, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
            assert not context.get("privileged")
            assert container["resources"] or value_set == "full", "defaults must set resources"
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, "a writable /tmp on a read-only root"


def test_grpc_tls_mounts_its_secret_and_the_config_points_at_it(report: dict[str, Any], tmp_path: Path) -> None:
    """grpcTls on (full.yaml): every pod mounts the Secret's three files read-only where config.json's grpc.tls
    names them; off (the default): plaintext, nothing mounted."""
    _, document = rendered_config(report, "full")
    directory = "/var/run/secrets/tc-calendar-grpc"
    assert document["grpc"]["tls"] == {
        "certFile": f"{directory}/tls.crt",
        "keyFile": f"{directory}/tls.key",
        "caFile": f"{directory}/ca.crt",
        "requireClientCert": True,
    }
    for deployment in manifests(report, "full", "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == "grpc-tls"]
        assert volume["secret"]["secretName"] == "tccal-grpc-tls"
        assert {i["path"] for i in volume["secret"]["items"]} == {"tls.crt", "tls.key", "ca.crt"}
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "grpc-tls"]
        assert mount == {"name": "grpc-tls", "mountPath": directory, "readOnly": True}
        config = load_as_pod(report, "full", deployment, tmp_path, check_secrets=False)
        assert config.grpc.tls.require_client_cert and config.grpc.tls.ca_file == f"{directory}/ca.crt"
    _, default = rendered_config(report, "default")
    assert "tls" not in default["grpc"]
    for deployment in manifests(report, "default", "Deployment"):
        assert all(v["name"] != "grpc-tls" for v in deployment["spec"]["template"]["spec"]["volumes"])


def _egress_ports(policy: dict[str, Any]) -> dict[int, list[Any]]:
    ports: dict[int, list[Any]] = {}
    for rule in policy["spec"]["egress"]:
        for port in rule["ports"]:
            if port.get("protocol", "TCP") == "TCP" and port["port"] != 53:
                ports.setdefault(port["port"], []).append(rule.get("to"))
    return ports


def test_network_policies_open_only_what_each_component_needs(report: dict[str, Any]) -> None:
    policies = by_component(report, "full", "NetworkPolicy")
    deployments = by_component(report, "full", "Deployment")
    pg, nats, licensing, exchange, trueconf, registration, otlp = 5433, 4222, 50064, 8443, 9443, 4443, 4317
    needs = {
        "ews-ingest": {nats, licensing, exchange, otlp},
        "sync-engine": {nats, pg, licensing, otlp},
        "tcs-gateway": {nats, licensing, trueconf, otlp},
        "licensing": {pg, registration, otlp},
        "graph-ingest": {nats, licensing, 443, otlp},  # login.microsoftonline.com, graph.microsoft.com
    }
    for name, policy in policies.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= labels.items()
        for other, deployment in deployments.items():
            if other != name:
                assert not selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        egress = _egress_ports(policy)
        assert set(egress) == needs[name], f"{name} egress {sorted(egress)}"
        assert all(peers for peers in egress.values()), f"{name}: full narrows every egress to peers"
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        ingress = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert ingress == {p["containerPort"] for p in container["ports"]}, f"{name} ingress {ingress}"
    default = by_component(report, "default", "NetworkPolicy")
    assert 5432 not in _egress_ports(default["ews-ingest"]) and 5432 in _egress_ports(default["sync-engine"])
    assert 4310 in _egress_ports(default["licensing"])  # https://reg.trueconf.com:4310
    assert 443 not in _egress_ports(policies["ews-ingest"]), "a graph entry opens nothing for ews-ingest"
    # graph-ingest's ingress: gRPC, HTTP and the change-notification receiver (9066), that one from
    # networkPolicy.graphNotificationsFrom only
    graph_ingress = {
        p["port"]: rule.get("from") for rule in policies["graph-ingest"]["spec"]["ingress"] for p in rule["ports"]
    }
    assert set(graph_ingress) == {51065, 9066, 9065}
    assert graph_ingress[9066] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    for other, policy in policies.items():
        if other != "graph-ingest":
            assert 9066 not in {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}, other
    default_graph_ports = by_component(report, "default", "NetworkPolicy")
    assert "graph-ingest" not in default_graph_ports
    assert _egress_ports(policies["graph-ingest"])[443] == [
        [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]
    ], "Graph through networkPolicy.graphPeers"


def test_notes_warn_about_what_stops_the_services(report: dict[str, Any]) -> None:
    default = report["value_sets"]["default"]["notes"]
    assert 'credentials.values["grpc.adminToken"] is not set' in default
    assert "AuthorityPublicKey" not in default  # the authority key is built in: nothing to set
    full = report["value_sets"]["full"]["notes"]
    assert "WARNING" not in full
    test_key = report["value_sets"]["existing"]["notes"]
    assert "config.license.testAuthorityPublicKey is a test-only setting" in test_key


def test_missing_python_312_is_a_clear_failure(tmp_path: Path) -> None:
    """Without a Python 3.12 the tool stops with exit code 3 and says what is missing (the fixture above
    turns that into a test failure, never a skip)."""
    for interpreter in (str(tmp_path / "no-such-python"), sys.executable):  # absent; a 3.11
        completed = subprocess.run(
            [sys.executable, str(TOOL), "--report", str(tmp_path / "report.json")],
            env={**os.environ, "TCCAL_HELM_PYTHON": interpreter},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert completed.returncode == 3, completed.stderr
        assert f"TCCAL_HELM_PYTHON={interpreter} is not a working Python 3.12 interpreter" in completed.stderr
        assert not (tmp_path / "report.json").exists()


# ------------------------------------------------------------------------------------------------ NATS users


def _nats_auth_secret(report: dict[str, Any], value_set: str) -> dict[str, str]:
    (found,) = [s for s in manifests(report, value_set, "Secret") if s["metadata"]["name"].endswith("-nats-auth")]
    return secret_data(found)


def test_nats_auth_secret_has_a_password_per_identity_and_lookup_keeps_them(report: dict[str, Any]) -> None:
    data = _nats_auth_secret(report, "default")
    passwords = {name: data[name] for name in IDENTITIES}
    assert set(data) == {*IDENTITIES, "nats-auth.conf"}
    assert len(set(passwords.values())) == len(passwords) and all(len(p) >= 32 for p in passwords.values())
    # re-rendering must not rotate them: an existing Secret is read back (offline rendering has no cluster, so
    # the template is checked for it)
    template = (CHART / "templates" / "nats-auth.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template
    assert "index $existing.data $identity | b64dec" in template


def test_each_pod_connects_to_nats_as_itself_with_only_its_own_password(report: dict[str, Any], tmp_path: Path) -> None:
    for value_set, secret_name in (
        ("default", "tccal-trueconf-calendar-connector-nats-auth"),
        ("existing", "tccal-nats-auth"),
    ):
        for name, deployment in by_component(report, value_set, "Deployment").items():
            config = load_as_pod(report, value_set, deployment, tmp_path, check_secrets=False)
            assert config.nats.user == name
            assert config.nats.password == "" and config.nats.password_file
            spec = deployment["spec"]["template"]["spec"]
            volume = next(v for v in spec["volumes"] if v["name"] == "nats-password")
            assert volume["secret"]["secretName"] == secret_name
            assert volume["secret"]["items"] == [{"key": name, "path": "password"}], "its own key only"
            (container,) = spec["containers"]
            mount = next(m for m in container["volumeMounts"] if m["name"] == "nats-password")
            assert Path(config.nats.password_file) == Path(mount["mountPath"]) / "password"


def test_nats_tls_files_reach_the_pods(report: dict[str, Any], tmp_path: Path) -> None:
    for name, deployment in by_component(report, "full", "Deployment").items():
        config = load_as_pod(report, "full", deployment, tmp_path, check_secrets=False)
        spec = deployment["spec"]["template"]["spec"]
        volume = next(v for v in spec["volumes"] if v["name"] == "nats-tls")
        assert volume["secret"]["secretName"] == "nats-client-tls"
        (container,) = spec["containers"]
        mount = Path(next(m for m in container["volumeMounts"] if m["name"] == "nats-tls")["mountPath"])
        assert (config.nats.tls_ca_file, config.nats.tls_cert_file, config.nats.tls_key_file) == (
            str(mount / "ca.crt"),
            str(mount / "tls.crt"),
            str(mount / "tls.key"),
        ), name
        assert config.nats.tls_verify is True
    default = next(iter(by_component(report, "default", "Deployment").values()))
    assert load_as_pod(report, "default", default, tmp_path, check_secrets=False).nats.tls_ca_file is None


def test_postgresql_tls_files_reach_the_pods(report: dict[str, Any], tmp_path: Path) -> None:
    """postgresql.tls (full.yaml): the Secret's CA and client certificate are mounted where config.json's
    dbConnectionConfig names them, with the sslMode given; the default sets no sslMode (verify-full beyond
    loopback: tccal.db_tls) and mounts nothing."""
    from tccal.db_tls import effective_ssl_mode

    for name, deployment in by_component(report, "full", "Deployment").items():
        config = load_as_pod(report, "full", deployment, tmp_path, check_secrets=False)
        spec = deployment["spec"]["template"]["spec"]
        volume = next(v for v in spec["volumes"] if v["name"] == "db-tls")
        assert volume["secret"]["secretName"] == "pg-client-tls"
        assert [item["key"] for item in volume["secret"]["items"]] == ["ca.crt", "tls.crt", "tls.key"]
        (container,) = spec["containers"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "db-tls")
        assert mount["readOnly"] is True
        db = config.db_connection_config
        directory = Path(mount["mountPath"])
        assert (db.ssl_mode, db.ssl_root_cert, db.ssl_cert, db.ssl_key) == (
            "verify-full",
            str(directory / "ca.crt"),
            str(directory / "tls.crt"),
            str(directory / "tls.key"),
        ), name
        assert (config.nats.stream_max_bytes, config.nats.stream_alert_percent) == (4 * 1024**3, 70)
    for deployment in manifests(report, "default", "Deployment"):
        config = load_as_pod(report, "default", deployment, tmp_path, check_secrets=False)
        assert config.db_connection_config.ssl_mode is None
        assert effective_ssl_mode(config.db_connection_config) == "verify-full"  # host "postgresql"
        assert "db-tls" not in {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert config.nats.stream_max_bytes == Config().nats.stream_max_bytes


def test_machine_key_is_kept_across_renders_by_lookup() -> None:
    """Argo CD-style rendering (`helm template` on every sync) must not make a new machine key each time: the
    template reads the Secret already in the cluster (lookup) and keeps its key; only a first install generates
    one, and the Secret survives uninstall (resource-policy keep). `helm template` has no cluster to look up, so
    the template itself is checked."""
    template = (CHART / "templates" / "secrets.yaml").read_text()
    key_part = template[: template.index("{{- end }}\n", template.index("machine.key: {{ $encoded }}"))]
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in key_part
    assert '$encoded = index $existing.data "machine.key"' in key_part
    lookup_at = key_part.index("lookup")
    assert key_part.index("randAlphaNum") > lookup_at, "generated only when the lookup found nothing"
    assert "helm.sh/resource-policy: keep" in key_part


def test_the_rendered_authorization_runs_in_nats_server(report: dict[str, Any]) -> None:
    """nats-auth.conf, included by a real nats-server: each service gets in with its password, nobody without."""
    import asyncio

    import nats
    from nats.errors import Error as NatsError

    from tccal.bus import BusSettings
    from tccal.nats_auth import inbox_prefix
    from tccal.subjects import SEATS_SUBJECT, calendar_subject
    from tccal_sandbox.embedded import free_port, nats_server_binary
    from tccal_sandbox.testing import connect_nats, short_tmpdir, wait_for

    data = _nats_auth_secret(report, "default")
    directory = short_tmpdir("tchelmn")
    (directory / "nats-auth.conf").write_text(data["nats-auth.conf"])
    port = free_port()
    (directory / "nats.conf").write_text(f"listen: 127.0.0.1:{port}\ninclude nats-auth.conf\n")
    process = subprocess.Popen([nats_server_binary(), "-c", str(directory / "nats.conf")])
    try:
        import socket

        def listening() -> bool:
            assert process.poll() is None, "nats-server refused the rendered configuration"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
            return False

        wait_for(listening, 20)

        async def publish(identity: str, subject: str) -> list[str]:
            errors: list[str] = []

            async def record(exc: Exception) -> None:
                errors.append(str(exc).lower())

            settings = BusSettings(
                url=f"nats://127.0.0.1:{port}",
                user=identity,
                password=data[identity],
                inbox_prefix=inbox_prefix(identity),
            )
            connection = await connect_nats(settings, error_cb=record)
            await connection.publish(subject, b"x")
            await connection.flush()
            await asyncio.sleep(0.3)
            await connection.close()
            return errors

        assert asyncio.run(publish("ews-ingest", calendar_subject("ews", "a@b.c"))) == []
        assert any("permissions violation" in e for e in asyncio.run(publish("ews-ingest", SEATS_SUBJECT)))
        assert any(
            "permissions violation" in e for e in asyncio.run(publish("tcs-gateway", calendar_subject("e", "a")))
        )

        async def anonymous() -> None:
            connection = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False, max_reconnect_attempts=0)
            await connection.close()

        with pytest.raises((NatsError, OSError)):
            asyncio.run(anonymous())
    finally:
        process.terminate()
        process.wait(20)


def test_ews_ingest_replicas_spread_over_nodes_with_a_drainable_budget_and_a_name_each(report: dict[str, Any]) -> None:
    """Several ews-ingest replicas (docs/architecture.md §11): preferred anti-affinity per node, a PDB that lets a
    drain evict one at a time, and each pod's name as its replica name in the lease registry."""
    deployment = by_component(report, "full", "Deployment")["ews-ingest"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (preferred,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    term = preferred["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    (container,) = pod["containers"]
    (replica,) = [e for e in container["env"] if e["name"] == "EWS_INGEST_REPLICA"]
    assert replica["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    budget = by_component(report, "full", "PodDisruptionBudget")["ews-ingest"]
    assert budget["spec"]["minAvailable"] == 1  # of 2: a drain may take one
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    single = by_component(report, "default", "Deployment")["ews-ingest"]  # the chart's default: one replica
    assert single["spec"]["replicas"] == 1
    assert "affinity" not in single["spec"]["template"]["spec"]  # nothing to spread


# ------------------------------------------------------------------------------------------------ graph-ingest


def test_graph_ingest_is_rendered_only_when_enabled(report: dict[str, Any]) -> None:
    """graph-ingest is optional (components.graphIngest.enabled, off by default): off, not one object of it, no
    grpc.services entry, not scraped; NOTES warn when type graph entries would then go unsynced."""
    for value_set in ("default", "existing"):
        components = {
            m["metadata"].get("labels", {}).get("app.kubernetes.io/component") for m in manifests(report, value_set)
        }
        assert set(CONNECTOR_SERVICES) <= components and "graph-ingest" not in components
        assert "graph-ingest" not in rendered_config(report, value_set)[1]["grpc"]["services"]
        assert "graph-ingest" not in report["value_sets"][value_set]["notes"]
    assert "graph-ingest" in rendered_config(report, "full")[1]["grpc"]["services"]
    (monitor,) = manifests(report, "full", "ServiceMonitor")
    assert "graph-ingest" in monitor["spec"]["selector"]["matchExpressions"][0]["values"]
    warning = report["value_sets"]["graph-off"]
    assert warning["problems"] == []
    assert "components.graphIngest.enabled is false: no graph-ingest runs" in warning["notes"]
    assert not [m for m in manifests(report, "graph-off") if "graph-ingest" in m["metadata"]["name"]]
    assert "graph-ingest" not in rendered_config(report, "graph-off")[1]["grpc"]["services"]


def test_graph_ingest_pod_reads_its_tenant_and_connects_to_nats_as_itself(
    report: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph-ingest pod (full.yaml): its config holds the Graph entry with the client secret from the
    credentials Secret (decrypted with the rendered machine key), it is the NATS user graph-ingest with only its
    own key of the generated nats-auth Secret mounted, and an update replaces the single pod (no two polling)."""
    deployment = by_component(report, "full", "Deployment")["graph-ingest"]
    (key_secret,) = [s for s in manifests(report, "full", "Secret") if s["metadata"]["name"].endswith("-machine-key")]
    monkeypatch.delenv(secrets.KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(secrets.KEY_ENV, secret_data(key_secret)["machine.key"].strip())
    config = load_as_pod(report, "full", deployment, tmp_path, check_secrets=True)
    ((index, provider),) = config.graph_providers
    assert (index, provider.provider_name, provider.users) == (1, "m365", ["carol@corp.example"])
    assert secrets.decrypt(provider.client_secret) == "test-graph-client-secret"
    assert config.grpc.endpoint("graph-ingest").host == "0.0.0.0"
    assert config.nats.user == "graph-ingest" and config.nats.password == ""
    spec = deployment["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "nats-password")
    assert volume["secret"]["secretName"] == "tccal-trueconf-calendar-connector-nats-auth"
    assert volume["secret"]["items"] == [{"key": "graph-ingest", "path": "password"}], "its own key only"
    assert "graph-ingest" in _nats_auth_secret(report, "full")
    (container,) = spec["containers"]
    assert "EWS_INGEST_REPLICA" not in {e["name"] for e in container["env"]}
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "strategy" not in by_component(report, "full", "Deployment")["ews-ingest"]["spec"]

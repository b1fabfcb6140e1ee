"""The Helm chart's monitoring objects: a ServiceMonitor and a PrometheusRule, off by default, rendered by
tools/helm_check.py (helm lint, values schema, offline template) and validated here against prometheus-operator's
own CRD schemas (the compiled validators of @kubernetes-models/prometheus-operator, npm); every alert expression
parsed as PromQL and selecting only metrics the services export (tccal.metric_names — which the end-to-end test
tests/e2e/test_e2e_metrics.py scrapes from the running services)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tccal.metric_names import family_of

from .conftest import CONNECTOR_SERVICES, ROOT
from .promql_support import selected_metrics

TOOL = ROOT / "tools" / "helm_check.py"
CHART = ROOT / "deploy" / "helm" / "trueconf-calendar-connector"
VALUES_DIR = Path(__file__).parent / "helm-values"
CRD_VALIDATOR = Path(__file__).parent / "prometheus-operator"
NAMESPACE = "calendar"
#: The alerts issue 20 asks for (and dead letters), by the name they fire with.
ALERTS = {
    "TrueConfBridgeDown",
    "MailboxSyncFailures",
    "PropagationSlow",
    "StreamLag",
    "StreamNearlyFull",
    "DeadLetters",
    "LicenseSeatsNearlyExhausted",
    "LicenseExpiring",
}
MONITORING_KINDS = ("ServiceMonitor", "PrometheusRule")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("helm-monitoring") / "report.json"
    args = [sys.executable, str(TOOL), "--report", str(out)]
    args += ["--values", f"full={VALUES_DIR / 'full.yaml'}"]
    args += ["--values", f"bad-threshold={VALUES_DIR / 'monitoring-bad-threshold.yaml'}"]
    completed = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    if completed.returncode == 3:
        pytest.fail(f"the Helm checks cannot run: {completed.stderr.strip()}")
    assert completed.returncode in (0, 1), completed.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def manifests(report: dict[str, Any], value_set: str, kind: str) -> list[dict[str, Any]]:
    found = [m["manifest"] for m in report["value_sets"][value_set]["manifests"]]
    return [m for m in found if m["kind"] == kind]


def rules(report: dict[str, Any]) -> list[dict[str, Any]]:
    (rule,) = manifests(report, "full", "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_monitoring_is_off_by_default(report: dict[str, Any]) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["monitoring"]["serviceMonitor"]["enabled"] is False
    assert values["monitoring"]["prometheusRule"]["enabled"] is False
    for kind in MONITORING_KINDS:
        assert manifests(report, "default", kind) == []
        assert len(manifests(report, "full", kind)) == 1, kind
    assert report["value_sets"]["full"]["problems"] == []


def test_monitoring_objects_validate_against_the_prometheus_operator_crd_schemas(report: dict[str, Any]) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed (make install installs the CRD validators with npm)"
    assert (CRD_VALIDATOR / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir(), (
        "run make install: npm packages missing"
    )
    rendered = [m for kind in MONITORING_KINDS for m in manifests(report, "full", kind)]
    broken = json.loads(json.dumps(rendered[0]))
    broken["spec"]["endpoints"][0]["interval"] = "every 30 seconds"  # the validator must catch this
    completed = subprocess.run(
        [node, str(CRD_VALIDATOR / "validate.mjs")],
        input=json.dumps([*rendered, broken]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=CRD_VALIDATOR,
    )
    *found, broken_found = json.loads(completed.stdout)
    assert found == [[] for _ in rendered], found
    assert "interval must match pattern" in broken_found[0]


def test_service_monitor_scrapes_every_component_on_its_metrics_port(report: dict[str, Any]) -> None:
    (monitor,) = manifests(report, "full", "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # values' labels reach it
    selector = monitor["spec"]["selector"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "15s")

    def selected(service: dict[str, Any]) -> bool:
        labels = service["metadata"]["labels"]
        if not selector["matchLabels"].items() <= labels.items():
            return False
        return all(labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"])

    scraped = {
        s["metadata"]["labels"]["app.kubernetes.io/component"]
        for s in manifests(report, "full", "Service")
        if selected(s) and "http" in {p["name"] for p in s["spec"]["ports"]}
    }
    assert scraped == set(CONNECTOR_SERVICES) | {"graph-ingest"}  # full.yaml turns graph-ingest on


def test_alerts_are_the_promised_ones_and_parse_as_promql_on_exported_metrics(report: dict[str, Any]) -> None:
    found = rules(report)
    assert {r["alert"] for r in found} == ALERTS
    for rule in found:
        names = selected_metrics(rule["expr"])
        assert names, rule["alert"]
        unknown = {name for name in names if family_of(name) is None}
        assert not unknown, f"{rule['alert']} selects metrics no service exports: {unknown}"
        assert f'namespace="{NAMESPACE}"' in rule["expr"], f"{rule['alert']}: not limited to the release"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alert_thresholds_come_from_values(report: dict[str, Any]) -> None:
    by_name = {r["alert"]: r for r in rules(report)}
    assert by_name["LicenseExpiring"]["expr"].endswith(f"< {30 * 86400}")  # full.yaml: licenseExpiryDays 30
    assert by_name["PropagationSlow"]["expr"].endswith("> 1")
    assert "tcs_gateway_propagation_seconds_bucket" in selected_metrics(by_name["PropagationSlow"]["expr"])
    assert by_name["LicenseSeatsNearlyExhausted"]["expr"].endswith("> 0.9")
    assert by_name["TrueConfBridgeDown"]["for"] == "5m"


def test_a_threshold_that_cannot_fire_is_refused(report: dict[str, Any]) -> None:
    problems = "\n".join(report["value_sets"]["bad-threshold"]["problems"])
    assert "seatsUsedRatio" in problems and "values.schema.json" in problems

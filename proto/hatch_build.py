"""Build hook: generate the Python code and typing stubs for trueconf.calendar.v1 from the .proto files.

Generated code is never committed; every build (wheel or editable) regenerates it into gen/python/.
tests/test_contracts_fresh.py fails when what is installed differs from what the .proto files give.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

sys.path.insert(0, str(Path(__file__).parent))
from protogen import generate


class ProtoBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        generate(root, root / "gen" / "python")

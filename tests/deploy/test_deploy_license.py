"""The project is Apache-2.0: the LICENSE file at the root, and the same SPDX expression in every package."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_says_apache_2_0_and_the_license_text_is_there() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    projects = sorted(p for p in ROOT.glob("**/pyproject.toml") if not {".venv", "node_modules"} & set(p.parts))
    assert len(projects) >= 10, projects
    for path in projects:
        project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
        assert project.get("license") == "Apache-2.0", (
            f"{path.relative_to(ROOT)}: license is {project.get('license')!r}"
        )

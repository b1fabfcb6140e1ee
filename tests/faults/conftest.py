"""Fault suite fixtures: one product per module that needs only the default configuration; the result table."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults_support import RESULTS, FaultProduct, launch, markdown_of, report_of

#: The secrets scan reads the logs of every product the session's fault tests started (faults_support.SECRET_SOURCES),
#: so it must run after all of them: it is ordered last here, whatever the file names and the collection order.
SCANS_EVERY_LOG = "test_faults_secrets.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the secrets scan after every other collected test (a stable partition keeps the rest in order)."""
    last = [item for item in items if item.path.name == SCANS_EVERY_LOG]
    if last:
        items[:] = [item for item in items if item.path.name != SCANS_EVERY_LOG] + last


@pytest.fixture(scope="module")
def fproduct() -> Iterator[FaultProduct]:
    with launch() as running:
        yield running


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    terminalreporter.write_sep("=", "fault scenarios")
    header = f"{'scenario':44} {'load':>5} {'lost':>5} {'dup':>4} {'wrong':>5} {'converge s':>10}  faults"
    terminalreporter.write_line(header)
    for row in RESULTS:
        terminalreporter.write_line(
            f"{row['scenario']:44} {row['load']:>5} {row['lost']:>5} {row['duplicated']:>4} {row['wrong']:>5} "
            f"{row['converge_s'] if row['converge_s'] is not None else 'NO':>10}  {row['faults']}"
        )
    target = os.environ.get("TC_FAULTS_REPORT")
    if target:
        report = report_of(RESULTS)
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(report, indent=2) + "\n")
        Path(target).with_suffix(".md").write_text(markdown_of(report))
        terminalreporter.write_line(f"report: {target} and {Path(target).with_suffix('.md')}")

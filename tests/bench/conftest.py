"""One smoke run of bench.py for the tests here: its real result files (live, initial-sync, engine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory `bench.py --out DIR smoke` wrote its results to (the smallest run of each benchmark)."""
    out = tmp_path_factory.mktemp("bench-smoke")
    run = subprocess.run(
        [sys.executable, str(BENCH / "bench.py"), "--out", str(out), "smoke"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out

"""The benchmarks still run: the smallest configuration of each writes a well-formed result (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench.py"


def test_bench_smoke_writes_well_formed_results(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH), "--out", str(tmp_path), "smoke"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = {path.name.split("-")[0]: json.loads(path.read_text()) for path in sorted(tmp_path.glob("*.json"))}
    assert sorted(results) == ["engine", "initial", "live"], sorted(results)
    for result in results.values():
        assert result["machine"]["cores"] >= 1

    live = results["live"]
    for side in (live["propagation"]["connector"]["update"], live["propagation"]["baseline_polling"]["update"]):
        assert side["n"] >= 1 and side["p50"] <= side["p95"] <= side["p99"] <= side["max"]
    assert live["propagation"]["connector"]["delivered"] == live["propagation"]["updates_sent"]
    assert live["idle"]["connector_per_mailbox_hour"] >= 0 and live["idle"]["baseline_per_mailbox_hour"] > 0
    assert {"ews-ingest", "sync-engine", "tcs-gateway", "licensing"} <= set(live["rss_mib"]["idle"])

    initial = results["initial"]
    assert initial["seeded"]["meetings"] == initial["mailboxes"] * initial["meetings_per_mailbox"]
    assert initial["connector_s"] > 0 and initial["baseline_raw_exchangelib_s"] > 0

    engine = results["engine"]
    assert engine["rows_written"]["items"] == engine["changes"]
    assert engine["engine_changes_per_s"] > 0 and engine["raw_changes_per_s"] > 0
    assert len(list(tmp_path.glob("*.md"))) == 3

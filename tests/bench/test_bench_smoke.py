"""The benchmarks still run: the smallest configuration of each writes a well-formed result (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench.py"


def test_bench_smoke_writes_well_formed_results(smoke_results: Path) -> None:
    """`bench.py smoke` (run once for tests/bench by the smoke_results fixture) wrote three results."""
    results = {path.name.split("-")[0]: json.loads(path.read_text()) for path in sorted(smoke_results.glob("*.json"))}
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
    assert len(list(smoke_results.glob("*.md"))) == 3


GRAPH_BENCH = BENCH.parent / "bench_graph.py"


def test_graph_bench_smoke_counts_idle_requests_and_times_both_initial_syncs(tmp_path: Path) -> None:
    """bench_graph.py idle (2 mailboxes, 3 s windows) and initial-sync (2 × 3 events) write their results; the idle
    rates come from requests the emulator counted, the initial sync read every event on both sides."""
    runs = (
        ["idle", "--mailboxes", "2", "--idle", "3", "--idle-poll", "1", "--subscription-minutes", "0.05"],
        ["initial-sync", "--mailboxes", "2", "--events-per-mailbox", "3"],
    )
    for args in runs:
        run = subprocess.run(
            [sys.executable, str(GRAPH_BENCH), *args, "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    idle = json.loads(next(tmp_path.glob("graph-idle-2-*.json")).read_text())
    for mode in ("notifications", "polling"):
        assert idle[mode]["requests"]["operations"].get("GET calendar_view_delta", 0) >= 2, idle[mode]
        assert (
            idle[mode]["measured_per_mailbox_hour"] > 0 and idle[mode]["scaled_to_default_tuning_per_mailbox_hour"] > 0
        )
    assert idle["notifications"]["requests"]["operations"].get("PATCH renew_subscription", 0) >= 1
    assert "PATCH renew_subscription" not in idle["polling"]["requests"]["operations"]

    initial = json.loads(next(tmp_path.glob("graph-initial-sync-2-*.json")).read_text())
    assert initial["events"] == 6
    assert initial["baseline_requests"]["operations"] == {"GET calendar_view": 2}
    assert initial["connector_requests"]["operations"]["GET calendar_view_delta"] >= 2
    assert initial["connector_s"] > 0 and initial["baseline_msgraph_sdk_s"] > 0
    assert len(list(tmp_path.glob("graph-*.md"))) == 2

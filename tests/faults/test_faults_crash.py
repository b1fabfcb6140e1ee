"""kill -9 each service in the middle of a change load; every change is reflected exactly once afterwards.

Load: TC_FAULTS_LOAD EWS writes (creates, reschedules, deletes; every fifth meeting asks for a conference) plus
(for sync-engine and tcs-gateway) two conference meetings that start during the scenario: each must be launched
exactly once.
"""

from __future__ import annotations

import time

import pytest
from faults_support import LOAD, FaultProduct, Load, converge, write_load, write_soon


@pytest.mark.parametrize("service", ["ews-ingest", "sync-engine", "tcs-gateway", "licensing"])
def test_kill9_service_mid_load_every_change_exactly_once(fproduct: FaultProduct, service: str) -> None:
    load = Load(f"K9{service.split('-')[0][:4]}", LOAD)
    ops = load.plan()
    half = len(ops) // 2
    started = time.monotonic()
    if service in ("sync-engine", "tcs-gateway"):  # the launch scheduler and the REST executor
        write_soon(fproduct, load)
    write_load(fproduct, load, ops[:half])
    fproduct.kill9_and_restart(service)
    write_load(fproduct, load, ops[half:])
    converge(fproduct, load, started, f"kill -9 {service} mid-load", f"SIGKILL {service} after {half} writes; restart")

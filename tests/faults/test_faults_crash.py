"""kill -9 each service in the middle of a change load; every change is reflected exactly once afterwards.

Load: TC_FAULTS_LOAD EWS writes (creates, reschedules, deletes; every fifth meeting asks for a conference) plus
(for sync-engine and tcs-gateway) two conference meetings that start during the scenario: each must be launched
exactly once.
"""

from __future__ import annotations

import time

import pytest
from e2e_support import email
from faults_support import LOAD, PAIRS, FaultProduct, Load, converge, write_load, write_soon


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


def test_mailboxes_moved_while_ews_ingest_was_down_deletions_in_the_gap_reach_trueconf(fproduct: FaultProduct) -> None:
    """Issue #15: ews-ingest is killed; while it is down organizers delete meetings (some with conferences) and every
    mailbox moves to the other mailbox server, so Exchange refuses every saved SyncState (ErrorInvalidSyncStateData)
    and never reports those deletions. The whole re-reads are snapshots (MAILBOX_RESYNC_BEGIN ... END): the deleted
    meetings disappear from TrueConf and their conferences are deleted; the others stay exactly once."""
    load = Load("MOVE", 40)
    creates = [op for op in load.plan() if op[0] == "create"]
    started = time.monotonic()
    write_load(fproduct, load, creates)
    converge(fproduct, load, started, "before the move", "none yet")
    deletes = [("delete", i) for i in range(1, len(creates), 2)]
    people = sorted({who for pair in PAIRS for who in pair})

    def delete_and_move() -> None:
        write_load(fproduct, load, deletes)
        for who in people:
            server = fproduct.exchange_admin("GET", f"/mailboxes/{email(who)}")["server"]
            target = "EMU-MBX02" if server == "EMU-MBX01" else "EMU-MBX01"
            fproduct.exchange_admin("POST", f"/mailboxes/{email(who)}/move", {"server": target})

    started = time.monotonic()
    fproduct.kill9_and_restart("ews-ingest", while_down=delete_and_move)
    assert any(m.deleted and m.conference for m in load.meetings), "the scenario deletes a conference meeting"
    converge(
        fproduct,
        load,
        started,
        "mailboxes moved while ews-ingest down",
        f"SIGKILL ews-ingest; {len(deletes)} deletes + {len(people)} mailbox moves while down; restart",
    )

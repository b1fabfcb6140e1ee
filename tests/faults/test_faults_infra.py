"""NATS and PostgreSQL restarts, bridge drops, EWS subscription expiry and dropped streams, ErrorServerBusy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from e2e_support import wait_until
from faults_support import LOAD, FaultProduct, Load, converge, write_load, write_soon


def run_with(fproduct: FaultProduct, load: Load, fault: Callable[[], None], soon: bool = False) -> float:
    """Write the first half, start `fault` in a thread, write the rest while it runs; return the start time.

    With `soon`, two conference meetings start during the scenario (the launch scheduler is under test).
    """
    ops = load.plan()
    half = len(ops) // 2
    started = time.monotonic()
    if soon:
        write_soon(fproduct, load)
    write_load(fproduct, load, ops[:half])
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            fault()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    worker = threading.Thread(target=guarded)
    worker.start()
    write_load(fproduct, load, ops[half:])
    worker.join(180)
    assert not worker.is_alive(), "the fault injection did not finish"
    assert not errors, f"the fault injection failed: {errors[0]!r}"
    return started


def test_nats_restart_mid_load(fproduct: FaultProduct) -> None:
    load = Load("NATS", LOAD)
    started = run_with(fproduct, load, fproduct.restart_nats, soon=True)
    converge(fproduct, load, started, "NATS kill -9 + restart mid-load", "SIGKILL nats-server, 2 s down, same store")


def test_postgres_restart_mid_load(fproduct: FaultProduct) -> None:
    load = Load("PGSQL", LOAD)
    started = run_with(fproduct, load, fproduct.restart_postgres, soon=True)
    converge(fproduct, load, started, "PostgreSQL crash-stop + restart mid-load", "pg_ctl stop -m immediate, 2 s down")


DROPS = 4


def test_bridge_dropped_repeatedly_mid_load(fproduct: FaultProduct) -> None:
    load = Load("BRDG", LOAD)
    before = fproduct.bridge()["connections"]

    def drops() -> None:
        for n in range(DROPS):
            wait_until(lambda: fproduct.bridge()["state"] == "connected", 60, "the bridge connected again")
            fproduct.trueconf_admin("POST", "/bridge/drop", {"mode": "abort" if n % 2 else "close", "code": 1011})
            time.sleep(1.5)

    started = run_with(fproduct, load, drops)
    converge(
        fproduct,
        load,
        started,
        f"TrueConf bridge dropped {DROPS}x mid-load",
        "aborts + closes(1011) alternating, 1.5 s apart",
    )
    wait_until(lambda: fproduct.bridge()["state"] == "connected", 120, "the bridge connected at the end")
    assert fproduct.bridge()["connections"] >= before + DROPS, "the bridge really was dropped and reconnected"


def test_ews_subscriptions_expire_and_streams_drop_mid_load(fproduct: FaultProduct) -> None:
    load = Load("SUBX", LOAD)

    def expire() -> None:
        for _ in range(3):
            fproduct.exchange_admin("POST", "/subscriptions/expire", {})
            time.sleep(1.0)
            fproduct.exchange_admin("POST", "/streams/drop", {})
            time.sleep(1.0)

    started = run_with(fproduct, load, expire)
    converge(fproduct, load, started, "EWS subscriptions expired + streams dropped", "3x expire all + 3x drop streams")


def test_ews_server_busy_20_percent(fproduct: FaultProduct) -> None:
    from exchangelib.protocol import FaultTolerance

    load = Load("BUSY", LOAD)
    for who in ("alice", "bob", "carol"):  # our own Outlook-like writer honours BackOffMilliseconds too
        fproduct.product.account(who).protocol.config.retry_policy = FaultTolerance(max_wait=120)
    rule = fproduct.exchange_admin("POST", "/faults", {"kind": "server_busy", "rate": 0.2, "back_off_ms": 300})
    try:
        ops = load.plan()
        started = time.monotonic()
        write_load(fproduct, load, ops)
        injected_rules = fproduct.exchange_admin("GET", "/faults")
    finally:
        fproduct.exchange_admin("DELETE", f"/faults/{rule['id']}")
    injected = sum(int(r.get("injected", 0)) for r in injected_rules)
    converge(
        fproduct,
        load,
        started,
        "EWS 20% ErrorServerBusy",
        f"server_busy rate 0.2, BackOffMilliseconds 300; {injected} injected",
    )
    assert injected > 0

"""PostgreSQL that cannot take writes mid-load (issue #17): read-only for PG_FAULT_S, disk full for PG_FAULT_S.

Each scenario writes half of its load, makes PostgreSQL refuse writes, writes the other half while it does (those
meetings are made during the fault), keeps the fault up for PG_FAULT_S in all, then lets PostgreSQL write again.
It passes when TrueConf shows every change exactly once, nothing is in the dead letters (`tc-calendar
dead-letters list`), and the engine said it was not ready while it waited. The product runs with
`nats.maxDeliver` 3, so the former nak-and-redeliver handling would have dead-lettered the changes within
seconds of the fault.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2e_support import wait_until
from faults_support import (
    LOAD,
    PG_FAULT_MAX_DELIVER,
    PG_FAULT_S,
    FaultProduct,
    Load,
    converge,
    dead_letters,
    launch,
    metric,
    readiness,
    set_disk_full,
    set_read_only,
    write_load,
)


@pytest.fixture(scope="module")
def fproduct() -> Iterator[FaultProduct]:
    with launch("--config-override", json.dumps({"nats": {"maxDeliver": PG_FAULT_MAX_DELIVER}})) as running:
        yield running


def run_through_fault(
    fp: FaultProduct, load: Load, scenario: str, fault: Callable[[FaultProduct, bool], None], what: str
) -> dict[str, Any]:
    """Half the load; the fault on; the rest written while a thread keeps the fault up for PG_FAULT_S (watching
    readiness and the dead letters), then ends it; converge; then what the engine said and dead-lettered."""
    ops = load.plan()
    half = len(ops) // 2
    started = time.monotonic()
    write_load(fp, load, ops[:half])
    retries_before = metric(fp, "sync-engine", "sync_engine_database_retries_total")
    window: dict[str, Any] = {}
    errors: list[BaseException] = []
    fault(fp, True)
    window["began"], window["written_before"] = time.monotonic(), load.written

    def hold() -> None:
        try:
            while time.monotonic() - window["began"] < PG_FAULT_S:
                answer = readiness(fp, "sync-engine")
                if not answer["ready"]:
                    window.setdefault("not_ready", answer)
                time.sleep(0.5)
            window["dead_letters_during"] = dead_letters(fp)["total"]
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            window["written_during"] = load.written - window["written_before"]
            try:
                fault(fp, False)
            finally:
                window["ended"] = time.monotonic()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        write_load(fp, load, ops[half:])  # the first of these (creates among them) are made during the fault
    finally:
        holder.join(PG_FAULT_S + 180)
    assert not holder.is_alive(), "the fault did not end"
    assert not errors, f"watching the fault failed: {errors[0]!r}"
    fault_s = window["ended"] - window["began"]
    row = converge(fp, load, started, scenario, f"{what} for {fault_s:.0f} s, maxDeliver {PG_FAULT_MAX_DELIVER}")
    recovered_s = time.monotonic() - window["ended"]  # to within converge's polling (2 s or a slow look)
    assert window["written_during"] > 0, "nothing was written during the fault: the scenario tested nothing"
    assert window["dead_letters_during"] == 0, "a change was dead-lettered during the fault"
    listed = dead_letters(fp)
    assert listed["total"] == 0, f"dead letters after the fault: {listed['dead_letters'][:5]}"
    retried = metric(fp, "sync-engine", "sync_engine_database_retries_total") - retries_before
    assert retried > 0, "the engine never met the fault: the scenario tested nothing"
    not_ready = window.get("not_ready")
    assert not_ready is not None, "sync-engine never said it was not ready while PostgreSQL refused writes"
    assert "PostgreSQL has not taken writes" in not_ready["checks"]["postgres-writes"], not_ready
    wait_until(lambda: readiness(fp, "sync-engine")["ready"], 60, "sync-engine ready again")
    row["faults"] += (
        f"; {window['written_during']} writes during it, {retried:.0f} retries,"
        f" converged {recovered_s:.1f} s after it ended"
    )
    row["writes_during_fault"] = window["written_during"]
    row["recovered_s"] = round(recovered_s, 1)
    row["retries"] = int(retried)
    return row


def test_postgres_read_only_mid_load(fproduct: FaultProduct) -> None:
    load = Load("PGRO", LOAD)
    run_through_fault(
        fproduct,
        load,
        f"PostgreSQL read-only {PG_FAULT_S:.0f} s mid-load",
        set_read_only,
        "ALTER SYSTEM default_transaction_read_only = on",
    )


def test_postgres_disk_full_mid_load(fproduct: FaultProduct) -> None:
    load = Load("PGDF", LOAD)
    run_through_fault(
        fproduct,
        load,
        f"PostgreSQL disk full {PG_FAULT_S:.0f} s mid-load",
        set_disk_full,
        "every write answered 53100 disk_full",
    )

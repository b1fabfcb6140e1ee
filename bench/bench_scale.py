"""Propagation with 3 ews-ingest replicas over a 3-node NATS JetStream cluster, beside 1 replica, in one run
(issue #18 point 6; bench/README.md, "7. Scale-out").

    .venv/bin/python bench/bench_scale.py --mailboxes 500 [--rate 5] [--duration 60] [--concurrency 8]

One `tc-calendar sandbox --no-demo --nats-nodes 3` (streams and KV with 3 replicas) whose ews-ingest is replica "a".
The measure is `bench.py live`'s: one meeting per mailbox (CreateItem), then UpdateItem of the subject at a steady
rate, round-robin over the mailboxes; latency = time.monotonic() after the EWS response -> first sight of the new
subject in the TrueConf emulator's calendars. Phase 1 runs it with replica a alone; then ews-ingest b and c start
(`tccal_sandbox.scaleout.start_service_replica`, production lease timings) and phase 2 runs it again once the three
share the leases and every mailbox is streamed by one connection; phase 3, after b and c stopped, runs it with a
alone again (so a change of the shared machine's load between the phases shows). Each phase also records the
Exchange requests during the window, the machine's CPU use and load average and the CPU seconds of the product's
processes. Writes
bench/results/scale-<n>-<utc>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench import RESULTS, cpu_seconds, machine, op_delta, percentiles, write_result
from tccal_sandbox.scaleout import (
    Outlook,
    TrueConfCalendars,
    ingest_lease_owners,
    owners_report,
)
from tccal_sandbox.testing import (
    SandboxProcess,
    ServiceReplica,
    connect_nats,
    running_sandbox,
    start_service_replica,
    wait_for,
)

DOMAIN = "sandbox.test"


def ews_requests(ready: dict[str, Any]) -> dict[str, Any]:
    from tccal_sandbox.scaleout import http_json

    result: dict[str, Any] = http_json(f"{ready['exchange']['admin_url']}/requests")
    return result


def product_pids(sandbox: SandboxProcess, replicas: list[ServiceReplica]) -> dict[str, int]:
    pids = {name: int(pid) for name, pid in sandbox.ready.get("processes", {}).items()}
    pids.update({f"{r.service}-{r.name}": r.process.pid for r in replicas})
    return pids


def shared_by(sandbox: SandboxProcess, names: set[str], mailboxes: list[str]) -> bool:
    """Every ews-ingest lease held, by exactly `names`, and every mailbox streamed by one connection."""

    async def owners() -> tuple[int, dict[int, str]]:
        nc = await connect_nats(sandbox.ready)
        try:
            return await ingest_lease_owners(nc)
        finally:
            await nc.close()

    shards, held = asyncio.run(owners())
    if len(held) != shards or set(held.values()) != names:
        return False
    report = owners_report(sandbox.ready)["mailboxes"]
    return all(report.get(m, {}).get("streams_now") == 1 for m in mailboxes)


class Propagation:
    """UpdateItem at a steady rate over the items, each update's latency to TrueConf."""

    def __init__(self, items: dict[str, Any], seen: TrueConfCalendars) -> None:
        self.items = items
        self.seen = seen

    def run(self, tag: str, rate: float, duration: float, sandbox: SandboxProcess, pids: dict[str, int]) -> dict:
        mailboxes = sorted(self.items)
        sent: dict[str, float] = {}
        requests_before = ews_requests(sandbox.ready)
        cpu_before = cpu_seconds(pids, {"postgres"})
        psutil.cpu_percent()  # starts the machine-wide window
        began = time.monotonic()
        k = 0
        while time.monotonic() - began < duration:
            delay = began + k / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            mailbox = mailboxes[k % len(mailboxes)]
            item = self.items[mailbox]
            item.subject = f"scale {tag} u{k} {mailbox}"
            item.save(update_fields=["subject"], send_meeting_invitations="SendToNone")
            sent[item.subject] = time.monotonic()
            k += 1
        machine_cpu = psutil.cpu_percent()
        wait_for(lambda: self.seen.arrived(sent), 120, 0.2, f"the {tag} updates in TrueConf")
        cpu_after = cpu_seconds(pids, {"postgres"})
        latencies = [self.seen.first_seen[s] - sent[s] for s in sent]
        return {
            "updates_sent": len(sent),
            "update": percentiles(latencies),
            "ews_requests": op_delta(ews_requests(sandbox.ready), requests_before),
            "machine_cpu_percent": machine_cpu,
            "load_average_1m": round(os.getloadavg()[0], 1),
            "cpu_s": {n: round(cpu_after[n] - cpu_before[n], 1) for n in cpu_after if n in cpu_before},
        }


def run(args: argparse.Namespace) -> Path:
    n = args.mailboxes
    mailboxes = [f"user{i:03d}@{DOMAIN}" for i in range(1, n + 1)]
    replicas: list[ServiceReplica] = []
    with running_sandbox(
        "--no-demo",
        "--nats-nodes",
        "3",
        "--extra-mailboxes",
        str(n),
        "--seats",
        str(n + 100),
        "--timeout",
        str(300 + n / 2),
        prefix="tcbs",
        env={"EWS_INGEST_REPLICA": "a"},
        timeout=360 + n / 2,
    ) as sandbox:
        started = time.monotonic()
        wait_for(lambda: shared_by(sandbox, {"a"}, mailboxes), 120 + n / 2, 1.0, "replica a streams every mailbox")
        first_sync_s = time.monotonic() - started
        outlook = Outlook(sandbox.ready, args.concurrency + 2)
        items: dict[str, Any] = {}
        lock = threading.Lock()

        def create(mailbox: str) -> None:
            item = outlook.meeting(mailbox, f"scale c {mailbox}")
            with lock:
                items[mailbox] = item

        with TrueConfCalendars(sandbox.ready, interval=0.02) as seen:
            with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(create, mailboxes))
            wait_for(lambda: seen.arrived(f"scale c {m}" for m in mailboxes), 120 + n, 0.5, "the created meetings")
            propagation = Propagation(items, seen)
            time.sleep(3)
            one = propagation.run("1", args.rate, args.duration, sandbox, product_pids(sandbox, replicas))
            print(f"1 replica: {one['update']}", flush=True)
            try:
                joined = time.monotonic()
                replicas += [start_service_replica(sandbox, "ews-ingest", name, timeout=120) for name in ("b", "c")]
                wait_for(
                    lambda: shared_by(sandbox, {"a", "b", "c"}, mailboxes),
                    300 + n / 2,
                    1.0,
                    "three replicas share the mailboxes",
                )
                rebalance_s = time.monotonic() - joined
                time.sleep(5)  # the catch-up syncs of the mailboxes b and c took over
                three = propagation.run("3", args.rate, args.duration, sandbox, product_pids(sandbox, replicas))
                print(f"3 replicas: {three['update']}", flush=True)
            finally:
                for replica in replicas:
                    replica.stop()
            # 1 replica again: brackets the 3-replica phase, so a change of the shared machine's load shows
            wait_for(lambda: shared_by(sandbox, {"a"}, mailboxes), 300 + n / 2, 1.0, "replica a alone again")
            time.sleep(5)
            again = propagation.run("1b", args.rate, args.duration, sandbox, product_pids(sandbox, []))
            print(f"1 replica again: {again['update']}", flush=True)
        owners = owners_report(sandbox.ready)
    result = {
        "benchmark": "scale",
        "utc": dt.datetime.now(dt.UTC).isoformat(),
        "machine": machine(),
        "mailboxes": n,
        "nats_nodes": 3,
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "first_sync_s": round(first_sync_s, 1),
        "rebalance_s": round(rebalance_s, 1),
        "one_replica": one,
        "three_replicas": three,
        "one_replica_again": again,
        "exchange_owners": {
            k: owners[k] for k in ("max_streams_per_mailbox", "max_stream_owners_per_mailbox", "max_syncs_per_mailbox")
        },
        "measurement": "monotonic time after the EWS UpdateItem response -> first sight of the subject in the "
        "TrueConf emulator's /inspect/calendars/{user} (bench.py live's measure), same sandbox and NATS cluster",
    }
    return write_result(f"scale-{n}", result, table(result), Path(args.out))


def table(r: dict[str, Any]) -> str:
    def ms(v: Any) -> str:
        return "—" if v is None else f"{v * 1000:.0f}"

    def row(label: str, p: dict[str, Any]) -> str:
        u = p["update"]
        ews = sum(p["ews_requests"].values())
        cpu = sum(p["cpu_s"].values())
        load = p.get("load_average_1m", "—")
        return (
            f"| {label} | {u['n']} | {ms(u['p50'])} | {ms(u['p95'])} | {ms(u['p99'])} | {ms(u['max'])} | {ews} "
            f"| {p['machine_cpu_percent']:.0f} | {load} | {cpu:.0f} |"
        )

    owners = r["exchange_owners"]
    lines = [
        f"### scale — {r['mailboxes']} mailboxes, 3 NATS nodes, {r['machine']['cores']} cores, {r['utc'][:19]}Z",
        "",
        f"UpdateItem at {r['rate_per_s']}/s for {r['duration_s']} s per phase; first sync {r['first_sync_s']} s, "
        f"replicas b and c joined and shared in {r['rebalance_s']} s; most stream owners / syncs at once on one "
        f"mailbox: {owners['max_stream_owners_per_mailbox']} / {owners['max_syncs_per_mailbox']}",
        "",
        "| ews-ingest | n | p50 ms | p95 ms | p99 ms | max ms | EWS requests | machine CPU % | load avg "
        "| product CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        row("1 replica", r["one_replica"]),
        row("3 replicas", r["three_replicas"]),
    ]
    if "one_replica_again" in r:
        lines.append(row("1 replica again", r["one_replica_again"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS), help="directory for the JSON and Markdown results")
    parser.add_argument("--mailboxes", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5.0, help="UpdateItem per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of steady updates per phase")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

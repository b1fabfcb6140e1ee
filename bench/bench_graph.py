"""Graph benchmarks (services/graph-ingest/README.md quotes the numbers; bench/README.md says how each is measured).

    .venv/bin/python bench/bench_graph.py [propagation] [--events 20] [--poll 10] [--gap 0.7]
    .venv/bin/python bench/bench_graph.py idle [--mailboxes 20] [--idle 60] [--idle-poll 10] [--subscription-minutes 1]
    .venv/bin/python bench/bench_graph.py initial-sync [--mailboxes 50] [--events-per-mailbox 25]

idle and initial-sync: graph_bench_idle.py and graph_bench_initial.py. propagation (the default): event created in
the Graph emulator → its CalendarChange on the CALENDAR stream, with change notifications and with delta polling.

Embedded NATS JetStream, the Graph emulator (a subprocess, notifications to graph-ingest's HTTPS receiver), a seat
server, graph-ingest's GraphRuntime in this process (as its tests run it). Events are created one by one by a raw
Graph client of its own (with notifications `--gap` to twice that apart; with polling at a random phase of the poll
cycle, a pause drawn uniformly from 0 to `--poll`); latency =
`time.monotonic()` after the emulator's 201 → the change's arrival at a JetStream subscriber. Run 1: notificationUrl
set, polling at 300 s (so only notifications explain what is seen). Run 2: no notificationUrl, polling every
`--poll` seconds (graph-ingest's default is 60 s: expect about half the interval on average, the interval at worst).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "services" / "graph-ingest" / "tests"), str(ROOT / "services" / "ews-ingest" / "tests")]

from ews_ingest_support import ChangeCollector  # noqa: E402
from graph_bench_idle import idle_table, run_idle  # noqa: E402
from graph_bench_initial import initial_table, run_initial  # noqa: E402
from graph_ingest_support import (  # noqa: E402
    FAST,
    GraphWriter,
    NotifyEndpoint,
    SeatServer,
    graph_config,
    graph_provider,
    new_mailboxes,
    notifying_emulator,
    running_graph,
)

from bench import RESULTS, machine, percentiles, write_result  # noqa: E402
from graph_emulator.testing import EmulatorProcess  # noqa: E402
from tccal_sandbox.embedded import EmbeddedNats  # noqa: E402
from tccal_sandbox.testing import short_tmpdir, wait_for_async  # noqa: E402


async def measure(
    label: str,
    provider: dict[str, Any],
    mailbox: str,
    tuning: Any,
    args: argparse.Namespace,
    emu: EmulatorProcess,
    nats: EmbeddedNats,
    seats: SeatServer,
) -> list[float]:
    collector = ChangeCollector(nats.url_for("admin"))
    writer = GraphWriter(emu)
    try:
        async with running_graph(graph_config(seats.address, [provider]), nats, tuning) as graph:
            await graph.rounds(mailbox)
            keeper = graph.keeper(mailbox)
            notifying = bool(provider.get("notificationUrl"))
            if notifying:
                await graph.subscribed(mailbox)
            await collector.start()
            latencies: list[float] = []
            for number in range(args.events):
                created = await writer.create(mailbox, f"{label} {number}")
                sent = time.monotonic()
                found = await wait_for_async(
                    lambda c=created: collector.received_for(lambda ch: ch.item_id == c["id"]),
                    timeout=tuning.poll_seconds * 2 + 30,
                    interval=0.005,
                    what=f"{label} event {number}",
                )
                latencies.append(found.at - sent)
                # the next event at a random phase of the poll cycle (polling) or after a short pause (notifications)
                pause = random.uniform(0, tuning.poll_seconds) if not notifying else args.gap * random.uniform(1, 2)
                await asyncio.sleep(pause)
            print(f"{label}: {keeper.stats}", file=sys.stderr)
            return latencies
    finally:
        await collector.stop()
        await writer.close()


async def propagation(
    args: argparse.Namespace, emu: EmulatorProcess, nats: EmbeddedNats, seats: SeatServer, endpoint: NotifyEndpoint
) -> tuple[str, dict[str, Any], str]:
    notified_box, polled_box = new_mailboxes(emu, "notified", "polled")
    notified = await measure(
        "notifications",
        endpoint.provider(emu, [notified_box], name="bench"),
        notified_box,
        dataclasses.replace(FAST, poll_seconds=300.0, notified_poll_seconds=300.0),
        args,
        emu,
        nats,
        seats,
    )
    polled = await measure(
        f"polling every {args.poll:g} s",
        graph_provider(emu, [polled_box], name="bench"),
        polled_box,
        dataclasses.replace(FAST, poll_seconds=args.poll),
        args,
        emu,
        nats,
        seats,
    )
    rows = {"notifications": percentiles(notified), f"delta polling every {args.poll:g} s": percentiles(polled)}
    result = {"events": args.events, "poll_seconds": args.poll, "latency_s": rows}
    table = "| graph-ingest mode | n | p50 s | p95 s | p99 s | max s |\n|---|---|---|---|---|---|\n" + "".join(
        f"| {name} | {r['n']} | {r['p50']} | {r['p95']} | {r['p99']} | {r['max']} |\n" for name, r in rows.items()
    )
    return "graph-propagation", result, table


async def run(args: argparse.Namespace) -> Path:
    work = Path(tempfile.mkdtemp(prefix="bench-graph-"))
    endpoint = NotifyEndpoint.create(work)
    nats_dir = short_tmpdir("tcbgn")
    nats = EmbeddedNats(nats_dir)
    nats.start()
    seats = SeatServer()
    await seats.start()
    try:
        with notifying_emulator(endpoint) as emu:
            if args.mode == "idle":
                idle = await run_idle(args, emu, nats, seats, endpoint)
                name, result, table = f"graph-idle-{args.mailboxes}", idle, idle_table(idle)
            elif args.mode == "initial-sync":
                initial = await run_initial(args, emu, nats, seats)
                name, result, table = f"graph-initial-sync-{args.mailboxes}", initial, initial_table(initial)
            else:
                name, result, table = await propagation(args, emu, nats, seats, endpoint)
    finally:
        await seats.stop()
        nats.stop()
        shutil.rmtree(nats_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return write_result(name, {"machine": machine(), **result}, table, Path(args.out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="propagation", choices=("propagation", "idle", "initial-sync"))
    parser.add_argument("--events", type=int, default=20, help="propagation: events created per mode")
    parser.add_argument("--mailboxes", type=int, default=20, help="idle: mailboxes per mode; initial-sync: mailboxes")
    parser.add_argument("--idle", type=float, default=60.0, help="idle: seconds counted per mode")
    parser.add_argument("--idle-poll", type=float, default=10.0, help="idle: compressed (safety-net) poll, seconds")
    parser.add_argument(
        "--subscription-minutes", type=float, default=1.0, help="idle: compressed subscription life (renewed at half)"
    )
    parser.add_argument("--events-per-mailbox", type=int, default=25, help="initial-sync: events per mailbox")
    parser.add_argument("--poll", type=float, default=10.0, help="polling interval of the polling run, seconds")
    parser.add_argument("--gap", type=float, default=0.7, help="pause between events (plus up to as much jitter)")
    parser.add_argument("--out", default=str(RESULTS), help="directory of the result files")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

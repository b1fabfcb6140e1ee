"""Benchmark 4: sync-engine throughput - a pre-filled CALENDAR stream drained into PostgreSQL and the outbox.

    .venv/bin/python bench/bench_engine.py --changes 5000 [--mailboxes 100]

Embedded PostgreSQL + NATS (127.0.0.1 / Unix socket), K CalendarChanges published before the engine starts,
then `python -m sync_engine` alone; drained = its durable consumer has nothing pending or unacked. Baseline,
in the same run after the engine stopped: raw asyncpg writes of exactly the rows the engine wrote (copied per
table into `LIKE ... INCLUDING ALL` twins), split into K transactions - the same commits, no engine logic.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from sync_engine_testkit import Mailboxes, SeatServer, attendee, config_dict, event

from bench import RESULTS, cpu_delta, cpu_seconds, machine, percentiles, write_result
from sync_engine.bus import CALENDAR_BATCH
from tccal.bus import Bus, BusSettings, ensure_topology
from tccal.nats_auth import ADMIN
from tccal.subjects import CALENDAR, calendar_subject
from tccal_sandbox.embedded import EmbeddedNats, EmbeddedPostgres
from tccal_sandbox.testing import short_tmpdir, wait_for_async

DURABLE = "sync-engine-calendar"


def start_engine(state: Path) -> subprocess.Popen[bytes]:
    """`python -m sync_engine` alone, its log in state/engine.log."""
    with open(state / "engine.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sync_engine", "--config", str(state / "config.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def pending(bus: Bus) -> int | None:
    try:
        info = await bus.js.consumer_info(CALENDAR, DURABLE)
    except Exception:
        return None
    return int(info.num_pending) + int(info.num_ack_pending)


async def run(args: argparse.Namespace) -> Path:
    pg_dir, nats_dir = short_tmpdir("tcbpg"), short_tmpdir("tcbn")
    postgres, nats = EmbeddedPostgres(pg_dir), EmbeddedNats(nats_dir)
    postgres.start()
    nats.start()
    process: subprocess.Popen[bytes] | None = None
    bus = Bus(BusSettings(url=nats.url_for(ADMIN), name="bench-engine"))  # publishes as ews-ingest would
    seats = SeatServer()  # licensing's ListSeats: every mailbox of the run holds a seat
    try:
        dsn = postgres.create_database("bench")
        await bus.connect(attempts=20)
        await ensure_topology(bus.js)
        # K changes: each mailbox organizes meetings with two other mailboxes as attendees.
        k, n = args.changes, args.mailboxes
        boxes = [f"u{i:04d}@example.com" for i in range(n)]
        producer = Mailboxes()
        base = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
        t_pub = time.monotonic()
        for i in range(k):
            mailbox = boxes[i % n]
            item = event(
                f"bench-{i}",
                start=base + dt.timedelta(hours=i % 500),
                organizer=mailbox,
                attendees=[attendee(boxes[(i + 1) % n]), attendee(boxes[(i + 2) % n])],
                subject=f"Bench {i}",
            )
            change = producer.upsert(mailbox, item)
            await bus.js.publish(
                calendar_subject(change.provider, change.mailbox),
                change.SerializeToString(),
                headers={"Nats-Msg-Id": change.change_id},
            )
        publish_s = time.monotonic() - t_pub
        seats.seats = {box: dt.timedelta(days=1) for box in boxes}
        await seats.start()
        config = config_dict(dsn, nats.url_for("sync-engine"), licensing=seats.address)  # as its own NATS user
        config["calendarProviders"][0]["users"] = boxes
        state = short_tmpdir("tcbe")
        (state / "config.json").write_text(json.dumps(config))
        t_start = time.monotonic()
        process = start_engine(state)
        profiler = None
        if args.profile:  # py-spy (pinned, see bench/README.md) samples the engine for the whole drain
            profiler = start_profiler(process.pid, args.profile)
        samples: list[tuple[float, int]] = []
        pids = {"sync-engine": process.pid, "postgresql": postgres.pid, "nats": nats.pid}
        cpu_first: dict[str, float] = {}
        deadline = time.monotonic() + args.timeout
        first: float | None = None
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sync-engine exited: {(state / 'engine.log').read_text()[-3000:]}")
            left = await pending(bus)
            now = time.monotonic()
            if left is not None:
                if first is None and left < k:
                    first = now  # the first change was taken
                    cpu_first = cpu_seconds(pids, {"postgresql"})
                samples.append((now, left))
                if left == 0:
                    break
            if now > deadline:
                raise TimeoutError(f"{left} changes still pending after {args.timeout:.0f}s")
            await asyncio.sleep(0.05)
        t_done = time.monotonic()
        cpu_drain = cpu_delta(cpu_seconds(pids, {"postgresql"}), cpu_first)
        conn = await asyncpg.connect(dsn)  # the outbox looked at, then the baselines written
        try:
            published_s = await outbox_published(conn, deadline - time.monotonic()) - (first or t_start)
            ready_s = first - t_start if first else None
            drain_s = t_done - (first or t_start)
            rates = [(b[1] - a[1]) * -1 / (b[0] - a[0]) for a, b in itertools.pairwise(samples) if b[0] > a[0]]
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(60)
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            process = None

            # Baselines: the same rows, raw asyncpg, in K transactions (one per change) and in as many transactions
            # as the engine commits at the least (one per fetched batch of CALENDAR_BATCH changes).
            tables = [
                r["tablename"]
                for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            ]
            data: dict[str, list[Any]] = {}
            for table in tables:
                rows = await conn.fetch(f'SELECT * FROM "{table}"')
                if rows and table not in ("schema_migrations", "engine_state"):
                    data[table] = [tuple(r.values()) for r in rows]
            row_counts = {t: len(v) for t, v in data.items()}
            raw_s = await raw_write(conn, data, "raw", k)
            batches = -(-k // CALENDAR_BATCH)
            raw_batched_s = await raw_write(conn, data, "rawb", batches)
        finally:
            await conn.close()
        engine_rate = k / drain_s
        raw_rate = k / raw_s
        raw_batched_rate = k / raw_batched_s
        result = {
            "benchmark": "engine-throughput",
            "utc": dt.datetime.now(dt.UTC).isoformat(),
            "machine": machine(),
            "changes": k,
            "mailboxes": n,
            "publish_s": round(publish_s, 2),
            "engine_start_to_first_take_s": None if ready_s is None else round(ready_s, 2),
            "engine_drain_s": round(drain_s, 2),
            "engine_changes_per_s": round(engine_rate, 1),
            "engine_interval_rates": percentiles(rates),
            "outbox_published_s": round(published_s, 2),
            "drain_cpu_s": cpu_drain,
            "rows_written": row_counts,
            "raw_asyncpg_s": round(raw_s, 2),
            "raw_changes_per_s": round(raw_rate, 1),
            "ratio_to_raw_per_change_commits": round(engine_rate / raw_rate, 3),
            "raw_batched_transactions": batches,
            "raw_batched_s": round(raw_batched_s, 2),
            "raw_batched_changes_per_s": round(raw_batched_rate, 1),
            "ratio_to_raw": round(engine_rate / raw_batched_rate, 3),
            "target": {"changes_per_s": 2000, "ratio_to_raw": 0.5},
            "measurement": "engine: first change taken -> consumer num_pending + num_ack_pending == 0 (polled "
            "every 50 ms); outbox published: first change taken -> no pending command in the outbox; raw: the "
            "engine's rows (every public table but migrations/engine_state) re-inserted "
            "with asyncpg executemany, split evenly into K transactions on one connection (per-change commits) and "
            "into ceil(K / CALENDAR_BATCH) transactions (the engine's batches: the ratio is taken against this)",
        }
        table = "\n".join(
            [
                f"### engine throughput — {k} changes, {n} mailboxes, {result['machine']['cores']} cores, "
                f"{result['utc'][:19]}Z",
                "",
                "| | s | changes/s | ratio | target |",
                "|---|---|---|---|---|",
                f"| sync-engine (stream → PostgreSQL + outbox) | {result['engine_drain_s']} "
                f"| {result['engine_changes_per_s']} | {result['ratio_to_raw']} | ≥ 2000/s, ≥ 0.5 of raw |",
                f"| sync-engine's relay: every command published to TCS_COMMANDS | {result['outbox_published_s']} "
                f"| {round(k / published_s, 1)} | | |",
                f"| raw asyncpg, same rows, {batches} transactions (the engine's batches) | {result['raw_batched_s']} "
                f"| {result['raw_batched_changes_per_s']} | 1 | |",
                f"| raw asyncpg, same rows, {k} transactions (one per change) | {result['raw_asyncpg_s']} "
                f"| {result['raw_changes_per_s']} | {result['ratio_to_raw_per_change_commits']} (engine/this) | |",
                "",
                f"CPU seconds used during the drain: {cpu_drain}",
                "",
                f"Rows written by the engine: {row_counts}",
                "",
            ]
        )
        return write_result(f"engine-{k}", result, table, Path(args.out))
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        await seats.stop()
        await bus.close()
        nats.stop()
        postgres.stop()


async def outbox_published(conn: asyncpg.Connection, timeout: float) -> float:
    """The time (monotonic) the outbox first had no pending command (polled every 50 ms)."""

    async def none_pending() -> bool:
        return not await conn.fetchval("SELECT count(*) FROM outbox WHERE status = 'pending'")

    await wait_for_async(none_pending, timeout=max(timeout, 0.0), what="every command published from the outbox")
    return time.monotonic()


async def raw_write(conn: asyncpg.Connection, data: dict[str, list[Any]], prefix: str, transactions: int) -> float:
    """Seconds to insert `data` into empty twins of its tables, split evenly into `transactions`."""
    for table in data:
        await conn.execute(f'CREATE TABLE "{prefix}_{table}" (LIKE "{table}" INCLUDING ALL)')
    statements = {
        t: f'INSERT INTO "{prefix}_{t}" VALUES ({", ".join(f"${i + 1}" for i in range(len(v[0])))})'
        for t, v in data.items()
    }
    started = time.monotonic()
    for i in range(transactions):
        async with conn.transaction():
            for table, rows in data.items():
                share = rows[i * len(rows) // transactions : (i + 1) * len(rows) // transactions]
                if share:
                    await conn.executemany(statements[table], share)
    return time.monotonic() - started


def start_profiler(pid: int, output: str) -> subprocess.Popen[bytes]:
    py_spy = str(Path(sys.executable).parent / "py-spy")
    command = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--output", output]
    return subprocess.Popen([*command, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--changes", type=int, default=5000)
    parser.add_argument("--mailboxes", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--profile", default="", help="write a py-spy profile (collapsed stacks) of the engine here")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What marking the outbox's rows published costs PostgreSQL, against a queue table of pending ids (bench/README.md
§4, ninth round).

Side by side, alternating, on one embedded PostgreSQL with the engine's schema: 15,000 commands (what the engine
benchmark's 5,000 changes decide) written in batches of 256, then taken and marked in the relay's batches of 256:
  update - main: UPDATE outbox SET status = 'published' (not a HOT update: `status` is in two partial indexes'
           predicates, so every index gets a new entry)
  queue  - the pending ids in a table of their own: the mark is a DELETE from it (the insert into it is counted)
The CPU of the PostgreSQL backend (from /proc) is what is compared.

    .venv/bin/python bench/bench_outbox_mark.py --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from sync_engine.migrate import migrate
from tccal_sandbox.embedded import EmbeddedPostgres

N, BATCH = 15000, 256
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def write(conn: asyncpg.Connection, queue: bool, tag: str) -> None:
    now = datetime.now(UTC)
    payload = os.urandom(300)
    for start in range(0, N, BATCH):
        ids = range(start, min(start + BATCH, N))
        cmd = [f"{tag}-{i}" for i in ids]
        rows = await conn.fetch(
            "INSERT INTO outbox (command_id, server_id, kind, target, meeting_id, payload, attempt, chain_id, status,"
            " available_at, created_at) SELECT c, 'tcs1', 'calendar_upsert', 'user:' || c, 'm-' || c, $2, 1, c,"
            " 'pending', $3, $3 FROM unnest($1::text[]) AS c RETURNING id",
            cmd,
            payload,
            now,
        )
        if queue:
            await conn.execute("INSERT INTO outbox_queue (id) SELECT unnest($1::bigint[])", [r["id"] for r in rows])


async def mark(conn: asyncpg.Connection, queue: bool) -> None:
    now = datetime.now(UTC)
    while True:
        if queue:
            rows = await conn.fetch(
                "SELECT o.id, o.command_id, o.payload FROM outbox_queue q JOIN outbox o USING (id)"
                " WHERE o.available_at <= $1 ORDER BY q.id LIMIT $2",
                now,
                BATCH,
            )
        else:
            rows = await conn.fetch(
                "SELECT id, command_id, payload FROM outbox WHERE status = 'pending' AND available_at <= $1"
                " ORDER BY id LIMIT $2",
                now,
                BATCH,
            )
        if not rows:
            return
        done = [r["id"] for r in rows]
        if queue:
            await conn.execute("DELETE FROM outbox_queue WHERE id = ANY($1::bigint[])", done)
        else:
            await conn.execute(
                "UPDATE outbox SET status = 'published' WHERE id = ANY($1::bigint[]) AND status = 'pending'", done
            )


async def one(server: EmbeddedPostgres, queue: bool) -> tuple[float, float]:
    name = f"o_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server.dsn("postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    conn = await asyncpg.connect(server.dsn(name))
    try:
        await migrate(conn)
        await conn.execute("CREATE TABLE outbox_queue (id bigint PRIMARY KEY)")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        c0 = cpu(pid)
        await write(conn, queue, name)
        c1 = cpu(pid)
        await mark(conn, queue)
        c2 = cpu(pid)
        return c1 - c0, c2 - c1
    finally:
        await conn.close()


async def main(rounds: int) -> None:
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="tcom")))
    server.start()
    try:
        got: dict[str, list[tuple[float, float]]] = {"update": [], "queue": []}
        for _ in range(rounds):
            for variant in ("update", "queue"):
                got[variant].append(await one(server, variant == "queue"))
        for variant, runs in got.items():
            w = statistics.median(r[0] for r in runs)
            m = statistics.median(r[1] for r in runs)
            each = [(round(a, 2), round(b, 2)) for a, b in runs]
            print(
                f"{variant}: PostgreSQL CPU s, median of {rounds}: write {w:.3f} mark {m:.3f} both {w + m:.3f}; {each}"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternating update/queue pairs")
    asyncio.run(main(parser.parse_args().rounds))

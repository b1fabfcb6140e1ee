"""What asyncpg spends encoding the engine's set-based writes: one typed array per column (main, sync_engine.bulk)
against one array of a composite row type per write (bench/README.md §4, tenth round; branch
`experiment/bulk-row-types`).

asyncpg checks every element of an array parameter for being a nested array (isinstance against collections.abc, a
Python-level call each): a write of twelve columns pays twelve or more checks per row, a composite row one. Side by
side, alternating, on one embedded PostgreSQL: the rows of one `bench_engine.py --changes 5000` drain (per table, as
its `rows_written` reports), in its 40 batches, inserted into scratch tables of the engine's write shapes; the
client's CPU (time.process_time: encoding and protocol, not the wait for PostgreSQL) is what is compared.

    .venv/bin/python bench/bench_bulk_encoding.py --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from sync_engine.bulk import Column
from sync_engine.items import ITEM_COLUMNS, MAILBOX_COLUMNS, MEETING_COLUMNS
from sync_engine.outbox import OUTBOX_COLUMNS, SHOWN_COLUMNS
from sync_engine.workspace import OCCURRENCE_COLUMNS, PEOPLE_COLUMNS, SNAPSHOT_COLUMNS
from tccal_sandbox.embedded import EmbeddedPostgres

BATCHES = 40  # ceil(5,000 / CALENDAR_BATCH)
#: The engine's write shapes and the rows one 5,000-change drain writes with each (bench_engine's rows_written;
#: the mailboxes are touched once per batch).
SHAPES: dict[str, tuple[tuple[Column, ...], int]] = {
    "outbox": (OUTBOX_COLUMNS, 15000),
    "shown": (SHOWN_COLUMNS, 15000),
    "people": (PEOPLE_COLUMNS, 15000),
    "items": (ITEM_COLUMNS, 5000),
    "meetings": (MEETING_COLUMNS, 5000),
    "occurrences": (OCCURRENCE_COLUMNS, 5000),
    "snapshots": (SNAPSHOT_COLUMNS, 5000),
    "mailboxes": (MAILBOX_COLUMNS, BATCHES * 100),
}


def value(kind: str, n: int, moment: datetime) -> object:
    samples: dict[str, object] = {
        "text": f"value-{n}-abcdefgh@example.com",
        "bytea": os.urandom(120),
        "boolean": n % 2 == 0,
        "smallint": n % 7,
        "integer": n,
        "bigint": n * 3,
        "timestamptz": moment + timedelta(seconds=n),
    }
    return samples[kind]


def batches(columns: Sequence[Column], count: int) -> list[list[tuple[object, ...]]]:
    moment = datetime.now(UTC)
    rows = [tuple(value(c.type, n, moment) for c in columns) for n in range(count)]
    return [rows[b * count // BATCHES : (b + 1) * count // BATCHES] for b in range(BATCHES)]


async def main(rounds: int) -> None:
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="tcbbe")))
    server.start()
    try:
        conn = await asyncpg.connect(server.create_database("encoding"))
        by_columns: dict[str, str] = {}
        by_rows: dict[str, str] = {}
        data: dict[str, list[list[tuple[object, ...]]]] = {}
        for shape, (columns, count) in SHAPES.items():
            definition = ", ".join(f"{c.name} {c.type}" for c in columns)
            await conn.execute(f"CREATE UNLOGGED TABLE w_{shape} ({definition})")
            await conn.execute(f"CREATE TYPE r_{shape} AS ({definition})")
            arrays = ", ".join(f"${n}::{c.type}[]" for n, c in enumerate(columns, 1))
            by_columns[shape] = f"INSERT INTO w_{shape} SELECT * FROM unnest({arrays})"
            by_rows[shape] = f"INSERT INTO w_{shape} SELECT * FROM unnest($1::r_{shape}[])"
            data[shape] = batches(columns, count)
        got: dict[str, list[float]] = {"arrays per column": [], "composite rows": []}
        for _ in range(rounds):
            for variant in got:
                for shape in SHAPES:
                    await conn.execute(f"TRUNCATE w_{shape}")
                started = time.process_time()
                for b in range(BATCHES):
                    for shape in SHAPES:
                        rows = data[shape][b]
                        if variant == "arrays per column":  # as sync_engine.bulk: transposed, one array a column
                            await conn.execute(by_columns[shape], *[list(column) for column in zip(*rows, strict=True)])
                        else:
                            await conn.execute(by_rows[shape], rows)
                got[variant].append(time.process_time() - started)
        for variant, runs in got.items():
            each = [round(r, 3) for r in runs]
            print(
                f"{variant}: client CPU s per drain's writes, median of {rounds}: {statistics.median(runs):.3f}; {each}"
            )
        await conn.close()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternating pairs")
    asyncio.run(main(parser.parse_args().rounds))

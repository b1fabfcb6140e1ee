"""Benchmark: getCalendarList of large calendars and of many users (issue #21.4).

    .venv/bin/python bench/bench_callist.py --occurrences 20000 --users 200 [--meetings 25] [--changes 10]

tcs-gateway runs in this process against an in-memory SyncService (tcs_gateway_testkit.FakeSync over real gRPC:
the engine's own ListEvents is not part of this figure) and an embedded NATS; TrueConf Server is the emulator
process (`python -m trueconf_emulator`), which validates every frame against the schema as a real server would.

1. **One large calendar.** A user with `--occurrences` occurrences (5 minutes apart); a raw WebSocket client asks
   page 0 and then every further page, one after the other. Seconds from sending page 0 to the last page
   received (`--runs` runs), pages, and the largest frame. Measured twice, one layout after the other: (a) all in
   this process — CPU seconds of this process in that time (gateway, FakeSync and client) and the same without the
   client's json.loads of the pages; (b) as installed, each in a process of its own (callist_peers.py): the client
   (TrueConf Server's side), tcs-gateway and the FakeSync (the engine's side) — CPU seconds of the gateway's and
   the FakeSync's processes in each run. #21.4a's ≤ 1 s is read on (b) (bench/README.md §6).
2. **Reconnect of many users.** The emulator's directory has `--users` users with `--meetings` meetings each;
   the gateway serves them all (they are its configured users). Seconds from the emulator's connection being
   dropped until it is connected again, every user's snapshot (if any) has arrived and its getCalendarList round (all
   users, pages included, 8 at a time) is answered; the emulator reconnects after 0.1 s. With `--catch-up lists`
   (the default; protocol revision 1.3) it authenticates with `catchUp: "lists"`, so the gateway sends no snapshots
   and the round is only the lists (`sinceSeq` + `incremental`); `--catch-up snapshots` is the older TrueConf.
3. **Changes since a seq** (`--changes`, protocol §6.2 "Changes since a sequence"). The large calendar's user, held
   by the client as of a list's seq; then `--changes` changes (all edits but one deletion). Side by side in one
   run: the whole list (all pages) and the incremental answer (`sinceSeq` + `incremental`, all pages), seconds
   (median of `--runs`), pages and bytes received. The FakeSync's ListEvents walks the user's occurrences in
   Python for either answer, so:
4. **The engine's read side.** sync-engine's own `ReadQueries.list_events` over an embedded PostgreSQL holding the
   same user's `--occurrences` shown rows (migrated schema, rows written directly) and `--changes` changes since
   S (edits bump the rows' seq, the deletion is a `calendar_delete` outbox row): the whole list against the
   incremental answer, seconds (median of `--runs`) and protobuf bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from callist_peers import NATS_URL_VARIABLE, every_page, fill, timed_lists, window
from tcs_gateway_testkit import (
    RawBridgeClient,
    RunningGateway,
    SyncServer,
    admin,
    bridge_state,
    gateway_settings,
    occurrence,
    server_settings,
    start_tcs,
    today_at,
)

from bench import RESULTS, machine, write_result
from sync_engine.migrate import migrate
from sync_engine.queries import ReadQueries
from tccal.nats_auth import ADMIN
from tccal_sandbox.embedded import EmbeddedNats, EmbeddedPostgres
from tccal_sandbox.testing import short_tmpdir, wait_for_async
from trueconf.calendar.v1 import commands_pb2

BIG_USER = "big@example.test"
#: Part 1's TrueConf Server id: the gateway's state remembers whom a server asked for, so part 2's server (the
#: emulator) must not inherit BIG_USER.
LARGE_SERVER_ID = "large.example.test#vcs"
#: Part 1's server in the installation's layout (its own gateway process, so its own server id in the state).
APART_SERVER_ID = "apart.example.test#vcs"
PEERS = Path(__file__).with_name("callist_peers.py")


async def large_calendar(gateway: RunningGateway, runs: int) -> dict[str, Any]:
    """Part 1 in one process: the gateway, the FakeSync and the client share this process (and one core)."""
    figures = await timed_lists(gateway.url, LARGE_SERVER_ID, BIG_USER, runs, {"process": psutil.Process()})
    cpu_seconds = figures.pop("cpu_s")["process"]
    parse_cpu_seconds = figures.pop("client_parse_cpu_s")
    return {
        **figures,
        "cpu_seconds": cpu_seconds,
        "median_cpu_s": statistics.median(cpu_seconds),
        "client_parse_cpu_s": parse_cpu_seconds,
        "median_cpu_s_without_client_parse": statistics.median(
            [round(cpu - parse, 3) for cpu, parse in zip(cpu_seconds, parse_cpu_seconds, strict=True)]
        ),
    }


class _Peer:
    """A process of callist_peers.py that serves until its stdin closes; `said` is the JSON line it printed."""

    def __init__(self, process: asyncio.subprocess.Process, said: dict[str, Any]) -> None:
        self.process = process
        self.said = said

    @classmethod
    async def start(cls, *args: str, env: Mapping[str, str] | None = None) -> _Peer:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(PEERS), *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        if not line:
            await process.wait()
            raise RuntimeError(f"callist_peers.py {args[0]} exited with {process.returncode} before serving")
        return cls(process, json.loads(line))

    async def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def large_calendar_apart(nats_url: str, occurrences: int, runs: int) -> dict[str, Any]:
    """Part 1 as an installation runs it: the FakeSync (the engine's side), the gateway and the client (TrueConf
    Server's side) each in a process of its own; the client's seconds, and the CPU seconds of the gateway's and the
    FakeSync's processes in each run."""
    sync = await _Peer.start("sync", "--user", BIG_USER, "--occurrences", str(occurrences))
    try:
        gateway = await _Peer.start(
            *("gateway", "--sync", sync.said["address"], "--server-id", APART_SERVER_ID),
            env={**os.environ, NATS_URL_VARIABLE: nats_url},
        )
        try:
            client = await asyncio.create_subprocess_exec(
                *(sys.executable, str(PEERS), "tcs", "--url", gateway.said["url"], "--server-id", APART_SERVER_ID),
                *("--user", BIG_USER, "--runs", str(runs)),
                *("--watch", f"gateway={gateway.process.pid}", "--watch", f"sync={sync.process.pid}"),
                stdout=asyncio.subprocess.PIPE,
            )
            said, _ = await asyncio.wait_for(client.communicate(), 600)
            if client.returncode != 0:
                raise RuntimeError(f"callist_peers.py tcs exited with {client.returncode}")
        finally:
            await gateway.stop()
    finally:
        await sync.stop()
    figures: dict[str, Any] = json.loads(said)
    cpu_s = figures.pop("cpu_s")
    return {
        **figures,
        "gateway_cpu_s": cpu_s["gateway"],
        "median_gateway_cpu_s": statistics.median(cpu_s["gateway"]),
        "sync_cpu_s": cpu_s["sync"],
    }


def _frame_bytes(frame: dict[str, Any]) -> int:
    return len(json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode())


def _change(sync: SyncServer, user: str, changes: int) -> None:
    """`changes` changes of `user`'s calendar in the FakeSync: edits, the last one a deletion."""
    fake = sync.fake
    shown = fake.shown[user]
    ids = sorted(shown)
    for n in range(changes):
        seq = fake.next_seq(user)
        target = ids[(n * 997) % len(ids)]
        if n == changes - 1:
            shown.pop(target, None)
            fake.removals.setdefault(user, {})[target] = seq
        else:
            shown[target].subject = f"Edited {n}"
            fake.changed.setdefault(user, {})[target] = seq


async def changes_since(gateway: RunningGateway, sync: SyncServer, changes: int, runs: int) -> dict[str, Any]:
    async with RawBridgeClient(gateway.url) as client:
        assert (await client.auth(server_id=LARGE_SERVER_ID))["payload"]["errorCode"] == 0
        request = dict(window(), user=BIG_USER)
        held = (await every_page(client, request))[0]["payload"]["seq"]
        _change(sync, BIG_USER, changes)
        figures: dict[str, Any] = {}
        for name, asked in (("whole", request), ("incremental", dict(request, sinceSeq=held, incremental=True))):
            seconds: list[float] = []
            frames: list[dict[str, Any]] = []
            for _ in range(runs):
                started = time.monotonic()
                frames = await every_page(client, asked)
                seconds.append(round(time.monotonic() - started, 4))
            figures[name] = {
                "seconds": seconds,
                "median_s": statistics.median(seconds),
                "pages": len(frames),
                "bytes": sum(_frame_bytes(frame) for frame in frames),
                "events": sum(len(frame["payload"]["events"]) for frame in frames),
                "removed": sum(len(frame["payload"].get("removed", [])) for frame in frames),
                "incremental": frames[0]["payload"].get("incremental"),
            }
    return figures


async def engine_read(occurrences: int, changes: int, runs: int) -> dict[str, Any]:
    """sync-engine's ReadQueries.list_events, whole against incremental, over an embedded PostgreSQL."""
    pg_dir = short_tmpdir("tcbclpg")
    postgres = EmbeddedPostgres(pg_dir)
    postgres.start()
    try:
        dsn = postgres.create_database("callist")
        async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
            async with pool.acquire() as connection:
                await migrate(connection)
                rows = []
                for n in range(occurrences):
                    start = today_at(9, days=0) + timedelta(minutes=5 * n)
                    item = occurrence(f"{BIG_USER}-{n}", start=start, attendees=[(BIG_USER, 4)])
                    rows.append(
                        (
                            BIG_USER,
                            item.id,
                            item.meeting_id,
                            start,
                            start + timedelta(minutes=30),
                            False,
                            n + 1,
                            item.SerializeToString(),
                        )
                    )
                await connection.copy_records_to_table(
                    "shown",
                    records=rows,
                    columns=[
                        "user_email",
                        "occurrence_id",
                        "meeting_id",
                        "start_at",
                        "end_at",
                        "cancelled",
                        "seq",
                        "occurrence",
                    ],
                )
                held = occurrences
                edited = [rows[(n * 997) % occurrences][1] for n in range(changes - 1)]
                for n, occurrence_id in enumerate(edited):
                    await connection.execute(
                        "UPDATE shown SET seq = $3 WHERE user_email = $1 AND occurrence_id = $2",
                        BIG_USER,
                        occurrence_id,
                        held + 1 + n,
                    )
                gone = rows[-1][1]
                delete_seq = held + changes
                await connection.execute(
                    "DELETE FROM shown WHERE user_email = $1 AND occurrence_id = $2", BIG_USER, gone
                )
                command = commands_pb2.TcsCommand(command_id=f"bench#vcs/calendar/{BIG_USER}/{delete_seq}")
                command.calendar_delete.user = BIG_USER
                command.calendar_delete.occurrence_id = gone
                command.calendar_delete.seq = delete_seq
                await connection.execute(
                    "INSERT INTO outbox (command_id, server_id, kind, target, meeting_id, payload, attempt, chain_id,"
                    " status, available_at, created_at) VALUES ($1, 'bench#vcs', 'calendar_delete', $2, $3, $4, 1, $1,"
                    " 'ok', now(), now())",
                    command.command_id,
                    f"calendar:{BIG_USER}:{gone}",
                    gone,
                    command.SerializeToString(),
                )
                await connection.execute("INSERT INTO user_seq VALUES ($1, $2)", BIG_USER, delete_seq)
                await connection.execute("ANALYZE")
            queries = ReadQueries(pool)
            bounds = window()
            start = datetime.fromisoformat(bounds["from"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(bounds["to"].replace("Z", "+00:00"))
            figures: dict[str, Any] = {}
            for name, since, incremental in (("whole", 0, False), ("incremental", held, True)):
                seconds: list[float] = []
                size = count = removed = 0
                for _ in range(runs):
                    started = time.monotonic()
                    response = await queries.list_events(BIG_USER, start, end, since_seq=since, incremental=incremental)
                    seconds.append(round(time.monotonic() - started, 4))
                    size, count, removed = response.ByteSize(), len(response.occurrences), len(response.removed)
                assert response.incremental is incremental
                figures[name] = {
                    "seconds": seconds,
                    "median_s": statistics.median(seconds),
                    "bytes": size,
                    "occurrences": count,
                    "removed": removed,
                }
        return figures
    finally:
        postgres.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


async def reconnect(sync: SyncServer, nats_url: str, users: int, meetings: int, catch_up: str) -> dict[str, Any]:
    directory = [{"id": f"u{n:05d}", "email": f"u{n:05d}@example.test", "display_name": f"U {n}"} for n in range(users)]
    for entry in directory:
        fill(sync, entry["email"], meetings)
    emulator = await start_tcs(None, users=directory, extra={"catch_up": catch_up})
    settings = gateway_settings(sync, [server_settings(emulator)], users=[e["email"] for e in directory])
    gateway = await RunningGateway(settings, nats_url).start()
    try:

        async def round_done(connections: int) -> bool:
            state = await bridge_state(emulator)
            lists = state["calendar_lists"]
            snapshots = int(state["pushes_received"].get("calendar.snapshot", 0))
            return (
                state["state"] == "connected"
                and state["authenticated_connections"] >= connections
                and lists["applied"] + lists["errors"] + lists["invalid"] >= users * connections
                # with catchUp "lists" (revision 1.3) the gateway sends no catch-up snapshots: TCS asks every list
                and snapshots >= (0 if catch_up == "lists" else users * connections)
            )

        started = time.monotonic()
        await admin(emulator, "PUT", "/bridge/target", {"gateway_url": gateway.url})
        await wait_for_async(lambda: round_done(1), timeout=600, what="the first connection's lists")
        first = round(time.monotonic() - started, 3)
        started = time.monotonic()
        await admin(emulator, "POST", "/bridge/drop", {"mode": "close", "code": 1000})
        await wait_for_async(lambda: round_done(2), timeout=600, what="the reconnect's lists")
        again = round(time.monotonic() - started, 3)
        state = await bridge_state(emulator)
        return {
            "first_connect_s": first,
            "reconnect_s": again,
            "catch_up": catch_up,
            "snapshots": int(state["pushes_received"].get("calendar.snapshot", 0)),
            "lists": state["calendar_lists"],
            "protocol_errors": state["protocol_error_count"],
        }
    finally:
        await gateway.stop()
        await emulator.astop()


async def run(args: argparse.Namespace) -> Path:
    nats_dir = short_tmpdir("tcbcl")
    nats = EmbeddedNats(nats_dir)
    nats.start()
    sync = await SyncServer().start()
    try:
        fill(sync, BIG_USER, args.occurrences)
        gateway = await RunningGateway(
            gateway_settings(sync, [server_settings(server_id=LARGE_SERVER_ID)]), nats.url_for(ADMIN)
        ).start()
        try:
            large = await large_calendar(gateway, args.runs)
            changed = await changes_since(gateway, sync, args.changes, args.runs) if args.changes else None
        finally:
            await gateway.stop()
        apart = await large_calendar_apart(nats.url_for(ADMIN), args.occurrences, args.runs)
        engine = await engine_read(args.occurrences, args.changes, args.runs) if args.changes else None
        many = (
            await reconnect(sync, nats.url_for(ADMIN), args.users, args.meetings, args.catch_up) if args.users else None
        )
    finally:
        await sync.stop()
        nats.stop()
    result = {
        "utc": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "occurrences": args.occurrences,
        "large_calendar": large,
        "large_calendar_apart": apart,
        "users": args.users,
        "meetings": args.meetings,
        "reconnect": many,
        "changes": args.changes,
        "changes_since": changed,
        "engine_read": engine,
    }
    rows = [
        f"### getCalendarList — {result['machine']['cores']} cores, {result['utc'][:19]}Z",
        "",
        "| | s (all / waiting for the gateway) | target |",
        "|---|---|---|",
        f"| one user, {args.occurrences} occurrences, {large['pages']} pages (largest frame "
        f"{large['largest_frame_bytes']} B), all in this process, median of {args.runs}: from page 0 asked to the "
        f"last page received (runs {large['seconds']}); of that the client waiting for the answers (runs "
        f"{large['served_s']}); CPU s of this process, gateway and client, median {large['median_cpu_s']}, without "
        f"the client's json.loads of the pages {large['median_cpu_s_without_client_parse']} "
        f"| {large['median_s']} / {large['median_served_s']} | |",
        f"| the same with TrueConf's client, the gateway and the FakeSync each in its own process (runs "
        f"{apart['seconds']}; waiting {apart['served_s']}; CPU s of the gateway's process {apart['gateway_cpu_s']}, "
        f"of the FakeSync's {apart['sync_cpu_s']}; {apart['pages']} pages, largest frame "
        f"{apart['largest_frame_bytes']} B) | {apart['median_s']} / {apart['median_served_s']} "
        "| served (waiting) ≤ 1 s |",
    ]
    if many is not None:
        rows += [
            f"| {args.users} users × {args.meetings} meetings: first connection "
            f"({'lists' if args.catch_up == 'lists' else 'snapshots + lists'}) "
            f"| {many['first_connect_s']} | |",
            f"| {args.users} users × {args.meetings} meetings: reconnect (catchUp {args.catch_up}: "
            f"{'lists' if args.catch_up == 'lists' else 'snapshots + lists'}) | {many['reconnect_s']} "
            "| 2,000 users ≤ 30 s |",
        ]
    if changed is not None and engine is not None:
        whole, delta = changed["whole"], changed["incremental"]
        rows += [
            "",
            f"{args.occurrences} occurrences, {args.changes} changes since TCS's seq (median of {args.runs}):",
            "",
            "| | pages | bytes | events + removed | s |",
            "|---|---|---|---|---|",
            f"| gateway: whole list | {whole['pages']} | {whole['bytes']} | {whole['events']} | {whole['median_s']} |",
            f"| gateway: incremental (sinceSeq) | {delta['pages']} | {delta['bytes']} | {delta['events']} + "
            f"{delta['removed']} | {delta['median_s']} |",
            f"| sync-engine ListEvents: whole | | {engine['whole']['bytes']} | {engine['whole']['occurrences']} "
            f"| {engine['whole']['median_s']} |",
            f"| sync-engine ListEvents: incremental | | {engine['incremental']['bytes']} | "
            f"{engine['incremental']['occurrences']} + {engine['incremental']['removed']} "
            f"| {engine['incremental']['median_s']} |",
        ]
    table = "\n".join([*rows, ""])
    return write_result(f"callist-{args.occurrences}-{args.users}", result, table, Path(args.out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--occurrences", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--users", type=int, default=200, help="part 2's users; 0 runs part 1 only")
    parser.add_argument("--meetings", type=int, default=25)
    parser.add_argument("--changes", type=int, default=10, help="part 3-4's changes since TCS's seq; 0 skips them")
    parser.add_argument(
        "--catch-up",
        choices=["lists", "snapshots"],
        default="lists",
        help="part 2's TrueConf: `auth` catchUp (revision 1.3: no snapshots, it asks the lists) or the old behaviour",
    )
    parser.add_argument("--out", default=str(RESULTS))
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: getCalendarList of large calendars and of many users (issue #21.4).

    .venv/bin/python bench/bench_callist.py --occurrences 20000 --users 200 [--meetings 25]

tcs-gateway runs in this process against an in-memory SyncService (tcs_gateway_testkit.FakeSync over real gRPC:
the engine's own ListEvents is not part of this figure) and an embedded NATS; TrueConf Server is the emulator
process (`python -m trueconf_emulator`), which validates every frame against the schema as a real server would.

1. **One large calendar.** A user with `--occurrences` occurrences (5 minutes apart); a raw WebSocket client asks
   page 0 and then every further page, one after the other. Seconds from sending page 0 to the last page
   received (3 runs), pages, and the largest frame.
2. **Reconnect of many users.** The emulator's directory has `--users` users with `--meetings` meetings each;
   the gateway serves them all (they are its configured users). Seconds from the emulator's connection being
   dropped until it is connected again, every user's snapshot has arrived and its getCalendarList round (all
   users, pages included, 8 at a time) is answered; the emulator reconnects after 0.1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
from tccal.nats_auth import ADMIN
from tccal_sandbox.embedded import EmbeddedNats
from tccal_sandbox.testing import short_tmpdir, wait_for_async
from tcs_gateway.bridge.framing import format_instant

BIG_USER = "big@example.test"
#: Part 1's TrueConf Server id: the gateway's state remembers whom a server asked for, so part 2's server (the
#: emulator) must not inherit BIG_USER.
LARGE_SERVER_ID = "large.example.test#vcs"


def _fill(sync: SyncServer, user: str, count: int) -> None:
    shown = {}
    for n in range(count):
        item = occurrence(f"{user}-{n}", start=today_at(9, days=0) + timedelta(minutes=5 * n), attendees=[(user, 4)])
        shown[item.id] = item
    sync.fake.shown[user] = shown
    sync.fake.seq[user] = 1


def _window() -> dict[str, str]:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"from": format_instant(midnight - timedelta(days=1)), "to": format_instant(midnight + timedelta(days=200))}


async def large_calendar(gateway: RunningGateway, runs: int) -> dict[str, Any]:
    seconds: list[float] = []
    cpu_seconds: list[float] = []
    pages = events = largest = 0
    async with RawBridgeClient(gateway.url) as client:
        assert (await client.auth(server_id=LARGE_SERVER_ID))["payload"]["errorCode"] == 0
        request = dict(_window(), user=BIG_USER)
        for _ in range(runs):
            started = time.monotonic()
            cpu_started = time.process_time()
            first = await client.reply_to(await client.request("getCalendarList", dict(request, page=0)), 60)
            frames = [first]
            for page in range(1, first["payload"]["pageCount"]):
                asked = dict(request, page=page, listId=first["payload"]["listId"])
                frames.append(await client.reply_to(await client.request("getCalendarList", asked), 60))
            seconds.append(round(time.monotonic() - started, 3))
            cpu_seconds.append(round(time.process_time() - cpu_started, 3))
            pages = len(frames)
            events = sum(len(frame["payload"]["events"]) for frame in frames)
            largest = max(len(json.dumps(f, separators=(",", ":"), ensure_ascii=False).encode()) for f in frames)
    return {
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "cpu_seconds": cpu_seconds,
        "median_cpu_s": statistics.median(cpu_seconds),
        "pages": pages,
        "events": events,
        "largest_frame_bytes": largest,
    }


async def reconnect(sync: SyncServer, nats_url: str, users: int, meetings: int) -> dict[str, Any]:
    directory = [{"id": f"u{n:05d}", "email": f"u{n:05d}@example.test", "display_name": f"U {n}"} for n in range(users)]
    for entry in directory:
        _fill(sync, entry["email"], meetings)
    emulator = await start_tcs(None, users=directory)
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
                and snapshots >= users * connections
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
        _fill(sync, BIG_USER, args.occurrences)
        gateway = await RunningGateway(
            gateway_settings(sync, [server_settings(server_id=LARGE_SERVER_ID)]), nats.url_for(ADMIN)
        ).start()
        try:
            large = await large_calendar(gateway, args.runs)
        finally:
            await gateway.stop()
        many = await reconnect(sync, nats.url_for(ADMIN), args.users, args.meetings) if args.users else None
    finally:
        await sync.stop()
        nats.stop()
    result = {
        "utc": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "occurrences": args.occurrences,
        "large_calendar": large,
        "users": args.users,
        "meetings": args.meetings,
        "reconnect": many,
    }
    rows = [
        f"### getCalendarList — {result['machine']['cores']} cores, {result['utc'][:19]}Z",
        "",
        "| | s | target |",
        "|---|---|---|",
        f"| one user, {args.occurrences} occurrences, {large['pages']} pages (largest frame "
        f"{large['largest_frame_bytes']} B), median of {args.runs} (runs {large['seconds']}; CPU s of this "
        f"process, gateway and client, median {large['median_cpu_s']}) | {large['median_s']} | ≤ 1 s |",
    ]
    if many is not None:
        rows += [
            f"| {args.users} users × {args.meetings} meetings: first connection (snapshots + lists) "
            f"| {many['first_connect_s']} | |",
            f"| {args.users} users × {args.meetings} meetings: reconnect (snapshots + lists) | {many['reconnect_s']} "
            "| 2,000 users ≤ 30 s |",
        ]
    table = "\n".join([*rows, ""])
    return write_result(f"callist-{args.occurrences}-{args.users}", result, table, Path(args.out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--occurrences", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--users", type=int, default=200, help="part 2's users; 0 runs part 1 only")
    parser.add_argument("--meetings", type=int, default=25)
    parser.add_argument("--out", default=str(RESULTS))
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

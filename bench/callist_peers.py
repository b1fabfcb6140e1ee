"""bench_callist.py's processes for issue #21.4a as an installation runs them: TrueConf Server, tcs-gateway and the
sync-engine are three programs (usually on three machines), so here each is a process of its own.

    python bench/callist_peers.py sync --user U --occurrences N
    CALLIST_NATS_URL=URL python bench/callist_peers.py gateway --sync ADDRESS --server-id ID
    python bench/callist_peers.py tcs --url URL --server-id ID --user U --runs N [--watch NAME=PID ...]

`sync` serves the testkit's FakeSync (SyncService over real gRPC, the engine's stand-in) holding the user's N
occurrences; `gateway` runs tcs-gateway (`RunningGateway`, the service's own code) against it and the NATS at
`CALLIST_NATS_URL` (credentials in it, so not on a command line other users can read);
each prints one JSON line ({"address"} or {"url"}) once it serves, and stops when its stdin closes. `tcs` is
TrueConf Server's side, a raw WebSocket client: it asks every page of the user's list `--runs` times, one after
the other, and prints its figures (`timed_lists`) as one JSON line, with the CPU seconds each watched process
(`--watch gateway=PID`) spent in each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil
from tcs_gateway_testkit import (
    RawBridgeClient,
    RunningGateway,
    SyncServer,
    gateway_settings,
    occurrence,
    server_settings,
    today_at,
)

from tcs_gateway.bridge.framing import format_instant

#: The environment variable `gateway` reads the NATS URL from.
NATS_URL_VARIABLE = "CALLIST_NATS_URL"


def fill(sync: SyncServer, user: str, count: int) -> None:
    """`count` occurrences of one meeting each for `user` in the FakeSync, 5 minutes apart from today 09:00."""
    shown = {}
    for n in range(count):
        item = occurrence(f"{user}-{n}", start=today_at(9, days=0) + timedelta(minutes=5 * n), attendees=[(user, 4)])
        shown[item.id] = item
    sync.fake.shown[user] = shown
    sync.fake.seq[user] = 1


def window() -> dict[str, str]:
    """getCalendarList's `from` and `to`: yesterday's midnight to 200 days after today's (UTC)."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"from": format_instant(midnight - timedelta(days=1)), "to": format_instant(midnight + timedelta(days=200))}


async def every_page(client: RawBridgeClient, request: dict[str, Any]) -> list[dict[str, Any]]:
    """The reply frames to getCalendarList `request`: page 0 of a new list, then each further page in turn."""
    first = await client.reply_to(await client.request("getCalendarList", dict(request, page=0)), 60)
    if first["payload"]["errorCode"] != 0:
        raise RuntimeError(f"getCalendarList {request} failed: {first['payload']}")
    frames = [first]
    for page in range(1, first["payload"]["pageCount"]):
        asked = dict(request, page=page, listId=first["payload"]["listId"])
        frames.append(await client.reply_to(await client.request("getCalendarList", asked), 60))
    return frames


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def timed_lists(
    url: str, server_id: str, user: str, runs: int, watched: Mapping[str, psutil.Process]
) -> dict[str, Any]:
    """Ask every page of `user`'s list `runs` times over one connection authenticated as `server_id`: seconds from
    sending page 0 to the last page received per run, of those the seconds the client waited for the gateway's
    answers (`served_s`: the run without the client's own work between a page and its next request), the CPU
    seconds the client spent parsing the pages and each `watched` process spent in the run, pages, events and the
    largest frame (UTF-8 bytes)."""
    seconds: list[float] = []
    served_s: list[float] = []
    parse_cpu_s: list[float] = []
    cpu_s: dict[str, list[float]] = {name: [] for name in watched}
    pages = events = largest = 0
    async with RawBridgeClient(url) as client:
        authenticated = await client.auth(server_id=server_id)
        if authenticated["payload"]["errorCode"] != 0:
            raise RuntimeError(f"auth as {server_id} refused: {authenticated['payload']}")
        request = dict(window(), user=user)
        for _ in range(runs):
            cpu_before = {name: _cpu_s(process) for name, process in watched.items()}
            parse_before, wait_before = client.parse_cpu_s, client.wait_s
            started = time.monotonic()
            frames = await every_page(client, request)
            seconds.append(round(time.monotonic() - started, 3))
            served_s.append(round(client.wait_s - wait_before, 3))
            parse_cpu_s.append(round(client.parse_cpu_s - parse_before, 3))
            for name, process in watched.items():
                cpu_s[name].append(round(_cpu_s(process) - cpu_before[name], 3))
            pages = len(frames)
            events = sum(len(frame["payload"]["events"]) for frame in frames)
            largest = max(len(json.dumps(f, separators=(",", ":"), ensure_ascii=False).encode()) for f in frames)
    return {
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "served_s": served_s,
        "median_served_s": statistics.median(served_s),
        "client_parse_cpu_s": parse_cpu_s,
        "cpu_s": cpu_s,
        "pages": pages,
        "events": events,
        "largest_frame_bytes": largest,
    }


def _say(value: Mapping[str, Any]) -> None:
    print(json.dumps(value), flush=True)


async def _until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)


async def serve_sync(args: argparse.Namespace) -> None:
    sync = await SyncServer().start()
    try:
        fill(sync, args.user, args.occurrences)
        _say({"address": sync.address})
        await _until_stdin_closes()
    finally:
        await sync.stop()


async def serve_gateway(args: argparse.Namespace) -> None:
    settings = gateway_settings(args.sync, [server_settings(server_id=args.server_id)])
    nats_url = os.environ.get(NATS_URL_VARIABLE)
    if not nats_url:
        raise SystemExit(f"callist_peers.py gateway: {NATS_URL_VARIABLE} is not set (the NATS URL, with credentials)")
    gateway = await RunningGateway(settings, nats_url).start()
    try:
        _say({"url": gateway.url})
        await _until_stdin_closes()
    finally:
        await gateway.stop()


def _watch(value: str) -> tuple[str, psutil.Process]:
    name, _, pid = value.partition("=")
    if not name or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"--watch {value!r}: expected NAME=PID")
    try:
        return name, psutil.Process(int(pid))
    except psutil.NoSuchProcess as exc:
        raise argparse.ArgumentTypeError(f"--watch {value!r}: no process {pid}") from exc


async def ask_lists(args: argparse.Namespace) -> None:
    _say(await timed_lists(args.url, args.server_id, args.user, args.runs, dict(args.watch)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    roles = parser.add_subparsers(dest="role", required=True)
    sync = roles.add_parser("sync", help="the FakeSync holding one user's occurrences")
    sync.add_argument("--user", required=True)
    sync.add_argument("--occurrences", type=int, required=True)
    sync.set_defaults(run=serve_sync)
    gateway = roles.add_parser("gateway", help="tcs-gateway against a SyncService and a NATS")
    gateway.add_argument("--sync", required=True, help="SyncService's host:port")
    gateway.add_argument("--server-id", required=True)
    gateway.set_defaults(run=serve_gateway)
    tcs = roles.add_parser("tcs", help="TrueConf Server's side: every page of a user's list, --runs times")
    tcs.add_argument("--url", required=True)
    tcs.add_argument("--server-id", required=True)
    tcs.add_argument("--user", required=True)
    tcs.add_argument("--runs", type=int, default=3)
    tcs.add_argument("--watch", type=_watch, action="append", default=[], help="NAME=PID whose CPU to report")
    tcs.set_defaults(run=ask_lists)
    args = parser.parse_args(argv)
    asyncio.run(args.run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

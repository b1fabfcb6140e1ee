"""Initial sync through Graph vs a raw msgraph-sdk read of the same events (bench_graph.py initial-sync;
bench/README.md, "Graph initial sync").

M mailboxes × K single events are created in the Graph emulator (by a client of their own). Baseline first: the
official msgraph-sdk reads calendarView of every mailbox over graph-ingest's cache window (`Prefer:
odata.maxpagesize` = graph-ingest's page size, every `@odata.nextLink` followed), all mailboxes at once as graph-ingest
runs one loop per mailbox. Then graph-ingest starts with the M mailboxes; done = a CalendarChange of every created
event is on the CALENDAR stream. Both sides: wall seconds, CPU seconds (this process — the SDK client, or
graph-ingest and the bus subscriber —, the emulator, and NATS for graph-ingest) and Graph requests at the emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import psutil
from ews_ingest_support import ChangeCollector
from graph_bench_idle import difference, requests
from graph_emulator_support import OPEN_CREDENTIALS, graph_client
from graph_ingest_support import GraphWriter, SeatServer, graph_config, graph_provider, new_mailboxes, running_graph
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.users.item.calendar_view.calendar_view_request_builder import CalendarViewRequestBuilder
from msgraph.graph_service_client import GraphServiceClient

from bench import cpu_seconds
from graph_emulator.testing import READONLY_APP_ID, READONLY_APP_SECRET, EmulatorProcess
from graph_ingest.settings import Tuning
from tccal.cache_window import cache_window
from tccal_sandbox.embedded import EmbeddedNats
from tccal_sandbox.testing import wait_for_async

#: graph_config's cache window (months back and ahead).
BACKWARD_MONTHS, FORWARD_MONTHS = 1, 2
SEED_CONCURRENCY = 8

ViewConfig = RequestConfiguration[CalendarViewRequestBuilder.CalendarViewRequestBuilderGetQueryParameters]


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before[name], 2) for name in before}


async def seed(emu: EmulatorProcess, mailboxes: list[str], per_mailbox: int) -> dict[str, set[str]]:
    """K one-hour events per mailbox spread over the next weeks (inside the window), created one by one."""
    writer = GraphWriter(emu)
    gate = asyncio.Semaphore(SEED_CONCURRENCY)
    today = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)

    async def fill(mailbox: str) -> tuple[str, set[str]]:
        async with gate:
            ids: set[str] = set()
            for number in range(per_mailbox):
                start = today + dt.timedelta(days=1 + number % 28, hours=number % 8)
                created = await writer.create(mailbox, f"bench {number}", start=start, body=f"event {number}")
                ids.add(str(created["id"]))
            return mailbox, ids

    try:
        return dict(await asyncio.gather(*(fill(m) for m in mailboxes)))
    finally:
        await writer.close()


def sdk_client(emu: EmulatorProcess) -> GraphServiceClient:
    """msgraph-sdk with graph-ingest's app (Calendars.Read)."""
    return graph_client(emu, READONLY_APP_ID, READONLY_APP_SECRET)


async def raw_read(client: GraphServiceClient, mailboxes: list[str], page_size: int) -> int:
    """msgraph-sdk: calendarView of every mailbox, pages followed; returns the events read."""
    window = cache_window(dt.datetime.now(dt.UTC), BACKWARD_MONTHS, FORWARD_MONTHS)

    def config() -> ViewConfig:
        view: ViewConfig = RequestConfiguration()
        view.query_parameters = CalendarViewRequestBuilder.CalendarViewRequestBuilderGetQueryParameters(
            start_date_time=window.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            end_date_time=window.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        view.headers.add("Prefer", f"odata.maxpagesize={page_size}")
        return view

    async def read(mailbox: str) -> int:
        builder = client.users.by_user_id(mailbox).calendar_view
        page = await builder.get(request_configuration=config())
        count = 0
        while page is not None:
            count += len(page.value or [])
            if not page.odata_next_link:
                break
            page = await builder.with_url(page.odata_next_link).get()
        return count

    return sum(await asyncio.gather(*(read(m) for m in mailboxes)))


async def close_sdk() -> None:
    while OPEN_CREDENTIALS:
        await OPEN_CREDENTIALS.pop().close()


def all_published(collector: ChangeCollector, expected: set[str]) -> Callable[[], bool]:
    seen: set[str] = set()
    position = 0

    def check() -> bool:
        nonlocal position
        received = collector.received
        while position < len(received):
            seen.add(received[position].change.item_id)
            position += 1
        return expected <= seen

    return check


async def run_initial(
    args: argparse.Namespace, emu: EmulatorProcess, nats: EmbeddedNats, seats: SeatServer
) -> dict[str, Any]:
    mailboxes = new_mailboxes(emu, *[f"initial{i}" for i in range(args.mailboxes)])
    seeded = await seed(emu, mailboxes, args.events_per_mailbox)
    expected = set().union(*seeded.values())
    tuning = Tuning(seat_refresh_seconds=3600.0)
    pids = {"bench process": psutil.Process().pid, "Graph emulator": emu.process.pid}
    nats_pid = nats.process.pid if nats.process else None

    client = sdk_client(emu)
    try:
        # untimed warm-up on a mailbox of one event: the token and the SDK's lazy imports of its models
        warm_up = new_mailboxes(emu, "warm-up")
        await seed(emu, warm_up, 1)
        await raw_read(client, warm_up, tuning.page_size)
        cpu0, req0, t0 = cpu_seconds(pids), requests(emu), time.monotonic()
        read = await raw_read(client, mailboxes, tuning.page_size)
        baseline_s = time.monotonic() - t0
        baseline_cpu, baseline_requests = cpu_used(cpu0, cpu_seconds(pids)), difference(requests(emu), req0)
    finally:
        await close_sdk()
    if read != len(expected):
        raise RuntimeError(f"msgraph-sdk read {read} events, {len(expected)} were created")

    collector = ChangeCollector(nats.url_for("admin"))  # started once graph-ingest made the stream; reads it all
    all_pids = {**pids, "NATS": nats_pid} if nats_pid else pids
    try:
        cpu0, req0, t0 = cpu_seconds(all_pids), requests(emu), time.monotonic()
        provider = graph_provider(emu, mailboxes, name="initial")
        async with running_graph(graph_config(seats.address, [provider]), nats, tuning):
            await collector.start()
            await wait_for_async(
                all_published(collector, expected), timeout=600, interval=0.05, what="every event on the bus"
            )
            connector_s = time.monotonic() - t0
            connector_cpu, connector_requests = cpu_used(cpu0, cpu_seconds(all_pids)), difference(requests(emu), req0)
    finally:
        await collector.stop()
    return {
        "mailboxes": args.mailboxes,
        "events_per_mailbox": args.events_per_mailbox,
        "events": len(expected),
        "page_size": tuning.page_size,
        "baseline_msgraph_sdk_s": round(baseline_s, 2),
        "baseline_cpu_s": baseline_cpu,
        "baseline_requests": baseline_requests,
        "connector_s": round(connector_s, 2),
        "connector_cpu_s": connector_cpu,
        "connector_requests": connector_requests,
        "ratio": round(connector_s / baseline_s, 2),
        "connector_timing": "from before graph-ingest starts (token, seats, KV, subscriptions none) to the last "
        "event's CalendarChange at a JetStream subscriber",
    }


def initial_table(result: dict[str, Any]) -> str:
    base, conn = result["baseline_requests"], result["connector_requests"]
    return "\n".join(
        [
            f"### Graph initial sync — {result['mailboxes']} mailboxes × {result['events_per_mailbox']} events "
            f"({result['events']}), pages of {result['page_size']}",
            "",
            "| side | wall s | CPU s | Graph requests (wire) | operations |",
            "|---|---|---|---|---|",
            f"| raw msgraph-sdk calendarView | {result['baseline_msgraph_sdk_s']} | {result['baseline_cpu_s']} "
            f"| {base['total']} {base['http']} | {base['operations']} |",
            f"| graph-ingest first round → JetStream | {result['connector_s']} | {result['connector_cpu_s']} "
            f"| {conn['total']} {conn['http']} | {conn['operations']} |",
            "",
            f"Ratio graph-ingest / msgraph-sdk: **{result['ratio']}**.",
            "",
        ]
    )

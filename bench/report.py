"""One report of issue #21's figures: each beside last turn's figure and the target, with a verdict.

    .venv/bin/python bench/report.py [--results bench/results] [--out DIR] [--since 20261206T030000Z]

Reads the newest result JSON of each kind in `--results` (`<kind>[-<size>...]-<utc stamp>.json`, as every
benchmark writes them), computes met / not met from the numbers in it, names the file each figure came from and
says "not run" for a kind without a result; nothing is filled in that a result does not hold. Below issue #21's
rows, the other benchmarks' newest figures (propagation, idle load, footprint, Graph, scale-out) for reference.
Prints the report and writes it to `<out>/report-<utc stamp>.md`. `make bench` runs the benchmarks and then this.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

RESULTS = Path(__file__).resolve().parent / "results"
RESULT_NAME = re.compile(r"^(?P<kind>[a-z]+(?:-[a-z]+)*)(?P<size>(?:-\d+)*)-(?P<stamp>\d{8}T\d{6}Z)\.json$")
STAMP = re.compile(r"^\d{8}T\d{6}Z$")
FRAME_LIMIT_BYTES = 1_048_576  # docs/bridge-protocol.md: no frame over 1 MiB
SERVICES = ("ews-ingest", "sync-engine", "tcs-gateway", "licensing")
T = TypeVar("T")


class MissingFigureError(Exception):
    """A result file does not hold a figure a row needs (an older format, or a part that was skipped)."""


@dataclass(frozen=True)
class Result:
    kind: str
    stamp: str
    path: Path
    data: Mapping[str, Any]


def read_results(directory: Path) -> dict[str, list[Result]]:
    """Every benchmark result in `directory` by kind, newest first (by the stamp in its name)."""
    found: dict[str, list[Result]] = {}
    for path in directory.glob("*.json"):
        match = RESULT_NAME.match(path.name)
        if match is None:
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise click.ClickException(f"{path} is not JSON: {error}") from error
        found.setdefault(match["kind"], []).append(Result(match["kind"], match["stamp"], path, data))
    for results in found.values():
        results.sort(key=lambda r: (r.stamp, r.path.name), reverse=True)
    return found


def figure(data: Mapping[str, Any], *keys: str) -> Any:
    """data[k1][k2]... or MissingFigureError when any step is absent or null."""
    value: Any = data
    for key in keys:
        if not isinstance(value, Mapping) or value.get(key) is None:
            raise MissingFigureError(".".join(keys))
        value = value[key]
    return value


def number(data: Mapping[str, Any], *keys: str) -> float:
    value = figure(data, *keys)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MissingFigureError(f"{'.'.join(keys)} is {value!r}, not a number")
    return float(value)


def secs(value: float) -> str:
    return f"{value:.2f} s"


def count(value: float) -> str:
    return f"{value:,.0f}"


# ------------------------------------------------------------------------------------------ issue #21's rows
Reader = Callable[[Mapping[str, Any]], Any]


def at(*keys: str, within: tuple[str, ...] = ()) -> Reader:
    """The number at `keys` under the object at `within` (a missing one is named by its keys below `within`)."""
    return lambda data: number(figure(data, *within), *keys)


@dataclass(frozen=True)
class Measured:
    text: str  # the figures, as read from the result
    met: bool
    size: str  # the size it was measured at
    full_size: bool  # at the issue's size or above


@dataclass(frozen=True)
class Point:
    """One of issue #21's points: what it measures, last turn's figure and the target (issue #21's text), and how
    its row is made from a result of `kind`: the figures `reads` takes from it (in this order: the first missing one
    is what the row names), `now` and `measured_at` (format strings over those figures), `met` (the verdict) and
    `full_size` (measured at the issue's size or above)."""

    number: str
    what: str
    last_turn: str
    target: str
    issue_size: str
    kind: str
    reads: Mapping[str, Reader]
    now: str
    met: Callable[[Mapping[str, Any]], bool]
    measured_at: str
    full_size: Callable[[Mapping[str, Any]], bool]

    def measure(self, data: Mapping[str, Any]) -> Measured:
        """The point's figures in `data` (MissingFigureError when it does not hold one of them)."""
        figures = {name: read(data) for name, read in self.reads.items()}
        return Measured(
            self.now.format(**figures),
            self.met(figures),
            self.measured_at.format(**figures),
            self.full_size(figures),
        )


CREATE = ("propagation", "connector", "create")
LARGE = ("large_calendar",)
#: Part 1 with TrueConf's client, the gateway and the engine's stand-in each in a process of its own, as installed
#: (bench/README.md section 6): the figure #21.4a is judged by; LARGE (all in one process) is shown beside it.
APART = ("large_calendar_apart",)
POINTS = (
    Point(
        "1",
        "initial sync: connector until all is in TrueConf ÷ raw exchangelib read",
        "1.76× (223 s vs 127 s)",
        "≤ 1.1×",
        "2,000 × 25",
        "initial-sync",
        reads={
            "ratio": at("ratio"),
            "connector": at("connector_s"),
            "raw": at("baseline_raw_exchangelib_s"),
            "mailboxes": at("mailboxes"),
            "meetings": at("meetings_per_mailbox"),
        },
        now="{ratio:.2f}× ({connector:.1f} s vs {raw:.1f} s)",
        met=lambda f: f["ratio"] <= 1.1,
        measured_at="{mailboxes:,.0f} × {meetings:,.0f}",
        full_size=lambda f: f["mailboxes"] >= 2000 and f["meetings"] >= 25,
    ),
    Point(
        "2",
        "sync-engine drain ÷ raw asyncpg writes of the same rows; its rate read against the engine the issue was "
        "filed on, measured alternately in the same run (bench_engine_reference.py)",
        "0.40 of raw, 2,263 changes/s",
        "≥ 0.5 of raw and ≥ 2,000 changes/s at the speed of the machine of last turn's figure",
        "5,000 changes",
        "engine-reference",
        reads={
            "ratio": at("current_ratio_to_raw"),
            "rate": at("current_changes_per_s"),
            "speedup": at("speedup"),
            "reference": at("reference_changes_per_s"),
            "then": at("reference", "then", "changes_per_s"),
            "normalized": at("current_at_reference_speed_changes_per_s"),
            "changes": at("changes"),
        },
        now="{ratio:.2f} of raw, {rate:,.0f} changes/s here; {speedup:.2f}× the filing-time engine in the same run "
        "({reference:,.0f}/s here, {then:,.0f}/s then) → {normalized:,.0f} changes/s at that machine's speed",
        met=lambda f: f["ratio"] >= 0.5 and f["normalized"] >= 2000,
        measured_at="{changes:,.0f} changes",
        full_size=lambda f: f["changes"] >= 5000,
    ),
    Point(
        "3a",
        "a burst of one new meeting (CreateItem) in each mailbox → TrueConf",
        "2,000: p50 15.9 s, max 30.7 s; 500: p50 3.7 s, p99 7.0 s",
        "p99 ≤ 5 s",
        "2,000 mailboxes",
        "live",
        reads={
            "p50": at("p50", within=CREATE),
            "p99": at("p99", within=CREATE),
            "max": at("max", within=CREATE),
            "n": at("n", within=CREATE),
            "sent_in": at("propagation", "connector", "burst", "sent_in_s"),
            "mailboxes": at("mailboxes"),
        },
        now="p50 {p50:.2f} s, p99 {p99:.2f} s, max {max:.2f} s ({n:,.0f} creates, sent in {sent_in:.0f} s)",
        met=lambda f: f["p99"] <= 5.0,
        measured_at="{mailboxes:,.0f} mailboxes",
        full_size=lambda f: f["mailboxes"] >= 2000,
    ),
    Point(
        "3b",
        "one new meeting in another mailbox during the burst → TrueConf",
        "not measured",
        "≤ 1 s",
        "burst of 2,000",
        "live",
        reads={"lone": at("propagation", "connector", "lone_create_during_burst_s"), "mailboxes": at("mailboxes")},
        now="{lone:.2f} s",
        met=lambda f: f["lone"] <= 1.0,
        measured_at="burst of {mailboxes:,.0f}",
        full_size=lambda f: f["mailboxes"] >= 2000,
    ),
    Point(
        "4a",
        "one user's whole calendar: every page of getCalendarList, the time TrueConf's client waits for them "
        "(client, gateway and the engine's stand-in each in its own process)",
        "~11,000 occurrences: over 1 MiB, refused as frame too large",
        "≤ 1 s, no frame over 1 MiB",
        "20,000 occurrences",
        "callist",
        reads={
            "served": at("median_served_s", within=APART),
            "wall": at("median_s", within=APART),
            "gateway_cpu": at("median_gateway_cpu_s", within=APART),
            "pages": at("pages", within=APART),
            "largest": at("largest_frame_bytes", within=APART),
            "events": at("events", within=APART),
            "one_process": at("median_served_s", within=LARGE),
            "occurrences": at("occurrences"),
            "runs": lambda d: len(figure(figure(d, *APART), "seconds")),
        },
        now="{served:.2f} s (median of {runs}; with the client's own parsing {wall:.2f} s; the gateway's process "
        "{gateway_cpu:.2f} CPU s a list), {events:,.0f} events in {pages:,.0f} pages, largest frame {largest:,.0f} B; "
        "all in one process {one_process:.2f} s",
        met=lambda f: f["served"] <= 1.0 and f["largest"] <= FRAME_LIMIT_BYTES and f["events"] == f["occurrences"],
        measured_at="{occurrences:,.0f} occurrences",
        full_size=lambda f: f["occurrences"] >= 20_000,
    ),
    Point(
        "4b",
        "reconnect: every user caught up (snapshots, or its own lists with catchUp) and getCalendarList answered",
        "over 30 s (a reconnect's lists, ~11,000 occurrences)",
        "≤ 30 s",
        "2,000 users",
        "callist",
        reads={
            "again": at("reconnect", "reconnect_s"),
            "first": at("reconnect", "first_connect_s"),
            "errors": at("reconnect", "protocol_errors"),
            "users": at("users"),
            "meetings": at("meetings"),
            # results before protocol revision 1.3 have no catch_up: their TrueConf was caught up by snapshots
            "catch_up": lambda d: d["reconnect"].get("catch_up", "snapshots"),
        },
        now="{again:.2f} s (first connection {first:.2f} s; catch-up by {catch_up}), {errors:,.0f} protocol errors",
        met=lambda f: f["again"] <= 30.0 and f["errors"] == 0,
        measured_at="{users:,.0f} users × {meetings:,.0f}",
        full_size=lambda f: f["users"] >= 2000,
    ),
)


def newest_holding(results: Iterable[Result], measure: Callable[[Mapping[str, Any]], T]) -> tuple[Result, T] | str:
    """The newest result that holds the figures `measure` reads and what it read, or why none holds them."""
    missing = ""
    for result in results:
        try:
            return result, measure(result.data)
        except MissingFigureError as error:
            missing = missing or f"{result.path.name} has no {error}"
    return missing


def source(result: Result) -> str:
    cores = result.data.get("machine", {}).get("cores")
    return f"`{result.path.name}`" + (f" ({cores} cores)" if cores else "")


def not_run(kind: str, since: str | None, every: list[Result]) -> str:
    if since is None or not every:
        return f"not run (no {kind} result)"
    return f"not run since {since} (newest {kind}: `{every[0].path.name}`)"


ISSUE_HEADER = (
    "| # | what | last turn (issue #21) | target | now | measured at | verdict | result |",
    "|---|---|---|---|---|---|---|---|",
)


def issue_row(point: Point, found: Mapping[str, list[Result]], since: str | None) -> tuple[str, bool]:
    """The point's table row, and whether a result held its figures (False: "not run")."""
    every = found.get(point.kind, [])
    results = [r for r in every if since is None or r.stamp >= since]
    head = f"| {point.number} | {point.what} | {point.last_turn} | {point.target} at {point.issue_size}"
    if not results:
        return f"{head} | {not_run(point.kind, since, every)} | | not run | |", False
    held = newest_holding(results, point.measure)
    if isinstance(held, str):
        return f"{head} | not in any {point.kind} result ({held}) | | not run | |", False
    result, measured = held
    verdict = "met" if measured.met else "not met"
    if not measured.full_size:
        verdict += f" (below the issue's {point.issue_size})"
    return f"{head} | {measured.text} | {measured.size} | {verdict} | {source(result)} |", True


# ------------------------------------------------------------------------------------------ reference rows
def live_propagation(d: Mapping[str, Any]) -> str:
    update = figure(d, "propagation", "connector", "update")
    return (
        f"{count(number(d, 'mailboxes'))} mailboxes: UpdateItem p50 {secs(number(update, 'p50'))}, "
        f"p99 {secs(number(update, 'p99'))} (n {count(number(update, 'n'))}); "
        f"polling baseline p50 {secs(number(d, 'propagation', 'baseline_polling', 'update', 'p50'))}"
    )


def live_idle(d: Mapping[str, Any]) -> str:
    return (
        f"{number(d, 'idle', 'connector_per_mailbox_hour')} EWS requests per mailbox-hour "
        f"(baseline {number(d, 'idle', 'baseline_per_mailbox_hour')})"
    )


def footprint(d: Mapping[str, Any]) -> str:
    idle, load = figure(d, "rss_mib", "idle"), figure(d, "rss_mib", "load")
    idle_total = sum(number(idle, name) for name in SERVICES)
    load_total = sum(number(load, name) for name in SERVICES)
    return f"four services {idle_total:.0f} MiB idle, {load_total:.0f} MiB under load"


def idle_compressed(d: Mapping[str, Any]) -> str:
    return (
        f"{count(number(d, 'mailboxes_synced'))} mailboxes: "
        f"{number(d, 'scaled_to_default_tuning_per_mailbox_hour')} EWS requests per mailbox-hour "
        f"(measured with compressed timings, scaled to the defaults)"
    )


def graph_propagation(d: Mapping[str, Any]) -> str:
    latency = figure(d, "latency_s")
    notified = figure(latency, "notifications")
    polled = [name for name in latency if name != "notifications"]
    if not polled:
        raise MissingFigureError("latency_s of the polling run")
    return (
        f"{count(number(d, 'events'))} events: notifications p50 {secs(number(notified, 'p50'))}, "
        f"p99 {secs(number(notified, 'p99'))}; {polled[0]} p50 {secs(number(latency, polled[0], 'p50'))}"
    )


def graph_idle(d: Mapping[str, Any]) -> str:
    return (
        f"{count(number(d, 'mailboxes'))} mailboxes: Graph requests per mailbox-hour "
        f"{number(d, 'notifications', 'scaled_to_default_tuning_per_mailbox_hour')} with notifications, "
        f"{number(d, 'polling', 'scaled_to_default_tuning_per_mailbox_hour')} polling"
    )


def graph_initial_sync(d: Mapping[str, Any]) -> str:
    return (
        f"{count(number(d, 'mailboxes'))} × {count(number(d, 'events_per_mailbox'))}: "
        f"{number(d, 'ratio'):.2f}× ({number(d, 'connector_s'):.1f} s vs msgraph-sdk "
        f"{number(d, 'baseline_msgraph_sdk_s'):.1f} s)"
    )


def scale_out(d: Mapping[str, Any]) -> str:
    phases = [("one_replica", "1 replica"), ("three_replicas", "3 replicas")]
    if "one_replica_again" in d:
        phases.append(("one_replica_again", "1 again"))
    parts = [
        f"{label} p50 {secs(number(d, key, 'update', 'p50'))}, p99 {secs(number(d, key, 'update', 'p99'))}"
        for key, label in phases
    ]
    return f"{count(number(d, 'mailboxes'))} mailboxes: " + "; ".join(parts)


REFERENCES: tuple[tuple[str, str, Callable[[Mapping[str, Any]], str]], ...] = (
    ("propagation (UpdateItem → TrueConf)", "live", live_propagation),
    ("Exchange load at idle", "live", live_idle),
    ("Exchange load at idle, compressed timings", "idle", idle_compressed),
    ("footprint (RSS)", "live", footprint),
    ("Graph propagation", "graph-propagation", graph_propagation),
    ("Graph load at idle", "graph-idle", graph_idle),
    ("Graph initial sync ÷ msgraph-sdk", "graph-initial-sync", graph_initial_sync),
    ("scale-out: ews-ingest replicas", "scale", scale_out),
)


def reference_rows(found: Mapping[str, list[Result]]) -> list[str]:
    rows = ["| benchmark | newest figures | result |", "|---|---|---|"]
    for what, kind, measure in REFERENCES:
        results = found.get(kind, [])
        if not results:
            rows.append(f"| {what} | not run (no {kind} result) | |")
            continue
        held = newest_holding(results, measure)
        if isinstance(held, str):
            rows.append(f"| {what} | not in any {kind} result ({held}) | |")
        else:
            rows.append(f"| {what} | {held[1]} | {source(held[0])} |")
    return rows


def build_report(results_dir: Path, found: Mapping[str, list[Result]], since: str | None, now: dt.datetime) -> str:
    window = f", results written since {since}" if since else ""
    shown = results_dir.resolve()
    if shown.is_relative_to(Path.cwd()):
        shown = shown.relative_to(Path.cwd())
    return "\n".join(
        [
            f"# Benchmark report — {now.strftime('%Y-%m-%d %H:%M:%S')} UTC",
            "",
            f"Newest result of each kind in `{shown}`{window}. Verdicts are computed from the result's "
            "figures; a row measured below the issue's size says so. Last turn's figures are issue #21's.",
            "",
            "## Issue #21: performance at the limits",
            "",
            *ISSUE_HEADER,
            *(issue_row(point, found, since)[0] for point in POINTS),
            "",
            "## Other benchmarks, for reference (newest of each kind)",
            "",
            *reference_rows(found),
            "",
        ]
    )


def check_stamp(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not STAMP.match(value):
        raise click.BadParameter(f"{value!r} is not a UTC stamp like 20261206T030000Z")
    return value


@click.command(help=__doc__)
@click.option(
    "--results",
    "results_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=RESULTS,
    show_default=True,
    help="directory of the benchmarks' result JSON files",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where report-<stamp>.md is written (default: --results)",
)
@click.option(
    "--since",
    callback=check_stamp,
    default=None,
    help="issue #21's rows count only results stamped at or after this UTC stamp (make bench: its start)",
)
@click.option(
    "--require-all",
    is_flag=True,
    help="exit with status 1 when one of issue #21's rows is not run (after writing the report)",
)
def main(results_dir: Path, out_dir: Path | None, since: str | None, require_all: bool) -> None:
    now = dt.datetime.now(dt.UTC)
    found = read_results(results_dir)
    report = build_report(results_dir, found, since, now)
    target = (out_dir or results_dir) / f"report-{now.strftime('%Y%m%dT%H%M%SZ')}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(report)
    click.echo(report)
    click.echo(f"written: {target}")
    absent = [point.number for point in POINTS if not issue_row(point, found, since)[1]]
    if require_all and absent:
        raise click.ClickException(f"issue #21's rows {', '.join(absent)} are not run")


if __name__ == "__main__":
    main()

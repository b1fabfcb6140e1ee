"""`tc-calendar sync progress`: how far the first sync of the mailboxes is (IngestService.GetSyncProgress).

On a terminal a live progress bar (rich) follows it until every mailbox is done; otherwise (a pipe, a log) one plain
line per interval. `--once` prints the state now and returns.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from tccal.cli.admin import Admin, config_option, json_option
from tccal.cli.ops import progress_dict
from trueconf.calendar.v1 import ingest_pb2


def progress_line(data: dict[str, Any]) -> str:
    left = f", about {data['seconds_left']:.0f} s left" if data["seconds_left"] else ""
    failed = f", {data['mailboxes_failed']} failing" if data["mailboxes_failed"] else ""
    done = ", done" if data["finished_at"] else ""
    return (
        f"first sync: {data['mailboxes_done']}/{data['mailboxes_total']} mailboxes, {data['items']} items, "
        f"{data['items_per_second']:.1f} items/s{left}{failed}{done}"
    )


def _settled(progress: ingest_pb2.SyncProgress) -> bool:
    """Nothing is waiting for its first sync any more: every mailbox is done, or failed (retried with back-off,
    `tc-calendar mailboxes --failed` says why)."""
    return (
        progress.mailboxes_total > 0 and progress.mailboxes_done + progress.mailboxes_failed >= progress.mailboxes_total
    )


@click.group("sync")
def sync_group() -> None:
    """The mailboxes' sync."""


@sync_group.command("progress")
@config_option
@click.option("--once", is_flag=True, help="Print the progress now and return (do not follow it).")
@click.option(
    "--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True, help="Seconds between reads."
)
@json_option
def sync_progress(config_path: str | None, once: bool, interval: float, as_json: bool) -> None:
    """Mailboxes done of those with a seat, items, items per second and time left of the first sync; followed
    until no mailbox waits for its first sync (a live bar on a terminal, a line per interval otherwise)."""
    admin = Admin.load(config_path, timeout=10.0)

    def read() -> ingest_pb2.SyncProgress:
        return admin.call("ews-ingest", "GetSyncProgress", ingest_pb2.GetSyncProgressRequest(), ingest_pb2.SyncProgress)

    current = read()
    if as_json:
        click.echo(json.dumps(progress_dict(current), indent=2))
        return
    if once:
        click.echo(progress_line(progress_dict(current)))
        return
    if not sys.stdout.isatty():
        while True:
            click.echo(progress_line(progress_dict(current)))
            if _settled(current):
                return
            time.sleep(interval)
            current = read()
    current = _live(read, current, interval)
    if current.mailboxes_failed:
        click.echo(f"{current.mailboxes_failed} mailbox(es) failing: tc-calendar mailboxes --failed")


def _live(
    read: Callable[[], ingest_pb2.SyncProgress], current: ingest_pb2.SyncProgress, interval: float
) -> ingest_pb2.SyncProgress:
    columns = (
        TextColumn("first sync"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("mailboxes  {task.fields[items]} items  {task.fields[rate]} items/s  {task.fields[left]}"),
    )
    with Progress(*columns, console=Console(), transient=False) as bar:
        task = bar.add_task("sync", total=current.mailboxes_total or None, items=0, rate="0.0", left="")
        while True:
            left = f"about {current.seconds_left:.0f} s left" if current.seconds_left else ""
            failed = f" ({current.mailboxes_failed} failing)" if current.mailboxes_failed else ""
            bar.update(
                task,
                total=current.mailboxes_total or None,
                completed=current.mailboxes_done,
                items=current.items,
                rate=f"{current.items_per_second:.1f}",
                left=left + failed,
            )
            if _settled(current):
                return current
            time.sleep(interval)
            current = read()

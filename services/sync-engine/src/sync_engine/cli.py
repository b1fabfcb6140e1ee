"""`tc-calendar dead-letters` (entry-point group ``tc_calendar.commands``): what the engine's consumers gave up
on, and replaying it.

* ``tc-calendar dead-letters list [--json] [--limit N]``: id, when, stream, mailbox, subject and reason of each;
* ``tc-calendar dead-letters replay --id N [--id M ...] | --all``: publish them again to the subject they came
  from and remove them from the DEADLETTER stream.

Both are SyncService admin calls (ListDeadLetters, ReplayDeadLetters) to the running sync-engine at
``grpc.services.sync-engine`` (its ``address``, else host:grpcPort) with ``grpc.adminToken`` from config.json.
Exit codes: 0 done, 1 the engine refused or could not be reached (the reason is printed), 2 configuration.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click
import grpc

from sync_engine.bus import CALENDAR_DURABLE, RESULTS_DURABLE
from tccal.grpckit import GrpcCaller
from tccal.secrets import SecretError, reveal
from tccal.service import load_or_exit
from trueconf.calendar.v1 import sync_pb2, sync_pb2_grpc

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="config.json (default: $TC_CALENDAR_CONFIG).",
)


@click.group("dead-letters")
def dead_letters() -> None:
    """List and replay what sync-engine's consumers dead-lettered."""


@dead_letters.command("list")
@config_option
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_command(config_path: str | None, limit: int, as_json: bool) -> None:
    """Show the dead letters, oldest first: id, when, stream, mailbox, subject, reason."""
    response = _call(config_path, "ListDeadLetters", sync_pb2.ListDeadLettersRequest(limit=limit))
    assert isinstance(response, sync_pb2.ListDeadLettersResponse)
    letters = [_as_dict(one) for one in response.dead_letters]
    if as_json:
        click.echo(json.dumps({"total": response.total, "dead_letters": letters}, indent=2))
        return
    if not letters:
        click.echo("No dead letters.")
        return
    for letter in letters:
        owner = "" if letter["durable"] in ENGINE_DURABLES else f"  [{letter['durable']}: not replayable]"
        click.echo(
            f"{letter['id']}  {letter['dead_lettered_at'] or '-'}  {letter['stream']}  {letter['mailbox'] or '-'}"
            f"  {letter['subject']}  {letter['reason']}{owner}"
        )
    shown = f"{len(letters)} of {response.total}" if response.total > len(letters) else f"{len(letters)}"
    click.echo(f"{shown} dead letter(s); replay with: tc-calendar dead-letters replay --id ID (or --all)")


@dead_letters.command("replay")
@config_option
@click.option("--id", "ids", type=click.IntRange(min=1), multiple=True, help="A dead letter's id (repeatable).")
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter.")
def replay_command(config_path: str | None, ids: tuple[int, ...], replay_all: bool) -> None:
    """Apply dead letters again in sync-engine; each one that applies leaves the dead-letter stream, one that fails
    again stays (exit code 1, saying why)."""
    if bool(ids) == replay_all:
        raise click.UsageError("give --id ID (one or more) or --all")
    request = sync_pb2.ReplayDeadLettersRequest(ids=list(ids), all=replay_all)
    response = _call(config_path, "ReplayDeadLetters", request)
    assert isinstance(response, sync_pb2.ReplayDeadLettersResponse)
    for letter in response.replayed:
        click.echo(f"replayed {letter.id} from {letter.subject} ({letter.mailbox or '-'})")
    for letter in response.failed:
        click.echo(f"failed again {letter.id} from {letter.subject} ({letter.mailbox or '-'}): {letter.reason}")
    click.echo(f"{len(response.replayed)} dead letter(s) replayed, {len(response.failed)} failed again and kept")
    if response.failed:
        sys.exit(1)


#: Only these consumers' dead letters are replayed (sync_engine.deadletters); others are listed, marked.
ENGINE_DURABLES = (CALENDAR_DURABLE, RESULTS_DURABLE)


def _call(config_path: str | None, method: str, request: Any) -> Any:
    config = load_or_exit(config_path)
    address = config.grpc.address_of("sync-engine")
    try:
        caller = GrpcCaller.for_admin(
            config, lambda value: reveal(value, allow_plaintext=config.allow_plaintext_passwords)
        )
    except SecretError as exc:
        raise click.ClickException(f"grpc.adminToken cannot be decrypted: {exc}") from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None

    async def call() -> Any:
        async with caller.aio_channel(address) as channel:
            stub = sync_pb2_grpc.SyncServiceStub(channel)
            return await getattr(stub, method)(request, timeout=30, metadata=tuple(caller.metadata()))

    try:
        return asyncio.run(call())
    except grpc.aio.AioRpcError as exc:
        details = exc.details() or exc.code().name
        if exc.code() == grpc.StatusCode.UNAVAILABLE and not details.startswith("dead letters"):
            raise click.ClickException(f"sync-engine at {address} cannot be reached: {details}") from None
        raise click.ClickException(details) from None


def _as_dict(letter: sync_pb2.DeadLetter) -> dict[str, Any]:
    at = (
        letter.dead_lettered_at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
        if letter.HasField("dead_lettered_at")
        else None
    )
    return {
        "id": letter.id,
        "dead_lettered_at": at,
        "stream": letter.stream,
        "durable": letter.durable,
        "subject": letter.subject,
        "mailbox": letter.mailbox,
        "message_id": letter.message_id,
        "reason": letter.reason,
    }

"""Everyday administration over gRPC as admin: `status`, `mailboxes`, `resync`, `events`.

Each asks the running services at their config.json addresses (grpc.services) with grpc.adminToken; a service that
is down is reported as down. Exit codes: 0 fine, 1 a service is down or refused (or, for `status`, is not serving,
a bridge is not connected or a mailbox failed), 2 configuration.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

import click

from tccal.cli.admin import (
    EXIT_FAILED,
    Admin,
    ServiceDownError,
    as_dict,
    config_option,
    json_option,
    parse_date,
    timestamp,
    when,
)
from tccal.cli.status_view import render_status
from trueconf.calendar.v1 import gateway_pb2, ingest_pb2, licensing_pb2, sync_pb2

#: `status` shows at most this many of the latest errors.
LAST_ERRORS = 10


def state_name(state: int) -> str:
    """MAILBOX_STATE_SYNCING -> "syncing"."""
    return ingest_pb2.MailboxState.Name(state).removeprefix("MAILBOX_STATE_").lower()  # type: ignore[arg-type]


def collect_status(admin: Admin) -> dict[str, Any]:
    """Everything `status` shows, as data; a section whose service is down holds {"error": ...} instead."""
    services = {name: {"address": admin.address(name), "health": admin.health(name)} for name in sorted(GRPC_NAMES)}
    report: dict[str, Any] = {"services": services}

    def section(service: str, fetch: Any) -> Any:
        if services[service]["health"].startswith("DOWN"):
            return {"error": f"{service} is down: {services[service]['health']}"}
        try:
            return fetch()
        except ServiceDownError as exc:
            return {"error": str(exc)}

    report["license"] = section(
        "licensing",
        lambda: as_dict(
            admin.call("licensing", "GetLicense", licensing_pb2.GetLicenseRequest(), licensing_pb2.LicenseInfo)
        ),
    )
    report["servers"] = section(
        "tcs-gateway",
        lambda: as_dict(
            admin.call("tcs-gateway", "ListServers", gateway_pb2.ListServersRequest(), gateway_pb2.ListServersResponse)
        ).get("servers", []),
    )
    listed = section(
        "ews-ingest",
        lambda: admin.call(
            "ews-ingest", "ListMailboxes", ingest_pb2.ListMailboxesRequest(), ingest_pb2.ListMailboxesResponse
        ),
    )
    if isinstance(listed, dict):
        report["mailboxes"] = listed
        report["last_errors"] = []
    else:
        counts = {state_name(s): 0 for s in ingest_pb2.MailboxState.values() if s}
        for mailbox in listed.mailboxes:
            counts[state_name(mailbox.state)] += 1
        report["mailboxes"] = {"total": len(listed.mailboxes), "by_state": counts}
        failing = sorted(
            (m for m in listed.mailboxes if m.last_error),
            key=lambda m: (m.last_error_at.seconds, m.mailbox),
            reverse=True,
        )
        report["last_errors"] = [
            {"mailbox": m.mailbox, "state": state_name(m.state), "at": when(m.last_error_at), "cause": m.last_error}
            for m in failing[:LAST_ERRORS]
        ]
    report["sync_progress"] = section(
        "ews-ingest",
        lambda: progress_dict(
            admin.call("ews-ingest", "GetSyncProgress", ingest_pb2.GetSyncProgressRequest(), ingest_pb2.SyncProgress)
        ),
    )
    return report


GRPC_NAMES = ("ews-ingest", "sync-engine", "tcs-gateway", "licensing")


def progress_dict(progress: ingest_pb2.SyncProgress) -> dict[str, Any]:
    return {
        "mailboxes_total": progress.mailboxes_total,
        "mailboxes_done": progress.mailboxes_done,
        "mailboxes_failed": progress.mailboxes_failed,
        "items": progress.items,
        "items_per_second": round(progress.items_per_second, 2),
        "seconds_left": round(progress.seconds_left, 1),
        "started_at": when(progress.started_at, ""),
        "finished_at": when(progress.finished_at, "") or None,
    }


def healthy(report: dict[str, Any]) -> bool:
    """Every service serving, every whitelisted TrueConf Server's bridge connected, no mailbox failing."""
    services_ok = all(s["health"] == "SERVING" for s in report["services"].values())
    servers = report.get("servers", [])
    bridges_ok = isinstance(servers, list) and all(s.get("connected") for s in servers)
    mailboxes = report.get("mailboxes", {})
    failed = mailboxes.get("by_state", {}).get("error", 0) if "error" not in mailboxes else 1
    return services_ok and bridges_ok and not failed


@click.command("status")
@config_option
@json_option
def status(config_path: str | None, as_json: bool) -> None:
    """One screen: services and their health, license and seats, TrueConf Servers and their bridge, mailboxes by
    state, the first sync's progress and the latest errors with mailbox and cause.

    Exit code 1 when a service is down or not serving, a TrueConf Server's bridge is not connected, or a mailbox's
    sync failed."""
    admin = Admin.load(config_path, timeout=10.0)
    report = collect_status(admin)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_status(report))
    if not healthy(report):
        sys.exit(EXIT_FAILED)


@click.command("mailboxes")
@config_option
@click.option("--failed", is_flag=True, help="Only mailboxes whose last sync failed (state error).")
@click.option("--filter", "text", default="", help="Only mailboxes whose address contains this text.")
@json_option
def mailboxes(config_path: str | None, failed: bool, text: str, as_json: bool) -> None:
    """Every mailbox ews-ingest syncs: state, last sync, provider and credential, last error."""
    admin = Admin.load(config_path)
    listed = admin.call(
        "ews-ingest", "ListMailboxes", ingest_pb2.ListMailboxesRequest(filter=text), ingest_pb2.ListMailboxesResponse
    )
    rows = [m for m in listed.mailboxes if not failed or m.state == ingest_pb2.MAILBOX_STATE_ERROR]
    if as_json:
        click.echo(json.dumps([{**as_dict(m), "state": state_name(m.state)} for m in rows], indent=2))
        return
    if not rows:
        click.echo("No failed mailboxes." if failed else "No mailboxes.")
        return
    width = max(len(m.mailbox) for m in rows)
    for m in rows:
        error = f"  {m.last_error}" if m.last_error else ""
        click.echo(
            f"{m.mailbox:<{width}}  {state_name(m.state):<8} last sync {when(m.last_sync):<20}  "
            f"{m.provider} as {m.credential}{error}"
        )
    click.echo(
        f"{len(rows)} mailbox(es)" + (" failed; check one with: tc-calendar test exchange USER" if failed else "")
    )


@click.command("resync")
@config_option
@click.argument("user")
@click.option(
    "--from",
    "since",
    metavar="DATE",
    help="Read again only what changed since DATE (2026-12-01 or 2026-12-01T08:00, UTC unless a zone is given); "
    "without it the whole mailbox is read again.",
)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait for the resync.")
def resync(config_path: str | None, user: str, since: str | None, timeout: float) -> None:
    """Read USER's calendar again from Exchange and publish it: after an outage, from the date it began
    (--from), or whole."""
    admin = Admin.load(config_path, timeout=timeout)
    request = ingest_pb2.ResyncMailboxRequest(mailbox=user.strip().lower())
    start = parse_date(since, "--from") if since else None
    if start is not None:
        if start > dt.datetime.now(dt.UTC):
            raise click.BadParameter(f"{since!r} is in the future", param_hint="--from")
        request.since.CopyFrom(timestamp(start))
    answer = admin.call("ews-ingest", "ResyncMailbox", request, ingest_pb2.ResyncMailboxResponse)
    scope = f"changed since {start:%Y-%m-%dT%H:%M:%SZ}" if start is not None else "the whole mailbox"
    click.echo(f"{request.mailbox}: read again ({scope}), {answer.published} item(s) published")


@click.command("events")
@config_option
@click.argument("user")
@click.option("--from", "start", metavar="DATE", help="From (default: today 00:00 UTC).")
@click.option("--to", "end", metavar="DATE", help="Until (default: 14 days after --from).")
@json_option
def events(config_path: str | None, user: str, start: str | None, end: str | None, as_json: bool) -> None:
    """USER's meetings as their TrueConf apps show them (sync-engine ListEvents)."""
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = parse_date(start, "--from") if start else today
    last = parse_date(end, "--to") if end else first + dt.timedelta(days=14)
    if last < first:
        raise click.BadParameter(f"{end!r} is before --from", param_hint="--to")
    admin = Admin.load(config_path)
    request = sync_pb2.ListEventsRequest(user=user.strip().lower())
    getattr(request, "from").CopyFrom(timestamp(first))
    request.to.CopyFrom(timestamp(last))
    answer = admin.call("sync-engine", "ListEvents", request, sync_pb2.ListEventsResponse)
    if as_json:
        click.echo(json.dumps(as_dict(answer).get("occurrences", []), indent=2))
        return
    for occurrence in answer.occurrences:
        marks = "".join(
            mark
            for flag, mark in (
                (occurrence.cancelled, " [cancelled]"),
                (occurrence.private, " [private]"),
                (occurrence.recurring, " [series]"),
                (bool(occurrence.conference.url), f" [join {occurrence.conference.url}]"),
            )
            if flag
        )
        click.echo(f"{when(occurrence.start)} - {when(occurrence.end)}  {occurrence.subject or '(no subject)'}{marks}")
    click.echo(f"{len(answer.occurrences)} meeting(s) of {request.user} from {first:%Y-%m-%d} to {last:%Y-%m-%d}")

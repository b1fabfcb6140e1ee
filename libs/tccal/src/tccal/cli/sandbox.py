"""`tc-calendar sandbox`."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from tccal.cli.main import cli
from tccal.sandbox import Sandbox


def describe(ready: dict[str, Any], ready_path: Path) -> str:
    """What a person wants to read once the sandbox is up: where to look and what to try."""
    lines = ["", "TrueConf Calendar Connector sandbox is ready.", ""]
    exchange = ready.get("exchange")
    if exchange:
        account = exchange["service_account"]
        lines += [
            "Exchange (emulated)",
            f"  EWS            {exchange['ews_url']}",
            f"  autodiscover   {exchange['autodiscover_url']}",
            f"  impersonation  {account['username']} / {account['password']}",
            f"  mailboxes      {', '.join(exchange['mailboxes'])}",
            "",
        ]
    trueconf = ready.get("trueconf")
    if trueconf:
        lines += ["TrueConf Server (emulated)", f"  server id      {trueconf['server_id']}"]
        for mailbox in (exchange or {}).get("mailboxes", []):
            lines.append(f"  calendar of {mailbox:<20} {trueconf['inspect_url']}/calendars/{mailbox}")
        lines += [
            f"  conferences    {trueconf['inspect_url']}/conferences",
            f"  REST API v4    {trueconf['rest_url']}",
            "",
        ]
    if "license" in ready:
        lines += [
            f"License: {ready['license']['tier']}, {ready['license']['seats']} seats — {ready['license']['message']}",
            "",
        ]
    lines.append("Services (gRPC with reflection; HTTP /healthz /readyz /metrics)")
    for name, endpoints in ready["services"].items():
        extra = f"   bridge {endpoints['ws']}" if "ws" in endpoints else ""
        lines.append(f"  {name:12} grpc {endpoints['grpc']:<18} http {endpoints['http']}{extra}")
    sync = ready["services"]["sync-engine"]["grpc"]
    gateway = ready["services"]["tcs-gateway"]["grpc"]
    licensing = ready["services"]["licensing"]["grpc"]
    api = "trueconf.calendar.v1"
    lines += [
        "",
        "Try",
        f"  grpcurl -plaintext {sync} list",
        f'  grpcurl -plaintext -d \'{{"user": "alice@sandbox.test"}}\' {sync} {api}.SyncService/ListEvents',
        f"  grpcurl -plaintext {gateway} {api}.GatewayService/ListServers",
        f"  grpcurl -plaintext {licensing} {api}.LicensingService/GetLicense",
        "",
        f"Every endpoint and credential: {ready_path}   Logs: {ready.get('logs', '')}",
        "Press Ctrl+C to stop.",
    ]
    return "\n".join(lines)


@cli.command("sandbox")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=".sandbox",
    show_default=True,
    help="Where PostgreSQL, NATS, logs, the generated config.json and the machine key live.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write every endpoint and credential here (JSON) once everything is ready.",
)
@click.option("--postgres-dsn", default=None, help="Use this PostgreSQL instead of an embedded one.")
@click.option("--nats-url", default=None, help="Use this NATS (with JetStream) instead of an embedded one.")
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for everything to be ready.")
def sandbox(
    state_dir: str, ready_file: str | None, postgres_dsn: str | None, nats_url: str | None, timeout: float
) -> None:
    """Run the whole connector with emulated Exchange and TrueConf Server until interrupted (Ctrl+C)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    box = Sandbox(state, postgres_dsn=postgres_dsn, nats_url=nats_url)
    try:
        db, url = box.start_infrastructure()
        box.start_emulators()
        box.write_config(db, url)
        box.start_services()
        box.start_trueconf()
        box.wait_ready(timeout)
        box.register_license()
        ready_path = Path(ready_file) if ready_file else state / "ready.json"
        box.write_ready_file(ready_path)
        click.echo(describe(box.ready, ready_path))
        while not stop.is_set():
            for child in box.children:
                code = child.exited()
                if code is not None:
                    click.echo(f"{child.name} exited with code {code}; stopping the sandbox", err=True)
                    click.echo(child.log_tail(), err=True)
                    stop.set()
            stop.wait(0.5)
    except (RuntimeError, TimeoutError, OSError) as exc:
        click.echo(f"sandbox failed: {exc}", err=True)
        box.stop()
        sys.exit(1)
    box.stop()
    click.echo("sandbox stopped")

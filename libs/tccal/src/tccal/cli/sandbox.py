"""`tc-calendar sandbox`."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from tccal.cli.main import cli
from tccal.sandbox import Sandbox


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
    """Run the whole connector on this machine until interrupted (Ctrl+C)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    box = Sandbox(state, postgres_dsn=postgres_dsn, nats_url=nats_url)
    try:
        db, url = box.start_infrastructure()
        box.write_config(db, url)
        box.start_services()
        box.wait_ready(timeout)
        ready_path = Path(ready_file) if ready_file else state / "ready.json"
        box.write_ready_file(ready_path)
        click.echo(f"TrueConf Calendar Connector sandbox is ready. Endpoints: {ready_path}")
        for name, endpoints in box.ready["services"].items():
            click.echo(f"  {name:12} grpc {endpoints['grpc']}   http {endpoints['http']}")
        click.echo(f"  try: grpcurl -plaintext {box.ready['services']['sync-engine']['grpc']} list")
        click.echo("Press Ctrl+C to stop.")
        while not stop.is_set():
            for child in box.children:
                code = child.exited()
                if code is not None:
                    click.echo(f"{child.name} exited with code {code}; stopping the sandbox", err=True)
                    click.echo(child.log_tail(), err=True)
                    stop.set()
            stop.wait(0.5)
    except (RuntimeError, TimeoutError) as exc:
        click.echo(f"sandbox failed: {exc}", err=True)
        box.stop()
        sys.exit(1)
    box.stop()
    click.echo("sandbox stopped")

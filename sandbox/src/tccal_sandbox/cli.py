"""`tc-calendar sandbox`: a plugin command of `tc-calendar`, registered through the entry-point group
`tc_calendar.commands` (sandbox/pyproject.toml), as licensing registers `register` and `offline-reg`.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from tccal_sandbox.runner import SERVICE_MODULES, Sandbox

#: What the sandbox suggests to try once it is up (README.md shows the same).
TRY_COMMANDS = (
    "status",
    "events alice@sandbox.test",
    "test exchange alice@sandbox.test",
    "test trueconf",
    "mailboxes --failed",
)


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
    graph = ready.get("graph")
    if graph:
        lines += [
            "Exchange Online (emulated Microsoft Graph)",
            f"  Graph          {graph['url']}",
            f"  authority      {graph['authority']}   CA {graph['ca_file']}",
            f"  tenant         {graph['tenant']}",
            f"  app (Outlook)  {graph['client_id']} / {graph['client_secret']}",
            f"  mailboxes      {', '.join(graph['mailboxes'])}",
            "",
        ]
    trueconf = ready.get("trueconf")
    if trueconf:
        lines += ["TrueConf Server (emulated)", f"  server id      {trueconf['server_id']}"]
        for mailbox in [*(exchange or {}).get("mailboxes", []), *(graph or {}).get("mailboxes", [])]:
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
    state_dir = ready.get("state_dir") or str(ready_path.parent)
    program = "tc-calendar" if shutil.which("tc-calendar") else str(Path(sys.executable).parent / "tc-calendar")
    lines += [
        "",
        "Try (the CLI reads the sandbox's config.json and key; its calls carry the admin token, grpc.adminToken)",
        f"  export TC_CALENDAR_CONFIG={ready.get('config', '')} TC_CALENDAR_KEY_FILE={state_dir}/machine.key",
        *(f"  {program} {command}" for command in TRY_COMMANDS),
        "",
        f"Every endpoint and credential: {ready_path}   Logs: {ready.get('logs', '')}",
        "Press Ctrl+C to stop.",
    ]
    return "\n".join(lines)


@click.command("sandbox")
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
@click.option(
    "--nats-url",
    default=None,
    help="Use this NATS (with JetStream) instead of an embedded one; the services refuse it if it lets clients in "
    "without credentials: give theirs with --config-override (nats.user, nats.password).",
)
@click.option(
    "--nats-nodes",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Embedded NATS nodes: more than 1 starts a JetStream cluster on loopback (streams and KV replicated on "
    "every node).",
)
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for everything to be ready.")
@click.option("--demo/--no-demo", default=True, show_default=True, help="Write the demo meetings through EWS.")
@click.option(
    "--license",
    "license_tier",
    type=click.Choice(["standard", "enterprise", "free", "none"]),
    default=None,
    help="License to register at start  [default: standard; enterprise with --graph, whose two providers need "
    "the multiple_providers feature].",
)
@click.option("--seats", default=100, show_default=True, help="Seats of the registered license (not for free).")
@click.option(
    "--extra-mailboxes",
    default=0,
    show_default=True,
    help="Numbered mailboxes (user001 ...) added to Exchange and TrueConf besides the demo people.",
)
@click.option(
    "--configured-users",
    type=click.Choice(["all", "demo"]),
    default="all",
    show_default=True,
    help="Which mailboxes go into calendarProviders[].users (the rest are synced on demand).",
)
@click.option(
    "--graph/--no-graph",
    default=False,
    show_default=True,
    help="Also Exchange Online: the Microsoft Graph emulator with the cloud mailboxes frank and grace, a "
    '"type": "graph" provider and graph-ingest (a hybrid organisation; ready-file key `graph`).',
)
@click.option("--config-override", default="{}", help="JSON merged into the generated config.json.")
@click.option(
    "--restart-services/--no-restart-services",
    default=False,
    show_default=True,
    help="Start a service that exited again (as Kubernetes restarts a pod) instead of stopping the sandbox; the "
    "ready-file's `processes` is rewritten with the new pid. For rolling restarts and kill -9 in tests.",
)
def sandbox(
    state_dir: str,
    ready_file: str | None,
    postgres_dsn: str | None,
    nats_url: str | None,
    nats_nodes: int,
    timeout: float,
    demo: bool,
    license_tier: str | None,
    seats: int,
    extra_mailboxes: int,
    configured_users: str,
    graph: bool,
    config_override: str,
    restart_services: bool,
) -> None:
    """Run the whole connector with emulated Exchange (and, with --graph, Exchange Online) and TrueConf Server
    until interrupted (Ctrl+C)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    try:
        overrides = json.loads(config_override)
    except ValueError as exc:
        raise click.BadParameter(f"{config_override!r} is not JSON: {exc}", param_hint="--config-override") from exc
    if not isinstance(overrides, dict):
        raise click.BadParameter(f"{config_override!r} is not a JSON object", param_hint="--config-override")
    box = Sandbox(
        state,
        postgres_dsn=postgres_dsn,
        nats_url=nats_url,
        config_overrides=overrides,
        extra_mailboxes=extra_mailboxes,
        configured_users=configured_users,
        nats_nodes=nats_nodes,
        graph=graph,
    )
    ready_path = Path(ready_file) if ready_file else state / "ready.json"
    ready_path.unlink(missing_ok=True)
    try:
        db, url = box.start_infrastructure()
        box.start_emulators()
        box.write_config(db, url)
        box.start_services()
        box.start_trueconf()
        box.wait_ready(timeout)
        box.register_license(license_tier or ("enterprise" if graph else "standard"), seats)
        if demo:
            box.seed_demo()
        box.write_ready_file(ready_path)
        click.echo(describe(box.ready, ready_path))
        while not stop.is_set():
            for child in box.children:
                code = child.exited()
                if code is not None and restart_services and child.name in SERVICE_MODULES:
                    click.echo(f"{child.name} exited with code {code}; starting it again", err=True)
                    box.restart_service(child)
                    box.write_ready_file(ready_path)
                elif code is not None:
                    click.echo(f"{child.name} exited with code {code}; stopping the sandbox", err=True)
                    click.echo(child.log_tail(), err=True)
                    stop.set()
            stop.wait(0.5)
    except Exception as exc:  # whatever failed, stop what was started and say why
        click.echo(f"sandbox failed: {type(exc).__name__}: {exc}", err=True)
        box.stop()
        sys.exit(1)
    box.stop()
    ready_path.unlink(missing_ok=True)  # nothing it names is running any more
    click.echo("sandbox stopped")

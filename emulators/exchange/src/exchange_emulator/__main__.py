"""`python -m exchange_emulator`: run the EWS emulator."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import click
from aiohttp import web

from .config import SERVER_VERSIONS, ConfigError, EmulatorConfig
from .persistence import keep_saved, load_store
from .server import Emulator, Settings


async def _serve(emu: Emulator, host: str, port: int, ready_file: Path | None, state_file: Path | None) -> None:
    app = emu.app()
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    real_port = sockets[0].getsockname()[1] if sockets else port
    emu.base_url = f"http://{host}:{real_port}"
    service = next((a for a in emu.store.accounts.values() if a.impersonation), None)
    info = {
        "ews_url": emu.ews_url,
        "autodiscover_url": emu.autodiscover_url,
        "admin_url": emu.base_url + "/_emulator",
        "host": host,
        "port": real_port,
        "version": emu.config.version,
        "strict": emu.settings.strict,
        "pid": os.getpid(),
        "service_account": {"username": service.username, "password": service.password} if service else None,
        "service_accounts": [
            {"username": a.username, "password": a.password, "impersonation": a.impersonation}
            for a in emu.store.accounts.values()
        ],
        "mailboxes": [m.email for m in emu.config.mailboxes]
        if len(emu.store.mailboxes) > 1000
        else sorted(emu.store.mailboxes),
    }
    if ready_file is not None:
        tmp = ready_file.with_suffix(ready_file.suffix + ".tmp")
        tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
        tmp.replace(ready_file)
    logging.getLogger("exchange_emulator").info("EWS emulator listening on %s", emu.ews_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    saver = asyncio.ensure_future(keep_saved(emu.store, state_file, stop)) if state_file is not None else None
    await stop.wait()
    await runner.cleanup()
    if saver is not None:
        await saver


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback only by design).")
@click.option("--port", default=0, show_default=True, type=int, help="TCP port; 0 picks a free one.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON config: version, domain, service_accounts, mailboxes, delegates, seed.",
)
@click.option(
    "--strict/--no-strict",
    default=True,
    show_default=True,
    help="Validate every request and response Body against messages.xsd.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a JSON file with the endpoints once listening.",
)
@click.option(
    "--version",
    "server_version",
    type=click.Choice(sorted(SERVER_VERSIONS)),
    help="Server version to report (overrides the config file).",
)
@click.option(
    "--minute-seconds",
    default=60.0,
    show_default=True,
    type=float,
    help="Length of an EWS 'minute' for subscription and streaming timeouts (tests shorten it).",
)
@click.option(
    "--heartbeat-seconds",
    default=30.0,
    show_default=True,
    type=float,
    help="Interval of ConnectionStatus OK keep-alives on streaming connections.",
)
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the mailboxes in this file: loaded at start when it exists, written after changes and at exit.",
)
@click.option(
    "--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"])
)
def main(
    host: str,
    port: int,
    config_file: Path | None,
    strict: bool,
    ready_file: Path | None,
    server_version: str | None,
    minute_seconds: float,
    heartbeat_seconds: float,
    state_file: Path | None,
    log_level: str,
) -> None:
    """Exchange Web Services (EWS) emulator for the TrueConf Calendar Connector."""
    logging.basicConfig(
        level=log_level,
        stream=sys.stderr,
        format='{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":%(message)r}',
    )
    try:
        config = EmulatorConfig.load(config_file) if config_file else EmulatorConfig()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if server_version:
        config.version = server_version
    if minute_seconds <= 0 or heartbeat_seconds <= 0:
        raise click.UsageError("--minute-seconds and --heartbeat-seconds must be positive")
    try:
        store = load_store(state_file) if state_file is not None else None
        emu = Emulator(
            config,
            Settings(strict=strict, minute_seconds=minute_seconds, heartbeat_seconds=heartbeat_seconds),
            store=store,
        )
    except ValueError as exc:  # StateFileError included
        raise click.UsageError(str(exc)) from exc
    if store is not None:
        logging.getLogger("exchange_emulator").info("mailboxes restored from %s", state_file)
    asyncio.run(_serve(emu, host, port, ready_file, state_file))


if __name__ == "__main__":
    main()

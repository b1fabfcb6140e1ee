"""`python -m graph_emulator` / `graph-emulator`: run the Microsoft Graph emulator until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click

from .config import ConfigError, EmulatorConfig, load_config_file, parse_config
from .server import GraphEmulator


async def _serve(config: EmulatorConfig) -> None:
    emulator = GraphEmulator(config)
    await emulator.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await emulator.stop()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="JSON configuration (tenants, apps, users, limits).",
)
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on; 0 picks a free one (default).")
@click.option("--ready-file", help="Write a JSON ready-file with the URLs and the CA file here once listening.")
@click.option("--state-file", help="Load events from this JSON file at start, save them there at stop.")
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
def main(
    config_path: str | None,
    host: str | None,
    port: int | None,
    ready_file: str | None,
    state_file: str | None,
    log_level: str | None,
) -> None:
    """Emulate Microsoft Graph for Exchange Online calendars over HTTPS: the Entra ID token endpoint, users' events,
    calendarView delta, $batch, subscriptions with webhooks, throttling, and a control API under /_emulator."""
    try:
        config = load_config_file(config_path) if config_path else parse_config({})
    except ConfigError as exc:
        click.echo(f"graph-emulator: {exc}", err=True)
        sys.exit(2)
    if host is not None:
        config.host = host
    if port is not None:
        config.port = port
    if ready_file is not None:
        config.ready_file = ready_file
    if state_file is not None:
        config.state_file = state_file
    if log_level is not None:
        config.log_level = log_level
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        asyncio.run(_serve(config))
    except ConfigError as exc:
        click.echo(f"graph-emulator: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"graph-emulator: cannot listen on {config.host}:{config.port}: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

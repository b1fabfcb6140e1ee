"""`python -m trueconf_emulator`: run the TrueConf Server emulator until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import click

from .app import Emulator
from .config import ConfigError, EmulatorConfig, build_config, load_config_file, parse_user_flag
from .schema import SchemaNotFoundError


async def _serve(config: EmulatorConfig) -> None:
    emulator = Emulator(config)
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
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="JSON configuration file.")
@click.option("--server-id", help="TrueConf server id sent in auth, e.g. tcs.example.test#vcs.")
@click.option("--server-host", help="Host of join links https://<host>/c/<id> (default: from the server id).")
@click.option("--secret", help="Bridge secret sent in auth.")
@click.option("--gateway-url", help="Gateway WebSocket URL, e.g. ws://127.0.0.1:4315/bridge/v1.")
@click.option("--user", "users", multiple=True, help="Directory user id:email[:display name]; repeatable.")
@click.option("--client-id", help="OAuth2 client id accepted by /oauth2/v1/token.")
@click.option("--client-secret", help="OAuth2 client secret.")
@click.option("--token-lifetime", type=int, help="Access token lifetime in seconds.")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on; 0 picks a free one (default).")
@click.option("--ready-file", help="Write a JSON ready-file with the URLs here once listening.")
@click.option("--schema", "schema_path", help="Path of bridge-protocol.schema.json (default: packaged/repo copy).")
@click.option("--reconnect-initial", type=float, help="First reconnect delay in seconds.")
@click.option("--reconnect-max", type=float, help="Largest reconnect delay in seconds.")
@click.option("--ping-interval", type=float, help="Bridge ping interval in seconds.")
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
def main(config_path: str | None, users: tuple[str, ...], schema_path: str | None, **flags: Any) -> None:
    """Emulate TrueConf Server towards the calendar connector: the calendar bridge client, REST API v4,
    inspection (/inspect) and fault injection (/admin)."""
    try:
        file_data = load_config_file(config_path) if config_path else None
        overrides: dict[str, Any] = dict(flags)
        overrides["schema_path"] = schema_path
        if users:
            overrides["users"] = [parse_user_flag(text) for text in users]
        config = build_config(file_data, overrides)
    except ConfigError as exc:
        click.echo(f"trueconf-emulator: {exc}", err=True)
        sys.exit(2)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(_serve(config))
    except SchemaNotFoundError as exc:
        click.echo(f"trueconf-emulator: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"trueconf-emulator: cannot listen on {config.host}:{config.port}: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""`tc-calendar`: administration of the connector.

Subcommands of other packages are discovered through the entry-point group `tc_calendar.commands`
(e.g. licensing adds `register` and `offline-reg`, the sandbox package `sandbox`). The guide's spellings are
accepted as they are written: `tc_calendar --hash_pass p1 p2`, `--register KEY`, `--offline_reg FILE`.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points

import click

from tccal import secrets
from tccal.config import ConfigError, load_config
from tccal.config.loader import CONFIG_ENV, EXIT_CONFIG
from tccal.config.schema import Config

LEGACY_FLAGS = {"--hash_pass": "hash-pass", "--register": "register", "--offline_reg": "offline-reg"}
PLUGIN_GROUP = "tc_calendar.commands"
#: `config check`: the file works for the services, but no (or not every) TrueConf Server can connect.
EXIT_WARNINGS = 1


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("1.0.0", prog_name="tc-calendar")
def cli() -> None:
    """Administer the TrueConf Calendar Connector (Exchange calendars in TrueConf Server)."""


@cli.command("hash-pass")
@click.argument("passwords", nargs=-1, required=True)
def hash_pass(passwords: tuple[str, ...]) -> None:
    """Encrypt passwords for config.json, one 'Your encrypted data: ...' line per password, in order.

    The key is this machine's key file (created on first use, mode 0600), or TC_CALENDAR_KEY /
    TC_CALENDAR_KEY_FILE for containers: encrypt with the key the services will decrypt with.
    """
    try:
        key = secrets.load_key()
    except secrets.SecretError as exc:
        raise click.ClickException(str(exc)) from exc
    for password in passwords:
        click.echo(f"Your encrypted data: {secrets.encrypt(password, key)}")


@cli.group("config")
def config_group() -> None:
    """Check and describe config.json."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False), required=False)
@click.option("--no-decrypt", is_flag=True, help="Do not try to decrypt secrets with this machine's key.")
def config_check(file: str | None, no_decrypt: bool) -> None:
    """Validate FILE (default: $TC_CALENDAR_CONFIG) exactly as the services do at start; starts nothing.

    Exit code 0 when the file is usable; 1 when every service starts but no (or not every) TrueConf Server can
    connect, with one warning line each; 2 with one line per problem when a service would refuse it.
    """
    import os

    from tccal.config.checks import startup_problems, trueconf_warnings

    path = file or os.environ.get(CONFIG_ENV)
    if not path:
        raise click.UsageError(f"name the config file, or set {CONFIG_ENV}")
    try:
        config = load_config(path, check_secrets=not no_decrypt)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{exc.source}: {problem}", err=True)
        sys.exit(EXIT_CONFIG)
    problems = startup_problems(config)
    for problem in problems:
        click.echo(f"{path}: {problem}", err=True)
    if problems:
        sys.exit(EXIT_CONFIG)
    warnings = trueconf_warnings(config)
    for warning in warnings:
        click.echo(f"{path}: warning: {warning}", err=True)
    providers = len(config.calendar_providers)
    users = sum(len(p.users) for p in config.calendar_providers)
    summary = f"{providers} calendar provider(s), {users} user(s), wsPort {config.ws_port}"
    if warnings:
        click.echo(f"{path}: usable, with {len(warnings)} warning(s) ({summary})")
        sys.exit(EXIT_WARNINGS)
    click.echo(f"{path}: OK ({summary})")


@config_group.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of config.json."""
    click.echo(json.dumps(Config.model_json_schema(by_alias=True), indent=2))


@config_group.command("reference")
def config_reference() -> None:
    """Print every config.json key with its default and meaning (Markdown)."""
    from tccal.config.reference import markdown

    click.echo(markdown())


@cli.command("nats-auth")
def nats_auth() -> None:
    """Print the NATS server `authorization` block: one user per service with its permissions.

    Each password is read by the NATS server from its environment (TCCAL_NATS_EWS_INGEST_PASSWORD, ...,
    TCCAL_NATS_ADMIN_PASSWORD); give every service its own in nats.user / nats.password (or nats.passwordFile).
    The sandbox, docker-compose.yml and the Helm chart make this block themselves (docs/architecture.md §4.6).
    """
    from tccal.nats_auth import server_authorization_from_environment

    click.echo(server_authorization_from_environment(), nl=False)


def _load_plugins() -> None:
    for entry in entry_points(group=PLUGIN_GROUP):
        command = entry.load()
        if isinstance(command, click.Command) and entry.name not in cli.commands:
            cli.add_command(command, entry.name)


def translate_legacy(argv: list[str]) -> list[str]:
    """Turn the guide's `--hash_pass a b` style into subcommands (`hash-pass a b`)."""
    if argv and argv[0] in LEGACY_FLAGS:
        return [LEGACY_FLAGS[argv[0]], *argv[1:]]
    if argv and "=" in argv[0] and argv[0].split("=", 1)[0] in LEGACY_FLAGS:
        flag, value = argv[0].split("=", 1)
        return [LEGACY_FLAGS[flag], value, *argv[1:]]
    return argv


def main(argv: list[str] | None = None) -> None:
    _load_plugins()
    cli.main(args=translate_legacy(list(sys.argv[1:] if argv is None else argv)), prog_name="tc-calendar")

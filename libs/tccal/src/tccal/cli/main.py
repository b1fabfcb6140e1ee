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
from tccal.cli.admin import GRPC_SERVICES
from tccal.cli.checks import test_group
from tccal.cli.ops import events, mailboxes, resync, status
from tccal.cli.progress import sync_group
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

    Exit code 0 when the file is usable; 1 when it works but not every TrueConf Server can connect, or EWS would
    go over plain http, with one warning line each; 2 with one line per problem when a service would refuse it
    or no TrueConf Server could connect (each line names the setting).
    """
    import os

    from tccal.config.checks import (
        graph_credential_problems,
        provider_warnings,
        startup_problems,
        transport_warnings,
        trueconf_problems,
        trueconf_warnings,
    )

    path = file or os.environ.get(CONFIG_ENV)
    if not path:
        raise click.UsageError(f"name the config file, or set {CONFIG_ENV}")
    try:
        config = load_config(path, check_secrets=not no_decrypt)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{exc.source}: {problem}", err=True)
        sys.exit(EXIT_CONFIG)
    problems = startup_problems(config) + trueconf_problems(config) + graph_credential_problems(config)
    warnings = trueconf_warnings(config) + transport_warnings(config) + provider_warnings(config)
    for problem in problems:
        click.echo(f"{path}: {problem}", err=True)
    for warning in warnings:
        click.echo(f"{path}: warning: {warning}", err=True)
    if problems:
        sys.exit(EXIT_CONFIG)
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


#: `tc-calendar grpc`: the call was refused or failed (gRPC status on stderr).
EXIT_RPC_FAILED = 1


@cli.command("grpc")
@click.argument("service", type=click.Choice(sorted(GRPC_SERVICES)))
@click.argument("method")
@click.argument("request", default="{}")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=f"config.json (default: ${CONFIG_ENV}).")
@click.option("--address", help="host:port instead of the service's address in the config.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for the answer.")
def grpc_call(
    service: str, method: str, request: str, config_path: str | None, address: str | None, timeout: float
) -> None:
    """Call METHOD of SERVICE's gRPC API with REQUEST (JSON) as an administrator; print the answer as JSON.

    It sends grpc.adminToken and speaks TLS as grpc.tls says (caFile, client certificate, serverName), so it
    works wherever the config does: `tc-calendar grpc ews-ingest ListMailboxes`,
    `tc-calendar grpc sync-engine ListEvents '{"user": "alice@corp.example", "from": "...", "to": "..."}'`.
    """
    import importlib
    import os

    import grpc
    from google.protobuf import json_format, message_factory

    from tccal.grpckit import GrpcCaller

    path = config_path or os.environ.get(CONFIG_ENV)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{exc.source}: {problem}", err=True)
        sys.exit(EXIT_CONFIG)
    module_name, service_name = GRPC_SERVICES[service]
    module = importlib.import_module(f"trueconf.calendar.v1.{module_name}")
    descriptor = module.DESCRIPTOR.services_by_name[service_name]
    if method not in descriptor.methods_by_name:
        raise click.UsageError(f"{service_name} has no method {method!r}: {', '.join(descriptor.methods_by_name)}")
    rpc = descriptor.methods_by_name[method]
    request_type = message_factory.GetMessageClass(rpc.input_type)
    response_type = message_factory.GetMessageClass(rpc.output_type)
    try:
        message = json_format.Parse(request, request_type())
    except json_format.ParseError as exc:
        raise click.UsageError(f"REQUEST is not a {rpc.input_type.full_name} in JSON: {exc}") from None
    try:
        caller = GrpcCaller.for_admin(
            config, lambda value: secrets.reveal(value, allow_plaintext=config.allow_plaintext_passwords)
        )
    except (ValueError, secrets.SecretError) as exc:
        click.echo(f"{path}: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    target = address or config.grpc.address_of(service)
    with caller.channel(target) as channel:
        call = channel.unary_unary(
            f"/{descriptor.full_name}/{method}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            answer = call(message, metadata=tuple(caller.metadata()), timeout=timeout)
        except grpc.RpcError as exc:
            click.echo(f"{service} {method} at {target}: {exc.code().name}: {exc.details()}", err=True)
            sys.exit(EXIT_RPC_FAILED)
    click.echo(json_format.MessageToJson(answer, preserving_proto_field_name=True))


@cli.command("nats-auth")
def nats_auth() -> None:
    """Print the NATS server `authorization` block: one user per service with its permissions.

    Each password is read by the NATS server from its environment (TCCAL_NATS_EWS_INGEST_PASSWORD, ...,
    TCCAL_NATS_ADMIN_PASSWORD); give every service its own in nats.user / nats.password (or nats.passwordFile).
    The sandbox, docker-compose.yml and the Helm chart make this block themselves (docs/architecture.md §4.6).
    """
    from tccal.nats_auth import server_authorization_from_environment

    click.echo(server_authorization_from_environment(), nl=False)


# Everyday administration over gRPC (tccal.cli.ops, checks, progress; docs/architecture.md §8).
for _command in (status, mailboxes, resync, events, test_group, sync_group):
    cli.add_command(_command)


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

"""`tc_calendar` subcommands of licensing (entry-point group ``tc_calendar.commands``).

* ``tc_calendar --register KEY`` (= ``register KEY``): online registration; without a reachable registration
  server, writes ``regoffline.crg`` and prints its path (exit code 3); ``--request-file -`` writes it to standard
  output instead (a container's read-only file system).
* ``tc_calendar --offline_reg FILE`` (= ``offline-reg FILE``): installs the authority's answer (``-``: read from
  standard input).
* ``tc_calendar license``: shows the license in force.

They work on the database directly (``dbConnectionConfig``), so an installation registers before its services
run, as in the guide. Exit codes: 0 success, 2 configuration, 3 offline request written, 4 database, and one
code per refusal (README.md).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import click

from licensing.document import format_timestamp
from licensing.errors import (
    FREE_OFFLINE_MESSAGE,
    FreeOfflineError,
    InvalidRegistrationFileError,
    LicensingError,
    RegistrationUnreachableError,
    StorageError,
)
from licensing.fingerprint import short_fingerprint
from licensing.keys import parse_key
from licensing.manager import LicenseManager, Snapshot
from licensing.offline import DEFAULT_REQUEST_FILENAME, DEFAULT_RESPONSE_FILENAME
from licensing.sealing import Sealer
from licensing.settings import LicensingSettings
from licensing.store import LicenseStore
from tccal import bus
from tccal.clock import SystemClock
from tccal.config import Config, ConfigError, load_config
from tccal.db import create_pool
from tccal.subjects import SEATS_SUBJECT

REGISTERED = "Your product successfully registered. Now you can run tc_calendar"
REGISTERED_OFFLINE = "Your product successfully registered offline. Now you can run tc_calendar"
EXIT_CONFIG = 2  # as the services (tccal.service.EXIT_CONFIG)
EXIT_OFFLINE_REQUEST_WRITTEN = 3
CONFIG_ENV = "TC_CALENDAR_CONFIG"

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"config.json (default: ${CONFIG_ENV}).",
)

Operation = Callable[[LicenseManager], Awaitable[int]]


def load_or_exit(config_path: str | None) -> Config:
    """The config as the services load it; a bad one exits with code 2, one line per problem."""
    try:
        return load_config(config_path or os.environ.get(CONFIG_ENV))
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{exc.source}: {problem}", err=True)
        sys.exit(EXIT_CONFIG)


def _run(
    config_path: str | None, operation: Operation, failure: str = "Registration refused", *, announce: bool = False
) -> None:
    """Load the config, open the database, migrate, run ``operation``; exit with its code."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    config = load_or_exit(config_path)
    try:
        settings = LicensingSettings.from_config(config)
    except ValueError as exc:
        click.echo(f"{config_path or os.environ.get(CONFIG_ENV, '(defaults)')}: {exc}", err=True)
        sys.exit(EXIT_CONFIG)

    async def main() -> int:
        try:
            pool = await create_pool(config)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StorageError(f"cannot connect to PostgreSQL (dbConnectionConfig): {exc}") from None
        try:
            store = LicenseStore(lambda: pool, Sealer(settings.machine_key))
            await store.migrate()
            return await operation(LicenseManager(store, settings, SystemClock()))
        finally:
            await pool.close()

    try:
        code = asyncio.run(main())
    except LicensingError as exc:
        click.echo(f"{failure} ({exc.code}): {exc.message}", err=True)
        sys.exit(exc.exit_code)
    if code == 0 and announce:
        asyncio.run(_announce_license_change(config))
    sys.exit(code)


async def _announce_license_change(config: Config) -> None:
    """Tell a running ews-ingest to ask for seats now, so a new license syncs mailboxes without waiting."""
    # as licensing's NATS identity: it may publish this subject and nothing else (tccal.nats_auth)
    try:
        settings = bus.BusSettings.from_config(config, "licensing")
    except ValueError as exc:  # an unreadable nats.passwordFile: ews-ingest then asks on its own schedule
        click.echo(f"warning: the running services were not told about the new license: {exc}", err=True)
        return
    await bus.announce(settings, SEATS_SUBJECT)


def _describe(snap: Snapshot) -> str:
    if snap.signed is None:
        return f"No license (installation {short_fingerprint(snap.fingerprint)})"
    lic = snap.signed.license
    expires = "never" if lic.expires_at is None else format_timestamp(lic.expires_at)
    return (
        f"License {lic.license_id}: {lic.tier.label}, {lic.seat_capacity} seats, expires {expires}, "
        f"installation {short_fingerprint(snap.fingerprint)}"
    )


#: `--request-file -` / `offline-reg -`: the request to standard output, the answer from standard input (a
#: container's file system is read-only: `docker compose exec -T licensing tc_calendar ... > regoffline.crg`).
STDIO = "-"


def _read_only_hint(path: Path, exc: OSError) -> str:
    hint = ""
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = (
            f" (in a container or another read-only directory, write it to standard output instead: "
            f"--request-file {STDIO} > {DEFAULT_REQUEST_FILENAME})"
        )
    return f"cannot write {path}: {exc.strerror}{hint}"


@click.command("register")
@click.argument("key")
@config_option
@click.option(
    "--request-file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=DEFAULT_REQUEST_FILENAME,
    show_default=True,
    help="Where to write the offline request when the registration server is unreachable; - for standard output "
    "(the messages then go to standard error).",
)
@click.option("--offline", is_flag=True, help="Write the offline request without trying the server.")
def register(key: str, config_path: str | None, request_file: Path, offline: bool) -> None:
    """Register this installation with a registration KEY (tc_calendar --register KEY)."""
    to_stdout = str(request_file) == STDIO
    path = request_file if to_stdout else request_file.resolve()

    async def operation(manager: LicenseManager) -> int:
        parsed = parse_key(key)
        reason = "offline registration was asked for"
        if not offline:
            try:
                await manager.register_online(parsed.text)
            except RegistrationUnreachableError as exc:
                reason = exc.message
            else:
                click.echo(REGISTERED)
                click.echo(_describe(await manager.snapshot()))
                return 0
        if not parsed.tier.offline_registration:
            raise FreeOfflineError(f"{reason}. {FREE_OFFLINE_MESSAGE}")
        request = await manager.create_offline_request(parsed.text)
        if to_stdout:
            click.echo(request.encode(), nl=False)
            where = "standard output"
        else:
            try:
                await asyncio.to_thread(path.write_bytes, request.encode())
            except OSError as exc:
                raise InvalidRegistrationFileError(_read_only_hint(path, exc)) from None
            where = str(path)
        click.echo(f"Online registration is not possible: {reason}", err=to_stdout)
        click.echo(f"Offline registration request written to {where}", err=to_stdout)
        click.echo(
            "Send it to your manager, then install the registration file you get back with: "
            f"tc_calendar --offline_reg {DEFAULT_RESPONSE_FILENAME}",
            err=to_stdout,
        )
        return EXIT_OFFLINE_REQUEST_WRITTEN

    _run(config_path, operation, announce=True)


@click.command("offline-reg")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@config_option
def offline_reg(file: Path, config_path: str | None) -> None:
    """Install the registration file the authority sent back (tc_calendar --offline_reg FILE; - reads it from
    standard input)."""

    async def operation(manager: LicenseManager) -> int:
        if str(file) == STDIO:
            data = await asyncio.to_thread(sys.stdin.buffer.read)
            what = "the registration file on standard input"
        else:
            try:
                data = await asyncio.to_thread(file.read_bytes)
            except OSError as exc:
                raise InvalidRegistrationFileError(f"cannot read {file}: {exc.strerror}") from None
            what = str(file)
        await manager.install_offline(data, what)
        click.echo(REGISTERED_OFFLINE)
        click.echo(_describe(await manager.snapshot()))
        return 0

    _run(config_path, operation, announce=True)


@click.command("license")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show_license(config_path: str | None, as_json: bool) -> None:
    """Show the license in force: tier, seats, features, expiry, last online check, status."""

    async def operation(manager: LicenseManager) -> int:
        snap = await manager.snapshot()
        lic = snap.signed.license if snap.signed else None
        data = {
            "status": snap.evaluation.status.value,
            "status_reason": snap.evaluation.reason,
            "tier": lic.tier.value if lic else None,
            "license_id": lic.license_id if lic else None,
            "seats": lic.seat_capacity if lic else 0,
            "seats_used": snap.seats_used,
            "features": list(lic.features) if lic else [],
            "expires_at": format_timestamp(lic.expires_at) if lic and lic.expires_at else None,
            "last_online_check": format_timestamp(snap.check.last_success) if snap.check.last_success else None,
            "grace_until": format_timestamp(snap.evaluation.grace_until) if snap.evaluation.grace_until else None,
            "installation_fingerprint": snap.fingerprint,
        }
        if as_json:
            click.echo(json.dumps(data, indent=2))
        else:
            click.echo(_describe(snap))
            for name, value in data.items():
                click.echo(f"  {name}: {value}")
        return 0

    _run(config_path, operation, "Cannot show the license")

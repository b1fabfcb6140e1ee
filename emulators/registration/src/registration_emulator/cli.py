"""``python -m registration_emulator [--state-dir DIR] COMMAND`` — the registration authority for tests and
the sandbox: ``serve``, ``keygen``, ``public-key``, ``issue-key``, ``revoke-key``, ``list-keys``,
``sign-offline``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import ssl
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from registration_emulator.authority import Authority, AuthorityRefusalError, utcnow
from registration_emulator.offline import RequestFileError, read_request, write_response
from registration_emulator.state import StateDir, StateError
from registration_emulator.tiers import Tier, parse_tier

DEFAULT_STATE_DIR = "registration-state"
_RELATIVE = re.compile(r"^([+-]?)(\d+)d$")


def parse_expiry(text: str, now: datetime) -> datetime | None:
    """``never``, ``+30d`` / ``-1d`` (days from now), ``2027-01-31`` (00:00 UTC) or an ISO date-time."""
    value = text.strip()
    if value.lower() == "never":
        return None
    rel = _RELATIVE.match(value)
    if rel:
        days = int(rel.group(2)) * (-1 if rel.group(1) == "-" else 1)
        return now + timedelta(days=days)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not 'never', '+Nd', '-Nd', a date (2027-01-31) or an ISO date-time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


class Context:
    def __init__(self, state_dir: Path) -> None:
        self.state = StateDir(state_dir)

    def authority(self) -> Authority:
        try:
            return Authority(self.state, self.state.load_authority_key())
        except StateError as exc:
            raise click.ClickException(str(exc)) from None


pass_ctx = click.make_pass_decorator(Context)


@click.group()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="TCCAL_REGISTRATION_STATE_DIR",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Directory with the authority key and the issued keys.",
)
@click.pass_context
def main(ctx: click.Context, state_dir: Path) -> None:
    """TrueConf Calendar Connector registration authority (emulator)."""
    ctx.obj = Context(state_dir)


@main.command()
@click.option("--force", is_flag=True, help="Replace an existing authority key.")
@pass_ctx
def keygen(ctx: Context, force: bool) -> None:
    """Create the authority's Ed25519 key pair; prints the public key for license.testAuthorityPublicKey."""
    try:
        with ctx.state.locked():
            signer = ctx.state.create_authority_key(force=force)
    except StateError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(signer.public_text)


@main.command("public-key")
@pass_ctx
def public_key(ctx: Context) -> None:
    """Print the authority's public key (base64 of the raw Ed25519 key)."""
    click.echo(ctx.authority().signer.public_text)


@main.command("issue-key")
@click.option("--tier", "tier_text", required=True, type=click.Choice([t.value for t in Tier]))
@click.option("--seats", type=int, default=None, help="Accounts (Free: always 50).")
@click.option("--expires", default="never", show_default=True, help="never | +Nd | -Nd | 2027-01-31 | ISO time")
@click.option("--installations", type=int, default=1, show_default=True, help="Installations per key.")
@click.option("--json", "as_json", is_flag=True, help="Print the key's details as JSON.")
@pass_ctx
def issue_key(ctx: Context, tier_text: str, seats: int | None, expires: str, installations: int, as_json: bool) -> None:
    """Issue a registration key; prints it."""
    now = utcnow()
    expires_at = parse_expiry(expires, now)
    if expires_at is not None and expires_at <= now:
        click.echo(f"warning: this key is already expired ({expires_at.isoformat()})", err=True)
    try:
        issued = ctx.authority().issue_key(
            parse_tier(tier_text), seats, expires_at, installations=installations, now=now
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "key": issued.key.text,
                    "tier": issued.tier.value,
                    "seats": issued.seats,
                    "features": list(issued.features),
                    "expires_at": None if issued.expires_at is None else issued.expires_at.isoformat(),
                }
            )
        )
    else:
        click.echo(issued.key.text)


@main.command("revoke-key")
@click.argument("key")
@pass_ctx
def revoke_key(ctx: Context, key: str) -> None:
    """Revoke a key: its licenses fail their next online check."""
    try:
        ctx.authority().revoke_key(key)
    except AuthorityRefusalError as exc:
        raise click.ClickException(exc.message) from None
    click.echo("revoked")


@main.command("list-keys")
@pass_ctx
def list_keys(ctx: Context) -> None:
    """Print the issued keys and their activations as JSON."""
    click.echo(json.dumps(ctx.authority().list_keys(), indent=2, sort_keys=True))


@main.command("sign-offline")
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--expires", default=None, help="Give this license its own term (never | +Nd | -Nd | date | ISO time).")
@pass_ctx
def sign_offline(ctx: Context, request_file: Path, output: Path, expires: str | None) -> None:
    """Answer an offline request (regoffline.crg) with a signed registration file (regoffline2.crg)."""
    authority = ctx.authority()
    now = utcnow()
    override = None
    if expires is not None:
        override = parse_expiry(expires, now)
        if override is None:
            raise click.BadParameter("use a date for --expires here (omit it for the key's own term)")
        if override <= now:
            click.echo(f"warning: the license is already expired ({override.isoformat()})", err=True)
    try:
        request = read_request(request_file.read_bytes(), f"the request {request_file}")
        envelope = authority.sign_offline(request, now=now, expires_override=override)
    except RequestFileError as exc:
        raise click.ClickException(exc.message) from None
    except AuthorityRefusalError as exc:
        raise click.ClickException(f"{exc.message} ({exc.code})") from None
    output.write_bytes(write_response(request.request_id, envelope))
    lic = envelope["license"]
    click.echo(
        f"signed license {lic['license_id']} ({lic['tier']}, {lic['seats']} seats) "
        f"for installation {lic['installation_fingerprint'][:16]} → {output}"
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=4310, show_default=True, help="0 picks a free port.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write {url, public_key, key_id} here once listening.",
)
@pass_ctx
def serve(
    ctx: Context, host: str, port: int, tls_cert: str | None, tls_key: str | None, ready_file: Path | None
) -> None:
    """Serve the online registration API (creates the authority key if there is none)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if bool(tls_cert) != bool(tls_key):
        raise click.BadParameter("--tls-cert and --tls-key go together")
    try:
        signer, created = ctx.state.load_or_create_authority_key()
    except StateError as exc:
        raise click.ClickException(str(exc)) from None
    if created:
        logging.info("created authority key %s in %s", signer.key_id, ctx.state.path)
    ssl_ctx = None
    if tls_cert and tls_key:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(tls_cert, tls_key)
    asyncio.run(_serve(Authority(ctx.state, signer), host, port, ssl_ctx, ready_file))


async def _serve(
    authority: Authority, host: str, port: int, ssl_ctx: ssl.SSLContext | None, ready_file: Path | None
) -> None:
    from aiohttp import web  # imported here: the other commands do not need the HTTP stack

    from registration_emulator.server import make_app

    runner = web.AppRunner(make_app(authority), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx)
    await site.start()
    bound = runner.addresses[0]
    scheme = "https" if ssl_ctx else "http"
    url = f"{scheme}://{host}:{bound[1]}"
    info = {"url": url, "public_key": authority.signer.public_text, "key_id": authority.signer.key_id}
    if ready_file is not None:
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(json.dumps(info) + "\n", "utf-8")
        os.replace(tmp, ready_file)
    click.echo(json.dumps(info))
    sys.stdout.flush()
    logging.info("registration emulator listening on %s", url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()

"""The registration client against the real emulator process, a closed port, and servers that misbehave."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from licensing.document import TrustedAuthorities
from licensing.errors import (
    KeyInUseError,
    KeyRevokedError,
    LicenseExpiredError,
    MalformedKeyError,
    RegistrationProtocolError,
    RegistrationUnreachableError,
    UnknownKeyError,
)
from licensing.fingerprint import new_install_id
from licensing.registration_client import RegistrationClient
from licensing.sealing import Sealer
from registration_emulator.testing import RunningEmulator, start_emulator
from tccal_sandbox.testing import free_port


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    emu = start_emulator(tmp_path_factory.mktemp("reg"))
    yield emu
    emu.stop()


def fp() -> str:
    return Sealer(os.urandom(32)).fingerprint(new_install_id())


async def test_register_and_check(emulator: RunningEmulator) -> None:
    client = RegistrationClient(emulator.url + "/")
    trusted = TrustedAuthorities.from_config(emulator.public_key)
    mine = fp()
    envelope = await client.register(emulator.issue_key("free"), mine, "1.0.0")
    lic = trusted.verify_envelope(envelope).license
    nonce = secrets.token_hex(16)
    receipt = trusted.verify_receipt(await client.check(lic.license_id, lic.key_sha256, mine, nonce))
    assert receipt.nonce == nonce


async def test_refusals_map_to_their_own_errors(emulator: RunningEmulator) -> None:
    client = RegistrationClient(emulator.url)
    with pytest.raises(UnknownKeyError, match="not known"):
        await client.register("TCCAL-STD-0123A-BCDEF-GHJKM-NPQRS-X74E", fp(), "1.0.0")
    with pytest.raises(MalformedKeyError):
        await client.register("MY-REG-KEY", fp(), "1.0.0")
    with pytest.raises(LicenseExpiredError, match="expired"):
        await client.register(emulator.issue_key("standard", 3, expires="-1d"), fp(), "1.0.0")
    used = emulator.issue_key("standard", 3)
    await client.register(used, fp(), "1.0.0")
    with pytest.raises(KeyInUseError, match="another installation"):
        await client.register(used, fp(), "1.0.0")
    emulator.cli("revoke-key", used)
    with pytest.raises(KeyRevokedError):
        await client.register(used, fp(), "1.0.0")


async def test_a_closed_port_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistrationUnreachableError, match=url.replace(".", r"\.")):
        await RegistrationClient(url, timeout=5).register("TCCAL-STD-0123A-BCDEF-GHJKM-NPQRS-X74E", fp(), "1")


@pytest.fixture
async def odd_server() -> AsyncIterator[str]:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, text="maintenance")

    async def html(request: web.Request) -> web.Response:
        return web.Response(status=404, text="<html>not here</html>", content_type="text/html")

    async def reasonless(request: web.Request) -> web.Response:
        return web.json_response({"oops": True}, status=400)

    app = web.Application()
    app.router.add_post("/broken/api/v1/register", broken)
    app.router.add_post("/html/api/v1/register", html)
    app.router.add_post("/reasonless/api/v1/register", reasonless)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_misbehaving_servers(odd_server: str) -> None:
    key = "TCCAL-STD-0123A-BCDEF-GHJKM-NPQRS-X74E"
    with pytest.raises(RegistrationUnreachableError, match="HTTP 503"):
        await RegistrationClient(odd_server + "/broken").register(key, fp(), "1")
    with pytest.raises(RegistrationProtocolError, match="does not speak the registration API"):
        await RegistrationClient(odd_server + "/html").register(key, fp(), "1")
    with pytest.raises(RegistrationProtocolError, match="gave no reason"):
        await RegistrationClient(odd_server + "/reasonless").register(key, fp(), "1")


def test_bad_urls_are_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be http"):
        RegistrationClient("reg.trueconf.com:4310")

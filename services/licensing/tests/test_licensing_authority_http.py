"""The online registration API, served by the real emulator process (plain HTTP and HTTPS), read by licensing's
own client and verifier (docs/license-format.md §10). Moved from emulators/registration/tests, which no longer
import licensing."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from licensing.document import TrustedAuthorities
from licensing.errors import RegistrationUnreachableError
from licensing.fingerprint import new_install_id
from licensing.registration_client import RegistrationClient
from licensing.sealing import Sealer
from registration_emulator.testing import RunningEmulator, start_emulator


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    emu = start_emulator(tmp_path_factory.mktemp("reg"))
    yield emu
    emu.stop()


async def post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, data=json.dumps(body)) as resp:
        return resp.status, await resp.json()


def fp() -> str:
    return Sealer(os.urandom(32)).fingerprint(new_install_id())


async def test_register_returns_a_license_signed_by_the_authority(emulator: RunningEmulator) -> None:
    key = emulator.issue_key("standard", 40)
    mine = fp()
    status, body = await post(f"{emulator.url}/api/v1/register", {"key": key, "installation_fingerprint": mine})
    assert status == 200
    signed = TrustedAuthorities.from_config(emulator.public_key).verify_envelope(body["license"])
    assert signed.license.seats == 40 and signed.license.installation_fingerprint == mine
    assert signed.license.registration == "online"
    # The same installation may register again: same license id, fresh signature.
    status, again = await post(f"{emulator.url}/api/v1/register", {"key": key, "installation_fingerprint": mine})
    assert status == 200 and again["license"]["license"]["license_id"] == signed.license.license_id


@pytest.mark.parametrize(
    ("setup", "status", "code"),
    [
        ("unknown", 404, "unknown_key"),
        ("malformed", 400, "malformed_key"),
        ("in_use", 409, "key_in_use"),
        ("expired", 410, "key_expired"),
        ("revoked", 403, "key_revoked"),
        ("bad_fingerprint", 400, "invalid_request"),
    ],
)
async def test_register_refusals(emulator: RunningEmulator, setup: str, status: int, code: str) -> None:
    fingerprint = fp()
    if setup == "unknown":
        key = "TCCAL-STD-0123A-BCDEF-GHJKM-NPQRS-X74E"
    elif setup == "malformed":
        key = "MY-REG-KEY"
    elif setup == "expired":
        key = emulator.issue_key("standard", 5, expires="-1d")
    else:
        key = emulator.issue_key("standard", 5)
    if setup == "in_use":
        ok, _ = await post(f"{emulator.url}/api/v1/register", {"key": key, "installation_fingerprint": fp()})
        assert ok == 200
    if setup == "revoked":
        emulator.cli("revoke-key", key)
    if setup == "bad_fingerprint":
        fingerprint = "nope"
    got, body = await post(f"{emulator.url}/api/v1/register", {"key": key, "installation_fingerprint": fingerprint})
    assert (got, body["error"]) == (status, code)
    assert body["message"]


async def test_malformed_bodies(emulator: RunningEmulator) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{emulator.url}/api/v1/register", data=b"{not json") as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"
        async with session.post(f"{emulator.url}/api/v1/check", json={"license_id": 5}) as resp:
            body = await resp.json()
            assert resp.status == 400 and "'license_id'" in body["message"]


async def test_check_answers_with_a_signed_receipt_and_refuses_the_rest(emulator: RunningEmulator) -> None:
    key = emulator.issue_key("free")
    mine = fp()
    _, body = await post(f"{emulator.url}/api/v1/register", {"key": key, "installation_fingerprint": mine})
    lic = body["license"]["license"]
    nonce = secrets.token_hex(16)
    check = {
        "license_id": lic["license_id"],
        "key_sha256": lic["key_sha256"],
        "installation_fingerprint": mine,
        "nonce": nonce,
    }
    status, answer = await post(f"{emulator.url}/api/v1/check", check)
    assert status == 200
    receipt = TrustedAuthorities.from_config(emulator.public_key).verify_receipt(answer)
    assert receipt.nonce == nonce and receipt.license_id == lic["license_id"]

    for change, want in (
        ({"installation_fingerprint": fp()}, (409, "foreign_installation")),
        ({"license_id": "lic-nope"}, (404, "unknown_license")),
        ({"key_sha256": "00" * 32}, (404, "unknown_license")),
        ({"nonce": "short"}, (400, "invalid_request")),
    ):
        got, err = await post(f"{emulator.url}/api/v1/check", {**check, **change})
        assert (got, err["error"]) == want
    emulator.cli("revoke-key", key)
    got, err = await post(f"{emulator.url}/api/v1/check", check)
    assert (got, err["error"]) == (403, "key_revoked")


async def test_authority_and_health_endpoints(emulator: RunningEmulator) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{emulator.url}/api/v1/authority") as resp:
            assert await resp.json() == {"public_key": emulator.public_key, "key_id": emulator.key_id}
        async with session.get(f"{emulator.url}/healthz") as resp:
            assert resp.status == 200


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registration test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_https_registration_with_a_configured_ca(tmp_path: Path) -> None:
    cert, key_file = _self_signed(tmp_path)
    emu = start_emulator(tmp_path / "tls-state", tls_cert=cert, tls_key=key_file)
    try:
        assert emu.url.startswith("https://127.0.0.1:")
        key = emu.issue_key("enterprise", 10)
        envelope = await RegistrationClient(emu.url, ca_file=str(cert)).register(key, fp(), "1.0.0")
        assert TrustedAuthorities.from_config(emu.public_key).verify_envelope(envelope).license.seats == 10
        # Without the CA the server's certificate is not trusted: the server counts as unreachable.
        with pytest.raises(RegistrationUnreachableError, match="certificate"):
            await RegistrationClient(emu.url).register(key, fp(), "1.0.0")
    finally:
        emu.stop()

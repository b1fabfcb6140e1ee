"""The shared steps of the connectivity checks (tccal.connectivity) against real sockets: a name that does not
resolve, a port nothing listens on, a TLS server whose certificate this machine does not trust, a port that speaks
no TLS; and a checklist skips what follows a failure."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tccal.connectivity import Checklist, StepFailedError, connect, handshake, resolve
from tccal_sandbox.testing import free_port
from trueconf.calendar.v1 import common_pb2


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def _answer_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.read(1024)
    finally:
        writer.close()


@pytest.fixture
async def tls_port(tmp_path: Path) -> AsyncIterator[int]:
    """A TLS server on localhost with a self-signed certificate (trusted by nobody)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*_self_signed(tmp_path))
    server = await asyncio.start_server(_answer_nothing, "localhost", 0, ssl=context)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def plain_port() -> AsyncIterator[int]:
    """A TCP server that speaks no TLS."""
    server = await asyncio.start_server(_answer_nothing, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_a_name_that_does_not_resolve_fails_naming_the_key() -> None:
    with pytest.raises(StepFailedError) as failed:
        await resolve("no-such-host.invalid", 443, "calendarProviders[0].host")
    assert "no-such-host.invalid does not resolve" in failed.value.detail
    assert "calendarProviders[0].host" in failed.value.fix
    assert "127.0.0.1" in await resolve("localhost", 443, "x")


async def test_a_port_nothing_listens_on_fails_and_a_listening_one_passes(plain_port: int) -> None:
    closed = free_port()
    with pytest.raises(StepFailedError) as failed:
        await connect("127.0.0.1", closed, "tcs.servers[0].restUrl")
    assert f"cannot connect to 127.0.0.1:{closed}" in failed.value.detail
    assert "nothing listens" in failed.value.fix and "tcs.servers[0].restUrl" in failed.value.fix
    assert await connect("127.0.0.1", plain_port, "x") == f"127.0.0.1:{plain_port} accepts TCP connections"


async def test_an_untrusted_certificate_fails_unless_verification_is_off(tls_port: int) -> None:
    with pytest.raises(StepFailedError) as failed:
        await handshake("localhost", tls_port, verify=True, verify_key="calendarProviders[0].verifyTls")
    assert "is not trusted" in failed.value.detail and "self-signed" in failed.value.detail
    assert "install the CA" in failed.value.fix and "calendarProviders[0].verifyTls=false" in failed.value.fix
    found = await handshake("localhost", tls_port, verify=False, verify_key="x")
    assert found.startswith("TLSv1.") and "NOT verified" in found


async def test_a_port_without_tls_fails_the_handshake(plain_port: int) -> None:
    with pytest.raises(StepFailedError) as failed:
        await handshake("127.0.0.1", plain_port, verify=False, verify_key="x")
    assert "TLS handshake with 127.0.0.1" in failed.value.detail and "http instead of https" in failed.value.fix


async def test_a_checklist_skips_every_step_after_the_first_failure(plain_port: int) -> None:
    checks = Checklist()
    ran: list[str] = []

    async def passes() -> str:
        ran.append("passes")
        return "fine"

    async def fails() -> str:
        raise StepFailedError("broken", "mend it")

    await checks.run("one", passes)
    await checks.run("two", fails)
    await checks.run("three", passes)
    assert ran == ["passes"]
    assert [(s.name, s.outcome) for s in checks.steps] == [
        ("one", common_pb2.CONNECTIVITY_OUTCOME_OK),
        ("two", common_pb2.CONNECTIVITY_OUTCOME_FAIL),
        ("three", common_pb2.CONNECTIVITY_OUTCOME_SKIPPED),
    ]
    assert checks.steps[1].fix == "mend it" and checks.failed

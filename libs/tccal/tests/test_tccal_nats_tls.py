"""TLS to NATS (nats.tlsCaFile, tlsCertFile, tlsKeyFile, tlsVerify) against a TLS-only nats-server with mutual TLS,
its certificates made here by a throw-away CA."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tccal import secrets
from tccal.bus import Bus, BusSettings, accepts_anonymous
from tccal.config import Config
from tccal.subjects import CALENDAR, calendar_subject
from tccal_sandbox.embedded import EmbeddedNats, NatsTls
from tccal_sandbox.testing import nats_settings, short_tmpdir


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str, usage: x509.ObjectIdentifier, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca("tc-calendar test CA")
    server, server_key = _leaf(ca, ca_key, "nats", ExtendedKeyUsageOID.SERVER_AUTH, server=True)
    client, client_key = _leaf(ca, ca_key, "ews-ingest", ExtendedKeyUsageOID.CLIENT_AUTH, server=False)
    other, _ = _ca("somebody else's CA")
    return Pki(
        ca=_write_cert(ca, directory / "ca.pem"),
        server_cert=_write_cert(server, directory / "server.pem"),
        server_key=_write_key(server_key, directory / "server.key"),
        client_cert=_write_cert(client, directory / "client.pem"),
        client_key=_write_key(client_key, directory / "client.key"),
        other_ca=_write_cert(other, directory / "other-ca.pem"),
    )


@pytest.fixture
def tls_nats(pki: Pki) -> Iterator[EmbeddedNats]:
    """TLS only, client certificates from the CA required, and users as always."""
    directory = short_tmpdir("tcntls")
    server = EmbeddedNats(
        directory, tls=NatsTls(cert_file=str(pki.server_cert), key_file=str(pki.server_key), ca_file=str(pki.ca))
    )
    server.start()
    yield server
    server.stop()


def _tls(pki: Pki, **overrides: object) -> dict[str, object]:
    options: dict[str, object] = {
        "tls_ca_file": str(pki.ca),
        "tls_cert_file": str(pki.client_cert),
        "tls_key_file": str(pki.client_key),
    }
    options.update(overrides)
    return options


async def _connects(settings: BusSettings) -> bool:
    bus = Bus(settings)
    try:
        await asyncio.wait_for(bus.connect(attempts=1), 6)
    except Exception:
        return False
    await bus.close()
    return True


async def test_a_service_connects_over_verified_mutual_tls(tls_nats: EmbeddedNats, pki: Pki) -> None:
    bus = Bus(nats_settings(tls_nats, "ews-ingest", **_tls(pki)))
    await bus.connect(attempts=1)
    try:
        assert await bus.publish(calendar_subject("ews", "alice@example.com"), b"change", msg_id="tls-1")
        assert (await bus.js.stream_info(CALENDAR)).state.messages == 1
    finally:
        await bus.close()


async def test_the_server_certificate_is_verified_by_default(tls_nats: EmbeddedNats, pki: Pki) -> None:
    # no CA file: the system's trust store does not know the throw-away CA
    assert not await _connects(nats_settings(tls_nats, "ews-ingest", **_tls(pki, tls_ca_file=None)))
    # somebody else's CA
    assert not await _connects(nats_settings(tls_nats, "ews-ingest", **_tls(pki, tls_ca_file=str(pki.other_ca))))
    # the control: the same settings with the right CA connect
    assert await _connects(nats_settings(tls_nats, "ews-ingest", **_tls(pki)))


async def test_no_way_in_without_tls_a_client_certificate_or_credentials(tls_nats: EmbeddedNats, pki: Pki) -> None:
    assert not await _connects(nats_settings(tls_nats, "ews-ingest"))  # plain text
    no_cert = _tls(pki, tls_cert_file=None, tls_key_file=None)
    assert not await _connects(nats_settings(tls_nats, "ews-ingest", **no_cert))
    with_cert_no_user = BusSettings(url=tls_nats.url, **_tls(pki))  # type: ignore[arg-type]
    assert not await _connects(with_cert_no_user)
    assert not await accepts_anonymous(with_cert_no_user)


async def test_the_config_keys_reach_the_connection(tls_nats: EmbeddedNats, pki: Pki) -> None:
    config = Config.model_validate(
        {
            "nats": {
                "url": tls_nats.url,
                "user": "sync-engine",
                "password": secrets.encrypt(tls_nats.passwords["sync-engine"]),
                "tlsCaFile": str(pki.ca),
                "tlsCertFile": str(pki.client_cert),
                "tlsKeyFile": str(pki.client_key),
            }
        }
    )
    settings = BusSettings.from_config(config, "sync-engine")
    assert settings.uses_tls and settings.tls_verify
    assert await _connects(settings)
    unverified = Config.model_validate({"nats": {**config.nats.model_dump(by_alias=True), "tlsCaFile": None}})
    assert not await _connects(BusSettings.from_config(unverified, "sync-engine"))
    skipped = Config.model_validate(
        {"nats": {**config.nats.model_dump(by_alias=True), "tlsCaFile": None, "tlsVerify": False}}
    )
    assert await _connects(BusSettings.from_config(skipped, "sync-engine"))  # tlsVerify false: not verified

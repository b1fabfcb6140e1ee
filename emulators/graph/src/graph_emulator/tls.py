"""A self-signed TLS certificate (cryptography) for the emulator's https endpoint; clients trust it as their CA."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """PEM certificate and key for `host` (and localhost), valid for a day, written to `directory`."""
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    cert_pem, key_pem = _self_signed(ec.generate_private_key(ec.SECP256R1()), host, timedelta(days=1), names)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "graph-emulator-cert.pem", directory / "graph-emulator-key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return cert_path, key_path


def app_certificate(name: str) -> tuple[str, str]:
    """(certificate PEM, unencrypted private key PEM) of a fresh self-signed RSA certificate for an app registration's
    certificate credential, as `New-SelfSignedCertificate` or openssl makes one (tests; the config's `certificates`)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert_pem, key_pem = _self_signed(key, name, timedelta(days=365))
    return cert_pem.decode("ascii"), key_pem.decode("ascii")


def _self_signed(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    common_name: str,
    valid_for: timedelta,
    names: list[x509.GeneralName] | None = None,
) -> tuple[bytes, bytes]:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + valid_for)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem

"""A Graph provider's client certificate (`calendarProviders[].clientCertificate`): the certificate registered with
the Entra app (a PEM file path, or the PEM text itself) and its private key (PEM text, kept encrypted in config.json
like every secret). Read by `config check` and by graph-ingest, which signs its client assertion with it
(https://learn.microsoft.com/en-us/entra/identity-platform/certificate-credentials).

Thumbprints are those of the certificate's DER encoding: SHA-1 in upper-case hex is what the Entra admin center
shows under Certificates & secrets; SHA-256 is what MSAL puts into the assertion's `x5t#S256`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


class CertificateError(ValueError):
    """The certificate or key cannot be used; the message says why (without the key's text)."""


@dataclass(frozen=True)
class ClientCertificate:
    #: The certificate as PEM text.
    pem: str
    #: SHA-1 thumbprint, upper-case hex (as the Entra admin center lists it).
    thumbprint: str
    sha256_thumbprint: str
    not_after: str


def read_certificate(value: str) -> ClientCertificate:
    """`value` is PEM text (starts with -----BEGIN CERTIFICATE-----) or the path of a PEM file."""
    text = value.strip()
    if not text.startswith(PEM_CERTIFICATE):
        try:
            text = Path(value).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise CertificateError(f"cannot read the certificate file {value!r}: {exc}") from None
    try:
        certificate = x509.load_pem_x509_certificate(text.encode("ascii"))
    except ValueError as exc:
        raise CertificateError(f"is not a PEM X.509 certificate ({exc})") from None
    if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
        raise CertificateError("is not an RSA certificate (Entra app certificates are RSA)")
    return ClientCertificate(
        pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        thumbprint=certificate.fingerprint(hashes.SHA1()).hex().upper(),
        sha256_thumbprint=certificate.fingerprint(hashes.SHA256()).hex(),
        not_after=certificate.not_valid_after_utc.isoformat(),
    )


def check_private_key(key_pem: str, certificate: ClientCertificate) -> None:
    """The key is an unencrypted PEM private key whose public half is the certificate's."""
    try:
        key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise CertificateError(
            f"is not an unencrypted PEM private key ({type(exc).__name__}; encrypt the PEM text with "
            "tc-calendar --hash_pass, not with a passphrase)"
        ) from None
    cert = x509.load_pem_x509_certificate(certificate.pem.encode("ascii"))
    ours = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    theirs = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if ours != theirs:
        raise CertificateError(f"does not belong to the certificate with thumbprint {certificate.thumbprint}")

"""Certificate credentials at the token endpoint: a client assertion (RFC 7523 JWT bearer) instead of a secret.

https://learn.microsoft.com/en-us/entra/identity-platform/certificate-credentials:
- form fields `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and `client_assertion`;
- header `alg` PS256 with `x5t#S256` (base64url SHA-256 thumbprint of the certificate's DER), or the older RS256
  with `x5t` (SHA-1 thumbprint); `x5c` may carry the certificate itself;
- claims `aud` = the tenant's token endpoint, `iss` = `sub` = the client id, `exp`, `nbf`, `jti`;
- the signature checked with a certificate uploaded to the app registration.

Refusals as the identity platform answers them (error codes:
https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes, and the client assertion table of
https://learn.microsoft.com/en-us/azure/developer/java/sdk/troubleshooting-authentication-service-principal):
AADSTS50027 malformed JWT, AADSTS700027 a certificate not registered on the app or a bad signature, AADSTS700021 the
assertion's iss/sub is not the client id, AADSTS700023 its audience is not this token endpoint, AADSTS700024 not
within its valid time range, AADSTS7000216 (as for a missing secret) a wrong client_assertion_type.
"""

from __future__ import annotations

import base64
import hashlib

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Seconds of clock difference tolerated on exp / nbf.
LEEWAY_S = 300


class AssertionRefusedError(Exception):
    """The answer the identity platform gives: HTTP status, OAuth error, AADSTS code, description."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(f"AADSTS{code}: {description}")
        self.status, self.error, self.code, self.description = status, error, code, description


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _thumbprints(pem: str) -> tuple[str, str, x509.Certificate]:
    certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    der = certificate.public_bytes(serialization.Encoding.DER)
    return _b64(hashlib.sha256(der).digest()), _b64(hashlib.sha1(der).digest()), certificate


def verify(
    assertion: str, assertion_type: str, *, client_id: str, token_endpoint: str, certificates: tuple[str, ...]
) -> None:
    """Raise AssertionRefusedError unless `assertion` is a valid client assertion of `client_id` for this endpoint."""
    if assertion_type != ASSERTION_TYPE:
        raise AssertionRefusedError(
            401,
            "invalid_client",
            7000216,
            f"'client_assertion_type' must be '{ASSERTION_TYPE}', got '{assertion_type}'.",
        )
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError as exc:
        raise AssertionRefusedError(
            401, "invalid_client", 50027, f"JWT token is invalid or malformed: {exc}."
        ) from None
    # RFC 7515 §4.1.7 writes the thumbprint base64url without padding; MSAL keeps the "=" padding and the
    # identity platform takes both.
    used = str(header.get("x5t#S256") or header.get("x5t") or "").rstrip("=")
    algorithm = str(header.get("alg", ""))
    key: rsa.RSAPublicKey | None = None
    for pem in certificates:
        sha256, sha1, certificate = _thumbprints(pem)
        public = certificate.public_key()
        if used in (sha256, sha1) and isinstance(public, rsa.RSAPublicKey):
            key = public
            break
    if key is None:
        raise AssertionRefusedError(
            401,
            "invalid_client",
            700027,
            "Client assertion failed signature validation. [Reason - The key was not found., Thumbprint of key used "
            f"by client: '{used}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see "
            f"configured keys for app Id '{client_id}'.]",
        )
    if algorithm not in ("PS256", "RS256"):
        raise AssertionRefusedError(
            401, "invalid_client", 700027, f"Client assertion uses an unsupported alg '{algorithm}'."
        )
    try:
        claims = jwt.decode(
            assertion,
            key=key,
            algorithms=[algorithm],
            audience=token_endpoint,
            leeway=LEEWAY_S,
            options={"require": ["aud", "iss", "exp"]},
        )
    except jwt.InvalidSignatureError:
        raise AssertionRefusedError(
            401,
            "invalid_client",
            700027,
            "Client assertion failed signature validation. [Reason - The provided signature value did not match the "
            "expected signature value.]",
        ) from None
    except jwt.InvalidAudienceError:
        raise AssertionRefusedError(
            401,
            "invalid_client",
            700023,
            f"Client assertion audience claim does not match Realm issuer. Expected '{token_endpoint}'.",
        ) from None
    except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
        raise AssertionRefusedError(
            401, "invalid_client", 700024, "Client assertion is not within its valid time range."
        ) from None
    except jwt.InvalidTokenError as exc:
        raise AssertionRefusedError(
            401, "invalid_client", 50027, f"JWT token is invalid or malformed: {exc}."
        ) from None
    if claims.get("iss") != client_id or claims.get("sub", client_id) != client_id:
        raise AssertionRefusedError(
            401,
            "invalid_client",
            700021,
            f"Client assertion application identifier doesn't match 'client_id' parameter. Review the assertion's "
            f"iss and sub: both must be '{client_id}'.",
        )

"""Certificate credentials at the token endpoint: azure-identity's CertificateCredential (an independent peer) gets a
token with a certificate registered on the app and is refused with AADSTS700027 for another; hand-made client
assertions (PyJWT) show the other refusals: expired (700024), another audience (700023), another issuer (700021),
a wrong client_assertion_type, a malformed JWT."""

from __future__ import annotations

import base64
import hashlib
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import CertificateCredential
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from graph_emulator_support import SCOPES

from graph_emulator.client_assertion import ASSERTION_TYPE
from graph_emulator.testing import CERTIFICATE_APP_ID, TENANT_ID, EmulatorProcess, build_config, start_emulator
from graph_emulator.tls import app_certificate

REGISTERED = app_certificate("emulator test app")
STRANGER = app_certificate("someone else")


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """The emulator with one more app: Calendars.Read, a certificate and no secret."""
    with start_emulator(build_config(certificate=REGISTERED[0])) as handle:
        yield handle


def _certificate_credential(emu: EmulatorProcess, pair: tuple[str, str]) -> CertificateCredential:
    return CertificateCredential(
        TENANT_ID,
        CERTIFICATE_APP_ID,
        certificate_data=(pair[1] + pair[0]).encode(),
        authority=emu.authority,
        connection_verify=emu.ca_file,
    )


async def test_azure_identity_certificate_credential_gets_a_token(emu: EmulatorProcess) -> None:
    async with _certificate_credential(emu, REGISTERED) as cred:
        token = await cred.get_token(*SCOPES)
    assert token.token and token.expires_on > time.time()


async def test_an_unregistered_certificate_is_refused_with_aadsts700027(emu: EmulatorProcess) -> None:
    async with _certificate_credential(emu, STRANGER) as cred:
        with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
            await cred.get_token(*SCOPES)


def _assertion(emu: EmulatorProcess, **claims: Any) -> str:
    certificate = x509.load_pem_x509_certificate(REGISTERED[0].encode())
    der = certificate.public_bytes(serialization.Encoding.DER)
    now = int(time.time())
    body = {
        "aud": f"{emu.authority}/{TENANT_ID}/oauth2/v2.0/token",
        "iss": CERTIFICATE_APP_ID,
        "sub": CERTIFICATE_APP_ID,
        "jti": str(uuid.uuid4()),
        "nbf": now,
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    return jwt.encode(body, REGISTERED[1], algorithm="PS256", headers={"x5t#S256": thumbprint})


async def _token(emu: EmulatorProcess, assertion: str, kind: str = ASSERTION_TYPE) -> tuple[int, dict[str, Any]]:
    form = {
        "grant_type": "client_credentials",
        "client_id": CERTIFICATE_APP_ID,
        "client_assertion_type": kind,
        "client_assertion": assertion,
        "scope": "https://graph.microsoft.com/.default",
    }
    context = ssl.create_default_context(cafile=emu.ca_file)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emu.authority}/{TENANT_ID}/oauth2/v2.0/token", data=form, ssl=context) as resp,
    ):
        return resp.status, await resp.json()


async def test_hand_made_assertions_are_checked_claim_by_claim(emu: EmulatorProcess) -> None:
    status, good = await _token(emu, _assertion(emu))
    assert status == 200 and good["token_type"] == "Bearer"
    refusals = {
        "expired": await _token(emu, _assertion(emu, nbf=1, iat=1, exp=2)),
        "audience": await _token(emu, _assertion(emu, aud="https://login.microsoftonline.com/x/oauth2/v2.0/token")),
        "issuer": await _token(emu, _assertion(emu, iss="another-app", sub="another-app")),
        "type": await _token(emu, _assertion(emu), kind="urn:ietf:params:oauth:client-assertion-type:saml2-bearer"),
        "malformed": await _token(emu, "not-a-jwt"),
    }
    assert {name: (status, body["error"], body["error_codes"]) for name, (status, body) in refusals.items()} == {
        "expired": (401, "invalid_client", [700024]),
        "audience": (401, "invalid_client", [700023]),
        "issuer": (401, "invalid_client", [700021]),
        "type": (401, "invalid_client", [7000216]),
        "malformed": (401, "invalid_client", [50027]),
    }

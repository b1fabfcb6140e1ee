"""Certificate credentials: `clientCertificate` (a PEM file or inline PEM, the private key encrypted like every
secret) instead of `clientSecret`. graph-ingest signs a client assertion with MSAL; the Graph emulator's token
endpoint checks it against the certificates registered with the app and refuses an unregistered one (AADSTS700027).
`config check` explains a bad entry."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from ews_ingest_support import ChangeCollector
from graph_ingest_support import (
    GraphWriter,
    SeatServer,
    graph_config,
    graph_provider,
    new_mailboxes,
    running_graph,
    write_config,
)

from graph_emulator.testing import CERTIFICATE_APP_ID, TENANT_ID, EmulatorProcess, build_config, start_emulator
from graph_emulator.tls import app_certificate
from graph_ingest.settings import GraphSettings, Tuning
from graph_ingest.token import GraphAuthError, TokenSource
from tccal import secrets
from tccal.config import Config, ConfigError, load_config
from tccal_sandbox.embedded import EmbeddedNats

REGISTERED = app_certificate("graph-ingest test app")
STRANGER = app_certificate("not registered")
CLI = [sys.executable, "-m", "tccal.cli"]


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """The emulator with one more app: Calendars.Read, a certificate and no secret."""
    with start_emulator(build_config(certificate=REGISTERED[0])) as handle:
        yield handle


def certificate_provider(emu: EmulatorProcess, users: list[str], certificate: str, key: str) -> dict[str, Any]:
    section = graph_provider(emu, users, client_id=CERTIFICATE_APP_ID, name="m365")
    del section["clientSecret"]
    section["clientCertificate"] = {"certificate": certificate, "privateKey": key}
    return section


def sha1_thumbprint(pem: str) -> str:
    """As the Entra admin center lists a certificate (SHA-1 of the DER, upper-case hex)."""
    return x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA1()).hex().upper()


def settings_of(config: dict[str, Any]) -> GraphSettings:
    return GraphSettings.from_config(
        Config.model_validate(config), lambda v: secrets.reveal(v, allow_plaintext=True), Tuning()
    )


async def test_a_registered_certificate_gets_a_token_and_the_mailbox_syncs(
    emu: EmulatorProcess,
    nats_server: EmbeddedNats,
    seats: SeatServer,
    collector: ChangeCollector,
    writer: GraphWriter,
    tmp_path: Path,
) -> None:
    (mailbox,) = new_mailboxes(emu, "sofia")
    event = await writer.create(mailbox, "Signed in with a certificate")
    pem_file = tmp_path / "app.pem"
    pem_file.write_text(REGISTERED[0])
    provider = certificate_provider(emu, [mailbox], str(pem_file), secrets.encrypt(REGISTERED[1]))
    config = graph_config(seats.address, [provider])
    settings = settings_of(config)
    (entry,) = settings.providers
    assert entry.client_secret == "" and entry.client_certificate is not None
    assert entry.client_certificate.thumbprint == sha1_thumbprint(REGISTERED[0])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        await graph.rounds(mailbox)
        assert graph.runtime.clients["m365"].tokens.acquired == 1
    assert [c.item_id for c in collector.of(mailbox)] == [event["id"]]


async def test_an_unregistered_certificate_is_refused_naming_its_thumbprint(emu: EmulatorProcess) -> None:
    inline = certificate_provider(emu, ["anna@contoso.test"], STRANGER[0], STRANGER[1])
    (entry,) = settings_of(graph_config("127.0.0.1:1", [inline])).providers
    tokens = TokenSource(entry, timeout=30)
    with pytest.raises(GraphAuthError) as refused:
        await tokens.token()
    message = str(refused.value)
    assert "invalid_client: AADSTS700027: Client assertion failed signature validation" in message
    assert "check calendarProviders[0].clientCertificate (is the certificate with thumbprint " in message
    assert sha1_thumbprint(STRANGER[0]) in message
    assert tokens.acquired == 0


def test_a_key_of_another_certificate_is_refused_at_start(emu: EmulatorProcess) -> None:
    wrong = certificate_provider(emu, [], REGISTERED[0], STRANGER[1])
    with pytest.raises(ValueError, match=r"calendarProviders\[0\]\.clientCertificate\.privateKey: does not belong"):
        settings_of(graph_config("127.0.0.1:1", [wrong]))


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "config", "check", str(path)], capture_output=True, text=True, env=os.environ)


def test_config_check_explains_both_neither_and_an_unreadable_certificate(tmp_path: Path) -> None:
    base = {
        "type": "graph",
        "tenantId": TENANT_ID,
        "clientId": CERTIFICATE_APP_ID,
        "users": ["sofia@contoso.test"],
    }
    key = secrets.encrypt(REGISTERED[1])

    def config_file(name: str, provider: dict[str, Any]) -> Path:
        return write_config(tmp_path, provider, name=name)

    both = config_file(
        "both.json",
        {
            **base,
            "clientSecret": secrets.encrypt("s"),
            "clientCertificate": {"certificate": REGISTERED[0], "privateKey": key},
        },
    )
    neither = config_file("neither.json", base)
    missing = tmp_path / "missing.pem"
    unreadable = config_file(
        "unreadable.json", {**base, "clientCertificate": {"certificate": str(missing), "privateKey": key}}
    )
    garbage = config_file("garbage.json", {**base, "clientCertificate": {"certificate": str(both), "privateKey": key}})
    good = config_file("good.json", {**base, "clientCertificate": {"certificate": REGISTERED[0], "privateKey": key}})
    answers = {path.name: _check(path) for path in (both, neither, unreadable, garbage, good)}
    assert answers["good.json"].returncode == 0, answers["good.json"].stderr
    assert {name: a.returncode for name, a in answers.items() if name != "good.json"} == dict.fromkeys(
        ["both.json", "neither.json", "unreadable.json", "garbage.json"], 2
    )
    assert answers["both.json"].stderr.splitlines() == [
        f"{both}: calendarProviders[0]: has both clientSecret and clientCertificate: give the app's credential once"
    ]
    assert answers["neither.json"].stderr.splitlines() == [
        f"{neither}: calendarProviders[0]: has neither clientSecret nor clientCertificate: give the app's client "
        "secret or certificate"
    ]
    assert answers["unreadable.json"].stderr.startswith(
        f"{unreadable}: calendarProviders[0].clientCertificate.certificate: cannot read the certificate file "
        f"'{missing}'"
    )
    assert answers["garbage.json"].stderr.startswith(
        f"{garbage}: calendarProviders[0].clientCertificate.certificate: is not a PEM X.509 certificate"
    )
    with pytest.raises(ConfigError) as plain:  # the private key is a secret: plaintext only where allowed
        load_config(
            config_file(
                "plain.json",
                {**base, "clientCertificate": {"certificate": REGISTERED[0], "privateKey": REGISTERED[1]}},
            )
        )
    assert any("clientCertificate.privateKey" in str(p) for p in plain.value.problems)

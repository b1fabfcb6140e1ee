"""Who gets in (docs/bridge-protocol.md §3, §6.1, §8): whitelist, secret, protocol version, auth timeout,
a second auth, requests before auth, a newer connection replacing an older one; and wss://."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tcs_gateway_testkit import (
    SERVER_ID,
    RawBridgeClient,
    World,
    bridge_state,
    gateway_protocol_errors,
    gateway_settings,
    server_settings,
    wait_connected,
)

from tccal_sandbox.testing import wait_for_async


async def test_only_whitelisted_servers_with_the_right_secret_get_in(world: World) -> None:
    other = server_settings(server_id="other.example.test#vcs", secret="other-secret")
    # All three emulators connect from 127.0.0.1: the address's back-off after failed auths (tested in
    # test_tcs_gateway_bridge_flood.py) is kept out of the way so that each refusal is seen with its own code.
    gateway = await world.gateway(
        gateway_settings(
            world.sync,
            [server_settings(), other],
            whitelist=[SERVER_ID],  # `other` not whitelisted
            auth_failures_before_backoff=1000,
        )
    )
    good = await world.tcs(gateway.url)
    stranger = await world.tcs(gateway.url, server_id="other.example.test#vcs", secret="other-secret")
    wrong_secret = await world.tcs(gateway.url, server_id=SERVER_ID, secret="guessed")

    await wait_connected(good)

    async def refused(tcs: object, code: int) -> bool:
        state = await bridge_state(tcs)  # type: ignore[arg-type]
        return state["auth_failures"] >= 1 and any(
            close["code"] == code and close["initiator"] == "gateway" for close in state["close_history"]
        )

    await wait_for_async(lambda: refused(stranger, 4003), what="the non-whitelisted server closed with 4003")
    await wait_for_async(lambda: refused(wrong_secret, 4001), what="the wrong secret closed with 4001")
    stranger_state = await bridge_state(stranger)
    assert "SERVER_NOT_WHITELISTED" in stranger_state["last_error"]
    assert stranger_state["authenticated_connections"] == 0
    wrong_state = await bridge_state(wrong_secret)
    assert "BAD_SECRET" in wrong_state["last_error"]
    assert "guessed" not in wrong_state["last_error"]
    assert wrong_state["authenticated_connections"] == 0
    # The good one is undisturbed and still the only session of its server id.
    assert gateway.server().session is not None
    assert (await bridge_state(good))["authenticated_connections"] == 1
    assert gateway_protocol_errors(await bridge_state(good)) == []
    errors = gateway.gateway.server_statuses()
    listed = {status.server_id: status for status in errors.servers}
    assert set(listed) == {SERVER_ID}
    assert listed[SERVER_ID].connected
    assert any("secret" in text for text in listed[SERVER_ID].last_errors)


async def test_version_second_auth_requests_before_auth_and_timeout(world: World) -> None:
    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()], auth_timeout=1.0))
    async with RawBridgeClient(gateway.url) as client:
        early = await client.call(
            "getCalendarList",
            {"user": "bob@example.test", "from": "2025-06-01T00:00:00Z", "to": "2025-07-01T00:00:00Z"},
        )
        assert early["payload"]["errorCode"] == 3
        pong = await client.call("ping", {})
        assert pong["payload"]["errorCode"] == 0
        reply = await client.call("auth", {"serverId": SERVER_ID, "secret": "bridge-secret", "protocolVersion": 2})
        assert reply["payload"]["errorCode"] == 10
        assert reply["payload"]["supportedVersions"] == [1]
        assert await client.closed() == 4010
    async with RawBridgeClient(gateway.url) as client:
        first = await client.auth()
        assert first["payload"]["errorCode"] == 0
        assert first["payload"]["limits"]["maxInFlight"] == 64
        second = await client.auth()
        assert second["payload"]["errorCode"] == 11
        assert (await client.call("ping", {}))["payload"]["errorCode"] == 0  # still open, still authenticated
    async with RawBridgeClient(gateway.url) as client:
        assert await client.closed(timeout=10) == 4008  # no auth within authTimeoutSec (1 s here)


async def test_a_newer_connection_replaces_the_older_one(world: World) -> None:
    gateway = await world.gateway(gateway_settings(world.sync, [server_settings()]))
    async with RawBridgeClient(gateway.url) as old, RawBridgeClient(gateway.url) as new:
        assert (await old.auth(maxInFlight=8))["payload"]["limits"]["maxInFlight"] == 8
        assert (await new.auth())["payload"]["errorCode"] == 0
        assert await old.closed() == 4005
        assert (await new.call("ping", {}))["payload"]["errorCode"] == 0
        assert gateway.server().session is not None
        assert gateway.server().session.peer != ""


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "gateway.pem"
    key_path = directory / "gateway.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_tls_bridge(world: World, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    settings = gateway_settings(world.sync, [server_settings()])
    settings = dataclasses.replace(settings, tls_cert_file=str(cert), tls_key_file=str(key))
    gateway = await world.gateway(settings)
    assert gateway.url.startswith("wss://")
    tcs = await world.tcs(gateway.url, extra={"gateway_ca_file": str(cert)})
    state = await wait_connected(tcs)
    assert state["session"]["protocolVersion"] == 1

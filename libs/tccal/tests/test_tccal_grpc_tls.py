"""gRPC over TLS and mTLS (`grpc.tls`) with a throw-away CA made here: a real server and real clients."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tccal.config.schema import GrpcTlsConfig
from tccal.grpckit import GrpcCaller, GrpcServer, TlsMaterial, service_token
from trueconf.calendar.v1 import gateway_pb2, gateway_pb2_grpc

SERVICE_HOST = "licensing.connector.test"  # the name in the services' certificate (besides localhost)
TOKEN = "tls-admin-token"


@dataclass
class Pem:
    cert: bytes
    key: bytes


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(common: str) -> tuple[Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key), key, cert


def issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common: str, names: list[str]) -> Pem:
    """A certificate for servers and clients alike (serverAuth + clientAuth), as the services use one."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert, key)


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    return Pem(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


@pytest.fixture(scope="module")
def pki() -> dict[str, Pem]:
    ca, ca_key, ca_cert = make_ca("connector test CA")
    stranger_ca, stranger_key, stranger_cert = make_ca("somebody else's CA")
    return {
        "ca": ca,
        "service": issue(ca_key, ca_cert, "tc-calendar services", ["localhost", SERVICE_HOST]),
        "stranger-ca": stranger_ca,
        "stranger": issue(stranger_key, stranger_cert, "not ours", ["localhost"]),
    }


class Gateway(gateway_pb2_grpc.GatewayServiceServicer):
    async def ListServers(  # noqa: N802 - gRPC method name
        self, request: gateway_pb2.ListServersRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> gateway_pb2.ListServersResponse:
        return gateway_pb2.ListServersResponse(servers=[gateway_pb2.ServerStatus(server_id="tls#vcs")])


async def started(tls: TlsMaterial, token: str = "") -> GrpcServer:
    server = GrpcServer("127.0.0.1", 0, admin_token=token, tls=tls)
    server.add(gateway_pb2_grpc.add_GatewayServiceServicer_to_server, Gateway(), "trueconf.calendar.v1.GatewayService")
    await server.start()
    return server


async def call(channel: grpc.aio.Channel, token: str = "") -> grpc.StatusCode:
    try:
        reply = await gateway_pb2_grpc.GatewayServiceStub(channel).ListServers(
            gateway_pb2.ListServersRequest(), metadata=GrpcCaller(token).metadata(), timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    assert reply.servers[0].server_id == "tls#vcs"
    return grpc.StatusCode.OK


async def through(caller: GrpcCaller, address: str) -> grpc.StatusCode:
    async with caller.aio_channel(address) as channel:
        return await call(channel, caller.token)


async def test_tls_serves_verified_clients_and_refuses_plaintext(pki: dict[str, Pem]) -> None:
    server = await started(TlsMaterial(cert=pki["service"].cert, key=pki["service"].key))
    port = server.port
    trusting = GrpcCaller(tls=TlsMaterial(ca=pki["ca"].cert))
    # the server name checked is the host of the address
    assert await through(trusting, f"localhost:{port}") == grpc.StatusCode.OK
    # a plaintext client gets nowhere
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
        assert await call(plain) == grpc.StatusCode.UNAVAILABLE
    # a client that does not trust our CA refuses the server
    assert await through(GrpcCaller(tls=TlsMaterial(ca=pki["stranger-ca"].cert)), f"localhost:{port}") == (
        grpc.StatusCode.UNAVAILABLE
    )
    # an IP-only address: the certificate names no IP, so the name must be given (grpc.tls.serverName)
    assert await through(trusting, f"127.0.0.1:{port}") == grpc.StatusCode.UNAVAILABLE
    named = GrpcCaller(tls=TlsMaterial(ca=pki["ca"].cert, server_name=SERVICE_HOST))
    assert await through(named, f"127.0.0.1:{port}") == grpc.StatusCode.OK
    await server.stop(0)


async def test_mtls_refuses_clients_without_a_certificate_of_our_ca(pki: dict[str, Pem]) -> None:
    service = pki["service"]
    tls = TlsMaterial(cert=service.cert, key=service.key, ca=pki["ca"].cert, require_client_cert=True)
    server = await started(tls, token=TOKEN)
    address = f"localhost:{server.port}"
    ingest = service_token(TOKEN, "ews-ingest")
    # a service of the installation: its certificate, and still its token (the guard is on)
    assert await through(GrpcCaller(ingest, tls), address) == grpc.StatusCode.PERMISSION_DENIED
    assert await through(GrpcCaller(TOKEN, tls), address) == grpc.StatusCode.OK
    assert await through(GrpcCaller("", tls), address) == grpc.StatusCode.UNAUTHENTICATED
    # the right token without a client certificate: refused in the handshake
    assert await through(GrpcCaller(TOKEN, TlsMaterial(ca=pki["ca"].cert)), address) == grpc.StatusCode.UNAVAILABLE
    # a client certificate of another CA: refused too
    stranger = TlsMaterial(cert=pki["stranger"].cert, key=pki["stranger"].key, ca=pki["ca"].cert)
    assert await through(GrpcCaller(TOKEN, stranger), address) == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(address) as plain:
        assert await call(plain, TOKEN) == grpc.StatusCode.UNAVAILABLE
    await server.stop(0)


def test_tls_settings_are_read_from_files_and_bad_ones_name_the_key(pki: dict[str, Pem], tmp_path: Path) -> None:
    for name, data in (("cert.pem", pki["service"].cert), ("key.pem", pki["service"].key), ("ca.pem", pki["ca"].cert)):
        (tmp_path / name).write_bytes(data)
    cert, key, ca = (str(tmp_path / n) for n in ("cert.pem", "key.pem", "ca.pem"))
    assert TlsMaterial.from_config(GrpcTlsConfig()) is None  # the default: plaintext
    material = TlsMaterial.from_config(
        GrpcTlsConfig.model_validate(
            {"certFile": cert, "keyFile": key, "caFile": ca, "requireClientCert": True, "serverName": "x.test"}
        )
    )
    assert material is not None and material.serves and material.require_client_cert
    assert material.ca == pki["ca"].cert and material.server_name == "x.test"
    client_only = TlsMaterial.from_config(GrpcTlsConfig.model_validate({"caFile": ca}))
    assert client_only is not None and not client_only.serves  # a CLI machine: TLS client, no server
    with pytest.raises(ValueError, match=r"grpc\.tls\.caFile: cannot read"):
        TlsMaterial.from_config(GrpcTlsConfig.model_validate({"caFile": str(tmp_path / "missing.pem")}))
    with pytest.raises(ValueError, match="certFile and keyFile go together"):
        TlsMaterial.from_config(GrpcTlsConfig.model_validate({"certFile": cert}))
    with pytest.raises(ValueError, match=r"requireClientCert: needs"):
        TlsMaterial.from_config(
            GrpcTlsConfig.model_validate({"certFile": cert, "keyFile": key, "requireClientCert": True})
        )


async def test_the_cli_calls_as_admin_over_mtls_as_the_config_says(pki: dict[str, Pem], tmp_path: Path) -> None:
    """`tc-calendar grpc`: the admin token and grpc.tls from config.json (client certificate, CA, server name)."""
    service = pki["service"]
    tls = TlsMaterial(cert=service.cert, key=service.key, ca=pki["ca"].cert, require_client_cert=True)
    server = await started(tls, token=TOKEN)
    for name, data in (("cert.pem", service.cert), ("key.pem", service.key), ("ca.pem", pki["ca"].cert)):
        (tmp_path / name).write_bytes(data)
    files = {"certFile": "cert.pem", "keyFile": "key.pem", "caFile": "ca.pem"}
    tls_section = {key: str(tmp_path / name) for key, name in files.items()}
    endpoint = {"tcs-gateway": {"address": f"127.0.0.1:{server.port}"}}

    def run(token: str, tls_config: dict[str, object]) -> subprocess.CompletedProcess[str]:
        config = tmp_path / "config.json"
        document = {
            "grpc": {"adminToken": token, "services": endpoint, "tls": tls_config},
            "allowPlaintextPasswords": True,
        }
        config.write_text(json.dumps(document))
        command = [sys.executable, "-m", "tccal.cli", "grpc", "tcs-gateway", "ListServers", "--config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    named = {**tls_section, "serverName": SERVICE_HOST}
    answer = await asyncio.to_thread(run, TOKEN, named)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["servers"][0]["server_id"] == "tls#vcs"
    wrong = await asyncio.to_thread(run, "not-the-token", named)
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr
    no_cert = await asyncio.to_thread(run, TOKEN, {"caFile": tls_section["caFile"], "serverName": SERVICE_HOST})
    assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr
    await server.stop(0)

"""TLS to PostgreSQL through a real server: PostgreSQL with ssl=on (pgserver's build has no OpenSSL, so the system's
PostgreSQL binaries are used, as pgserver would: initdb and pg_ctl as its user), a certificate for `localhost` from a
CA made here, TLS-only connections (pg_hba `hostssl`, plaintext rejected) that must present a client certificate
of that CA. verify-full with the right CA connects; another CA or another host name is refused with a clear error;
`config check` warns about sslMode disable for a host beyond loopback."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tccal.config import Config
from tccal.db import PostgresTlsError, create_pool
from tccal.db_tls import effective_ssl_mode
from tccal_sandbox.embedded import free_port
from tccal_sandbox.testing import short_tmpdir

CLI = [sys.executable, "-m", "tccal.cli"]


# ------------------------------------------------------------------------------------------------- the PKI
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    dns: str | None = None,
    client: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        return builder.sign(key, hashes.SHA256())
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if dns is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


@dataclass(frozen=True)
class TlsPostgres:
    port: int
    ca: Path
    other_ca: Path
    client_cert: Path
    client_key: Path


def _debian_bin_dirs() -> list[Path]:
    """Where Debian's postgresql-NN packages put their binaries (not on PATH), the newest version first."""
    found = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if d.parent.name.isdigit()]
    return sorted(found, key=lambda d: int(d.parent.name), reverse=True)


def _ssl_capable_bin_dir() -> Path | None:
    """PostgreSQL binaries built with OpenSSL: pgserver's when they are (its wheels are not, so far), else the
    system's `postgres` on PATH, else Debian's /usr/lib/postgresql/NN/bin (Debian's postgresql package is built
    with OpenSSL; .ci/run installs it where none is)."""
    import shutil

    from pgserver._commands import POSTGRES_BIN_PATH  # type: ignore[import-untyped]

    system = shutil.which("postgres")
    on_path = [Path(system).resolve().parent] if system else []
    for bin_dir in (Path(POSTGRES_BIN_PATH), *on_path, *_debian_bin_dirs()):
        pg_config = bin_dir / "pg_config"
        if not pg_config.exists():
            continue
        configure = subprocess.run([str(pg_config), "--configure"], capture_output=True, text=True).stdout
        if "--with-openssl" in configure or "--with-ssl=openssl" in configure:
            return bin_dir
    return None


def _as_postgres_user(bin_dir: Path, *args: str) -> None:
    """Run a PostgreSQL program as pgserver's system user when we are root (PostgreSQL refuses root)."""
    user = "pgserver" if os.geteuid() == 0 else None
    done = subprocess.run([str(bin_dir / args[0]), *args[1:]], user=user, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPostgres]:
    bin_dir = _ssl_capable_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL built with OpenSSL here (pgserver's is not; install Debian's postgresql)")
    pki = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = _certificate("test PostgreSQL CA", ca_key, None)
    _write(pki / "ca.crt", ca)
    _write(pki / "other-ca.crt", _certificate("another CA", other_key, None))
    client_key = _key()
    _write(pki / "client.crt", _certificate("postgres", client_key, (ca, ca_key), client=True), client_key)

    data = short_tmpdir("tcpgtls")
    if os.geteuid() == 0:
        import shutil

        shutil.chown(data, "pgserver", "pgserver")
    _as_postgres_user(bin_dir, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=utf8")
    server_key = _key()
    _write(data / "server.crt", _certificate("localhost", server_key, (ca, ca_key), dns="localhost"), server_key)
    _write(data / "root.crt", ca)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n")
    # TLS only, and only with a client certificate of the CA (the socket stays open for nobody but the owner).
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n"
        "hostnossl all all 127.0.0.1/32 reject\n"
    )
    if os.geteuid() == 0:
        import shutil

        for name in ("server.crt", "server.key", "root.crt", "pg_hba.conf"):
            shutil.chown(data / name, "pgserver", "pgserver")
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k {data}"
    _as_postgres_user(bin_dir, "pg_ctl", "-D", str(data), "-w", "-o", options, "-l", str(data / "log"), "start")
    try:
        yield TlsPostgres(port, pki / "ca.crt", pki / "other-ca.crt", pki / "client.crt", pki / "client.key")
    finally:
        _as_postgres_user(bin_dir, "pg_ctl", "-D", str(data), "-w", "-m", "fast", "stop")


def _config(server: TlsPostgres, host: str = "localhost", **tls: str) -> Config:
    db = {"host": host, "port": server.port, "user": "postgres", "database": "postgres", "poolMin": 1, "poolMax": 1}
    return Config.model_validate({"dbConnectionConfig": {**db, **tls}})


def _client(server: TlsPostgres) -> dict[str, str]:
    return {"sslCert": str(server.client_cert), "sslKey": str(server.client_key)}


# ------------------------------------------------------------------------------------------------- the tests
async def test_verify_full_with_the_right_ca_connects_over_tls(tls_postgres: TlsPostgres) -> None:
    config = _config(tls_postgres, sslMode="verify-full", sslRootCert=str(tls_postgres.ca), **_client(tls_postgres))
    pool = await create_pool(config)
    try:
        encrypted = await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert encrypted is True
    finally:
        await pool.close()
    # verify-ca checks the CA but not the name: 127.0.0.1 is not in the certificate, and still connects.
    config = _config(
        tls_postgres, "127.0.0.1", sslMode="verify-ca", sslRootCert=str(tls_postgres.ca), **_client(tls_postgres)
    )
    pool = await create_pool(config)
    await pool.close()


async def test_another_ca_is_refused_with_a_clear_error(tls_postgres: TlsPostgres) -> None:
    config = _config(
        tls_postgres, sslMode="verify-full", sslRootCert=str(tls_postgres.other_ca), **_client(tls_postgres)
    )
    with pytest.raises(PostgresTlsError) as refused:
        await create_pool(config)
    message = str(refused.value)
    assert f"PostgreSQL at localhost:{tls_postgres.port} presented a TLS certificate that is refused" in message
    assert "sslMode verify-full" in message and str(tls_postgres.other_ca) in message
    # OpenSSL's reason: the chain ends at a CA that is not the trusted one
    assert any(r in message for r in ("self-signed certificate in certificate chain", "unable to get local issuer"))
    # Without any sslRootCert the system's CAs are used: they do not know this CA either.
    with pytest.raises(PostgresTlsError, match="trusted: the system's CAs"):
        await create_pool(_config(tls_postgres, sslMode="verify-full", **_client(tls_postgres)))


async def test_another_host_name_is_refused_with_a_clear_error(tls_postgres: TlsPostgres) -> None:
    config = _config(
        tls_postgres, "127.0.0.1", sslMode="verify-full", sslRootCert=str(tls_postgres.ca), **_client(tls_postgres)
    )
    with pytest.raises(PostgresTlsError) as refused:
        await create_pool(config)
    message = str(refused.value)
    assert "presented a TLS certificate that is refused" in message
    assert "mismatch" in message and "127.0.0.1" in message, message


async def test_the_client_certificate_is_presented(tls_postgres: TlsPostgres) -> None:
    """The server demands a client certificate of its CA: without sslCert/sslKey it refuses the connection."""
    import asyncpg

    config = _config(tls_postgres, sslMode="verify-full", sslRootCert=str(tls_postgres.ca))
    with pytest.raises((asyncpg.PostgresError, ConnectionError)) as refused:
        await create_pool(config)
    assert "certificate" in str(refused.value).lower(), refused.value


async def test_disable_against_a_tls_only_server_is_refused_by_it(tls_postgres: TlsPostgres) -> None:
    import asyncpg

    config = _config(tls_postgres, sslMode="disable")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await create_pool(config)


def test_the_default_is_verify_full_beyond_loopback_and_no_tls_on_a_socket_or_loopback() -> None:
    def mode(host: str) -> str:
        return effective_ssl_mode(Config.model_validate({"dbConnectionConfig": {"host": host}}).db_connection_config)

    assert mode("db.example.com") == "verify-full"
    assert mode(str(ipaddress.ip_address("10.0.0.5"))) == "verify-full"
    assert mode("/var/run/postgresql") == "disable"
    assert mode("localhost") == mode("127.0.0.1") == mode("::1") == "disable"


def test_config_check_warns_about_sslmode_disable_beyond_loopback(tmp_path: Path) -> None:
    def check(db: dict[str, object]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "config.json"
        path.write_text(json.dumps({"dbConnectionConfig": db, "productWhitelist": {"tcs": []}}))
        return subprocess.run([*CLI, "config", "check", str(path)], capture_output=True, text=True)

    remote = check({"host": "db.example.com", "sslMode": "disable"})
    warnings = [line for line in remote.stderr.splitlines() if "dbConnectionConfig.sslMode" in line]
    assert len(warnings) == 1, remote.stderr
    assert "'disable' for PostgreSQL at 'db.example.com', beyond loopback" in warnings[0]
    for quiet in ({"host": "db.example.com"}, {"host": "127.0.0.1", "sslMode": "disable"}, {"host": "/run/pg"}):
        assert "dbConnectionConfig.sslMode" not in check(quiet).stderr, quiet
    # A TLS file a service could not read stops it, and the check says so.
    missing = check({"host": "db.example.com", "sslRootCert": str(tmp_path / "missing.crt")})
    assert missing.returncode == 2
    assert f"dbConnectionConfig.sslRootCert: {tmp_path / 'missing.crt'} is not a readable file" in missing.stderr

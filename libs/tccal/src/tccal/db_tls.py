"""TLS of every PostgreSQL connection (dbConnectionConfig.sslMode, sslRootCert, sslCert, sslKey), as libpq's sslmode.

| sslMode | encrypted | PostgreSQL's certificate |
|---|---|---|
| disable | no | - |
| require | yes | not checked; with sslRootCert checked as verify-ca (libpq does the same when a root cert exists) |
| verify-ca | yes | signed by sslRootCert (else the system's CAs) |
| verify-full | yes | that, and naming the host connected to (RFC 6125 via Python's ssl) |

Unset, the mode is verify-full, except for a Unix socket directory or a loopback host (nothing crosses a
network): disable. A server that does not speak TLS is refused in every mode but disable (no silent fallback
to plaintext: libpq's allow/prefer are not offered).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from tccal.config.schema import DbConnectionConfig

_VERIFYING = ("verify-ca", "verify-full")


def is_local(host: str) -> bool:
    """A Unix socket directory or a loopback host: the connection does not leave the machine."""
    from tccal.grpckit import is_loopback

    return host.startswith("/") or is_loopback(host)


def effective_ssl_mode(db: DbConnectionConfig) -> str:
    if db.ssl_mode is not None:
        return db.ssl_mode
    return "disable" if is_local(db.host) else "verify-full"


def _readable(path: str, key: str) -> str:
    if not Path(path).is_file():
        raise ValueError(f"dbConnectionConfig.{key}: {path} is not a readable file")
    return path


def ssl_context(db: DbConnectionConfig) -> ssl.SSLContext | None:
    """The TLS context for asyncpg's `ssl` (None: no TLS); ValueError naming the key when a file is missing or
    does not hold what it should."""
    mode = effective_ssl_mode(db)
    if mode == "disable":
        return None
    cafile = _readable(db.ssl_root_cert, "sslRootCert") if db.ssl_root_cert else None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except ssl.SSLError as exc:
        raise ValueError(f"dbConnectionConfig.sslRootCert: {cafile} holds no usable PEM certificate: {exc}") from exc
    if mode == "verify-ca" or (mode == "require" and cafile is not None):
        context.check_hostname = False
    elif mode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if db.ssl_key and not db.ssl_cert:
        raise ValueError("dbConnectionConfig.sslKey: set without sslCert")
    if db.ssl_cert:
        cert = _readable(db.ssl_cert, "sslCert")
        key = _readable(db.ssl_key, "sslKey") if db.ssl_key else None
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise ValueError(f"dbConnectionConfig.sslCert/sslKey: {cert} cannot be used: {exc}") from exc
    return context


def describe_tls_failure(db: DbConnectionConfig, exc: BaseException) -> str | None:
    """A clear sentence when `exc` is PostgreSQL's certificate (or TLS itself) being refused; None otherwise."""
    mode = effective_ssl_mode(db)
    where = f"{db.host}:{db.port}"
    trust = f"sslRootCert {db.ssl_root_cert}" if db.ssl_root_cert else "the system's CAs"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"PostgreSQL at {where} presented a TLS certificate that is refused (dbConnectionConfig.sslMode "
            f"{mode}, trusted: {trust}): {exc.verify_message or exc}"
        )
    text = str(exc)
    if "rejected SSL upgrade" in text or "does not support SSL" in text:
        return (
            f"PostgreSQL at {where} does not speak TLS and dbConnectionConfig.sslMode is {mode}: turn on ssl in "
            "PostgreSQL (or set sslMode to disable where the connection does not leave a trusted network)"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS with PostgreSQL at {where} failed (dbConnectionConfig.sslMode {mode}): {exc}"
    return None

"""PostgreSQL access shared by the services that own tables (sync-engine, licensing); TLS: tccal.db_tls."""

from __future__ import annotations

from urllib.parse import quote

import asyncpg

from tccal.config import Config
from tccal.db_tls import describe_tls_failure, ssl_context
from tccal.secrets import reveal


def dsn_from_config(config: Config) -> str:
    db = config.db_connection_config
    password = reveal(db.password, allow_plaintext=config.allow_plaintext_passwords)
    auth = quote(db.user, safe="") + (":" + quote(password, safe="") if password else "")
    if db.host.startswith("/"):
        return f"postgresql://{auth}@/{quote(db.database, safe='')}?host={quote(db.host, safe='/')}&port={db.port}"
    return f"postgresql://{auth}@{db.host}:{db.port}/{quote(db.database, safe='')}"


async def create_pool(config: Config) -> asyncpg.Pool:
    """The pool, every connection with the TLS of dbConnectionConfig.sslMode (tccal.db_tls); a refused certificate
    raises PostgresTlsError saying why."""
    db = config.db_connection_config
    context = ssl_context(db)
    try:
        pool = await asyncpg.create_pool(
            dsn_from_config(config),
            min_size=db.pool_min,
            max_size=db.pool_max,
            command_timeout=30,
            ssl=context if context is not None else False,
        )
    except (OSError, ConnectionError) as exc:
        reason = describe_tls_failure(db, exc)
        if reason is not None:
            raise PostgresTlsError(reason) from exc
        raise
    assert pool is not None
    return pool


class PostgresTlsError(ConnectionError):
    """PostgreSQL's TLS certificate was refused, or TLS could not be agreed (the message says which and why)."""


async def check_pool(pool: asyncpg.Pool) -> None:
    """Readiness check: raises if PostgreSQL does not answer."""
    async with pool.acquire(timeout=2) as connection:
        await connection.fetchval("SELECT 1")


class Database:
    """The service's pool, connected in the background with retry; readiness follows PostgreSQL."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise ConnectionError("PostgreSQL is not connected yet")
        return self._pool

    async def connect(self) -> asyncpg.Pool:
        import asyncio
        import logging

        from tccal.retry import backoff_delay

        attempt = 0
        while self._pool is None:
            attempt += 1
            try:
                self._pool = await create_pool(self.config)
            except PostgresTlsError as exc:  # a certificate can be mended on the server: keep trying, say it clearly
                logging.getLogger(__name__).error(
                    "PostgreSQL refused over TLS, retrying: %s", exc, extra={"error": str(exc), "attempt": attempt}
                )
            except (OSError, asyncpg.PostgresError) as exc:
                logging.getLogger(__name__).warning(
                    "PostgreSQL unreachable, retrying", extra={"error": str(exc), "attempt": attempt}
                )
            else:
                break
            await asyncio.sleep(backoff_delay(attempt, base=0.25, cap=5.0))
        return self._pool

    async def check(self) -> None:
        await check_pool(self.pool)

    async def close(self, *, grace_seconds: float = 1.0) -> None:
        """Close the pool gracefully for at most `grace_seconds`, then terminate its connections: a PostgreSQL that
        is shutting down or gone never holds up a stop."""
        import asyncio

        if self._pool is None:
            return
        try:
            await asyncio.wait_for(self._pool.close(), grace_seconds)
        except Exception:  # TimeoutError, or the connection broke: nothing is left to close gracefully
            self._pool.terminate()

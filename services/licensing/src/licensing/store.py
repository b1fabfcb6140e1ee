"""PostgreSQL storage of the licensing service (schema ``licensing``).

Migrations are the numbered files in ``licensing/migrations`` (``NNNN_name.sql``), applied in order at start
under a PostgreSQL advisory lock, each in its own transaction, recorded in ``licensing.schema_migrations``.
Several processes (service replicas, the CLI) may start at once: the lock makes one of them migrate.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import TypeVar

import asyncpg

from licensing.document import SignedLicense
from licensing.errors import StorageError
from licensing.fingerprint import new_install_id
from licensing.seats import Holding
from licensing.status import CheckState

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = "licensing"
# Advisory lock keys: ASCII "LICENSE1" / "LICENSE2" as bigints (sync-engine uses its own keys).
MIGRATION_LOCK = 0x4C4943454E534531
SEAT_LOCK = 0x4C4943454E534532
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("licensing").joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"licensing migrations must be numbered 1..n without gaps, found {versions}")
    return found


@dataclass(frozen=True)
class StoredLicense:
    row_id: int
    license_id: str
    registration: str
    envelope: str
    installed_at: datetime


class LicenseStore:
    """All SQL of the service. ``pool`` is a callable so the service can hand in its lazily connected pool."""

    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool

    def pool(self) -> asyncpg.Pool:
        try:
            return self._pool()
        except ConnectionError as exc:
            raise StorageError(f"the licensing database is not available: {exc}") from None

    async def _run(self, what: str, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            async with self.pool().acquire() as conn:
                return await op(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StorageError(f"cannot {what} in PostgreSQL: {exc}") from exc

    @asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool().acquire() as conn, conn.transaction():
                yield conn
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StorageError(f"cannot {what} in PostgreSQL: {exc}") from exc

    # ----------------------------------------------------------------------------------------- schema

    async def migrate(self) -> list[int]:
        """Apply missing migrations; returns the versions applied by this call."""

        async def run(conn: asyncpg.Connection) -> list[int]:
            applied_now: list[int] = []
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                await conn.execute(
                    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA};"
                    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {SCHEMA}.schema_migrations")}
                for migration in migrations():
                    if migration.version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute(
                            f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES ($1, $2)",
                            migration.version,
                            migration.name,
                        )
                    applied_now.append(migration.version)
                    log.info("licensing schema migrated", extra={"version": migration.version})
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
            return applied_now

        return await self._run("migrate the licensing schema", run)

    # ----------------------------------------------------------------------------------------- installation

    async def install_id(self) -> uuid.UUID:
        """This installation's id, created on first use and kept with the data."""

        async def run(conn: asyncpg.Connection) -> uuid.UUID:
            await conn.execute(
                f"INSERT INTO {SCHEMA}.installation (singleton, install_id) VALUES (true, $1) "
                "ON CONFLICT (singleton) DO NOTHING",
                new_install_id(),
            )
            value = await conn.fetchval(f"SELECT install_id FROM {SCHEMA}.installation")
            return uuid.UUID(str(value))

        return await self._run("read the installation id", run)

    # ----------------------------------------------------------------------------------------- licenses

    async def active_license(self) -> StoredLicense | None:
        async def run(conn: asyncpg.Connection) -> StoredLicense | None:
            row = await conn.fetchrow(
                f"SELECT id, license_id, registration, envelope, installed_at FROM {SCHEMA}.licenses WHERE active"
            )
            if row is None:
                return None
            return StoredLicense(
                row["id"], row["license_id"], row["registration"], row["envelope"], row["installed_at"]
            )

        return await self._run("read the license", run)

    async def install_license(self, signed: SignedLicense, now: datetime, confirmed_online: bool) -> None:
        """Make ``signed`` the active license and restart its online-check record."""
        lic = signed.license
        async with self._transaction("store the license") as conn:
            await conn.execute(f"UPDATE {SCHEMA}.licenses SET active = false WHERE active")
            await conn.execute(
                f"INSERT INTO {SCHEMA}.licenses (license_id, tier, registration, envelope, installed_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                lic.license_id,
                lic.tier.value,
                lic.registration,
                signed.to_text(),
                now,
            )
            await conn.execute(
                f"INSERT INTO {SCHEMA}.online_check (singleton, license_id, last_success, last_attempt) "
                "VALUES (true, $1, $2, $2) ON CONFLICT (singleton) DO UPDATE SET license_id = $1, "
                "last_success = $2, last_attempt = $2, failing_since = NULL, last_error = NULL, refusal = NULL",
                lic.license_id,
                now if confirmed_online else None,
            )

    async def check_state(self, license_id: str) -> CheckState:
        async def run(conn: asyncpg.Connection) -> CheckState:
            row = await conn.fetchrow(
                f"SELECT last_success, failing_since, last_error, refusal FROM {SCHEMA}.online_check "
                "WHERE license_id = $1",
                license_id,
            )
            if row is None:
                return CheckState()
            return CheckState(row["last_success"], row["failing_since"], row["last_error"], row["refusal"])

        return await self._run("read the online check state", run)

    async def record_check(
        self,
        license_id: str,
        now: datetime,
        *,
        success: bool,
        error: str | None = None,
        refusal: str | None = None,
    ) -> None:
        """Record one online check: success, failure to reach the server (``error``), or a ``refusal``."""

        async def run(conn: asyncpg.Connection) -> None:
            if success:
                await conn.execute(
                    f"UPDATE {SCHEMA}.online_check SET last_success = $2, last_attempt = $2, failing_since = NULL,"
                    " last_error = NULL, refusal = NULL WHERE license_id = $1",
                    license_id,
                    now,
                )
            elif refusal is not None:
                await conn.execute(
                    f"UPDATE {SCHEMA}.online_check SET last_attempt = $2, refusal = $3, last_error = NULL,"
                    " failing_since = NULL WHERE license_id = $1",
                    license_id,
                    now,
                    refusal,
                )
            else:
                await conn.execute(
                    f"UPDATE {SCHEMA}.online_check SET last_attempt = $2, last_error = $3,"
                    " failing_since = coalesce(failing_since, $2) WHERE license_id = $1",
                    license_id,
                    now,
                    error or "unknown error",
                )

        await self._run("record the online check", run)

    # ----------------------------------------------------------------------------------------- seats

    async def seats_used(self, now: datetime) -> int:
        async def run(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(f"SELECT count(*) FROM {SCHEMA}.seats WHERE expires_at > $1", now))

        return await self._run("count seats", run)

    @asynccontextmanager
    async def seat_transaction(self) -> AsyncIterator[SeatTransaction]:
        """Serialised read-modify-write of the seat table (one allocation at a time across replicas)."""
        async with self._transaction("allocate seats") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SEAT_LOCK)
            yield SeatTransaction(conn)


class SeatTransaction:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def holdings(self) -> dict[str, Holding]:
        rows = await self._conn.fetch(f"SELECT mailbox, configured, granted_at, expires_at FROM {SCHEMA}.seats")
        return {r["mailbox"]: Holding(r["mailbox"], r["configured"], r["granted_at"], r["expires_at"]) for r in rows}

    async def replace(self, before: dict[str, Holding], after: dict[str, Holding]) -> None:
        gone = [m for m in before if m not in after]
        if gone:
            await self._conn.execute(f"DELETE FROM {SCHEMA}.seats WHERE mailbox = ANY($1::text[])", gone)
        changed = [h for m, h in after.items() if before.get(m) != h]
        if changed:
            await self._conn.executemany(
                f"INSERT INTO {SCHEMA}.seats (mailbox, configured, granted_at, expires_at) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (mailbox) DO UPDATE SET configured = $2, granted_at = $3, expires_at = $4",
                [(h.mailbox, h.configured, h.granted_at, h.expires_at) for h in changed],
            )

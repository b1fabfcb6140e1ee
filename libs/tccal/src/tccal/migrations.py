"""Versioned SQL migrations of the services that own a schema (sync-engine, licensing): one runner for both.

A service ships `migrations/NNNN_name.sql` files, numbered 1..n without gaps, and applies the missing ones at
start under a PostgreSQL advisory lock (several replicas, or a replica and the CLI, may start at once: one
applies, the others wait and then find nothing to do), each file in its own transaction. Every applied file is
recorded in the service's `schema_migrations` table with its version, name and SHA-256 (and the time, where
the service wants it).

Migrations are forward-only and append-only:
* a recorded file whose SHA-256 differs from the shipped one stops the start, naming it (it was edited after it
  was applied);
* a recorded version this program does not ship stops the start too: the database was migrated by a newer
  version, so this one is older than the schema (a rollback of the program without a restore of the database
  taken before the upgrade: deploy/README.md, "Upgrade and rollback").

Databases migrated by the runners each service had before keep working: sync-engine's table already had the
checksum, licensing's had `applied_at` but no checksum; that column is added, and a row recorded without a
checksum takes the shipped file's (that runner kept none to compare with).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable

import asyncpg

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


class MigrationError(RuntimeError):
    """The shipped migration files, or the database's record of them, do not allow this version to start."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def file_name(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        """SHA-256 (hex) of the file's text as UTF-8: what the record of an applied file holds."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationSet:
    """The migrations of one service: where its files are, which table records them, its advisory lock key."""

    owner: str  # the service, as messages name it
    files: Traversable  # the directory of NNNN_name.sql files (importlib.resources.files(package) / "migrations")
    lock_key: int  # pg_advisory_lock key, one per service
    schema: str | None = None  # the service's own schema (created first; the table lives there), else search_path
    #: Also record when each file was applied (`applied_at`, the database's now()). Off for a service whose every
    #: stored value must come from its inputs (sync-engine: a replay reproduces its database byte for byte).
    applied_at: bool = False

    def __post_init__(self) -> None:
        if self.schema is not None and _IDENTIFIER.fullmatch(self.schema) is None:
            raise ValueError(f"schema {self.schema!r} is not a plain lower-case SQL identifier")

    @property
    def table(self) -> str:
        return f"{self.schema}.schema_migrations" if self.schema else "schema_migrations"

    def load(self) -> list[Migration]:
        """The shipped migrations, ordered by version; MigrationError for a misnamed file or a gap."""
        found: list[Migration] = []
        for entry in self.files.iterdir():
            match = _FILE_NAME.fullmatch(entry.name)
            if match is None:
                if entry.name.endswith(".sql"):
                    raise MigrationError(f"{self.owner}: migration file {entry.name!r} is not named NNNN_name.sql")
                continue
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
        found.sort(key=lambda m: m.version)
        versions = [m.version for m in found]
        if versions != list(range(1, len(found) + 1)):
            raise MigrationError(f"{self.owner}: migrations must be numbered 1..n without gaps, found {versions}")
        return found


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str | None  # None: recorded by licensing's former runner, which kept no checksum


async def migrate(connection: asyncpg.Connection, migrations: MigrationSet) -> list[int]:
    """Apply the missing migrations of `migrations`; returns the versions applied now (empty when up to date)."""
    shipped = migrations.load()
    applied_now: list[int] = []
    await connection.execute("SELECT pg_advisory_lock($1)", migrations.lock_key)
    try:
        await _ensure_table(connection, migrations)
        recorded = {row.version: row for row in await applied(connection, migrations)}
        _refuse_unknown(migrations.owner, recorded, shipped)
        for migration in shipped:
            row = recorded.get(migration.version)
            if row is not None:
                await _verify(connection, migrations, row, migration)
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    f"INSERT INTO {migrations.table} (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info(
                "applied migration %s",
                migration.file_name,
                extra={"owner": migrations.owner, "version": migration.version},
            )
            applied_now.append(migration.version)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", migrations.lock_key)
    return applied_now


async def applied(connection: asyncpg.Connection, migrations: MigrationSet) -> list[AppliedMigration]:
    """What the database records as applied, by version (the table must exist: `migrate` makes it)."""
    rows = await connection.fetch(f"SELECT version, name, checksum FROM {migrations.table} ORDER BY version")
    return [AppliedMigration(int(r["version"]), str(r["name"]), r["checksum"]) for r in rows]


async def _ensure_table(connection: asyncpg.Connection, migrations: MigrationSet) -> None:
    if migrations.schema:
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {migrations.schema}")
    applied_at = ", applied_at timestamptz NOT NULL DEFAULT now()" if migrations.applied_at else ""
    await connection.execute(
        f"CREATE TABLE IF NOT EXISTS {migrations.table} (version integer PRIMARY KEY, name text NOT NULL, "
        f"checksum text{applied_at})"
    )
    # a table made by licensing's former runner has no checksum column
    await connection.execute(f"ALTER TABLE {migrations.table} ADD COLUMN IF NOT EXISTS checksum text")


def _refuse_unknown(owner: str, recorded: dict[int, AppliedMigration], shipped: list[Migration]) -> None:
    unknown = sorted(set(recorded) - {m.version for m in shipped})
    if unknown:
        raise MigrationError(
            f"the database has migrations {unknown} this {owner} does not know: it is older than the schema; run a "
            "newer version, or restore the database backup taken before the upgrade (deploy/README.md)"
        )


async def _verify(
    connection: asyncpg.Connection, migrations: MigrationSet, row: AppliedMigration, migration: Migration
) -> None:
    if row.checksum is None:
        await connection.execute(
            f"UPDATE {migrations.table} SET checksum = $2 WHERE version = $1 AND checksum IS NULL",
            migration.version,
            migration.checksum,
        )
        log.info(
            "recorded the checksum of %s, applied before checksums were kept",
            migration.file_name,
            extra={"owner": migrations.owner, "version": migration.version},
        )
        return
    if row.checksum != migration.checksum:
        raise MigrationError(
            f"migration {migration.version:04d}_{row.name} was changed after it was applied "
            f"(recorded sha256 {row.checksum}, file {migration.checksum})"
        )

"""Versioned SQL migrations: `migrations/NNNN_name.sql`, applied in order at start under an advisory lock.

Each applied file is recorded in `schema_migrations` (version, name, SHA-256 of the file). A recorded
migration whose file changed afterwards stops the start with an error naming it: migrations are append-only.
Several engine processes may start at once; the advisory lock lets one apply and the others wait.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

#: pg_advisory_lock key of the migration step (the bytes "tcsyncmg").
MIGRATION_LOCK_KEY = int.from_bytes(b"tcsyncmg", "big") & 0x7FFF_FFFF_FFFF_FFFF
_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


class MigrationError(RuntimeError):
    """The database's recorded migrations do not match the files shipped with this version."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The migrations shipped in `sync_engine/migrations`, ordered by version."""
    found: list[Migration] = []
    for entry in resources.files("sync_engine").joinpath("migrations").iterdir():
        match = _NAME.fullmatch(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


async def migrate(connection: asyncpg.Connection) -> list[int]:
    """Apply the missing migrations; returns the versions applied now (empty when up to date)."""
    migrations = load_migrations()
    applied_now: list[int] = []
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL)"
        )
        rows = await connection.fetch("SELECT version, name, checksum FROM schema_migrations")
        recorded = {int(r["version"]): (str(r["name"]), str(r["checksum"])) for r in rows}
        known = {m.version for m in migrations}
        unknown = sorted(set(recorded) - known)
        if unknown:
            raise MigrationError(
                f"the database has migrations {unknown} this sync-engine does not know: it is older than the "
                "schema; run a newer version"
            )
        for migration in migrations:
            if migration.version in recorded:
                name, checksum = recorded[migration.version]
                if checksum != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{name} was changed after it was applied "
                        f"(recorded sha256 {checksum}, file {migration.checksum})"
                    )
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied_now.append(migration.version)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now

"""sync-engine's versioned SQL migrations (`migrations/NNNN_name.sql`), applied at start by the shared runner
(tccal.migrations): in order, under an advisory lock, each recorded in `schema_migrations` with its SHA-256.
A recorded migration whose file changed afterwards, or one this version does not ship, stops the start.
"""

from __future__ import annotations

from importlib import resources

import asyncpg

from tccal import migrations
from tccal.migrations import Migration, MigrationError

__all__ = ["MIGRATIONS", "MIGRATION_LOCK_KEY", "Migration", "MigrationError", "load_migrations", "migrate"]

#: pg_advisory_lock key of the migration step (the bytes "tcsyncmg").
MIGRATION_LOCK_KEY = int.from_bytes(b"tcsyncmg", "big") & 0x7FFF_FFFF_FFFF_FFFF
#: The engine's tables live in the connection's search_path (public), and so does its schema_migrations.
MIGRATIONS = migrations.MigrationSet(
    owner="sync-engine", files=resources.files("sync_engine") / "migrations", lock_key=MIGRATION_LOCK_KEY
)


def load_migrations() -> list[Migration]:
    """The migrations shipped in `sync_engine/migrations`, ordered by version."""
    return MIGRATIONS.load()


async def migrate(connection: asyncpg.Connection) -> list[int]:
    """Apply the missing migrations; returns the versions applied now (empty when up to date)."""
    return await migrations.migrate(connection, MIGRATIONS)

"""licensing's schema through the shared runner (tccal.migrations): a database its former runner migrated (no
checksums kept) is accepted and gets the checksums, and the CLI says why it cannot start on a newer schema."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from licensing.store import MIGRATIONS, SCHEMA
from tccal.migrations import applied, migrate


async def former_runner(connection: asyncpg.Connection) -> None:
    """What licensing's own runner (before tccal.migrations) left in a database: its table, its rows."""
    await connection.execute(
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA};"
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for migration in MIGRATIONS.load():
        async with connection.transaction():
            await connection.execute(migration.sql)
            await connection.execute(
                f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )


async def test_a_database_migrated_by_the_former_runner_is_accepted(installation: Any, pg_dsn: str) -> None:
    connection = await asyncpg.connect(pg_dsn)
    try:
        await former_runner(connection)
        shipped = MIGRATIONS.load()
        rows = await connection.fetch(f"SELECT version FROM {SCHEMA}.schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in shipped]
        assert await migrate(connection, MIGRATIONS) == []
        assert [(a.version, a.checksum) for a in await applied(connection, MIGRATIONS)] == [
            (m.version, m.checksum) for m in shipped
        ]
    finally:
        await connection.close()
    # and the installation works on it: the CLI migrates (nothing to do) and reads the license state
    assert (await asyncio.to_thread(installation.license))["status"] == "unregistered"


async def test_the_cli_refuses_a_schema_newer_than_itself(installation: Any, pg_dsn: str) -> None:
    assert (await asyncio.to_thread(installation.license))["status"] == "unregistered"  # migrated by the CLI itself
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute(
            f"INSERT INTO {SCHEMA}.schema_migrations (version, name, checksum) VALUES (99, 'future', 'x')"
        )
    finally:
        await connection.close()
    proc = await asyncio.to_thread(installation.run, "license", "--json")
    assert proc.returncode == 4, proc.stderr
    assert "the licensing schema cannot be migrated: the database has migrations [99] this licensing" in proc.stderr

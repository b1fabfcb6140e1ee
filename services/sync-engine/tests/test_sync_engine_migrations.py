"""Versioned SQL migrations applied at start under an advisory lock, recorded in schema_migrations."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from sync_engine.migrate import MigrationError, load_migrations, migrate


async def test_migrations_apply_once_even_when_engines_start_together(pg_dsn: str) -> None:
    connections = [await asyncpg.connect(pg_dsn) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in connections))
        versions = [m.version for m in load_migrations()]
        assert sorted(applied, key=len) == [[], [], versions]  # one applied them, the others waited and found them
        rows = await connections[0].fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
            (m.version, m.name, m.checksum) for m in load_migrations()
        ]
        tables = {
            r["tablename"]
            for r in await connections[0].fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"items", "meetings", "shown", "outbox", "launches", "conferences", "user_seq"} <= tables
        assert await migrate(connections[1]) == []
    finally:
        for connection in connections:
            await connection.close()


async def test_a_changed_or_unknown_migration_stops_the_start(pg_dsn: str) -> None:
    connection = await asyncpg.connect(pg_dsn)
    try:
        await migrate(connection)
        await connection.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        with pytest.raises(MigrationError, match="0001_initial was changed after it was applied"):
            await migrate(connection)
        await connection.execute(
            "UPDATE schema_migrations SET checksum = $1 WHERE version = 1", load_migrations()[0].checksum
        )
        await connection.execute("INSERT INTO schema_migrations VALUES (9999, 'future', 'x')")
        with pytest.raises(MigrationError, match=r"migrations \[9999\]"):
            await migrate(connection)
    finally:
        await connection.close()


async def former_runner(connection: asyncpg.Connection) -> None:
    """What sync-engine's own runner (before tccal.migrations) left in a database: its table, its rows."""
    await connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL)"
    )
    for migration in load_migrations():
        async with connection.transaction():
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )


async def test_a_database_migrated_by_the_former_runner_is_accepted(pg_dsn: str) -> None:
    connection = await asyncpg.connect(pg_dsn)
    try:
        await former_runner(connection)
        assert await migrate(connection) == []
        rows = await connection.fetch("SELECT * FROM schema_migrations ORDER BY version")
        assert [tuple(r) for r in rows] == [(m.version, m.name, m.checksum) for m in load_migrations()]  # as it was
    finally:
        await connection.close()

"""The one migration runner (tccal.migrations) against a real PostgreSQL: files applied in order once, recorded with
their SHA-256; edited, unknown, misnamed or missing files refused; an upgrade applies only the new file; the tables
the services' former runners made are taken over."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

import asyncpg
import pytest

from tccal.migrations import MigrationError, MigrationSet, applied, migrate

LOCK_KEY = 0x7465737472756E31  # "testrun1"
FIRST = "CREATE TABLE widget (id integer PRIMARY KEY, name text NOT NULL);"
SECOND = "ALTER TABLE widget ADD COLUMN colour text NOT NULL DEFAULT 'red';"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def migration_set(directory: Path, files: dict[str, str], schema: str | None = None) -> MigrationSet:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql, encoding="utf-8")
    (directory / "README.txt").write_text("not a migration")  # other files are ignored
    return MigrationSet(owner="test-service", files=directory, lock_key=LOCK_KEY, schema=schema, applied_at=True)


async def test_files_apply_in_order_once_when_replicas_start_together(pg_dsn: str, tmp_path: Path) -> None:
    files = migration_set(tmp_path / "m", {"0002_colour.sql": SECOND, "0001_widget.sql": FIRST}, schema="svc")
    connections = [await asyncpg.connect(pg_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c, files) for c in connections))
        assert sorted(results, key=len) == [[], [], [1, 2]]  # one applied both, in order; the others waited
        rows = await connections[0].fetch("SELECT version, name, checksum, applied_at FROM svc.schema_migrations")
        assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
            (1, "widget", sha256(FIRST)),
            (2, "colour", sha256(SECOND)),
        ]
        assert all(r["applied_at"] is not None for r in rows)
        await connections[0].execute("SET search_path = public")
        # the files ran: the table and its added column are there (in search_path, not the runner's schema)
        await connections[0].execute("INSERT INTO widget (id, name) VALUES (1, 'a')")
        assert await connections[0].fetchval("SELECT colour FROM widget") == "red"
        assert await migrate(connections[1], files) == []
    finally:
        await asyncio.gather(*(c.close() for c in connections))


async def test_an_upgrade_applies_only_the_new_file(pg_dsn: str, tmp_path: Path) -> None:
    connection = await asyncpg.connect(pg_dsn)
    try:
        assert await migrate(connection, migration_set(tmp_path / "m", {"0001_widget.sql": FIRST})) == [1]
        upgraded = migration_set(tmp_path / "m", {"0002_colour.sql": SECOND})
        assert await migrate(connection, upgraded) == [2]
        assert [a.version for a in await applied(connection, upgraded)] == [1, 2]
    finally:
        await connection.close()


async def test_a_failing_file_leaves_nothing_half_applied(pg_dsn: str, tmp_path: Path) -> None:
    broken = "CREATE TABLE gadget (id integer PRIMARY KEY); INSERT INTO no_such_table VALUES (1);"
    files = migration_set(tmp_path / "m", {"0001_widget.sql": FIRST, "0002_broken.sql": broken})
    connection = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await migrate(connection, files)
        assert [a.version for a in await applied(connection, files)] == [1]
        assert await connection.fetchval("SELECT to_regclass('gadget')") is None
        # and the advisory lock was let go: another session can take it
        other = await asyncpg.connect(pg_dsn)
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY) is True
        finally:
            await other.close()
    finally:
        await connection.close()


async def test_refusals_name_the_file_or_version(pg_dsn: str, tmp_path: Path) -> None:
    connection = await asyncpg.connect(pg_dsn)
    try:
        files = migration_set(tmp_path / "m", {"0001_widget.sql": FIRST})
        await migrate(connection, files)
        # a file edited after it was applied
        edited = migration_set(tmp_path / "m", {"0001_widget.sql": FIRST + "\n-- edited"})
        with pytest.raises(MigrationError, match=r"0001_widget was changed after it was applied \(recorded sha256"):
            await migrate(connection, edited)
        migration_set(tmp_path / "m", {"0001_widget.sql": FIRST})
        # a database migrated by a newer version (a program rolled back without restoring the database)
        await connection.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (7, 'future', 'x')")
        with pytest.raises(MigrationError, match=r"migrations \[7\] this test-service does not know.*restore"):
            await migrate(connection, files)
    finally:
        await connection.close()
    with pytest.raises(MigrationError, match=re.escape("numbered 1..n without gaps, found [1, 3]")):
        migration_set(tmp_path / "gap", {"0001_a.sql": FIRST, "0003_c.sql": SECOND}).load()
    with pytest.raises(MigrationError, match=re.escape("'2_colour.sql' is not named NNNN_name.sql")):
        migration_set(tmp_path / "misnamed", {"0001_a.sql": FIRST, "2_colour.sql": SECOND}).load()


async def test_tables_of_the_former_runners_are_taken_over(pg_dsn: str, tmp_path: Path) -> None:
    """sync-engine's former runner kept (version, name, checksum NOT NULL), licensing's (version, name, applied_at)
    in its schema: both are accepted as they are, licensing's rows get the shipped file's checksum."""
    files = migration_set(tmp_path / "m", {"0001_widget.sql": FIRST, "0002_colour.sql": SECOND})
    files = MigrationSet(owner="test-service", files=files.files, lock_key=LOCK_KEY)  # as sync-engine: no time
    with_schema = MigrationSet(
        owner="test-service", files=files.files, lock_key=LOCK_KEY, schema="svc", applied_at=True
    )
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute(FIRST)
        await connection.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL)"
        )
        await connection.execute("INSERT INTO schema_migrations VALUES (1, 'widget', $1)", sha256(FIRST))
        await connection.execute(
            "CREATE SCHEMA svc; CREATE TABLE svc.schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await connection.execute("INSERT INTO svc.schema_migrations (version, name) VALUES (1, 'widget')")

        assert await migrate(connection, files) == [2]  # only the file the former runner had not applied
        assert [(a.version, a.checksum) for a in await applied(connection, files)] == [
            (1, sha256(FIRST)),
            (2, sha256(SECOND)),
        ]
        await connection.execute("DROP TABLE widget")
        await connection.execute(FIRST)
        assert await migrate(connection, with_schema) == [2]
        assert [(a.version, a.checksum) for a in await applied(connection, with_schema)] == [
            (1, sha256(FIRST)),  # taken from the shipped file: the former runner kept none
            (2, sha256(SECOND)),
        ]
        # from now on an edit of that file is noticed as well
        migration_set(tmp_path / "m", {"0001_widget.sql": FIRST + "\n-- edited"})
        with pytest.raises(MigrationError, match="0001_widget was changed"):
            await migrate(connection, with_schema)
    finally:
        await connection.close()

"""Issue #17, finding 5: the license cannot be forged with a configured key, moved to another installation by
copying database rows, revived by editing a row — through the real `tc_calendar` and `python -m licensing`
processes on real PostgreSQL and the real registration emulator. (Clock rollback and the Free check record:
test_licensing_grace.py, on an injected clock.)"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from licensing.authority import AUTHORITY_KEY_ID
from registration_emulator.testing import RunningEmulator
from tccal_sandbox.embedded import EmbeddedPostgres, create_database, free_port
from tccal_sandbox.testing import wait_for

TABLES = ("installation", "licenses", "online_check")


def other_machine_key(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.key"
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path


async def copy_rows(source_dsn: str, target_dsn: str, tables: tuple[str, ...]) -> None:
    """What the attacker does: the licensing rows of one database, written into another one."""
    source, target = await asyncpg.connect(source_dsn), await asyncpg.connect(target_dsn)
    try:
        for table in tables:
            rows = await source.fetch(f"SELECT * FROM licensing.{table}")
            await target.execute(f"DELETE FROM licensing.{table}")
            for row in rows:
                columns = list(row.keys())
                placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
                await target.execute(
                    f"INSERT INTO licensing.{table} ({', '.join(columns)}) VALUES ({placeholders})", *row.values()
                )
    finally:
        await source.close()
        await target.close()


async def new_installation(
    like: Any, config_writer: Any, pg_server: EmbeddedPostgres, emulator: RunningEmulator, directory: Path
) -> tuple[Any, str]:
    """Another installation (conftest's Installation, as the ``installation`` fixture): its own database."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await create_database(pg_server.dsn("postgres"), name)
    dsn = pg_server.dsn(name)
    return type(like)(config_writer(directory / "etc", dsn, emulator.url, emulator.public_key), directory), dsn


async def cli(inst: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `tc_calendar` commands in-process (conftest's Installation.run), off the event loop."""
    result: subprocess.CompletedProcess[str] = await asyncio.to_thread(inst.run, *args)
    return result


async def shown(inst: Any) -> dict[str, Any]:
    data: dict[str, Any] = await asyncio.to_thread(inst.license)
    return data


# ------------------------------------------------------------------------------------------ the authority key


def test_a_production_installation_refuses_the_test_authority_key(
    installation: Any, config_writer: Any, tmp_path: Path, pg_dsn: str, emulator: RunningEmulator
) -> None:
    production = {**os.environ, "TC_CALENDAR_PRODUCTION": "1", "TC_CALENDAR_CONFIG": str(installation.config)}
    # The CLI and the service both stop with exit code 2, naming the setting.
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "tc_calendar"), "license"],
        env=production,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 2, cli.stderr
    assert "license.testAuthorityPublicKey is a test-only setting" in cli.stderr
    service = subprocess.run(
        [sys.executable, "-m", "licensing", "--config", str(installation.config)],
        env=production,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert service.returncode == 2, service.stderr
    assert "license.testAuthorityPublicKey" in service.stdout + service.stderr

    # Normal work: a production installation without the test key starts and serves (built-in key only).
    grpc_port, http_port = free_port(), free_port()
    clean = config_writer(tmp_path / "prod", pg_dsn, emulator.url, "", grpc_port=grpc_port, http_port=http_port)
    document = json.loads(clean.read_text())
    del document["license"]["testAuthorityPublicKey"]
    clean.write_text(json.dumps(document))
    log = tmp_path / "prod.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "licensing", "--config", str(clean)],
            env={**os.environ, "TC_CALENDAR_PRODUCTION": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: _ready(http_port) or process.poll() is not None, timeout=60, what="licensing ready")
        assert process.poll() is None, log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
    # ... and refuses what the emulator (a key it does not trust) signs.
    key = emulator.issue_key("standard", 5)
    refused = subprocess.run(
        [str(Path(sys.executable).parent / "tc_calendar"), "--register", key],
        env={**os.environ, "TC_CALENDAR_PRODUCTION": "1", "TC_CALENDAR_CONFIG": str(clean)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 15, refused.stderr
    assert "not signed by the registration authority" in refused.stderr and AUTHORITY_KEY_ID in refused.stderr


def _ready(http_port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# ------------------------------------------------------------------------------------------ installation binding


async def test_licensing_rows_copied_to_another_installation_are_refused(
    installation: Any,
    config_writer: Any,
    pg_dsn: str,
    pg_server: EmbeddedPostgres,
    emulator: RunningEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = emulator.issue_key("enterprise", 30)
    registered = await cli(installation, "--register", key)
    assert registered.returncode == 0, registered.stderr
    original = await shown(installation)
    assert original["status"] == "valid"

    # Normal work: the same installation's data restored into another database (a backup, a new PostgreSQL)
    # with the same machine key is the same installation.
    restored, restored_dsn = await new_installation(
        installation, config_writer, pg_server, emulator, tmp_path / "restored"
    )
    assert (await shown(restored))["status"] == "unregistered"  # creates its schema
    await copy_rows(pg_dsn, restored_dsn, TABLES)
    assert (await shown(restored))["status"] == "valid"
    assert (await shown(restored))["installation_fingerprint"] == original["installation_fingerprint"]

    # The attack: the same rows on another installation, which has its own machine key.
    thief, thief_dsn = await new_installation(installation, config_writer, pg_server, emulator, tmp_path / "thief")
    monkeypatch.setenv("TC_CALENDAR_KEY_FILE", str(other_machine_key(tmp_path, "thief")))
    assert (await shown(thief))["status"] == "unregistered"
    await copy_rows(pg_dsn, thief_dsn, TABLES)
    stolen = await shown(thief)
    assert stolen["status"] == "suspended", stolen
    assert "not written by this installation" in stolen["status_reason"]
    assert "copied from another installation" in stolen["status_reason"]
    again = await cli(thief, "--register", key)
    assert again.returncode == 16 and "not written by this installation" in again.stderr, again.stderr

    # Without the installation record the thief is its own installation: the copied license is foreign.
    thief2, thief2_dsn = await new_installation(installation, config_writer, pg_server, emulator, tmp_path / "thief2")
    assert (await shown(thief2))["status"] == "unregistered"
    await copy_rows(pg_dsn, thief2_dsn, ("licenses", "online_check"))
    foreign = await shown(thief2)
    assert foreign["status"] == "suspended", foreign
    assert "belongs to installation" in foreign["status_reason"]


# ------------------------------------------------------------------------------------------ edited license rows


async def test_an_edited_license_row_is_refused(installation: Any, pg_dsn: str, emulator: RunningEmulator) -> None:
    """The attack: the superseded Enterprise license made active again by editing two rows."""
    enterprise, standard = emulator.issue_key("enterprise", 30), emulator.issue_key("standard", 5)
    for key in (enterprise, standard):
        proc = await cli(installation, "--register", key)
        assert proc.returncode == 0, proc.stderr
    current = await shown(installation)
    assert (current["status"], current["tier"]) == ("valid", "standard")

    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("UPDATE licensing.licenses SET active = false WHERE active")
        await conn.execute("UPDATE licensing.licenses SET active = true WHERE tier = 'enterprise'")
        edited = await shown(installation)
        assert edited["status"] == "suspended", edited
        assert "was changed outside the connector" in edited["status_reason"]

        # Normal work: registering again writes a sealed row, and the license in force is valid again.
        proc = await cli(installation, "--register", standard)
        assert proc.returncode == 0, proc.stderr
        assert (await shown(installation))["status"] == "valid"

        # Another edit of the row in force (its registration column) is seen too.
        await conn.execute("UPDATE licensing.licenses SET registration = 'offline' WHERE active")
        assert (await shown(installation))["status"] == "suspended"

        # An installation record without a seal (as schema version 1 wrote it, or with the seal removed to
        # reset the high-water mark) is replaced by a new installation: the licenses of the old one are foreign.
        before = (await shown(installation))["installation_fingerprint"]
        await conn.execute("UPDATE licensing.installation SET seal = NULL, high_water = NULL")
        after = await shown(installation)
        assert after["installation_fingerprint"] != before
        assert after["status"] == "suspended" and "belongs to installation" in after["status_reason"], after
    finally:
        await conn.close()

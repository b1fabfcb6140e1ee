"""PostgreSQL storage of the licensing service (schema ``licensing``).

Migrations are the numbered files in ``licensing/migrations`` (``NNNN_name.sql``), applied in order at start
by the shared runner (tccal.migrations): under a PostgreSQL advisory lock, each in its own transaction, recorded
with its SHA-256 in ``licensing.schema_migrations``. Several processes (service replicas, the CLI) may start at
once: the lock makes one of them migrate.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar

import asyncpg

from licensing.document import SignedLicense
from licensing.errors import ForeignInstallationError, StorageError
from licensing.fingerprint import new_install_id
from licensing.sealing import Sealer
from licensing.seats import Holding
from licensing.status import CheckState
from tccal.migrations import MigrationError, MigrationSet
from tccal.migrations import migrate as run_migrations

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = "licensing"
# Advisory lock keys: ASCII "LICENSE1" ... "LICENSE4" as bigints (sync-engine uses its own keys).
MIGRATION_LOCK = 0x4C4943454E534531
SEAT_LOCK = 0x4C4943454E534532
INSTALL_LOCK = 0x4C4943454E534533
CHECK_LOCK = 0x4C4943454E534534


#: Recorded in licensing.schema_migrations by the shared runner (tccal.migrations).
MIGRATIONS = MigrationSet(
    owner="licensing",
    files=resources.files("licensing") / "migrations",
    lock_key=MIGRATION_LOCK,
    schema=SCHEMA,
    applied_at=True,
)


@dataclass(frozen=True)
class StoredLicense:
    row_id: int
    license_id: str
    registration: str
    envelope: str
    installed_at: datetime
    sealed: bool  # the row's seal verifies: it was written by this installation and not edited since


@dataclass(frozen=True)
class CheckRecord:
    state: CheckState
    last_attempt: datetime | None
    sealed: bool  # the row's seal verifies (True when there is no row)


@dataclass(frozen=True)
class InstallationRow:
    install_id: uuid.UUID
    high_water: datetime


INSTALLATION_NOT_OURS = (
    "the licensing data in this database was not written by this installation: the seal of its installation "
    "record does not verify with this machine key (TC_CALENDAR_KEY / TC_CALENDAR_KEY_FILE). The database was "
    "copied from another installation, or edited, or the machine key changed. No license is accepted; if this "
    "installation's machine key really changed, delete the record (DELETE FROM licensing.installation) and "
    "register again (tc_calendar --register KEY)"
)


_LICENSE_SEALED = ("id", "license_id", "tier", "registration", "envelope", "installed_at")


def _license_seal(sealer: Sealer, row: Mapping[str, Any], active: bool) -> str:
    return sealer.seal("license", *(row[k] for k in _LICENSE_SEALED), active)


def _license_sealed(sealer: Sealer, row: Mapping[str, Any]) -> bool:
    return sealer.verify(row["seal"], "license", *(row[k] for k in _LICENSE_SEALED), row["active"])


def _check_seal(sealer: Sealer, license_id: str, state: CheckState, last_attempt: datetime | None) -> str:
    return sealer.seal(
        "online_check",
        license_id,
        state.last_success,
        last_attempt,
        state.failing_since,
        state.last_error,
        state.refusal,
    )


def _check_values(
    state: CheckState, row: Mapping[str, Any]
) -> tuple[datetime | None, datetime | None, datetime | None, str | None, str | None]:
    return (state.last_success, row["last_attempt"], state.failing_since, state.last_error, state.refusal)


class LicenseStore:
    """All SQL of the service. ``pool`` is a callable so the service can hand in its lazily connected pool."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], sealer: Sealer) -> None:
        self._pool = pool
        self.sealer = sealer

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
            try:
                return await run_migrations(conn, MIGRATIONS)
            except MigrationError as exc:  # the CLI's exit code 4 with the reason, the service's log line
                raise StorageError(f"the licensing schema cannot be migrated: {exc}") from None

        return await self._run("migrate the licensing schema", run)

    # ----------------------------------------------------------------------------------------- installation

    async def installation(self, now: datetime) -> InstallationRow:
        """This installation's id and high-water mark, created (sealed) on first use and kept with the data.

        A record without a seal (written before schema version 2) is replaced by a new one: a new install id,
        so a new fingerprint. A record whose seal does not verify raises ``ForeignInstallationError``.
        """

        async def run(conn: asyncpg.Connection) -> InstallationRow:
            query = f"SELECT install_id, high_water, seal FROM {SCHEMA}.installation"
            row = await conn.fetchrow(query)
            if row is None or row["seal"] is None:
                install_id = new_install_id()
                seal = self.sealer.seal("installation", install_id, now)
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.installation (singleton, install_id, high_water, seal) "
                    "VALUES (true, $1, $2, $3) ON CONFLICT (singleton) DO UPDATE SET install_id = $1, "
                    "high_water = $2, seal = $3, created_at = now() WHERE installation.seal IS NULL",
                    install_id,
                    now,
                    seal,
                )
                if row is not None:
                    log.warning(
                        "the installation record had no seal (written before licensing schema version 2): this "
                        "installation has a new install id and fingerprint; register again "
                        "(tc_calendar --register KEY)"
                    )
                row = await conn.fetchrow(query)
            found = uuid.UUID(str(row["install_id"]))
            if not self.sealer.verify(row["seal"], "installation", found, row["high_water"]):
                raise ForeignInstallationError(INSTALLATION_NOT_OURS)
            return InstallationRow(found, row["high_water"])

        return await self._run("read the installation record", run)

    async def advance_high_water(self, install_id: uuid.UUID, moment: datetime) -> None:
        """Move the high-water mark forward to ``moment`` (never back: several processes may race)."""

        async def run(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"UPDATE {SCHEMA}.installation SET high_water = $2, seal = $3 "
                "WHERE install_id = $1 AND high_water < $2",
                install_id,
                moment,
                self.sealer.seal("installation", install_id, moment),
            )

        await self._run("record the time seen", run)

    # ----------------------------------------------------------------------------------------- licenses

    async def active_license(self) -> StoredLicense | None:
        async def run(conn: asyncpg.Connection) -> StoredLicense | None:
            row = await conn.fetchrow(
                "SELECT id, license_id, tier, registration, envelope, installed_at, active, seal "
                f"FROM {SCHEMA}.licenses WHERE active"
            )
            if row is None:
                return None
            sealed = _license_sealed(self.sealer, row)
            return StoredLicense(
                row["id"], row["license_id"], row["registration"], row["envelope"], row["installed_at"], sealed
            )

        return await self._run("read the license", run)

    async def install_license(self, signed: SignedLicense, now: datetime, confirmed_online: bool) -> None:
        """Make ``signed`` the active license and restart its online-check record."""
        lic = signed.license
        async with self._transaction("store the license") as conn:
            # Two installs at once (two replicas, or the CLI beside them) run one after the other, the later one
            # active: without the lock both could find no active row and the second would fail on the index.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", INSTALL_LOCK)
            # The license it replaces is resealed as inactive: a row made active again by hand does not verify.
            for old in await conn.fetch(f"SELECT * FROM {SCHEMA}.licenses WHERE active FOR UPDATE"):
                await conn.execute(
                    f"UPDATE {SCHEMA}.licenses SET active = false, seal = $2 WHERE id = $1",
                    old["id"],
                    _license_seal(self.sealer, old, False) if _license_sealed(self.sealer, old) else None,
                )
            row: dict[str, Any] = dict(
                id=await conn.fetchval(f"SELECT nextval(pg_get_serial_sequence('{SCHEMA}.licenses', 'id'))"),
                license_id=lic.license_id,
                tier=lic.tier.value,
                registration=lic.registration,
                envelope=signed.to_text(),
                installed_at=now,
            )
            await conn.execute(
                f"INSERT INTO {SCHEMA}.licenses (id, license_id, tier, registration, envelope, installed_at, active, "
                "seal) VALUES ($1, $2, $3, $4, $5, $6, true, $7)",
                *row.values(),
                _license_seal(self.sealer, row, True),
            )
            state = CheckState(last_success=now if confirmed_online else None)
            await conn.execute(
                f"INSERT INTO {SCHEMA}.online_check (singleton, license_id, last_success, last_attempt, seal) "
                "VALUES (true, $1, $2, $3, $4) ON CONFLICT (singleton) DO UPDATE SET license_id = $1, "
                "last_success = $2, last_attempt = $3, failing_since = NULL, last_error = NULL, refusal = NULL, "
                "seal = $4",
                lic.license_id,
                state.last_success,
                state.last_success,
                _check_seal(self.sealer, lic.license_id, state, state.last_success),
            )

    @asynccontextmanager
    async def online_check_turn(self) -> AsyncIterator[None]:
        """One online check at a time across replicas: a transaction advisory lock held while the body runs (the
        body decides, under it, whether the check is still due - another replica may have made it just now)."""
        async with self._transaction("take the online check turn") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", CHECK_LOCK)
            yield

    async def check_state(self, license_id: str) -> CheckRecord:
        """The online-check record of ``license_id`` and whether its seal verifies (an edited record does not)."""

        async def run(conn: asyncpg.Connection) -> CheckRecord:
            return await self._check_row(conn, license_id, lock=False)

        return await self._run("read the online check state", run)

    async def _check_row(self, conn: asyncpg.Connection, license_id: str, *, lock: bool) -> CheckRecord:
        row = await conn.fetchrow(
            f"SELECT last_success, last_attempt, failing_since, last_error, refusal, seal FROM {SCHEMA}.online_check "
            "WHERE license_id = $1" + (" FOR UPDATE" if lock else ""),
            license_id,
        )
        if row is None:
            return CheckRecord(CheckState(), None, True)
        state = CheckState(row["last_success"], row["failing_since"], row["last_error"], row["refusal"])
        sealed = self.sealer.verify(row["seal"], "online_check", license_id, *_check_values(state, row))
        return CheckRecord(state, row["last_attempt"], sealed)

    async def record_check(
        self,
        license_id: str,
        now: datetime,
        *,
        success: bool,
        error: str | None = None,
        refusal: str | None = None,
    ) -> None:
        """Record one online check: success, failure to reach the server (``error``), or a ``refusal``.

        The record is read, changed and sealed again; a record whose seal did not verify is not built upon (a
        failure then starts from nothing confirmed)."""

        async with self._transaction("record the online check") as conn:
            record = await self._check_row(conn, license_id, lock=True)
            before = record.state if record.sealed else CheckState()
            if success:
                after = CheckState(last_success=now)
            elif refusal is not None:
                after = CheckState(last_success=before.last_success, refusal=refusal)
            else:
                after = CheckState(
                    last_success=before.last_success,
                    failing_since=before.failing_since or now,
                    last_error=error or "unknown error",
                    refusal=before.refusal,
                )
            await conn.execute(
                f"UPDATE {SCHEMA}.online_check SET last_success = $2, last_attempt = $3, failing_since = $4,"
                " last_error = $5, refusal = $6, seal = $7 WHERE license_id = $1",
                license_id,
                after.last_success,
                now,
                after.failing_since,
                after.last_error,
                after.refusal,
                _check_seal(self.sealer, license_id, after, now),
            )

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

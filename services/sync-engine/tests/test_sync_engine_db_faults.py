"""Issue #17: PostgreSQL read-only, full or gone is a wait, not a dead letter (docs/architecture.md §12).

The faults are PostgreSQL's own: the database is made read-only (`default_transaction_read_only`, the sessions
the engine holds ended so its new ones get it, as after a fail-over to a standby), or every write is answered
with SQLSTATE 53100 "could not extend file ...: No space left on device" by a statement trigger (what PostgreSQL
sends when its disk is full; this machine cannot fill a disk). The engine runs with `nats.maxDeliver` 2, so the
old behaviour (nak, redeliver, dead-letter) would dead-letter the change within a second.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import asyncpg
import pytest
from sync_engine_testkit import ANNA, BOB, T0, EngineUnderTest, Harness, attendee, event, mid

from sync_engine.faults import Fault, classify
from tccal.subjects import CALENDAR, DEADLETTER
from tccal_sandbox.testing import disk_full_statements

# --- the classification -------------------------------------------------------------------------------------

INFRASTRUCTURE = Fault.INFRASTRUCTURE
RACE = Fault.RACE
DATA = Fault.DATA

SQLSTATES = [
    ("25006", INFRASTRUCTURE, "read_only_sql_transaction (read-only, hot standby)"),
    ("25P02", INFRASTRUCTURE, "in_failed_sql_transaction"),
    ("25P03", INFRASTRUCTURE, "idle_in_transaction_session_timeout"),
    ("53000", INFRASTRUCTURE, "insufficient_resources"),
    ("53100", INFRASTRUCTURE, "disk_full"),
    ("53200", INFRASTRUCTURE, "out_of_memory"),
    ("53300", INFRASTRUCTURE, "too_many_connections"),
    ("08000", INFRASTRUCTURE, "connection_exception"),
    ("08006", INFRASTRUCTURE, "connection_failure"),
    ("57P01", INFRASTRUCTURE, "admin_shutdown"),
    ("57P02", INFRASTRUCTURE, "crash_shutdown"),
    ("57P03", INFRASTRUCTURE, "cannot_connect_now"),
    ("57014", INFRASTRUCTURE, "query_canceled"),
    ("58030", INFRASTRUCTURE, "io_error"),
    ("42501", INFRASTRUCTURE, "insufficient_privilege (a role that lost its grant)"),
    ("40001", RACE, "serialization_failure"),
    ("40P01", RACE, "deadlock_detected"),
    ("55P03", RACE, "lock_not_available"),
    ("22003", DATA, "numeric_value_out_of_range"),
    ("22P02", DATA, "invalid_text_representation"),
    ("23505", DATA, "unique_violation"),
    ("23502", DATA, "not_null_violation"),
    ("42703", DATA, "undefined_column (a bug)"),
    ("XX000", DATA, "internal_error"),
]


@pytest.mark.parametrize(("sqlstate", "fault", "name"), SQLSTATES, ids=[f"{c}-{f.value}" for c, f, _ in SQLSTATES])
def test_sqlstates_are_classified(sqlstate: str, fault: Fault, name: str) -> None:
    error = asyncpg.PostgresError.new({"C": sqlstate, "M": name, "S": "ERROR"})
    assert error.sqlstate == sqlstate
    assert classify(error) is fault, name


EXCEPTIONS: list[tuple[BaseException, Fault]] = [
    (asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"), INFRASTRUCTURE),
    (asyncpg.DiskFullError('could not extend file "base/1/2": No space left on device'), INFRASTRUCTURE),
    (asyncpg.AdminShutdownError("terminating connection due to administrator command"), INFRASTRUCTURE),
    (asyncpg.CannotConnectNowError("the database system is starting up"), INFRASTRUCTURE),
    (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), INFRASTRUCTURE),
    (asyncpg.InterfaceError("pool is closing"), INFRASTRUCTURE),
    (ConnectionRefusedError(111, "Connection refused"), INFRASTRUCTURE),
    (ConnectionError("PostgreSQL is not connected yet"), INFRASTRUCTURE),
    (OSError(28, "No space left on device"), INFRASTRUCTURE),
    (TimeoutError(), INFRASTRUCTURE),
    (asyncpg.DeadlockDetectedError("deadlock detected"), RACE),
    (asyncpg.SerializationError("could not serialize access"), RACE),
    (asyncpg.exceptions.OutdatedSchemaCacheError("cached statement plan is invalid"), RACE),
    (asyncpg.DataError("invalid input for query argument $1: value out of int64 range"), DATA),
    (asyncpg.UniqueViolationError("duplicate key value violates unique constraint"), DATA),
    (ValueError("a bug"), DATA),
    (KeyError("a bug"), DATA),
]


@pytest.mark.parametrize(("error", "fault"), EXCEPTIONS, ids=[type(e).__name__ for e, _ in EXCEPTIONS])
def test_exception_types_are_classified(error: BaseException, fault: Fault) -> None:
    assert classify(error) is fault


# --- the faults, made by PostgreSQL ---------------------------------------------------------------------------


def _database(harness: Harness) -> str:
    return urlparse(harness.pg_dsn).path.lstrip("/")


async def _end_other_sessions(connection: asyncpg.Connection, database: str) -> int:
    ended = await connection.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    return int(ended)


@contextlib.asynccontextmanager
async def read_only(harness: Harness) -> AsyncIterator[None]:
    """The engine's database read-only, as a standby is: new sessions default to read-only transactions and the
    sessions the engine holds are ended (57P01), so every write it tries is refused with 25006."""
    database = _database(harness)
    async with harness.connect() as connection:
        await connection.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        await _end_other_sessions(connection, database)
    try:
        yield
    finally:
        async with harness.connect() as connection:
            await connection.execute("SET default_transaction_read_only = off")
            await connection.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
            await _end_other_sessions(connection, database)


@contextlib.asynccontextmanager
async def disk_full(harness: Harness) -> AsyncIterator[None]:
    """Every write to the engine's tables answered with 53100 disk_full, as PostgreSQL answers it."""
    async with harness.connect() as connection:
        tables = [
            str(r["tablename"])
            for r in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        for statement in disk_full_statements(tables, on=True):
            await connection.execute(statement)
    try:
        yield
    finally:
        async with harness.connect() as connection:
            for statement in disk_full_statements(tables, on=False):
                await connection.execute(statement)


FAULTS: dict[str, Callable[[Harness], contextlib.AbstractAsyncContextManager[None]]] = {
    "read-only": read_only,
    "disk-full": disk_full,
}
EXPECTED_SQLSTATE = {"read-only": "25006", "disk-full": "53100"}


async def _dead_letters(harness: Harness) -> int:
    info = await harness.bus.js.stream_info(DEADLETTER)
    return int(info.state.messages)


def _meeting(uid: str, day: int) -> Any:
    return event(uid, start=T0 + timedelta(days=day), attendees=[attendee(BOB)], subject=f"subject {uid}")


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_a_change_made_while_postgresql_cannot_write_waits_unacked_and_is_applied_after(
    harness: Harness, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine: EngineUnderTest = await harness.start_engine(max_deliver=2)
    assert engine.sync is not None
    health = engine.sync.health
    await harness.upsert(ANNA, _meeting("uid-before", 1))
    await harness.wait_command("calendar_upsert", 2, occurrence__meeting_id=mid("uid-before"))
    await harness.settle()

    async with FAULTS[fault](harness):
        await harness.upsert(ANNA, _meeting("uid-during", 2))
        # retried well past maxDeliver (2): the old nak-and-redeliver would have dead-lettered it by now
        await harness.wait_for(
            lambda: health.by_cause[EXPECTED_SQLSTATE[fault]] >= 6, "the engine retrying the change", timeout=60
        )
        assert health.waiting
        with pytest.raises(ConnectionError, match="PostgreSQL has not taken writes"):
            await health.check()  # readiness "postgres-writes" is red
        assert await _dead_letters(harness) == 0
        consumer = await harness.bus.js.consumer_info(CALENDAR, "sync-engine-calendar")
        assert consumer.num_ack_pending == 1  # held, un-acked ...
        assert consumer.num_redelivered == 0  # ... not nak'd and redelivered
        assert harness.of("calendar_upsert", occurrence__meeting_id=mid("uid-during")) == []
        # the wait is logged when it begins and every 10 s, not once per retry
        waits_logged = [r for r in caplog.records if r.name == "sync_engine.faults" and r.levelname == "WARNING"]
        assert 1 <= len(waits_logged) <= 2 < health.total_retries, [r.getMessage() for r in waits_logged]
        # reads are unharmed: what TrueConf asks for is still answered
        assert [o.id for o in await harness.events(ANNA)] == [mid("uid-before")]

    await harness.wait_command("calendar_upsert", 2, occurrence__meeting_id=mid("uid-during"))
    await harness.settle()
    # every task that met the fault (the change's lane, the seat refresh, the relay) ends its wait at its next write
    await harness.wait_for(lambda: not health.waiting, "every task's wait to end", timeout=30)
    assert health.waits == 1
    await health.check()  # ready again
    assert await _dead_letters(harness) == 0
    assert sorted(o.id for o in await harness.events(BOB)) == sorted([mid("uid-before"), mid("uid-during")])

    # and normal work goes on
    await harness.upsert(ANNA, _meeting("uid-after", 3))
    await harness.wait_command("calendar_upsert", 2, occurrence__meeting_id=mid("uid-after"))
    assert await _dead_letters(harness) == 0


async def test_a_change_the_database_refuses_for_its_data_is_dead_lettered_without_a_wait(harness: Harness) -> None:
    """Only data that can never be applied is dead-lettered: here a sequence PostgreSQL's bigint cannot hold."""
    engine = await harness.start_engine(max_deliver=2)
    assert engine.sync is not None
    broken = harness.mailboxes.upsert(ANNA, _meeting("uid-broken", 1), sequence=2**64 - 1)
    await harness.publish(broken)
    await harness.wait_for(lambda: _dead_letters(harness), "the change dead-lettered")
    assert await _dead_letters(harness) == 1
    assert not engine.sync.health.waiting and engine.sync.health.total_retries == 0
    await harness.upsert(ANNA, _meeting("uid-fine", 2))
    await harness.wait_command("calendar_upsert", 2, occurrence__meeting_id=mid("uid-fine"))


async def test_a_retry_that_hangs_keeps_telling_jetstream_the_messages_are_in_progress(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry can take longer than JetStream's ack wait (a connect to an unreachable host times out after
    60 s): meanwhile the messages are kept in progress, or JetStream would redeliver them and count deliveries."""
    import asyncio

    from sync_engine import context

    monkeypatch.setattr(context, "IN_PROGRESS_EVERY", 0.01)
    engine = await harness.start_engine(run=False)
    calls: list[int] = []
    kept = asyncio.Event()

    async def still_working() -> None:
        calls.append(1)
        if len(calls) >= 4:  # one before the pause, three while the retry hangs
            kept.set()

    async def work(connection: asyncpg.Connection) -> str:
        if not calls:
            raise asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction")
        await kept.wait()  # hangs until the retry has been kept in progress
        return str(await connection.fetchval("SELECT 'applied'"))

    stop = asyncio.Event()
    assert await engine.engine.context.transaction(work, stop=stop, on_wait=still_working) == "applied"
    assert len(calls) >= 4
    assert not engine.engine.health.waiting


async def test_the_engine_waits_while_any_task_waits_and_not_after_it_ended() -> None:
    """DatabaseHealth: a success elsewhere (the scheduler reading while the disk is full) does not end the wait of
    a change that still cannot be written; a task that ended (stopped, or an API call that gave up) waits no more."""
    import asyncio

    from sync_engine.faults import DatabaseHealth

    health = DatabaseHealth()
    disk_full = asyncpg.DiskFullError("could not extend file")
    release = asyncio.Event()

    async def lane() -> None:
        health.failed(disk_full)
        await release.wait()
        health.succeeded()

    waiting_lane = asyncio.create_task(lane())
    await asyncio.sleep(0)
    assert health.waiting
    health.succeeded()  # this task never failed: the lane still waits
    assert health.waiting
    with pytest.raises(ConnectionError, match="53100"):
        await health.check()
    release.set()
    await waiting_lane
    assert not health.waiting and health.waits == 1 and health.by_cause["53100"] == 1
    await health.check()

    async def gives_up() -> None:
        health.failed(disk_full)

    ended = asyncio.create_task(gives_up())  # still referenced, as a finished task often is
    await ended
    assert ended.done() and not health.waiting  # it ended; nothing waits

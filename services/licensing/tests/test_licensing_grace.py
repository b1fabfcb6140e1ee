"""Free tier without the registration server: grace period, suspension with a clear status and log line, and
recovery when the server is back — the service wired exactly as `python -m licensing` does (same `build`), on
real gRPC, real PostgreSQL and the real emulator process, with an injected clock moved by the test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest

from licensing.__main__ import build
from licensing.api import POLICY
from registration_emulator.keys import key_sha256
from registration_emulator.testing import RunningEmulator, start_emulator
from tccal.clock import FakeClock
from tccal.config import load_config
from tccal.service import ServiceApp
from tccal_sandbox.embedded import free_port
from tccal_sandbox.testing import bearer, wait_for_async
from trueconf.calendar.v1 import licensing_pb2 as pb
from trueconf.calendar.v1 import licensing_pb2_grpc

ADMIN = (("authorization", "Bearer grace-admin-token"),)


class InProcessService:
    def __init__(self, app: ServiceApp, clock: FakeClock, stub: licensing_pb2_grpc.LicensingServiceAsyncStub) -> None:
        self.app, self.clock, self.stub = app, clock, stub

    async def status(self) -> pb.LicenseInfo:
        info: pb.LicenseInfo = await self.stub.GetLicense(pb.GetLicenseRequest(), timeout=30)
        return info

    async def wait_status(self, status: pb.LicenseStatus.ValueType) -> pb.LicenseInfo:
        async def reached() -> pb.LicenseInfo | None:
            info = await self.status()
            return info if info.status == status else None

        found = await wait_for_async(reached, timeout=30, what=f"license status {pb.LicenseStatus.Name(status)}")
        assert found is not None
        return found


@pytest.fixture
async def grace_emulator(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    emu = await asyncio.to_thread(start_emulator, tmp_path / "registration")
    yield emu
    await asyncio.to_thread(emu.stop)


@pytest.fixture
async def in_process(
    tmp_path: Path, pg_dsn: str, grace_emulator: RunningEmulator, config_writer: Any
) -> AsyncIterator[InProcessService]:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async with in_process_service(tmp_path / "etc", pg_dsn, grace_emulator, config_writer, clock) as service:
        yield service


@contextlib.asynccontextmanager
async def in_process_service(
    config_dir: Path, pg_dsn: str, grace_emulator: RunningEmulator, config_writer: Any, clock: FakeClock
) -> AsyncIterator[InProcessService]:
    """One licensing service built as `python -m licensing` builds it, on `clock`; several of them with one
    database are replicas."""
    grpc_port, http_port = free_port(), free_port()
    path = config_writer(
        config_dir,
        pg_dsn,
        grace_emulator.url,
        grace_emulator.public_key,
        grpc_port=grpc_port,
        http_port=http_port,
        extra={"grpc": {"adminToken": "grace-admin-token"}},
    )
    app = ServiceApp("licensing", load_config(path), policy=POLICY)
    app.clock = clock
    await build(app)
    running = asyncio.create_task(app.run())

    async def ready() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{http_port}/readyz") as resp,
            ):
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for_async(ready, timeout=30, what="licensing ready")
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{grpc_port}", interceptors=[bearer("grace-admin-token")]
    ) as channel:
        yield InProcessService(app, clock, licensing_pb2_grpc.LicensingServiceStub(channel))
    app.stop_event.set()
    await asyncio.wait_for(running, 30)


async def test_free_license_grace_period_suspension_and_recovery(
    in_process: InProcessService, grace_emulator: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="licensing")
    svc, clock = in_process, in_process.clock
    t0 = clock.now()
    key = await asyncio.to_thread(grace_emulator.issue_key, "free")
    info = await svc.stub.RegisterOnline(pb.RegisterOnlineRequest(key=key), metadata=ADMIN, timeout=30)
    assert (info.tier, info.status) == (pb.LICENSE_TIER_FREE, pb.LICENSE_STATUS_VALID)
    assert info.last_online_check.ToDatetime(UTC) == t0
    assert info.grace_until.ToDatetime(UTC) == t0 + timedelta(days=7)
    asks = [pb.SeatRequest(mailbox=f"user{i}@corp.example", configured=True) for i in range(3)]

    # A check inside the interval succeeds: last_online_check moves on.
    clock.advance(timedelta(hours=12))
    confirmed = await wait_for_async(lambda: _last_check_after(svc, t0), timeout=30, what="the 12-hour online check")
    assert confirmed is not None
    last_ok = confirmed.last_online_check.ToDatetime(UTC)
    assert last_ok == t0 + timedelta(hours=12)

    # The registration server goes away: the next check fails and the license is in its grace period.
    await asyncio.to_thread(grace_emulator.stop)
    clock.advance(timedelta(hours=12))
    grace = await svc.wait_status(pb.LICENSE_STATUS_GRACE)
    assert grace.grace_until.ToDatetime(UTC) == last_ok + timedelta(days=7)
    assert "unreachable" in grace.status_reason and grace_emulator.url in grace.status_reason
    allowed = await svc.stub.AllocateSeats(pb.AllocateSeatsRequest(mailboxes=asks, providers=1), timeout=30)
    assert len(allowed.granted) == 3

    # Registering online now says the server is unreachable and how to go on.
    paid = await asyncio.to_thread(_issue_offline_capable_key, grace_emulator)
    with pytest.raises(grpc.aio.AioRpcError) as unreachable:
        await svc.stub.RegisterOnline(pb.RegisterOnlineRequest(key=paid), metadata=ADMIN, timeout=30)
    assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE
    assert str(unreachable.value.details()).startswith("[registration_server_unreachable]")
    assert "CreateOfflineRequest" in str(unreachable.value.details())

    # Past the grace period: suspended, sync refused with the reason, one clear error log line.
    clock.advance(timedelta(days=7))
    suspended = await svc.wait_status(pb.LICENSE_STATUS_SUSPENDED)
    assert "grace period ended" in suspended.status_reason and "sync is stopped" in suspended.status_reason
    refused = await svc.stub.AllocateSeats(pb.AllocateSeatsRequest(mailboxes=asks, providers=1), timeout=30)
    assert not refused.granted
    assert all("grace period ended" in r.reason for r in refused.refused)
    stopped = await wait_for_async(
        lambda: _log_line(caplog, logging.ERROR, "sync stopped"), timeout=30, what="the suspension log line"
    )
    assert stopped is not None
    assert "license suspended" in stopped and grace_emulator.url in stopped

    # The server is back (same authority, same address): the next retry confirms the license, sync resumes.
    back = await asyncio.to_thread(start_emulator, grace_emulator.state_dir, grace_emulator.port)
    try:
        clock.advance(timedelta(minutes=5))
        valid = await svc.wait_status(pb.LICENSE_STATUS_VALID)
        assert valid.last_online_check.ToDatetime(UTC) == clock.now()
        resumed = await wait_for_async(
            lambda: _log_line(caplog, logging.INFO, "sync resumes"), timeout=30, what="the recovery log line"
        )
        assert resumed is not None
        assert "license valid" in resumed
        granted = await svc.stub.AllocateSeats(pb.AllocateSeatsRequest(mailboxes=asks, providers=1), timeout=30)
        assert len(granted.granted) == 3
    finally:
        await asyncio.to_thread(back.stop)


async def test_revoked_free_license_is_suspended_at_the_next_check(
    in_process: InProcessService, grace_emulator: RunningEmulator
) -> None:
    svc = in_process
    key = await asyncio.to_thread(grace_emulator.issue_key, "free")
    await svc.stub.RegisterOnline(pb.RegisterOnlineRequest(key=key), metadata=ADMIN, timeout=30)
    await asyncio.to_thread(grace_emulator.cli, "revoke-key", key)
    svc.clock.advance(timedelta(hours=12))
    suspended = await svc.wait_status(pb.LICENSE_STATUS_SUSPENDED)
    assert "refused the Free license" in suspended.status_reason and "revoked" in suspended.status_reason


async def test_two_replicas_make_one_online_check_per_period(
    tmp_path: Path, pg_dsn: str, grace_emulator: RunningEmulator, config_writer: Any
) -> None:
    """Two licensing replicas on one database: each runs the check loop, and the registration server is asked
    once per check period, not once per replica (they take turns under an advisory lock, and a check the other
    replica made within the period counts). Counted at the registration emulator."""
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async with (
        in_process_service(tmp_path / "a", pg_dsn, grace_emulator, config_writer, clock) as a,
        in_process_service(tmp_path / "b", pg_dsn, grace_emulator, config_writer, clock) as b,
    ):
        key = await asyncio.to_thread(grace_emulator.issue_key, "free")
        await a.stub.RegisterOnline(pb.RegisterOnlineRequest(key=key), metadata=ADMIN, timeout=30)
        await _both_asleep(clock)
        assert await asyncio.to_thread(_checks_answered, grace_emulator, key) == 0  # registering confirmed it
        for period in (1, 2, 3):
            clock.advance(timedelta(hours=12))
            await _both_asleep(clock)  # both replicas' rounds of this period are over
            assert await asyncio.to_thread(_checks_answered, grace_emulator, key) == period
            for replica in (a, b):
                info = await replica.status()
                assert info.status == pb.LICENSE_STATUS_VALID
                assert info.last_online_check.ToDatetime(UTC) == clock.now()


async def _both_asleep(clock: FakeClock) -> None:
    """Both replicas' check loops wait for their next round (each sleeping until after now)."""
    await wait_for_async(
        lambda: len(clock.sleepers()) == 2 and min(clock.sleepers()) > clock.now(),
        timeout=30,
        what="both replicas' check rounds done",
    )


def _checks_answered(emulator: RunningEmulator, key: str) -> int:
    """Online checks the registration emulator answered for `key` (every activation of it)."""
    keys = json.loads(emulator.cli("list-keys").stdout)
    (record,) = [k for k in keys if k["key_sha256"] == key_sha256(key)]
    return sum(int(activation.get("checks", 0)) for activation in record["activations"].values())


async def _last_check_after(svc: InProcessService, moment: datetime) -> pb.LicenseInfo | None:
    info = await svc.status()
    return info if info.last_online_check.ToDatetime(UTC) > moment else None


async def _log_line(caplog: pytest.LogCaptureFixture, level: int, text: str) -> str | None:
    for record in caplog.records:
        if record.name == "licensing" and record.levelno == level and text in record.getMessage():
            return record.getMessage()
    return None


def _issue_offline_capable_key(emulator: RunningEmulator) -> str:
    """Issued while the server is down: the command works on the state directory, not over HTTP."""
    return emulator.issue_key("standard", 10)


# ------------------------------------------------------------------------------ tampering (issue #17, finding 5)


async def test_editing_the_check_record_does_not_revive_a_revoked_free_license(
    in_process: InProcessService, grace_emulator: RunningEmulator, pg_dsn: str
) -> None:
    """The attack: one UPDATE of licensing.online_check (refusal cleared, last success now) made a revoked Free
    license valid again. The record is sealed now: the edit is seen and the license stays suspended."""
    svc = in_process
    key = await asyncio.to_thread(grace_emulator.issue_key, "free")
    await svc.stub.RegisterOnline(pb.RegisterOnlineRequest(key=key), metadata=ADMIN, timeout=30)
    await asyncio.to_thread(grace_emulator.cli, "revoke-key", key)
    svc.clock.advance(timedelta(hours=12))
    revoked = await svc.wait_status(pb.LICENSE_STATUS_SUSPENDED)
    assert "revoked" in revoked.status_reason

    conn = await asyncpg.connect(pg_dsn)
    try:
        edited = await conn.execute(
            "UPDATE licensing.online_check SET refusal = NULL, last_error = NULL, failing_since = NULL, "
            "last_success = $1",
            svc.clock.now(),
        )
        assert edited == "UPDATE 1"
    finally:
        await conn.close()
    info = await svc.status()
    assert info.status == pb.LICENSE_STATUS_SUSPENDED, info
    assert "online check record of the Free license" in info.status_reason
    assert "changed outside the connector" in info.status_reason
    refused = await svc.stub.AllocateSeats(
        pb.AllocateSeatsRequest(mailboxes=[pb.SeatRequest(mailbox="a@corp.example")], providers=1), timeout=30
    )
    assert not refused.granted and "changed outside the connector" in refused.refused[0].reason

    # The next real check asks the authority again, which still refuses: a sealed refusal, suspended as revoked.
    svc.clock.advance(timedelta(minutes=5))

    async def refused_again() -> pb.LicenseInfo | None:
        current = await svc.status()
        return current if "revoked" in current.status_reason else None

    again = await wait_for_async(refused_again, timeout=30, what="the authority's refusal recorded again")
    assert again is not None and again.status == pb.LICENSE_STATUS_SUSPENDED


async def test_a_confirmed_free_license_survives_its_own_check_records(
    in_process: InProcessService, grace_emulator: RunningEmulator, pg_dsn: str
) -> None:
    """Normal work: records written by the service itself (registration, successful and failed checks) verify."""
    svc = in_process
    key = await asyncio.to_thread(grace_emulator.issue_key, "free")
    await svc.stub.RegisterOnline(pb.RegisterOnlineRequest(key=key), metadata=ADMIN, timeout=30)
    t0 = svc.clock.now()
    svc.clock.advance(timedelta(hours=12))
    confirmed = await wait_for_async(lambda: _last_check_after(svc, t0), timeout=30, what="a successful check")
    assert confirmed is not None and confirmed.status == pb.LICENSE_STATUS_VALID
    await asyncio.to_thread(grace_emulator.stop)
    svc.clock.advance(timedelta(hours=12))
    grace = await svc.wait_status(pb.LICENSE_STATUS_GRACE)
    assert "changed outside" not in grace.status_reason
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM licensing.online_check WHERE seal IS NOT NULL") == 1
    finally:
        await conn.close()


async def test_setting_the_clock_back_does_not_revive_an_expired_license(
    in_process: InProcessService, grace_emulator: RunningEmulator, tmp_path: Path, pg_dsn: str
) -> None:
    """The attack: an expired license was valid again once the system clock was set before its expiry. The
    service keeps a sealed high-water mark of the time it has seen and goes by it when the clock lags."""
    svc, clock = in_process, in_process.clock
    key = await asyncio.to_thread(grace_emulator.issue_key, "standard", 10, "+2d")
    info = await svc.stub.RegisterOnline(pb.RegisterOnlineRequest(key=key), metadata=ADMIN, timeout=30)
    assert info.status == pb.LICENSE_STATUS_VALID
    expires = info.expires_at.ToDatetime(UTC)

    # A small step back (an NTP correction, a replica's clock) is within the tolerance: nothing changes.
    clock.advance(timedelta(minutes=-2))
    small = await svc.status()
    assert small.status == pb.LICENSE_STATUS_VALID and "set back" not in small.status_reason

    clock.advance(timedelta(days=3))
    expired = await svc.wait_status(pb.LICENSE_STATUS_EXPIRED)
    assert "expired at" in expired.status_reason

    # The clock is set back to a day before the expiry: the license stays expired, and the reason says why.
    clock.advance(timedelta(days=-2))
    assert clock.now() < expires
    rolled = await svc.status()
    assert rolled.status == pb.LICENSE_STATUS_EXPIRED, rolled
    assert "the clock was set back" in rolled.status_reason
    refused = await svc.stub.AllocateSeats(
        pb.AllocateSeatsRequest(mailboxes=[pb.SeatRequest(mailbox="a@corp.example")], providers=1), timeout=30
    )
    assert not refused.granted
    # Installing a license is judged by the high-water mark too: an offline answer whose term ends between the
    # rolled-back clock and the mark is refused as expired.
    paid = await asyncio.to_thread(grace_emulator.issue_key, "standard", 10)
    request = await svc.stub.CreateOfflineRequest(pb.CreateOfflineRequestRequest(key=paid), metadata=ADMIN, timeout=30)
    (tmp_path / "regoffline.crg").write_bytes(request.request)
    term = (clock.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await asyncio.to_thread(
        grace_emulator.cli,
        "sign-offline",
        str(tmp_path / "regoffline.crg"),
        "-o",
        str(tmp_path / "regoffline2.crg"),
        "--expires",
        term,
    )
    answer = pb.InstallOfflineResponseRequest(response=(tmp_path / "regoffline2.crg").read_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await svc.stub.InstallOfflineResponse(answer, metadata=ADMIN, timeout=30)
    assert str(late.value.details()).startswith("[license_expired]"), late.value.details()

    # The mark is in the database, sealed: another process (the CLI, on the real clock, now three days behind
    # the service's) sees it too.
    cli = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "tc_calendar"), "license", "--json"],
        env={**os.environ, "TC_CALENDAR_CONFIG": str(tmp_path / "etc" / "config.json")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    shown = json.loads(cli.stdout)
    assert shown["status"] == "expired" and "the clock was set back" in shown["status_reason"]

    # Moving the mark back by hand breaks its seal: no license is accepted at all.
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("UPDATE licensing.installation SET high_water = high_water - interval '10 days'")
    finally:
        await conn.close()
    edited = await svc.status()
    assert edited.status == pb.LICENSE_STATUS_SUSPENDED
    assert "not written by this installation" in edited.status_reason


async def test_an_older_sealed_check_record_put_back_does_not_revive_a_revoked_free_license(
    in_process: InProcessService, grace_emulator: RunningEmulator, pg_dsn: str
) -> None:
    """The replay: the check record saved while the license was valid (its seal verifies: this installation
    wrote it) put back after the revocation. Records only move forward, so the service sees an older one."""
    svc = in_process
    key = await asyncio.to_thread(grace_emulator.issue_key, "free")
    await svc.stub.RegisterOnline(pb.RegisterOnlineRequest(key=key), metadata=ADMIN, timeout=30)
    t0 = svc.clock.now()
    svc.clock.advance(timedelta(hours=12))
    confirmed = await wait_for_async(lambda: _last_check_after(svc, t0), timeout=30, what="a successful check")
    assert confirmed is not None and confirmed.status == pb.LICENSE_STATUS_VALID
    conn = await asyncpg.connect(pg_dsn)
    try:
        saved = dict(await conn.fetchrow("SELECT * FROM licensing.online_check"))
        assert saved["last_attempt"] == t0 + timedelta(hours=12) and saved["refusal"] is None
        await asyncio.to_thread(grace_emulator.cli, "revoke-key", key)
        svc.clock.advance(timedelta(hours=12))
        revoked = await svc.wait_status(pb.LICENSE_STATUS_SUSPENDED)
        assert "revoked" in revoked.status_reason
        columns = [c for c in saved if c != "singleton"]
        await conn.execute(
            "UPDATE licensing.online_check SET " + ", ".join(f"{c} = ${i + 1}" for i, c in enumerate(columns)),
            *(saved[c] for c in columns),
        )
    finally:
        await conn.close()
    info = await svc.status()
    assert info.status == pb.LICENSE_STATUS_SUSPENDED, info
    assert "an older copy of it was put back" in info.status_reason

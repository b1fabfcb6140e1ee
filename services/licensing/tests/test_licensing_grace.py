"""Free tier without the registration server: grace period, suspension with a clear status and log line, and
recovery when the server is back — the service wired exactly as `python -m licensing` does (same `build`), on
real gRPC, real PostgreSQL and the real emulator process, with an injected clock moved by the test."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from licensing.__main__ import build
from licensing.api import POLICY
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
    grpc_port, http_port = free_port(), free_port()
    path = config_writer(
        tmp_path / "etc",
        pg_dsn,
        grace_emulator.url,
        grace_emulator.public_key,
        grpc_port=grpc_port,
        http_port=http_port,
        extra={"grpc": {"adminToken": "grace-admin-token"}},
    )
    app = ServiceApp("licensing", load_config(path), policy=POLICY)
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
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

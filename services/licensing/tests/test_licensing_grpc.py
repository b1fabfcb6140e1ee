"""LicensingService over real gRPC, served by the real `python -m licensing` process on the embedded PostgreSQL,
registering with the real registration emulator."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from licensing.keys import parse_key
from licensing.offline import OfflineResponse
from registration_emulator.document import LicenseTerms
from registration_emulator.offline import write_response
from registration_emulator.testing import RunningEmulator, authority_key
from registration_emulator.tiers import Tier
from tccal.grpckit import service_token
from tccal_sandbox.testing import authorized
from trueconf.calendar.v1 import licensing_pb2 as pb
from trueconf.calendar.v1 import licensing_pb2_grpc

Stub = licensing_pb2_grpc.LicensingServiceStub
Metadata = tuple[tuple[str, str], ...]


def refusal(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30, **kwargs)
    return info.value


def code_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    details = error.details() or ""
    match = re.match(r"^\[([a-z_]+)\] ", details)
    return error.code(), (match.group(1) if match else details)


def seat_asks(prefix: str, n: int, configured: bool) -> list[pb.SeatRequest]:
    return [pb.SeatRequest(mailbox=f"{prefix}{i:03d}@corp.example", configured=configured) for i in range(n)]


def test_online_registration_and_admin_guard(
    stub: Stub, admin: Metadata, service: Any, emulator: RunningEmulator
) -> None:
    info = stub.GetLicense(pb.GetLicenseRequest(), timeout=30)
    assert (info.tier, info.status) == (pb.LICENSE_TIER_NONE, pb.LICENSE_STATUS_UNREGISTERED)
    assert re.fullmatch(r"[0-9a-f]{64}", info.installation_id)
    assert "--register KEY" in info.status_reason

    key = emulator.issue_key("standard", 120, expires="2099-01-31")
    with grpc.insecure_channel(service.address) as channel:  # no token: every call of ours is refused
        bare = Stub(channel)
        for call, request in (
            (bare.RegisterOnline, pb.RegisterOnlineRequest(key=key)),
            (bare.GetLicense, pb.GetLicenseRequest()),
            (bare.AllocateSeats, pb.AllocateSeatsRequest(mailboxes=seat_asks("x", 1, True), providers=1)),
        ):
            assert refusal(call, request).code() == grpc.StatusCode.UNAUTHENTICATED

    registered = stub.RegisterOnline(pb.RegisterOnlineRequest(key=key), metadata=admin, timeout=30)
    assert (registered.tier, registered.status, registered.seats) == (
        pb.LICENSE_TIER_STANDARD,
        pb.LICENSE_STATUS_VALID,
        120,
    )
    assert list(registered.features) == ["offline_registration"]
    assert registered.expires_at.ToDatetime(UTC) == datetime(2099, 1, 31, tzinfo=UTC)
    assert registered.license_id.startswith("lic-")
    assert registered.installation_id == info.installation_id
    assert not registered.HasField("grace_until")
    assert stub.GetLicense(pb.GetLicenseRequest(), timeout=30) == registered


def test_offline_registration_and_every_refusal(
    stub: Stub, admin: Metadata, emulator: RunningEmulator, other_installation: Any, tmp_path: Path
) -> None:
    def create(key: str) -> bytes:
        return bytes(
            stub.CreateOfflineRequest(pb.CreateOfflineRequestRequest(key=key), metadata=admin, timeout=30).request
        )

    def install(data: bytes) -> pb.LicenseInfo:
        return stub.InstallOfflineResponse(pb.InstallOfflineResponseRequest(response=data), metadata=admin, timeout=30)

    def signed_answer(request: bytes, name: str, *extra: str) -> bytes:
        (tmp_path / f"{name}.req").write_bytes(request)
        emulator.cli("sign-offline", str(tmp_path / f"{name}.req"), "-o", str(tmp_path / f"{name}.crg"), *extra)
        return (tmp_path / f"{name}.crg").read_bytes()

    good = signed_answer(create(emulator.issue_key("enterprise", 900)), "good")
    expired = signed_answer(create(emulator.issue_key("standard", 5)), "expired", "--expires", "-1d")
    assert other_installation.run("register", "--offline", emulator.issue_key("standard", 5)).returncode == 3
    foreign = signed_answer((other_installation.workdir / "regoffline.crg").read_bytes(), "foreign")
    response = OfflineResponse.decode(good)
    envelope = json.loads(json.dumps(response.envelope))
    envelope["license"]["tier"] = "enterprise"
    envelope["license"]["seats"] = 5000
    tampered = write_response(response.request_id, envelope)
    signer = authority_key(emulator.state_dir)
    fingerprint = stub.GetLicense(pb.GetLicenseRequest(), timeout=30).installation_id
    free_key = emulator.issue_key("free")
    free_file = write_response(
        "r",
        signer.sign_license(
            LicenseTerms(
                "lic-f", Tier.FREE, 50, (), fingerprint, datetime.now(UTC), None, parse_key(free_key).sha256, "offline"
            )
        ),
    )

    expected = {
        "tampered": (tampered, grpc.StatusCode.INVALID_ARGUMENT, "tampered_license"),
        "foreign": (foreign, grpc.StatusCode.FAILED_PRECONDITION, "foreign_installation"),
        "expired": (expired, grpc.StatusCode.FAILED_PRECONDITION, "license_expired"),
        "free": (free_file, grpc.StatusCode.FAILED_PRECONDITION, "free_offline_refused"),
        "garbage": (b"hello manager", grpc.StatusCode.INVALID_ARGUMENT, "invalid_registration_file"),
        "request": (
            create(emulator.issue_key("standard", 5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_registration_file",
        ),
    }
    for name, (data, status, code) in expected.items():
        error = refusal(stub.InstallOfflineResponse, pb.InstallOfflineResponseRequest(response=data), metadata=admin)
        assert code_of(error) == (status, code), name

    in_use = emulator.issue_key("standard", 5)
    stub.RegisterOnline(pb.RegisterOnlineRequest(key=in_use), metadata=admin, timeout=30)
    assert other_installation.run("--register", in_use).returncode == 12
    revoked = emulator.issue_key("standard", 5)
    emulator.cli("revoke-key", revoked)
    online = {
        "MY-REG-KEY": (grpc.StatusCode.INVALID_ARGUMENT, "malformed_key"),
        "TCCAL-STD-0123A-BCDEF-GHJKM-NPQRS-X74E": (grpc.StatusCode.NOT_FOUND, "unknown_key"),
        revoked: (grpc.StatusCode.PERMISSION_DENIED, "key_revoked"),
        emulator.issue_key("standard", 5, expires="-1d"): (grpc.StatusCode.FAILED_PRECONDITION, "license_expired"),
    }
    for key, want in online.items():
        assert code_of(refusal(stub.RegisterOnline, pb.RegisterOnlineRequest(key=key), metadata=admin)) == want, key
    error = refusal(stub.CreateOfflineRequest, pb.CreateOfflineRequestRequest(key=free_key), metadata=admin)
    assert code_of(error) == (grpc.StatusCode.FAILED_PRECONDITION, "free_offline_refused")
    assert "A free license cannot be registered offline" in (error.details() or "")

    info = install(good)
    assert (info.tier, info.status, info.seats) == (pb.LICENSE_TIER_ENTERPRISE, pb.LICENSE_STATUS_VALID, 900)
    assert list(info.features) == ["multiple_providers", "offline_registration"]


def test_seats_whitelist_first_and_a_new_license_without_restart(
    stub: Stub, admin: Metadata, emulator: RunningEmulator, installation: Any
) -> None:
    asks = seat_asks("od", 20, False) + seat_asks("cfg", 45, True)
    refused_all = stub.AllocateSeats(pb.AllocateSeatsRequest(mailboxes=asks, providers=1), timeout=30)
    assert not refused_all.granted and len(refused_all.refused) == 65
    assert "no license is installed" in refused_all.refused[0].reason

    stub.RegisterOnline(pb.RegisterOnlineRequest(key=emulator.issue_key("free")), metadata=admin, timeout=30)
    free = stub.AllocateSeats(pb.AllocateSeatsRequest(mailboxes=asks, providers=1), timeout=30)
    assert len(free.granted) == 50
    assert {f"cfg{i:03d}@corp.example" for i in range(45)} <= set(free.granted)
    assert [r.mailbox for r in free.refused] == [f"od{i:03d}@corp.example" for i in range(5, 20)]
    assert all("all 50 accounts of the license are taken" in r.reason for r in free.refused)
    assert (free.license.tier, free.license.seats, free.license.seats_used) == (pb.LICENSE_TIER_FREE, 50, 50)

    two = stub.AllocateSeats(pb.AllocateSeatsRequest(mailboxes=asks, providers=2), timeout=30)
    assert not two.granted
    assert "'multiple_providers'" in two.refused[0].reason and "Enterprise" in two.refused[0].reason

    # A Standard license registered with the CLI while the service runs: more seats, no restart.
    proc = installation.run("--register", emulator.issue_key("standard", 100))
    assert proc.returncode == 0, proc.stderr
    more = stub.AllocateSeats(pb.AllocateSeatsRequest(mailboxes=asks, providers=1), timeout=30)
    assert len(more.granted) == 65 and not more.refused
    assert (more.license.tier, more.license.seats, more.license.seats_used) == (pb.LICENSE_TIER_STANDARD, 100, 65)
    assert (
        "'multiple_providers'"
        in stub.AllocateSeats(pb.AllocateSeatsRequest(mailboxes=asks, providers=3), timeout=30).refused[0].reason
    )

    proc = installation.run("--register", emulator.issue_key("enterprise", 100))
    assert proc.returncode == 0, proc.stderr
    several = stub.AllocateSeats(pb.AllocateSeatsRequest(mailboxes=asks, providers=3), timeout=30)
    assert len(several.granted) == 65


def test_allocate_seats_is_ews_ingests_and_a_callers_configured_flag_takes_no_seat(
    stub: Stub, service: Any, admin_token: str, emulator: RunningEmulator
) -> None:
    """Issue #17: three made-up mailboxes flagged `configured` took a configured user's seat. Now only ews-ingest's
    identity may ask, and even it cannot move a mailbox ahead: who is configured is licensing's own config."""
    stub.RegisterOnline(pb.RegisterOnlineRequest(key=emulator.issue_key("standard", 2)), timeout=30)
    fakes = seat_asks("fake", 3, True)
    request = pb.AllocateSeatsRequest(mailboxes=fakes, providers=1)
    with grpc.insecure_channel(service.address) as channel:
        bare = Stub(channel)
        assert refusal(bare.AllocateSeats, request).code() == grpc.StatusCode.UNAUTHENTICATED
        gateway = (("authorization", f"Bearer {service_token(admin_token, 'tcs-gateway')}"),)
        assert refusal(bare.AllocateSeats, request, metadata=gateway).code() == grpc.StatusCode.PERMISSION_DENIED
        ingest = Stub(authorized(channel, service_token(admin_token, "ews-ingest")))
        # the fakes get the two free seats (nobody else asks yet), as on-demand mailboxes
        first = ingest.AllocateSeats(request, timeout=30)
        assert sorted(first.granted) == ["fake000@corp.example", "fake001@corp.example"]
        # ews-ingest asks for two configured users, flagging neither: they take the seats back from the fakes
        real = pb.AllocateSeatsRequest(mailboxes=[*seat_asks("cfg", 2, False), *fakes], providers=1)
        second = ingest.AllocateSeats(real, timeout=30)
        assert sorted(second.granted) == ["cfg000@corp.example", "cfg001@corp.example"]
        assert {r.mailbox for r in second.refused} == {f"fake{i:03d}@corp.example" for i in range(3)}
        # and the fakes flagged `configured` asking again change nothing
        third = ingest.AllocateSeats(request, timeout=30)
        assert not third.granted and third.license.seats_used == 2


async def test_installation_survives_restarts_and_stored_licenses_are_reverified(
    make_service: Any, admin: Metadata, admin_token: str, emulator: RunningEmulator, pg_dsn: str
) -> None:
    first = make_service("first")
    with grpc.insecure_channel(first.address) as channel:
        registered = Stub(authorized(channel, admin_token)).RegisterOnline(
            pb.RegisterOnlineRequest(key=emulator.issue_key("standard", 30)), metadata=admin, timeout=30
        )
    first.stop()
    # A new process with a new config directory (a re-created container) on the same database.
    second = make_service("second")
    with grpc.insecure_channel(second.address) as channel:
        stub = Stub(authorized(channel, admin_token))
        again = stub.GetLicense(pb.GetLicenseRequest(), timeout=30)
        assert again.installation_id == registered.installation_id
        assert (again.license_id, again.status) == (registered.license_id, pb.LICENSE_STATUS_VALID)

        connection = await asyncpg.connect(pg_dsn)
        try:
            await connection.execute(
                "UPDATE licensing.licenses SET envelope = replace(envelope, '\"seats\": 30', '\"seats\": 3000') "
                "WHERE active"
            )
        finally:
            await connection.close()
        damaged = stub.GetLicense(pb.GetLicenseRequest(), timeout=30)
        assert damaged.status == pb.LICENSE_STATUS_SUSPENDED
        assert "failed verification" in damaged.status_reason
        refused = stub.AllocateSeats(pb.AllocateSeatsRequest(mailboxes=seat_asks("u", 1, True)), timeout=30)
        assert not refused.granted and "failed verification" in refused.refused[0].reason

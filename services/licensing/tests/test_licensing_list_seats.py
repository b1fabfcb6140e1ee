"""ListSeats over real gRPC, served by the real `python -m licensing` process: the seated mailboxes sync-engine
shows calendars of (issue #17: configured users without a seat still got meetings in TrueConf)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest

from licensing.settings import seat_lease
from registration_emulator.testing import RunningEmulator
from tccal.grpckit import service_token
from tccal_sandbox.testing import authorized
from trueconf.calendar.v1 import licensing_pb2 as pb
from trueconf.calendar.v1 import licensing_pb2_grpc

Stub = licensing_pb2_grpc.LicensingServiceStub
LEASE = timedelta(hours=1)


def asks(*mailboxes: str) -> pb.AllocateSeatsRequest:
    return pb.AllocateSeatsRequest(mailboxes=[pb.SeatRequest(mailbox=m) for m in mailboxes], providers=1)


def leases(reply: pb.ListSeatsResponse) -> dict[str, timedelta]:
    return {seat.mailbox: seat.remaining.ToTimedelta() for seat in reply.seats}


async def test_list_seats_is_sync_engines_and_names_the_seated_with_their_leases(
    stub: Stub, service: Any, admin_token: str, emulator: RunningEmulator, pg_dsn: str
) -> None:
    with grpc.insecure_channel(service.address) as channel:
        engine = Stub(authorized(channel, service_token(admin_token, "sync-engine")))
        ingest = Stub(authorized(channel, service_token(admin_token, "ews-ingest")))
        # no license: nobody holds a seat
        assert not engine.ListSeats(pb.ListSeatsRequest(), timeout=30).seats

        stub.RegisterOnline(pb.RegisterOnlineRequest(key=emulator.issue_key("standard", 2)), timeout=30)
        granted = ingest.AllocateSeats(asks("cfg000@corp.example", "cfg001@corp.example", "od000@corp.example"))
        assert sorted(granted.granted) == ["cfg000@corp.example", "cfg001@corp.example"]
        assert granted.lease.ToTimedelta() == LEASE

        seated = leases(engine.ListSeats(pb.ListSeatsRequest(), timeout=30))
        assert sorted(seated) == ["cfg000@corp.example", "cfg001@corp.example"]
        assert all(timedelta(0) < remaining <= LEASE for remaining in seated.values())

        # only sync-engine (and administrators) may ask
        bare = Stub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            bare.ListSeats(pb.ListSeatsRequest(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for other in ("ews-ingest", "tcs-gateway"):
            caller = Stub(authorized(channel, service_token(admin_token, other)))
            with pytest.raises(grpc.RpcError) as refused:
                caller.ListSeats(pb.ListSeatsRequest(), timeout=30)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, other
        assert sorted(leases(stub.ListSeats(pb.ListSeatsRequest(), timeout=30))) == sorted(seated)

        # A seat row written into PostgreSQL by hand, lasting a century: no more seats than the license has, and
        # no lease longer than one from now.
        connection = await asyncpg.connect(pg_dsn)
        try:
            now = datetime.now(UTC)
            await connection.execute(
                "INSERT INTO licensing.seats (mailbox, configured, granted_at, expires_at) VALUES ($1, true, $2, $3)",
                "mallory@corp.example",
                now - timedelta(days=1),
                now + timedelta(days=36500),
            )
            seated = leases(engine.ListSeats(pb.ListSeatsRequest(), timeout=30))
            assert len(seated) == 2 and all(remaining <= LEASE for remaining in seated.values())
            await connection.execute("UPDATE licensing.seats SET expires_at = $1", now + timedelta(days=36500))
            seated = leases(engine.ListSeats(pb.ListSeatsRequest(), timeout=30))
            assert len(seated) == 2 and all(remaining <= LEASE for remaining in seated.values())
        finally:
            await connection.close()


def test_the_seat_lease_is_an_hour_unless_the_environment_sets_another_within_bounds() -> None:
    assert seat_lease({}) == LEASE
    assert seat_lease({"LICENSING_SEAT_LEASE_SECONDS": "30"}) == timedelta(seconds=30)
    bad_values = (("soon", "is not a whole number"), ("5", "must be between 10 and"), ("90000", "must be between"))
    for bad, says in bad_values:
        with pytest.raises(ValueError, match=f"LICENSING_SEAT_LEASE_SECONDS='{bad}' {says}"):
            seat_lease({"LICENSING_SEAT_LEASE_SECONDS": bad})

"""gRPC ``trueconf.calendar.v1.LicensingService``.

Refusals are gRPC errors whose message starts with the refusal code: ``[unknown_key] ...`` (codes and statuses
in README.md). AllocateSeats is ews-ingest's, ListSeats sync-engine's; every other call is an administrator's
(POLICY). Which mailboxes
are configured `users` licensing reads from its own config, never from the caller.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from licensing.errors import FREE_OFFLINE_MESSAGE, LicensingError, RegistrationUnreachableError
from licensing.keys import parse_key
from licensing.manager import LicenseManager, Snapshot
from licensing.seats import SeatAsk
from licensing.status import Status
from licensing.tiers import Tier
from tccal.grpckit import AccessPolicy
from trueconf.calendar.v1 import licensing_pb2, licensing_pb2_grpc

log = logging.getLogger("licensing")

SERVICE_NAME = "trueconf.calendar.v1.LicensingService"
#: Who may call what (docs/architecture.md §4.1): AllocateSeats is the ingests' (ews-ingest, graph-ingest), ListSeats
#: sync-engine's (and both administrators'); registration and GetLicense are for administrators.
POLICY = AccessPolicy(
    callers={
        f"/{SERVICE_NAME}/AllocateSeats": frozenset({"ews-ingest", "graph-ingest"}),
        f"/{SERVICE_NAME}/ListSeats": frozenset({"sync-engine"}),
    }
)

_TIERS = {
    Tier.FREE: licensing_pb2.LICENSE_TIER_FREE,
    Tier.STANDARD: licensing_pb2.LICENSE_TIER_STANDARD,
    Tier.ENTERPRISE: licensing_pb2.LICENSE_TIER_ENTERPRISE,
}
_STATUSES = {
    Status.VALID: licensing_pb2.LICENSE_STATUS_VALID,
    Status.GRACE: licensing_pb2.LICENSE_STATUS_GRACE,
    Status.SUSPENDED: licensing_pb2.LICENSE_STATUS_SUSPENDED,
    Status.EXPIRED: licensing_pb2.LICENSE_STATUS_EXPIRED,
    Status.UNREGISTERED: licensing_pb2.LICENSE_STATUS_UNREGISTERED,
}


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def license_info(snap: Snapshot) -> licensing_pb2.LicenseInfo:
    info = licensing_pb2.LicenseInfo(
        tier=licensing_pb2.LICENSE_TIER_NONE,
        status=_STATUSES[snap.evaluation.status],
        status_reason=snap.evaluation.reason,
        seats_used=snap.seats_used,
        installation_id=snap.fingerprint,
    )
    if snap.signed is not None:
        lic = snap.signed.license
        info.tier = _TIERS[lic.tier]
        info.seats = lic.seat_capacity
        info.features.extend(lic.features)
        info.license_id = lic.license_id
        for name, moment in (
            ("expires_at", lic.expires_at),
            ("last_online_check", snap.check.last_success),
            ("grace_until", snap.evaluation.grace_until),
        ):
            stamp = _timestamp(moment)
            if stamp is not None:
                getattr(info, name).CopyFrom(stamp)
    return info


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: LicensingError) -> NoReturn:
    await context.abort(grpc.StatusCode[exc.grpc_status], exc.grpc_message())
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


class LicensingServicer(licensing_pb2_grpc.LicensingServiceServicer):
    def __init__(self, manager: LicenseManager) -> None:
        self.manager = manager

    async def RegisterOnline(  # noqa: N802 - gRPC method name
        self, request: licensing_pb2.RegisterOnlineRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> licensing_pb2.LicenseInfo:
        try:
            await self.manager.register_online(request.key)
            return license_info(await self.manager.snapshot())
        except RegistrationUnreachableError as exc:
            hint = (
                FREE_OFFLINE_MESSAGE
                if parse_key(request.key).tier is Tier.FREE
                else "register offline: CreateOfflineRequest, then InstallOfflineResponse with the authority's answer"
            )
            await _abort(context, RegistrationUnreachableError(f"{exc.message}. {hint}"))
        except LicensingError as exc:
            await _abort(context, exc)

    async def CreateOfflineRequest(  # noqa: N802 - gRPC method name
        self, request: licensing_pb2.CreateOfflineRequestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> licensing_pb2.CreateOfflineRequestResponse:
        try:
            offline = await self.manager.create_offline_request(request.key)
        except LicensingError as exc:
            await _abort(context, exc)
        return licensing_pb2.CreateOfflineRequestResponse(request=offline.encode())

    async def InstallOfflineResponse(  # noqa: N802 - gRPC method name
        self, request: licensing_pb2.InstallOfflineResponseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> licensing_pb2.LicenseInfo:
        try:
            await self.manager.install_offline(request.response)
            return license_info(await self.manager.snapshot())
        except LicensingError as exc:
            await _abort(context, exc)

    async def GetLicense(  # noqa: N802 - gRPC method name
        self, request: licensing_pb2.GetLicenseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> licensing_pb2.LicenseInfo:
        try:
            return license_info(await self.manager.snapshot())
        except LicensingError as exc:
            await _abort(context, exc)

    async def AllocateSeats(  # noqa: N802 - gRPC method name
        self, request: licensing_pb2.AllocateSeatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> licensing_pb2.AllocateSeatsResponse:
        asks = [SeatAsk(m.mailbox, m.configured) for m in request.mailboxes]
        try:
            result, snap = await self.manager.allocate_seats(asks, request.providers)
        except LicensingError as exc:
            await _abort(context, exc)
        lease = Duration()
        lease.FromTimedelta(self.manager.settings.seat_lease)
        return licensing_pb2.AllocateSeatsResponse(
            granted=result.granted,
            refused=[licensing_pb2.SeatRefusal(mailbox=r.mailbox, reason=r.reason) for r in result.refused],
            license=license_info(snap),
            lease=lease,
        )

    async def ListSeats(  # noqa: N802 - gRPC method name
        self, request: licensing_pb2.ListSeatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> licensing_pb2.ListSeatsResponse:
        try:
            leases, snap = await self.manager.seat_leases()
        except LicensingError as exc:
            await _abort(context, exc)
        seats = []
        for mailbox in sorted(leases):
            remaining = Duration()
            remaining.FromTimedelta(leases[mailbox])
            seats.append(licensing_pb2.SeatLease(mailbox=mailbox, remaining=remaining))
        return licensing_pb2.ListSeatsResponse(seats=seats, license=license_info(snap))

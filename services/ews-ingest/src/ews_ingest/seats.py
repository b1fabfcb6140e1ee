"""Which mailboxes ews-ingest may sync: LicensingService.AllocateSeats through the shared keeper
(tccal.ingest.seats: when it asks, leases, the answer kept in KV `v1.seats`).

Every mailbox known (configured `users` first, in config order, then on-demand ones) is asked for at start, every
`seat_refresh_seconds`, whenever a mailbox is asked for on demand, and when a message arrives on
`calendar.v1.control.seats`. A mailbox granted a seat starts syncing; one that loses it stops (state NO_SEAT, the
refusal reason in last_error) - no restart either way. When licensing cannot be reached, the seats granted stay in
force until their lease ends, then every mailbox holding one stops (NO_SEAT, "seat lease ended ...").
"""

from __future__ import annotations

from ews_ingest.scheduler import Scheduler
from ews_ingest.state import StateStore
from tccal.grpckit import GrpcCaller
from tccal.ingest import seats
from trueconf.calendar.v1 import ingest_pb2


class SeatKeeper(seats.SeatKeeper):
    def __init__(
        self,
        scheduler: Scheduler,
        store: StateStore,
        address: str,
        *,
        providers: int,
        refresh_seconds: float,
        caller: GrpcCaller | None = None,
    ) -> None:
        super().__init__(store, address, providers=providers, refresh_seconds=refresh_seconds, caller=caller)
        self.scheduler = scheduler

    def seat_requests(self) -> list[tuple[str, bool]]:
        entries = sorted(self.scheduler.entries.values(), key=lambda e: not e.configured)
        return [(e.mailbox, e.configured) for e in entries]

    def unreachable(self, error: str) -> None:
        for entry in self.scheduler.entries.values():
            if not entry.seat and entry.state != ingest_pb2.MAILBOX_STATE_NO_SEAT:
                entry.last_error = error

    def held(self) -> list[str]:
        return [mailbox for mailbox, entry in self.scheduler.entries.items() if entry.seat]

    def revoke(self, mailboxes: list[str], reason: str) -> None:
        for mailbox in mailboxes:
            self.scheduler.set_seat(mailbox, False, reason)

    def apply(self, granted: set[str], refused: dict[str, str]) -> None:
        for mailbox, entry in list(self.scheduler.entries.items()):
            if mailbox in granted:
                self.scheduler.set_seat(mailbox, True)
            elif mailbox in refused or entry.seat:
                self.scheduler.set_seat(mailbox, False, refused.get(mailbox, "licensing granted no seat"))

"""Which mailboxes graph-ingest may sync: LicensingService.AllocateSeats through the shared keeper
(tccal.ingest.seats, as ews-ingest asks it: when it asks, leases, the answer kept in KV `v1.seats`).

Every configured Graph mailbox (then every on-demand one) is asked for at start, every `seat_refresh_seconds` and
whenever a message arrives on `calendar.v1.control.seats` (licensing's CLI announces a licence change there,
tcs-gateway a TrueConf request). A mailbox granted a seat is synced; one refused is not (the reason is logged).
When licensing cannot be reached, the seats granted stay in force until their lease ends, then the mailboxes
holding one wait for the next answer.
"""

from __future__ import annotations

import asyncio
import logging

from graph_ingest.state import StateStore
from tccal.grpckit import GrpcCaller
from tccal.ingest import seats

log = logging.getLogger(__name__)


class SeatKeeper(seats.SeatKeeper):
    def __init__(
        self,
        mailboxes: list[str],
        store: StateStore,
        address: str,
        *,
        providers: int,
        refresh_seconds: float,
        caller: GrpcCaller | None = None,
    ) -> None:
        super().__init__(store, address, providers=providers, refresh_seconds=refresh_seconds, caller=caller)
        self.mailboxes = mailboxes
        #: Mailboxes TrueConf asked for that no entry lists (a Graph entry's `domains` claim them): asked for after
        #: the configured ones, as not configured.
        self.on_demand: list[str] = []
        self.granted: set[str] = set()
        self.refused: dict[str, str] = {}
        #: Set (and replaced by a fresh one) whenever the granted set changed: waiting mailboxes look again.
        self.changed = asyncio.Event()

    def seat_requests(self) -> list[tuple[str, bool]]:
        return [(mailbox, True) for mailbox in self.mailboxes] + [(mailbox, False) for mailbox in self.on_demand]

    def held(self) -> list[str]:
        return sorted(self.granted)

    def revoke(self, mailboxes: list[str], reason: str) -> None:
        self.apply(self.granted - set(mailboxes), {**self.refused, **dict.fromkeys(mailboxes, reason)})

    def apply(self, granted: set[str], refused: dict[str, str]) -> None:
        for mailbox, reason in refused.items():
            if self.refused.get(mailbox) != reason:
                log.warning("no seat for the mailbox: not synced", extra={"mailbox": mailbox, "reason": reason})
        moved = granted != self.granted
        self.granted, self.refused = granted, refused
        if moved:
            fired, self.changed = self.changed, asyncio.Event()
            fired.set()

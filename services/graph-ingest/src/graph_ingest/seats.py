"""Which mailboxes graph-ingest may sync: LicensingService.AllocateSeats, as ews-ingest asks it (ews_ingest.seats).

Every configured Graph mailbox is asked for at start and every `seat_refresh_seconds` (seats are leases of one
hour, renewed by asking). A mailbox granted a seat is synced; one refused is not (the reason is logged). When
licensing cannot be reached, the last answer (KV `v1.seats` of GRAPH_INGEST_STATE) stays in force for a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any

import grpc

from graph_ingest.state import StateStore
from tccal.grpckit import GrpcCaller
from tccal.retry import backoff_delay
from trueconf.calendar.v1 import licensing_pb2, licensing_pb2_grpc

log = logging.getLogger(__name__)
LEASE = dt.timedelta(hours=1)


class SeatKeeper:
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
        self.mailboxes = mailboxes
        self.store = store
        self.address = address
        self.caller = caller or GrpcCaller()
        self.providers = providers
        self.refresh_seconds = refresh_seconds
        self.granted: set[str] = set()
        self.refused: dict[str, str] = {}
        self.answers = 0
        self.last_error = ""
        #: Set (and replaced by a fresh one) whenever the granted set changed: waiting mailboxes look again.
        self.changed = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.restore()
            failures = 0
            while not stop.is_set():
                failures = 0 if await self.refresh() else failures + 1
                pause = self.refresh_seconds
                if failures:  # licensing may start later than graph-ingest: ask again soon
                    pause = min(pause, backoff_delay(failures, base=1.0, cap=30.0))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
        finally:
            if self._channel is not None:
                await self._channel.close(None)
                self._channel = None

    async def restore(self) -> None:
        saved = await self.store.load_seats()
        if not saved:
            return
        try:
            at = dt.datetime.fromisoformat(str(saved.get("at")))
        except ValueError:
            return
        if dt.datetime.now(dt.UTC) - at > LEASE:
            return
        self._apply({str(m) for m in saved.get("granted", [])}, dict(saved.get("refused") or {}))
        log.info("last seat answer restored", extra={"granted": len(self.granted), "answered_at": at.isoformat()})

    def _stub(self) -> Any:
        """The aio stub (grpc-stubs types only the blocking one, hence Any)."""
        if self._channel is None:
            self._channel = self.caller.aio_channel(self.address)
        return licensing_pb2_grpc.LicensingServiceStub(self._channel)

    async def refresh(self) -> bool:
        if not self.mailboxes:
            return True
        request = licensing_pb2.AllocateSeatsRequest(
            mailboxes=[licensing_pb2.SeatRequest(mailbox=m, configured=True) for m in self.mailboxes],
            providers=self.providers,
        )
        try:
            response = await self._stub().AllocateSeats(request, timeout=10, metadata=self.caller.metadata())
        except grpc.aio.AioRpcError as exc:
            self.last_error = f"licensing at {self.address} unreachable: {exc.code().name}: {exc.details()}"
            log.warning("seat request failed", extra={"error": self.last_error})
            return False
        self.answers += 1
        self.last_error = ""
        granted = {m.strip().lower() for m in response.granted}
        refused = {r.mailbox.strip().lower(): r.reason for r in response.refused}
        self._apply(granted, refused)
        with contextlib.suppress(Exception):
            await self.store.save_seats(sorted(granted), refused)
        return True

    def _apply(self, granted: set[str], refused: dict[str, str]) -> None:
        for mailbox, reason in refused.items():
            if self.refused.get(mailbox) != reason:
                log.warning("no seat for the mailbox: not synced", extra={"mailbox": mailbox, "reason": reason})
        moved = granted != self.granted
        self.granted, self.refused = granted, refused
        if moved:
            fired, self.changed = self.changed, asyncio.Event()
            fired.set()

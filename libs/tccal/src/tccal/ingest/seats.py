"""Which mailboxes an ingest service may sync: LicensingService.AllocateSeats, asked the same way by ews-ingest and
graph-ingest (each subclass says which mailboxes it asks for and what an answer does to them).

Every mailbox the service knows is asked for at start, every `refresh_seconds` (and at least three times per
lease), whenever `poke()` is called (a control message, an on-demand mailbox) and, when `run` is given the bus,
whenever a message arrives on `calendar.v1.control.seats`; licensing may start later than
the service, so while it does not answer the service asks again soon (backing off to 30 s).

Seats are leases (licensing's answer says how long: `AllocateSeatsResponse.lease`, one hour unless licensing is
told otherwise), counted from when the request that was answered began, on the monotonic clock. When licensing
cannot be reached, the seats granted stay in force until their lease ends, then every mailbox holding one loses it
("seat lease ended ..."); the next answer brings back those it grants. The last answer is kept in the service's KV
(`v1.seats`, tccal.ingest.kv_state): a restart applies it while its lease runs.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import Any

import grpc
from nats.aio.msg import Msg

from tccal.bus import Bus
from tccal.grpckit import GrpcCaller
from tccal.ingest.kv_state import JsonKV
from tccal.retry import backoff_delay
from tccal.subjects import SEATS_SUBJECT
from trueconf.calendar.v1 import licensing_pb2, licensing_pb2_grpc

log = logging.getLogger(__name__)
LEASE = dt.timedelta(hours=1)
#: A seat request waits this long for others to join it (TrueConf asks for new users in bursts).
GATHER_SECONDS = 0.1


class SeatKeeper(abc.ABC):
    """The AllocateSeats loop; subclasses implement `seat_requests`, `apply`, `held` and `revoke` (abstract: a
    subclass missing one cannot be constructed)."""

    def __init__(
        self,
        store: JsonKV,
        address: str,
        *,
        providers: int,
        refresh_seconds: float,
        caller: GrpcCaller | None = None,
    ) -> None:
        self.store = store
        self.address = address
        self.caller = caller or GrpcCaller()
        self.providers = providers
        self.refresh_seconds = refresh_seconds
        self._wake = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self.answers = 0
        self.last_error = ""
        self.license: licensing_pb2.LicenseInfo | None = None
        self._lock = asyncio.Lock()
        self._asked = 0  # refresh() calls so far
        self._covered = 0  # the calls the newest answered request covers (it began after them)
        self._covered_ok = True
        #: How long a seat lasts from the request licensing answered (its answer says; LEASE until it has).
        self.lease = LEASE
        #: When (time.monotonic) the seats granted by the last answer run out; None: none held.
        self._lease_ends: float | None = None
        self._unreachable_since: dt.datetime | None = None

    # ------------------------------------------------------------------ what a service says
    @abc.abstractmethod
    def seat_requests(self) -> list[tuple[str, bool]]:
        """(mailbox, configured) of every mailbox to ask a seat for, configured ones first."""

    @abc.abstractmethod
    def apply(self, granted: set[str], refused: dict[str, str]) -> None:
        """Licensing's answer (mailboxes lower-cased; refused → reason)."""

    @abc.abstractmethod
    def held(self) -> list[str]:
        """The mailboxes holding a seat now."""

    @abc.abstractmethod
    def revoke(self, mailboxes: list[str], reason: str) -> None:
        """These mailboxes lost their seat (the lease ended without an answer)."""

    def unreachable(self, error: str) -> None:  # noqa: B027 - an optional hook: doing nothing is right by default
        """Licensing did not answer (`error` says why); the seats held stay until their lease ends."""

    # ------------------------------------------------------------------ the loop
    @property
    def asked(self) -> int:
        """How many times `refresh` has been called (an on-demand mailbox calls it once)."""
        return self._asked

    def poke(self) -> None:
        """Ask again now (a control message, an on-demand mailbox)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event, announcements: Bus | None = None) -> None:
        """Ask until `stop`; with `announcements`, also whenever a message arrives on `calendar.v1.control.seats`
        (licensing's CLI after a licence change, tcs-gateway when TrueConf asks for users): seats follow a new
        licence at once instead of at the next refresh."""
        subscription = None
        if announcements is not None:
            subscription = await announcements.nc.subscribe(SEATS_SUBJECT, cb=self._announced)
        try:
            await self.restore()
            failures = 0
            while not stop.is_set():
                self._wake.clear()
                self.expire_lapsed()  # at the end of the lease, not after one more unanswered request
                failures = 0 if await self.refresh() else failures + 1
                # licensing may simply start later than the service: ask again soon while it does not answer
                pause = min(self.refresh_seconds, self.lease.total_seconds() / 3)
                if failures:
                    pause = min(pause, backoff_delay(failures, base=1.0, cap=30.0))
                if self._lease_ends is not None:  # look again when the seats held run out
                    pause = min(pause, max(self._lease_ends - time.monotonic(), 0.0) + 0.05)
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({waiter, stopper}, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stopper.cancel()
        finally:
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
            if self._channel is not None:
                await self._channel.close(None)
                self._channel = None

    async def _announced(self, message: Msg) -> None:
        log.info("seat change announced: asking licensing again", extra={"subject": message.subject})
        self.poke()

    async def restore(self) -> None:
        """Apply the last answer stored in KV while it is younger than a lease (licensing may be down)."""
        saved = await self.store.load_seats()
        if not saved:
            return
        try:
            at = dt.datetime.fromisoformat(str(saved.get("at")))
        except ValueError:
            return
        try:
            lease = dt.timedelta(seconds=float(saved.get("lease_seconds", LEASE.total_seconds())))
        except (TypeError, ValueError):
            lease = LEASE
        left = (at + lease - dt.datetime.now(dt.UTC)).total_seconds()
        if left <= 0:
            return
        granted = {str(m) for m in saved.get("granted", [])}
        refused = {str(k): str(v) for k, v in (saved.get("refused") or {}).items()}
        self.lease = lease
        self._lease_ends = time.monotonic() + min(left, lease.total_seconds()) if granted else None
        self.apply(granted, refused)
        log.info("last seat answer restored", extra={"granted": len(granted), "answered_at": at.isoformat()})

    def _stub(self) -> Any:
        """The aio stub (grpc-stubs types only the blocking one, hence Any)."""
        if self._channel is None:
            self._channel = self.caller.aio_channel(self.address)
        return licensing_pb2_grpc.LicensingServiceStub(self._channel)

    async def refresh(self) -> bool:
        """Ask licensing for every known mailbox. A request waits GATHER_SECONDS first, and calls that arrive
        meanwhile or while it runs share it or the next one, which begins after all of them and so covers every
        mailbox they added: a burst of N on-demand mailboxes costs a few AllocateSeats, not N (each listing every
        mailbox, which made a burst of 2,000 quadratic)."""
        self._asked += 1
        mine = self._asked
        async with self._lock:
            if self._covered >= mine:
                return self._covered_ok
            await asyncio.sleep(GATHER_SECONDS)
            covers = self._asked
            ok = await self._request()
            self._covered, self._covered_ok = covers, ok
            return ok

    async def _request(self) -> bool:
        asked = self.seat_requests()
        if not asked:
            return True
        request = licensing_pb2.AllocateSeatsRequest(
            mailboxes=[licensing_pb2.SeatRequest(mailbox=m, configured=c) for m, c in asked],
            providers=self.providers,
        )
        started = time.monotonic()
        try:
            response = await self._stub().AllocateSeats(request, timeout=10, metadata=self.caller.metadata())
        except grpc.aio.AioRpcError as exc:
            if self._unreachable_since is None:
                self._unreachable_since = dt.datetime.now(dt.UTC)
            self.last_error = f"licensing at {self.address} unreachable: {exc.code().name}: {exc.details()}"
            log.warning("seat request failed", extra={"error": self.last_error})
            self.unreachable(self.last_error)
            self.expire_lapsed()
            return False
        self._unreachable_since = None
        self.answers += 1
        self.last_error = ""
        self.license = response.license
        if response.HasField("lease") and response.lease.ToTimedelta() > dt.timedelta(0):
            self.lease = response.lease.ToTimedelta()
        granted = {m.strip().lower() for m in response.granted}
        refused = {r.mailbox.strip().lower(): r.reason for r in response.refused}
        self._lease_ends = started + self.lease.total_seconds() if granted else None
        self.apply(granted, refused)
        with contextlib.suppress(Exception):
            await self.store.save_seats(sorted(granted), refused, self.lease.total_seconds())
        return True

    def expire_lapsed(self) -> int:
        """Licensing did not renew the seats before their lease ended: every mailbox holding one loses it.
        Returns how many lost it."""
        if self._lease_ends is None or time.monotonic() < self._lease_ends:
            return 0
        self._lease_ends = None
        since = self._unreachable_since.isoformat(timespec="seconds") if self._unreachable_since else "?"
        reason = (
            f"seat lease ended: licensing at {self.address} has not answered since {since} "
            f"({self.last_error or 'no answer'}); syncing resumes when it grants the seat again"
        )
        held = self.held()
        if held:
            self.revoke(held, reason)
            log.error("seat leases ended without licensing; mailboxes stopped", extra={"mailboxes": len(held)})
        return len(held)

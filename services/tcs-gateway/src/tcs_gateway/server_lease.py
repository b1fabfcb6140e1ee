"""Which tcs-gateway replica consumes a TrueConf Server's commands: a lease per server in the JetStream KV bucket
TCS_GATEWAY_LEASES (docs/architecture.md §11).

TrueConf Server may connect to any replica (a Kubernetes Service in front). The replica where the server's bridge
session is authenticated takes the server's lease and, while it holds it, is the only one that pulls the server's
TCS_COMMANDS subject (the durable consumer is shared; only the holder binds to it). The pattern is ews-ingest's
(ews_ingest.ownership):

- The bucket has a TTL (max_age = `lease_seconds`): a key not written again within it disappears on the NATS server,
  by the server's clock alone.
- Key `v1.server.<hex(server id)>`, value `{owner}`. Taken with `kv.create` (only where no key is), renewed every
  `lease_renew_seconds` with `kv.update(last=revision)`, released with `kv.delete(last=revision)`.
- The key is written by tccal.kv_lease (as ews-ingest's are): created where no key is (again at once when it expired
  between nats-py's two create steps), adopted when a write of ours was stored though its answer never came, renewed
  with the revision written last.
- Fencing: a lease counts from the moment its last successful create/update was sent. When
  `lease_seconds - lease_margin_seconds` passed since then without another success, the replica stops consuming the
  server's commands on its own, before the server can drop the key and another replica create it. A renewal answered
  "wrong last sequence" (someone else wrote it) stops consuming at once.

A server connected nowhere still has its conference commands run (they go to its REST API, not the bridge): a replica
without the server's session takes a free lease too, but only until a replica with the session wants it - that one
writes `v1.want.<hex(server id)>` each round it waits; a holder without a session releases when it sees it, and a
replica without a session does not take a lease somebody wants.

A second session for a server whose lease is held elsewhere (TrueConf reconnected to another replica while its old
connection is half-dead there) **waits for the lease**: it is served (snapshots, getCalendarList), but commands are
not consumed there until the old holder lets go - at once when its socket closes (the liveness watchdog closes a
silent one), or by the TTL when that replica died. So at no time do two replicas consume one server's commands, and
a killed holder's server has its commands flowing again after at most `lease_seconds + lease_renew_seconds` once it
reconnected elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

from nats.js.errors import APIError, BadRequestError, KeyDeletedError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from tccal.bus import Bus
from tccal.kv_lease import Lease, LeaseOwner
from tccal.subjects import GATEWAY_LEASES_BUCKET
from tcs_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
SERVER_PREFIX = "v1.server."
WANT_PREFIX = "v1.want."


def lease_key(server_id: str) -> str:
    return SERVER_PREFIX + server_id.lower().encode().hex()


def want_key(server_id: str) -> str:
    return WANT_PREFIX + server_id.lower().encode().hex()


def replica_id(environ: dict[str, str] | None = None) -> str:
    """This process's name as a lease owner: TCS_GATEWAY_REPLICA (default: the host name, a pod's name) and a random
    suffix, so a restarted process never mistakes its predecessor's lease for its own."""
    env = os.environ if environ is None else environ
    base = env.get("TCS_GATEWAY_REPLICA") or socket.gethostname() or "tcs-gateway"
    return f"{base[:64]}-{secrets.token_hex(3)}"


class LeaseBucket:
    """The bucket, opened (or made) once per process."""

    def __init__(self, bus: Bus, settings: GatewaySettings, *, replicas: int) -> None:
        self.bus = bus
        self.settings = settings
        self.replicas = replicas
        #: The lease length fencing counts with: the bucket's TTL where it is shorter than lease_seconds.
        self.lease_seconds = settings.lease_seconds
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()

    async def kv(self) -> KeyValue:
        async with self._lock:
            if self._kv is None:
                js = self.bus.js
                try:
                    kv = await js.key_value(GATEWAY_LEASES_BUCKET)
                except (NotFoundError, BadRequestError):
                    kv = await js.create_key_value(
                        bucket=GATEWAY_LEASES_BUCKET, history=1, ttl=self.settings.lease_seconds, replicas=self.replicas
                    )
                ttl = (await kv.status()).ttl
                if ttl and abs(ttl - self.settings.lease_seconds) > 1e-3:
                    log.warning(
                        "TCS_GATEWAY_LEASES keeps the TTL it was made with: leases count with the shorter of the two",
                        extra={"bucket_ttl_s": ttl, "lease_seconds": self.settings.lease_seconds},
                    )
                    self.lease_seconds = min(ttl, self.settings.lease_seconds)
                self._kv = kv
            return self._kv


class ServerLease:
    """The lease of one server: wanted for sure while `session_here()` (an authenticated session is attached here),
    taken when free otherwise, and then given up to a replica that has the session.

    `gained()` starts consuming; `lost()` stops it and returns once nothing of the server's commands is pulled any
    more (it is awaited before the lease is released, never before a fence)."""

    def __init__(
        self,
        bucket: LeaseBucket,
        server_id: str,
        *,
        replica: str,
        session_here: Callable[[], bool],
        gained: Callable[[], None],
        lost: Callable[[], Awaitable[None]],
    ) -> None:
        self.bucket = bucket
        self.settings = bucket.settings
        self.server_id = server_id
        self.key = lease_key(server_id)
        self.want_key = want_key(server_id)
        self.replica = replica
        #: Writes the lease (and the want key) `{owner: replica, server}`; every KV call is given at most a renewal
        #: interval (a slow one must not outlast the fence).
        self.owner = LeaseOwner(replica, call_timeout=self.settings.lease_renew_seconds, fields={"server": server_id})
        self._session_here = session_here
        self._gained = gained
        self._lost = lost
        self.lease: Lease | None = None
        self.wake = asyncio.Event()
        self.fenced = 0
        self.acquired = 0
        #: The lease is held elsewhere and a session here waits for it.
        self.waiting = False
        #: Starting and stopping the consumption one at a time (the fence and the rounds both may stop it).
        self._switch = asyncio.Lock()

    async def _stop_consuming(self) -> None:
        async with self._switch:
            await self._lost()

    @property
    def held(self) -> bool:
        return self.lease is not None and time.monotonic() < self._deadline(self.lease)

    def _deadline(self, lease: Lease) -> float:
        return lease.sent_at + self.bucket.lease_seconds - self.settings.lease_margin_seconds

    # ------------------------------------------------------------------ running
    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until `stop` (then the lease is given back): take, renew or release."""
        fence = asyncio.get_running_loop().create_task(self._fence(), name=f"lease-fence-{self.server_id}")
        try:
            while not stop.is_set():
                try:
                    await self._round()
                except Exception as exc:  # NATS away: the fence stops what can no longer be renewed
                    log.warning("server lease round failed", extra={"server": self.server_id, "error": repr(exc)})
                self.wake.clear()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
                try:
                    await asyncio.wait(
                        waiters, timeout=self.settings.lease_renew_seconds, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            fence.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fence
            await self._release()

    async def _round(self) -> None:
        kv = await self.bucket.kv()
        here = self._session_here()
        if self.lease is not None:
            if not here and await self._wanted_elsewhere(kv):
                log.info("a replica with the server's session wants its lease: released", extra=self._extra())
                await self._release()
                return
            if not await self.owner.renew(kv, self.key, self.lease):
                log.error("server lease taken by another replica: its commands stop here", extra=self._extra())
                self.lease = None
                await self._stop_consuming()
            return
        if not here and await self._wanted_elsewhere(kv):
            return  # a replica with the session waits for it: leave the lease to that one
        # created here, or found to be ours already (a create whose answer timed out); None while held elsewhere
        lease = await self.owner.take(kv, self.key)
        if lease is None:
            if here:
                if not self.waiting:
                    log.info(
                        "server's lease is held by another replica: this session waits for it", extra=self._extra()
                    )
                self.waiting = True
                await self.owner.bounded(kv.put(self.want_key, self.owner.payload))
            return
        if self.waiting:
            with contextlib.suppress(Exception):
                await self.owner.bounded(kv.delete(self.want_key))
        self.waiting = False
        self.lease = lease
        self.acquired += 1
        log.info("server lease acquired: consuming its commands", extra={**self._extra(), "session_here": here})
        async with self._switch:  # after a stop still under way (the fence's), and only if still held
            if self.lease is lease and self.held:
                self._gained()

    async def _wanted_elsewhere(self, kv: KeyValue) -> bool:
        try:
            entry = await self.owner.bounded(kv.get(self.want_key))
        except (KeyNotFoundError, KeyDeletedError):
            return False
        owner = json.loads(entry.value).get("owner") if entry.value else None
        return owner is not None and owner != self.replica

    def _extra(self) -> dict[str, str]:
        return {"server": self.server_id, "replica": self.replica}

    async def _release(self) -> None:
        """Stop consuming, then give the lease back (another replica may take it at once)."""
        lease = self.lease
        if lease is None:
            return
        await self._stop_consuming()
        self.lease = None
        if not self.bucket.bus.connected:
            return  # it expires on its own
        with contextlib.suppress(Exception):
            kv = await self.bucket.kv()
            with contextlib.suppress(APIError):  # rewritten meanwhile: not ours to delete
                await self.owner.bounded(kv.delete(self.key, last=lease.revision))
        log.info("server lease released", extra=self._extra())

    async def _fence(self) -> None:
        """Stop consuming when the lease was not renewed in time, before it can expire on the server."""
        while True:
            lease = self.lease
            if lease is not None and time.monotonic() >= self._deadline(lease):
                self.lease = None
                self.fenced += 1
                log.error("server lease not renewed in time: its commands stop here", extra=self._extra())
                await self._stop_consuming()
            await asyncio.sleep(min(0.25, self.settings.lease_margin_seconds / 4))

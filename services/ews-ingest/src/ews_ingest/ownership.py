"""Which mailboxes this ews-ingest replica syncs: leases in the JetStream KV bucket INGEST_LEASES.

Mailboxes are hashed into shards (BLAKE2b of the lower-cased address modulo the shard count); a shard is the unit
of ownership. The shard count is fixed per installation: the first replica writes its `lease_shards` to
INGEST_STATE `v1.lease-shards` and every replica uses the stored value, so two replicas can never disagree on
which lease covers a mailbox.

INGEST_LEASES is a bucket with a TTL (max_age = `lease_seconds`): a key not written again within it disappears on
the NATS server, by the server's clock alone - no replica compares its clock with another's.

| key | value |
|---|---|
| `v1.replica.<id>` | the replica's heartbeat `{replica, at}`, written every `lease_renew_seconds` |
| `v1.shard.<n>` | the lease of shard n `{owner}`: `kv.create` (only where no key is), `kv.update(last=revision)` |

The leases are written by tccal.kv_lease (as tcs-gateway's are): created where no key is (again at once when the key
expired between nats-py's two create steps), adopted when a write of ours was stored though its answer never came,
renewed with the revision written last.

Every `lease_renew_seconds` (less than a third of the lease) a replica writes its heartbeat, lists the live
replicas (the heartbeats present), computes the balanced assignment every replica computes alike
(`assignment`: rendezvous hashing of shards over replicas, at most ceil(shards / replicas) each, so a replica
joining or leaving moves about its share), renews the leases it holds and still should, hands over those another
replica should hold now, and creates the leases it should hold that nobody holds (each shard alone: one that
fails is logged with its reason, and the shards created before it still have their mailboxes started). A hand-over
stops the shard's mailboxes at once (streams close, a running sync stops after its current, checkpointed page)
and, in the background, keeps renewing the lease until those syncs ended, then deletes it with `last=revision`.

Fencing: a lease is counted from the moment its last successful create/update was sent (before the server could
have stamped it). When `lease_seconds - lease_margin_seconds` have passed since then without another success, the
replica stops that shard's mailboxes on its own - before the server can drop the key and another replica create
it. A renewal answered "wrong last sequence" (someone else wrote it) stops them at once. A sync running when a replica
is fenced is told to stop after its page, and it was cut from NATS too (fencing happens when the KV is unreachable):
its publishes and checkpoints fail, so nothing of it lands twice.

A replica that stops releases its leases and heartbeat at once (others take over within one renewal); one killed
keeps them until the TTL drops them: its mailboxes resume after at most `lease_seconds + lease_renew_seconds`
plus a catch-up sync from the checkpoint in INGEST_STATE.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from nats.js.errors import APIError, BadRequestError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from ews_ingest.settings import Tuning
from ews_ingest.state import StateStore, key_token
from tccal.bus import Bus
from tccal.kv_lease import Lease, LeaseOwner
from tccal.subjects import INGEST_LEASES_BUCKET

log = logging.getLogger(__name__)
SHARDS_KEY = "v1.lease-shards"
REPLICA_PREFIX = "v1.replica."
SHARD_PREFIX = "v1.shard."
#: How long a hand-over waits for a sync still running on a released shard before it deletes the lease anyway.
HANDOVER_WAIT_SECONDS = 30.0
#: ... and then this long, so the streaming connection it closed is gone at Exchange before the next owner opens its
#: own (closing is a socket shutdown; the server notices it a moment later).
HANDOVER_GRACE_SECONDS = 0.5


def replica_id(environ: dict[str, str] | None = None) -> str:
    """This process's name in the registry: EWS_INGEST_REPLICA (default: the host name, a pod's name) and a random
    suffix, so a restarted process never mistakes its predecessor's leases for its own."""
    env = os.environ if environ is None else environ
    base = env.get("EWS_INGEST_REPLICA") or socket.gethostname() or "ews-ingest"
    return f"{key_token(base)}-{secrets.token_hex(3)}"


def shard_of(mailbox: str, shards: int) -> int:
    """The mailbox's shard: BLAKE2b of the lower-cased address (CRC-32's low bits repeat for similar names such as
    user001, user002 ...: 50 of them fell in 8 of 16 shards)."""
    digest = hashlib.blake2b(mailbox.strip().lower().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def _score(replica: str, shard: int) -> int:
    digest = hashlib.blake2b(f"{replica}/{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assignment(replicas: Iterable[str], shards: int) -> dict[int, str]:
    """Shard -> replica: each shard goes to its highest-scoring replica (rendezvous hashing) that still has room
    under ceil(shards / replicas). The same on every replica that sees the same live set."""
    live = sorted(set(replicas))
    if not live:
        return {}
    room = math.ceil(shards / len(live))
    load = dict.fromkeys(live, 0)
    out: dict[int, str] = {}
    for shard in range(shards):
        for replica in sorted(live, key=lambda r: _score(r, shard), reverse=True):
            if load[replica] < room:
                out[shard] = replica
                load[replica] += 1
                break
    return out


class Ownership:
    """Holds this replica's shard leases; `owns(mailbox)` is the scheduler's question."""

    def __init__(
        self,
        bus: Bus,
        store: StateStore,
        tuning: Tuning,
        *,
        replica: str,
        mailboxes: Callable[[], Iterable[str]],
        gained: Callable[[list[str]], None],
        lost: Callable[[list[str]], None],
        settle: Callable[[list[str]], Awaitable[None]],
        after_round: Callable[[], None] = lambda: None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.tuning = tuning
        self.replica = replica
        #: Writes the shard leases `{owner: replica}`; every KV call of a round is given at most a renewal interval: a
        #: slow one must not hold back the other leases' renewal.
        self.owner = LeaseOwner(replica, call_timeout=tuning.lease_renew_seconds)
        self._mailboxes = mailboxes
        self._gained = gained
        self._lost = lost
        self._settle = settle
        #: Called after every lease round, failed or not (owns() may have changed: control requests held meanwhile
        #: are answered then - held.py).
        self._after_round = after_round
        self.shards = tuning.lease_shards
        #: The lease length fencing counts with: the bucket's TTL where it is shorter than lease_seconds (the bucket
        #: keeps the TTL it was made with; counting with a longer one would outlive the server's expiry).
        self.lease_seconds = tuning.lease_seconds
        self.leases: dict[int, Lease] = {}
        #: Leases being handed over: no longer owned here (owns() says no), still renewed until the syncs that were
        #: running on their mailboxes ended, then deleted.
        self.releasing: dict[int, Lease] = {}
        self._handovers: set[asyncio.Task[None]] = set()
        self._fence_task: asyncio.Task[None] | None = None
        self.live: list[str] = []
        self.handovers = 0
        self.fenced = 0
        self._kv: KeyValue | None = None
        self.ready = asyncio.Event()  # the first round (shard count known, leases tried) is done

    # ------------------------------------------------------------------ questions
    def owns(self, mailbox: str) -> bool:
        lease = self.leases.get(shard_of(mailbox, self.shards))
        return lease is not None and time.monotonic() < self._deadline(lease)

    def _deadline(self, lease: Lease) -> float:
        return lease.sent_at + self.lease_seconds - self.tuning.lease_margin_seconds

    def _members(self, shards: set[int]) -> list[str]:
        return [m for m in self._mailboxes() if shard_of(m, self.shards) in shards]

    def status(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "live": list(self.live),
            "shards": self.shards,
            "held": sorted(self.leases),
            "handovers": self.handovers,
            "fenced": self.fenced,
        }

    # ------------------------------------------------------------------ running
    async def run(self, stop: asyncio.Event) -> None:
        """Renewal rounds until `stop`. The fence keeps watching after that, while the streams and syncs wind down
        (they may take seconds), until release_all()."""
        if self._fence_task is None:
            self._fence_task = asyncio.create_task(self._fence(), name="ews-lease-fence")
        while not stop.is_set():
            try:
                await self._round()
            except Exception as exc:  # NATS away: the fence stops what can no longer be renewed
                log.warning("lease round failed", extra={"replica": self.replica, "error": str(exc)})
            self._after_round()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.tuning.lease_renew_seconds)

    async def kv(self) -> KeyValue:
        if self._kv is None:
            js = self.bus.js
            try:
                self._kv = await js.key_value(INGEST_LEASES_BUCKET)
            except (NotFoundError, BadRequestError):
                self._kv = await js.create_key_value(
                    bucket=INGEST_LEASES_BUCKET,
                    history=1,
                    ttl=self.tuning.lease_seconds,
                    replicas=self.bus.settings.replicas,
                )
            ttl = (await self._kv.status()).ttl
            if ttl and abs(ttl - self.tuning.lease_seconds) > 1e-3:
                log.warning(
                    "INGEST_LEASES keeps the TTL it was made with: leases count with the shorter of the two",
                    extra={"bucket_ttl_s": ttl, "lease_seconds": self.tuning.lease_seconds},
                )
                self.lease_seconds = min(ttl, self.tuning.lease_seconds)
        return self._kv

    async def _shard_count(self) -> int:
        state = await self.store.kv()
        proposed = json.dumps({"shards": self.tuning.lease_shards}).encode()
        try:
            await state.create(SHARDS_KEY, proposed)
            return self.tuning.lease_shards
        except KeyWrongLastSequenceError:
            entry = await state.get(SHARDS_KEY)
            stored = int(json.loads(entry.value or b"{}")["shards"])
            if stored != self.tuning.lease_shards:
                log.warning(
                    "lease_shards differs from the installation's: the stored count is used",
                    extra={"configured": self.tuning.lease_shards, "stored": stored},
                )
            return stored

    async def _round(self) -> None:
        kv = await self.kv()
        if not self.ready.is_set():
            self.shards = await self._shard_count()
        await self._renew(kv)  # first: nothing else in the round may delay it
        value = json.dumps({"replica": self.replica, "at": time.time()}).encode()
        await self.owner.bounded(kv.put(REPLICA_PREFIX + self.replica, value))
        self.live = sorted(await self._replicas(kv) | {self.replica})
        wanted = {shard for shard, owner in assignment(self.live, self.shards).items() if owner == self.replica}
        self._hand_over(kv, set(self.leases) - wanted)
        await self._acquire(kv, wanted - set(self.leases) - set(self.releasing))
        self.ready.set()

    async def _replicas(self, kv: KeyValue) -> set[str]:
        """The replicas whose heartbeat is in the bucket (a server-side filtered watch of the stored values)."""
        watcher: Any = await kv.watch(REPLICA_PREFIX + ">", ignore_deletes=True, meta_only=True)  # untyped in nats-py
        found: set[str] = set()
        try:
            while True:
                entry = await watcher.updates(timeout=5)
                if entry is None:  # the end of the stored values
                    return found
                found.add(str(entry.key).removeprefix(REPLICA_PREFIX))
        finally:
            await watcher.stop()

    async def _renew(self, kv: KeyValue) -> None:
        """Renew every lease held and every one being handed over; one that timed out is tried again next round."""
        lost: set[int] = set()
        for shard, lease in sorted(self.leases.items()):
            with contextlib.suppress(TimeoutError):
                if not await self.owner.renew(kv, SHARD_PREFIX + str(shard), lease):
                    lost.add(shard)
        for shard, lease in sorted(self.releasing.items()):
            with contextlib.suppress(TimeoutError):
                if not await self.owner.renew(kv, SHARD_PREFIX + str(shard), lease):
                    self.releasing.pop(shard, None)
        if lost:
            log.error("shard leases taken by another replica", extra={"replica": self.replica, "shards": sorted(lost)})
            self._drop(lost)

    def _hand_over(self, kv: KeyValue, leaving: set[int]) -> None:
        """Stop the shards' mailboxes now (owns() says no, streams close, running syncs stop after their page) and
        delete their leases in the background once those syncs ended; the rounds meanwhile renew them."""
        if not leaving:
            return
        for shard in leaving:
            self.releasing[shard] = self.leases[shard]
        self._drop(leaving)
        task = asyncio.get_running_loop().create_task(self._release(kv, leaving, self._members(leaving)))
        self._handovers.add(task)
        task.add_done_callback(self._handovers.discard)

    async def _release(self, kv: KeyValue, shards: set[int], members: list[str]) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settle(members), HANDOVER_WAIT_SECONDS)
        await asyncio.sleep(HANDOVER_GRACE_SECONDS)
        for shard in sorted(shards):
            lease = self.releasing.pop(shard, None)
            if lease is None:  # not renewed in time: it expires on its own
                continue
            with contextlib.suppress(APIError):  # rewritten meanwhile: not ours to delete
                await kv.delete(SHARD_PREFIX + str(shard), last=lease.revision)
        self.handovers += len(shards)
        log.info("shards handed over", extra={"replica": self.replica, "shards": sorted(shards), "live": self.live})

    async def _acquire(self, kv: KeyValue, free: set[int]) -> None:
        """Create the leases of `free` one by one. Whatever befalls one shard is that shard's alone: the shards taken
        before it are announced (`gained`) all the same - a lease held here whose mailboxes were never started would
        be renewed for ever with nobody syncing them."""
        got: set[int] = set()
        missed: dict[int, str] = {}
        try:
            for shard in sorted(free):
                try:
                    # created here, or found to be ours already (a create whose answer timed out); None while
                    # another replica holds it (until it hands it over or its TTL ends)
                    lease = await self.owner.take(kv, SHARD_PREFIX + str(shard))
                except TimeoutError:
                    missed[shard] = "timed out"
                    continue
                except Exception as exc:  # one shard's failure must not cost the others
                    missed[shard] = f"{type(exc).__name__}: {exc}"
                    continue
                if lease is None:
                    continue
                self.leases[shard] = lease
                got.add(shard)
        finally:
            if missed:
                log.warning("shard leases not taken this round", extra={"replica": self.replica, "why": missed})
            if got:
                log.info("shards acquired", extra={"replica": self.replica, "shards": sorted(got), "live": self.live})
                self._gained(self._members(got))

    def _drop(self, shards: set[int]) -> None:
        for shard in shards:
            self.leases.pop(shard, None)
        members = self._members(shards)
        if members:
            self._lost(members)

    async def _fence(self) -> None:
        """Stop the mailboxes of every lease that was not renewed in time, before it can expire on the server."""
        while True:
            now = time.monotonic()
            for shard, lease in list(self.releasing.items()):
                if now >= self._deadline(lease):  # left to expire; the syncs still settling were cut from NATS too
                    self.releasing.pop(shard, None)
            late = {shard for shard, lease in self.leases.items() if now >= self._deadline(lease)}
            if late:
                self.fenced += len(late)
                log.error(
                    "shard leases not renewed in time: their mailboxes stop here",
                    extra={"replica": self.replica, "shards": sorted(late)},
                )
                self._drop(late)
            await asyncio.sleep(min(0.25, self.tuning.lease_margin_seconds / 4))

    async def release_all(self) -> None:
        """On a clean stop, after the syncs ended: give every lease and the heartbeat back at once (others take over
        on their next round)."""
        for task in [*self._handovers, *([self._fence_task] if self._fence_task else [])]:
            task.cancel()
        self._fence_task = None
        leases = {**self.releasing, **self.leases}
        self.releasing.clear()
        self._drop(set(self.leases))
        if self._kv is None or not self.bus.connected:
            return
        kv = self._kv
        with contextlib.suppress(Exception):
            for shard, lease in leases.items():
                with contextlib.suppress(APIError):  # rewritten meanwhile: not ours to delete
                    await kv.delete(SHARD_PREFIX + str(shard), last=lease.revision)
            await kv.delete(REPLICA_PREFIX + self.replica)

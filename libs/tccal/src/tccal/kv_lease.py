"""Leases in a JetStream KV bucket: taking a key only where none is, adopting our own, renewing by revision.

ews-ingest's shard leases (ews_ingest.ownership) and tcs-gateway's server leases (tcs_gateway.server_lease) are
written alike; this module is that writing, once. What a lease *means* (which keys, when to take, hand over, release
or fence) stays with its service.

JetStream KV semantics this relies on:

- A bucket is the stream `KV_<bucket>`; a key is a subject in it, and the key's **revision** is the stream sequence
  of its last message.
- `update(key, value, last=revision)` is a publish with the header `Nats-Expected-Last-Subject-Sequence: revision`:
  the server stores it only if the key's last message is still that one, and answers "wrong last sequence"
  (`KeyWrongLastSequenceError`, API errors 10071/10164) otherwise. `last=0` means "no message for this key".
- A bucket with a TTL (`max_age`) drops a key not written again within it, by the server's clock alone: the message
  leaves the stream and no tombstone is written. `delete` / `purge` instead leave a tombstone (a message with the
  header `KV-Operation: DEL` / `PURGE`) that `get` reports as a deleted key.

nats-py's `KeyValue.create(key, value)` is **two steps**: `update(key, value, last=0)`; when that is answered "wrong
last sequence" it reads the key (`_get`) to tell a live key (it re-raises `KeyWrongLastSequenceError`) from a
tombstone (it writes again at the tombstone's revision). A key that expired between the write (which still found
it) and the read (which no longer does) makes `create` raise `KeyNotFoundError` - the very moment a dead owner's
lease is taken over. The key is free then: `LeaseOwner.take` creates once more at once.

A write whose answer never came (a timeout) may still have been stored: the key then holds our owner name at a
revision we never learned. Owner names are unique per process, so nobody else can have written it - `adopt` takes
that revision on.

Fencing counts from `Lease.sent_at`: `time.monotonic()` taken just *before* the successful create/update was sent,
so no later than the server stamped the message its TTL counts from. A holder that stops acting when
`sent_at + lease length - margin` passed without another success is thus stopped before the server can drop the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Lease:
    """A key this process holds: the revision it wrote last, and when that write was sent."""

    revision: int
    #: time.monotonic() just before the create/update that succeeded was sent.
    sent_at: float


@dataclass(frozen=True)
class LeaseOwner:
    """One lease owner's writes: its name (unique per process) goes into every lease value as JSON `owner`, next to
    `fields`; every KV call is given at most `call_timeout` seconds (`TimeoutError` beyond: a slow answer must not
    outlast the caller's fence)."""

    name: str
    call_timeout: float
    fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a lease owner needs a name, got an empty one")
        if "owner" in self.fields:
            raise ValueError(f"lease fields must not hold 'owner' (the owner's name goes there): {dict(self.fields)!r}")
        if not self.call_timeout > 0:
            raise ValueError(f"call_timeout must be positive, got {self.call_timeout!r}")

    @property
    def payload(self) -> bytes:
        """The value written to a lease key: `{"owner": name, **fields}`."""
        return json.dumps({"owner": self.name, **self.fields}).encode()

    async def bounded(self, call: Awaitable[T]) -> T:
        """One KV call, given at most `call_timeout`."""
        return await asyncio.wait_for(call, self.call_timeout)

    async def take(self, kv: KeyValue, key: str) -> Lease | None:
        """The lease `key`, created here where no key is (or found to be ours already at another revision: adopted);
        None while another owner holds it. A key that expired between `kv.create`'s two steps is created again, once;
        `KeyNotFoundError` is raised if that happens twice in a row."""
        try:
            return await self._create(kv, key)
        except KeyNotFoundError:
            # create's write found the key, its read then did not: it expired in between. Free now: again.
            log.info("lease expired while being created: again", extra={"key": key, "owner": self.name})
        return await self._create(kv, key)

    async def _create(self, kv: KeyValue, key: str) -> Lease | None:
        sent = time.monotonic()
        try:
            revision = await self.bounded(kv.create(key, self.payload))
        except KeyWrongLastSequenceError:  # held: by another owner until it lets go or the TTL drops it
            return await self.adopt(kv, key)  # or by this one (a create whose answer timed out)
        return Lease(revision, sent)

    async def adopt(self, kv: KeyValue, key: str) -> Lease | None:
        """The lease `key` if it holds this owner's name at a revision we did not learn (a write of ours succeeded
        though its answer never came): rewritten at that revision. None when the key is gone (expired or deleted),
        holds another owner's name, or was rewritten meanwhile. A value that is not JSON raises its decoding error."""
        try:
            entry = await self.bounded(kv.get(key))
        except (KeyNotFoundError, KeyDeletedError):  # expired or deleted meanwhile: not ours any more
            return None
        owner = json.loads(entry.value).get("owner") if entry.value else None
        if owner != self.name or entry.revision is None:
            return None
        sent = time.monotonic()
        try:
            revision = await self.bounded(kv.update(key, self.payload, last=entry.revision))
        except KeyWrongLastSequenceError:
            return None
        return Lease(revision, sent)

    async def renew(self, kv: KeyValue, key: str, lease: Lease) -> bool:
        """Rewrite the lease if it is still the revision written last here (or a later one of ours: adopted), and
        count it from this write: `lease` is updated in place. False when someone else wrote it (the lease is lost;
        `lease` is left as it was). A timeout raises `TimeoutError` with `lease` unchanged."""
        sent = time.monotonic()
        try:
            lease.revision = await self.bounded(kv.update(key, self.payload, last=lease.revision))
        except KeyWrongLastSequenceError:
            adopted = await self.adopt(kv, key)
            if adopted is None:
                return False
            lease.revision, sent = adopted.revision, adopted.sent_at
        lease.sent_at = sent
        return True

"""KV leases (tccal.kv_lease) on a real nats-server: taken only where no key is, created again when the key expired
between nats-py's two create steps, adopted only when the key holds our name, renewed only at the revision written
last."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from tccal.bus import Bus, BusSettings
from tccal.kv_lease import Lease, LeaseOwner

BUCKET = "TEST_LEASES"
KEY = "v1.shard.7"
US = LeaseOwner("us-1a2b3c", call_timeout=5.0)
RIVAL = LeaseOwner("rival-4d5e6f", call_timeout=5.0)


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    bus = Bus(BusSettings(url=nats_url, name="test-kv-lease"))
    await bus.connect(attempts=3)
    yield bus.js
    await bus.close()


@pytest.fixture
async def kv(js: JetStreamContext) -> KeyValue:
    """A lease bucket as the services make theirs: history 1, a TTL (long here: nothing expires unless a test says)."""
    return await js.create_key_value(bucket=BUCKET, history=1, ttl=60.0)


class ExpiresBetweenCreatesSteps(KeyValue):
    """The real bucket, whose key expires between `create`'s write and its read (nats-py's `_get`): just before that
    read, once, the key's messages are purged from the stream - what the bucket's max_age does when a key expires (the
    message leaves the stream and no tombstone is written, unlike a KV delete or purge; KV streams deny deleting one
    message, not purging a subject)."""

    def __init__(self, js: JetStreamContext, *, direct: bool) -> None:
        super().__init__(name=BUCKET, stream=f"KV_{BUCKET}", pre=f"$KV.{BUCKET}.", js=js, direct=direct)
        self.js = js
        self.armed = True
        self.expired: list[int] = []

    async def _get(self, key: str, revision: int | None = None) -> KeyValue.Entry:
        if self.armed:
            self.armed = False
            subject = f"$KV.{BUCKET}.{key}"
            message = await self.js.get_msg(f"KV_{BUCKET}", subject=subject)
            await self.js.purge_stream(f"KV_{BUCKET}", subject=subject)
            assert message.seq is not None
            self.expired.append(message.seq)
        return await super()._get(key, revision)


async def expiring(js: JetStreamContext) -> ExpiresBetweenCreatesSteps:
    direct = bool((await js.stream_info(f"KV_{BUCKET}")).config.allow_direct)
    return ExpiresBetweenCreatesSteps(js, direct=direct)


def owner_of(entry: KeyValue.Entry) -> str:
    assert entry.value is not None
    return str(json.loads(entry.value)["owner"])


async def test_a_key_that_expires_between_creates_two_steps_is_created_again(
    js: JetStreamContext, kv: KeyValue
) -> None:
    held = await kv.create(KEY, RIVAL.payload)  # a dead owner's lease, about to expire

    # the race itself, with nats-py alone: create's write finds the key, its read does not - KeyNotFoundError
    bare = await expiring(js)
    with pytest.raises(KeyNotFoundError):
        await bare.create(KEY, US.payload)
    assert bare.expired == [held]

    held = await kv.create(KEY, RIVAL.payload)
    racing = await expiring(js)
    lease = await US.take(racing, KEY)
    assert racing.expired == [held]  # the key did expire between the two steps
    assert lease is not None and lease.revision > held
    entry = await kv.get(KEY)
    assert (owner_of(entry), entry.revision) == (US.name, lease.revision)


async def test_a_free_key_is_taken_and_a_held_one_is_not(kv: KeyValue) -> None:
    before = time.monotonic()
    lease = await US.take(kv, KEY)
    assert lease is not None
    assert before <= lease.sent_at <= time.monotonic()
    entry = await kv.get(KEY)
    assert (owner_of(entry), entry.revision) == (US.name, lease.revision)
    assert entry.value is not None and json.loads(entry.value) == {"owner": US.name}

    assert await RIVAL.take(kv, KEY) is None  # held by us: the rival gets nothing, the key is unchanged
    assert (await kv.get(KEY)).revision == lease.revision


async def test_a_key_of_ours_written_at_an_unknown_revision_is_taken_over(kv: KeyValue) -> None:
    """A create whose answer never came: the key holds our name at a revision we did not learn."""
    lost_answer = await kv.create(KEY, US.payload)
    lease = await US.take(kv, KEY)
    assert lease is not None and lease.revision > lost_answer
    assert (await kv.get(KEY)).revision == lease.revision


async def test_adopt_only_a_key_that_holds_our_name(kv: KeyValue) -> None:
    assert await US.adopt(kv, KEY) is None  # no key
    await kv.put(KEY, RIVAL.payload)
    assert await US.adopt(kv, KEY) is None  # another owner's
    rival_revision = (await kv.get(KEY)).revision
    assert rival_revision is not None
    await kv.update(KEY, US.payload, last=rival_revision)
    ours = (await kv.get(KEY)).revision
    adopted = await US.adopt(kv, KEY)
    assert adopted is not None and ours is not None and adopted.revision > ours
    await kv.delete(KEY)
    assert await US.adopt(kv, KEY) is None  # deleted (a tombstone)
    await kv.put(KEY, b"not a lease")
    with pytest.raises(json.JSONDecodeError):  # a value nobody of ours wrote is an error, not a free key
        await US.adopt(kv, KEY)


async def test_renew_only_at_the_revision_written_last(kv: KeyValue) -> None:
    lease = await US.take(kv, KEY)
    assert lease is not None
    first = Lease(lease.revision, lease.sent_at)
    assert await US.renew(kv, KEY, lease)
    assert lease.revision > first.revision and lease.sent_at >= first.sent_at
    assert (await kv.get(KEY)).revision == lease.revision

    # a renewal of ours stored though its answer never came: the key is ours at a later revision - adopted
    lost_answer = await kv.update(KEY, US.payload, last=lease.revision)
    assert await US.renew(kv, KEY, lease)
    assert lease.revision > lost_answer
    assert (await kv.get(KEY)).revision == lease.revision

    # someone else wrote it (the lease expired and was taken): a stale revision renews nothing
    stale = Lease(lease.revision, lease.sent_at)
    taken = await kv.update(KEY, RIVAL.payload, last=lease.revision)
    assert not await US.renew(kv, KEY, lease)
    assert lease == stale  # left as it was: the caller's fence still counts from the last success
    entry = await kv.get(KEY)
    assert (owner_of(entry), entry.revision) == (RIVAL.name, taken)


def test_the_payload_names_the_owner_and_bad_owners_are_refused() -> None:
    assert json.loads(LeaseOwner("gw-1", 1.0, {"server": "vcs#1"}).payload) == {"owner": "gw-1", "server": "vcs#1"}
    with pytest.raises(ValueError, match="'owner'"):
        LeaseOwner("gw-1", 1.0, {"owner": "someone"})
    with pytest.raises(ValueError, match="empty"):
        LeaseOwner("", 1.0)
    with pytest.raises(ValueError, match="call_timeout must be positive, got 0"):
        LeaseOwner("gw-1", 0)

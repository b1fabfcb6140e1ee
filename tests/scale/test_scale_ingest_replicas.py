"""ews-ingest replicas on a 3-node NATS JetStream cluster (issue #18), against the Exchange emulator with 50 mailboxes.

The sandbox runs with `--nats-nodes 3` (streams and KV with 3 replicas) and its ews-ingest as replica "a"; the tests
start more replicas as separate processes with the sandbox's ews-ingest config (other ports). Leases are short here
(EWS_INGEST_LEASE_SECONDS=6, renewed every 1.5 s, fenced 2 s before expiry, 16 shards) so a takeover fits a test.

What is asserted, through real interfaces only: every mailbox streamed by exactly one replica (the emulator's
/_emulator/owners: open GetStreamingEvents connections per mailbox, and SyncFolderItems runs of two clients at once,
never above 1 during a whole test); every lease in INGEST_LEASES held by a live replica; each change made in Exchange
stored exactly once in CALENDAR (what sync-engine consumes); kill -9 of a replica: its mailboxes' changes arrive
again (the time is printed: FAILOVER ...); kill -9 of a NATS node: nothing lost; and Exchange requests for the same
changes with two replicas within 25 % (+5) of those with one (printed: LOAD ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy

from ews_ingest.ownership import shard_of
from exchange_emulator.testing import AdminClient
from tccal.subjects import STREAM_SUBJECTS
from tccal_sandbox.demo import Ews
from tccal_sandbox.scaleout import ingest_lease_owners
from tccal_sandbox.testing import (
    SandboxProcess,
    ServiceReplica,
    connect_nats,
    running_sandbox,
    start_service_replica,
    wait_for_async,
)
from trueconf.calendar.v1 import calendar_pb2

LEASES = {
    "EWS_INGEST_LEASE_SECONDS": "6",
    "EWS_INGEST_LEASE_RENEW_SECONDS": "1.5",
    "EWS_INGEST_LEASE_MARGIN_SECONDS": "2",
    "EWS_INGEST_LEASE_SHARDS": "16",
}
#: A killed replica's mailboxes take over after its leases expire (6 s), the next round of a survivor (1.5 s) and
#: a catch-up sync; this bounds the wait (the measured time is printed).
FAILOVER_BOUND_SECONDS = 6 + 2 * 1.5 + 20
CALENDAR_SUBJECTS = STREAM_SUBJECTS["CALENDAR"]


@dataclass
class Changes:
    """Every CalendarChange stored in CALENDAR from the moment it was started, by the event's subject."""

    seen: Counter[str] = field(default_factory=Counter)

    def arrived(self, subjects: list[str]) -> bool:
        return all(self.seen[s] >= 1 for s in subjects)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with running_sandbox(
        "--no-demo",
        "--nats-nodes",
        "3",
        "--extra-mailboxes",
        "45",
        env={**LEASES, "EWS_INGEST_REPLICA": "a"},
        timeout=300,
    ) as running:
        yield running


def start_replica(sandbox: SandboxProcess, name: str) -> ServiceReplica:
    """Another ews-ingest process with the sandbox's ews-ingest config (its own gRPC and HTTP ports)."""
    return start_service_replica(sandbox, "ews-ingest", name, env=LEASES)


@contextlib.asynccontextmanager
async def admin_nats(sandbox: SandboxProcess) -> AsyncIterator[NatsClient]:
    nc = await connect_nats(sandbox.ready)
    try:
        yield nc
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def collecting(nc: NatsClient) -> AsyncIterator[Changes]:
    changes = Changes()

    async def on_message(msg: Any) -> None:
        change = calendar_pb2.CalendarChange.FromString(msg.data)
        if change.HasField("event"):
            changes.seen[change.event.subject] += 1

    subscription = await nc.jetstream().subscribe(
        CALENDAR_SUBJECTS, cb=on_message, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
    )
    try:
        yield changes
    finally:
        await subscription.unsubscribe()


async def stored_counts(nc: NatsClient, subjects: list[str], attempts: int = 3) -> Counter[str]:
    """How often each subject is stored in CALENDAR (read from the stream's start, whichever nodes are up); a read
    cut short by the cluster still settling after a node was killed (a request or the ordered consumer timing out) is
    started again from the beginning."""
    for attempt in range(1, attempts + 1):
        try:
            return await _stored_counts(nc, subjects)
        except TimeoutError:  # nats.errors.TimeoutError is one too
            if attempt == attempts:
                raise
            await asyncio.sleep(2.0)
    raise AssertionError("unreachable")


async def _stored_counts(nc: NatsClient, subjects: list[str]) -> Counter[str]:
    wanted = set(subjects)
    js = nc.jetstream()
    total = (await js.stream_info("CALENDAR")).state.messages
    counts: Counter[str] = Counter()
    read = 0
    subscription = await js.subscribe(CALENDAR_SUBJECTS, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        while read < total:
            msg = await subscription.next_msg(timeout=10)
            read += 1
            change = calendar_pb2.CalendarChange.FromString(msg.data)
            if change.HasField("event") and change.event.subject in wanted:
                counts[change.event.subject] += 1
    finally:
        await subscription.unsubscribe()
    return counts


def overlaps(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The emulator's overlaps, the clients named by replica (the end of their User-Agent)."""
    return [{**o, "clients": [c.rsplit("/", 1)[-1] for c in o["clients"]]} for o in report["overlaps"]]


def mailboxes(sandbox: SandboxProcess) -> list[str]:
    return [str(m) for m in sandbox.ready["exchange"]["mailboxes"]]


def admin(sandbox: SandboxProcess) -> AdminClient:
    return AdminClient(sandbox.ready["exchange"]["admin_url"])


def each_streamed_once(sandbox: SandboxProcess) -> bool:
    report = admin(sandbox).owners()["mailboxes"]
    return all(report.get(m, {}).get("streams_now") == 1 for m in mailboxes(sandbox))


class Outlook:
    """Writes meetings through EWS as Outlook does (impersonation by the service account)."""

    def __init__(self, sandbox: SandboxProcess) -> None:
        account = sandbox.ready["exchange"]["service_account"]
        self.ews = Ews(sandbox.ready["exchange"]["ews_url"], account["username"], account["password"])
        self.accounts: dict[str, Any] = {}

    def meeting(self, mailbox: str, subject: str) -> None:
        from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone

        account = self.accounts.get(mailbox) or self.ews.account(mailbox)
        self.accounts[mailbox] = account
        start = EWSDateTime.from_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).astimezone(EWSTimeZone("UTC"))
        CalendarItem(
            account=account, folder=account.calendar, subject=subject, start=start, end=start + dt.timedelta(hours=1)
        ).save()

    async def meetings(self, subjects: dict[str, str]) -> None:
        """subject -> mailbox."""
        for subject, mailbox in subjects.items():
            await asyncio.to_thread(self.meeting, mailbox, subject)


async def streamed_once(sandbox: SandboxProcess, timeout: float, what: str) -> None:
    async def check() -> bool:
        return await asyncio.to_thread(each_streamed_once, sandbox)

    done: bool = await wait_for_async(check, timeout=timeout, what=what)
    assert done


async def owned_by(nc: NatsClient, names: set[str], timeout: float, what: str) -> None:
    """Wait until every lease is held and exactly `names` hold them."""

    async def check() -> bool:
        shards, owners = await ingest_lease_owners(nc)
        return len(owners) == shards and set(owners.values()) == names

    done: bool = await wait_for_async(check, timeout=timeout, what=what)
    assert done


async def test_exchange_load_with_two_replicas_equals_one(sandbox: SandboxProcess) -> None:
    outlook = Outlook(sandbox)
    boxes = mailboxes(sandbox)[:20]
    async with admin_nats(sandbox) as nc, collecting(nc) as changes:
        await owned_by(nc, {"a"}, 60, "replica a holds every lease")
        await streamed_once(sandbox, 120, "every mailbox streamed by a")

        async def load(tag: str) -> int:
            subjects = {f"load {tag} {m}": m for m in boxes}
            before = admin(sandbox).requests()["total"]
            await outlook.meetings(subjects)
            await wait_for_async(lambda: changes.arrived(list(subjects)), timeout=90, what=f"{tag} changes")
            await asyncio.sleep(3)  # let syncs the notifications started finish
            return int(admin(sandbox).requests()["total"]) - int(before)

        await load("warm-up")  # the first syncs after start are done; from here on only changes cost requests
        one = await load("one")
        replica = await asyncio.to_thread(start_replica, sandbox, "b")
        try:
            await owned_by(nc, {"a", "b"}, 60, "a and b share the leases")
            await streamed_once(sandbox, 60, "every mailbox streamed once by a or b")
            await load("warm-up two")  # b's catch-up syncs of the mailboxes it took over are done
            two = await load("two")
        finally:
            await asyncio.to_thread(replica.stop)
        print(f"\nLOAD: Exchange requests for {len(boxes)} changes: 1 replica {one}, 2 replicas {two}")
        print(f"STREAMS: most connections on one mailbox {admin(sandbox).owners()['max_streams_per_mailbox']}")
        assert two <= one * 1.25 + 5, f"2 replicas made {two} Exchange requests, 1 replica {one}"
        report = admin(sandbox).owners()
        assert report["max_stream_owners_per_mailbox"] == 1 and report["max_syncs_per_mailbox"] <= 1, overlaps(report)


async def test_replicas_split_mailboxes_take_over_after_kill9_and_lose_nothing_with_a_nats_node(
    sandbox: SandboxProcess,
) -> None:
    admin(sandbox).reset()
    outlook = Outlook(sandbox)
    everyone = mailboxes(sandbox)
    made: list[str] = []
    async with admin_nats(sandbox) as nc, collecting(nc) as changes:
        replicas = [await asyncio.to_thread(start_replica, sandbox, name) for name in ("b", "c")]
        try:
            await owned_by(nc, {"a", "b", "c"}, 60, "three replicas share")
            await streamed_once(sandbox, 60, "every mailbox streamed once")
            shards, owners = await ingest_lease_owners(nc)

            # 1. a change in every mailbox arrives, whichever replica owns it
            round_one = {f"split {m}": m for m in everyone}
            await outlook.meetings(round_one)
            await wait_for_async(lambda: changes.arrived(list(round_one)), timeout=120, what="changes of 3 replicas")
            made += round_one

            # 2. kill -9 replica c: its mailboxes' changes arrive again once a or b took its leases
            victim = replicas[1]
            orphaned = [m for m in everyone if owners[shard_of(m, shards)] == "c"]
            assert orphaned, "c owned no mailbox"
            killed_at = time.monotonic()
            victim.kill()
            round_two = {f"after kill {m}": m for m in orphaned}
            await outlook.meetings(round_two)
            await wait_for_async(
                lambda: changes.arrived(list(round_two)), timeout=FAILOVER_BOUND_SECONDS + 30, what="failover"
            )
            failover = time.monotonic() - killed_at
            made += round_two
            print(f"\nFAILOVER: {len(orphaned)} mailboxes of the killed replica synced again {failover:.1f} s later")
            await owned_by(nc, {"a", "b"}, 30, "a and b hold every lease")

            # 3. kill -9 one NATS node: streams and KV have 3 replicas, nothing is lost
            node = sandbox.ready["nats"]["nodes"][2]
            os.kill(int(node["pid"]), signal.SIGKILL)
            round_three = {f"node down {m}": m for m in everyone}
            await outlook.meetings(round_three)
            await wait_for_async(lambda: changes.arrived(list(round_three)), timeout=180, what="changes, node down")
            made += round_three
        finally:
            for replica in replicas:
                await asyncio.to_thread(replica.stop)
        counts = await stored_counts(nc, made)
        assert {s: n for s, n in counts.items() if n != 1} == {}, "a change stored more than once"
        assert set(counts) == set(made), f"changes lost: {sorted(set(made) - set(counts))[:5]}"
    report = admin(sandbox).owners()
    assert report["max_stream_owners_per_mailbox"] == 1 and report["max_syncs_per_mailbox"] <= 1, overlaps(report)

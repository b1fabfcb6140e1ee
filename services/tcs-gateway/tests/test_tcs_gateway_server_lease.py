"""The per-server lease of tcs-gateway replicas (tcs_gateway.server_lease) on a real nats-server, as tcs-gateway's own
NATS user: one holder at a time; a replica with the server's session gets it from one without; a second session
waits while the holder keeps its session; a holder cut from NATS stops consuming before another can take over."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tccal.bus import Bus
from tccal_sandbox.embedded import EmbeddedNats
from tccal_sandbox.testing import nats_settings, wait_for_async
from tcs_gateway.server_lease import LeaseBucket, ServerLease
from tcs_gateway.settings import GatewaySettings, lease_timings
from tcs_gateway.state import StateStore

SERVER = "video.example.test#vcs"
FAST = GatewaySettings(lease_seconds=3.0, lease_renew_seconds=0.5, lease_margin_seconds=1.0, fetch_timeout=0.25)


@dataclass
class Replica:
    name: str
    lease: ServerLease
    bus: Bus
    #: Whether this replica consumes the server's commands now (what the lease told it).
    consuming: bool = False
    #: The bridge session of the server is attached here.
    session: bool = False


@contextlib.asynccontextmanager
async def replica(nats_server: EmbeddedNats, name: str, *, session: bool = False) -> AsyncIterator[Replica]:
    bus = Bus(nats_settings(nats_server, "tcs-gateway", name=f"tcs-gateway-{name}"))
    await bus.connect(attempts=5)
    handle: Replica

    def gained() -> None:
        handle.consuming = True

    async def lost() -> None:
        handle.consuming = False

    lease = ServerLease(
        LeaseBucket(bus, FAST, replicas=1),
        SERVER,
        replica=f"{name}-test",
        session_here=lambda: handle.session,
        gained=gained,
        lost=lost,
    )
    handle = Replica(name, lease, bus, session=session)
    stop = asyncio.Event()
    task = asyncio.create_task(lease.run(stop))
    try:
        yield handle
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        with contextlib.suppress(Exception):
            await bus.close()


async def watch_never_both(replicas: list[Replica], until: asyncio.Event) -> int:
    """How often two replicas consumed at once while `until` was not set (checked every 10 ms)."""
    both = 0
    while not until.is_set():
        both += sum(r.consuming for r in replicas) > 1
        await asyncio.sleep(0.01)
    return both


def test_lease_timings_are_checked_and_read_from_the_environment() -> None:
    with pytest.raises(ValueError, match="lease_renew_seconds"):
        GatewaySettings(lease_seconds=6.0, lease_renew_seconds=2.0)
    with pytest.raises(ValueError, match="lease_margin_seconds"):
        GatewaySettings(lease_seconds=10.0, lease_renew_seconds=2.5, lease_margin_seconds=0.5, fetch_timeout=1.0)
    assert lease_timings({"TCS_GATEWAY_LEASE_SECONDS": "6"}) == {"lease_seconds": 6.0}
    with pytest.raises(ValueError, match="TCS_GATEWAY_LEASE_MARGIN_SECONDS='soon'"):
        lease_timings({"TCS_GATEWAY_LEASE_MARGIN_SECONDS": "soon"})


async def test_the_replica_with_the_session_gets_the_lease_and_a_second_session_waits(
    nats_server: EmbeddedNats,
) -> None:
    done = asyncio.Event()
    async with replica(nats_server, "s") as s:  # no session anywhere: s takes the free lease (REST commands run)
        await wait_for_async(lambda: s.consuming, timeout=10, what="s takes the free lease")
        async with replica(nats_server, "a", session=True) as a, replica(nats_server, "b") as b:
            watcher = asyncio.create_task(watch_never_both([s, a, b], done))
            await wait_for_async(lambda: a.consuming, timeout=10, what="a (with the session) gets it from s")
            assert not s.consuming and not b.consuming

            b.session = True  # TrueConf connected to b too while a's session still looks alive: b waits
            b.lease.wake.set()
            await wait_for_async(lambda: b.lease.waiting, timeout=10, what="b waits for the lease")
            await asyncio.sleep(FAST.lease_seconds)  # longer than a lease: a renews, b keeps waiting
            assert a.consuming and not b.consuming

            a.session = False  # a's old socket is closed (its watchdog): a releases, b takes it
            a.lease.wake.set()
            await wait_for_async(lambda: b.consuming, timeout=10, what="b takes the lease a gave up")
            assert not a.consuming and not s.consuming
            done.set()
            assert await watcher == 0, "two replicas consumed the server's commands at once"


async def test_a_holder_cut_from_nats_stops_consuming_before_another_can_take_over(nats_server: EmbeddedNats) -> None:
    async with replica(nats_server, "a", session=True) as a:
        await wait_for_async(lambda: a.consuming, timeout=10, what="a holds the lease")
        async with replica(nats_server, "b", session=True) as b:  # TrueConf reconnected to b; a is cut off
            await wait_for_async(lambda: b.lease.waiting, timeout=10, what="b waits")
            await a.bus.nc.close()  # a can renew nothing any more; its key lives on at the server until the TTL
            both = 0
            while not b.consuming:
                both += a.consuming and b.consuming
                await asyncio.sleep(0.01)
            assert both == 0, "a and b consumed at once"
            assert not a.consuming and a.lease.fenced == 1


async def test_a_replica_reads_the_servers_state_again_when_its_session_moves_there(nats_server: EmbeddedNats) -> None:
    """TCS_GATEWAY is read at a replica's start; the session moving to it later reads the server's entries again
    (StateStore.refresh, called at auth): later snapshot seqs and users asked for elsewhere, never anything lower."""
    bus_a = Bus(nats_settings(nats_server, "tcs-gateway", name="tcs-gateway-a"))
    bus_b = Bus(nats_settings(nats_server, "tcs-gateway", name="tcs-gateway-b"))
    await bus_a.connect(attempts=5)
    await bus_b.connect(attempts=5)
    a, b = StateStore(), StateStore()
    try:
        await a.open(bus_a.js)
        await b.open(bus_b.js)  # b started: it read nothing of alice yet
        a.mark_asked(SERVER, "alice@example.test")
        a.set_snapshot_seq(SERVER, "alice@example.test", 7_000_003)
        a.mark_asked("other.example.test#vcs", "dave@example.test")
        b.set_snapshot_seq(SERVER, "bob@example.test", 5_000_001)  # b's own, not flushed yet
        await a.flush()
        assert b.snapshot_seq(SERVER, "alice@example.test") == 0

        await b.refresh(SERVER)
        assert b.snapshot_seq(SERVER, "alice@example.test") == 7_000_003
        assert b.asked_users(SERVER) == ["alice@example.test"]
        assert b.snapshot_seq(SERVER, "bob@example.test") == 5_000_001  # kept: the larger of the two
        assert b.asked_users("other.example.test#vcs") == []  # only the server whose session moved
    finally:
        await a.close()
        await b.close()
        await bus_a.close()
        await bus_b.close()

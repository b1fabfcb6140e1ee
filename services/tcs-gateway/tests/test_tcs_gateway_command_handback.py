"""A stopping tcs-gateway leaves no command stranded (real nats-server, the gateway's own consumer): what JetStream
delivered to its last pull request after the fetch that sent it had given up is handed back (nak), so the replica
that consumes the server's commands next gets it at once, not after ack_wait (30 s)."""

from __future__ import annotations

import asyncio
import time

from tcs_gateway_testkit import SERVER_ID, RunningGateway, World, gateway_settings, occurrence, server_settings

from tccal.subjects import TCS_COMMANDS
from tccal_sandbox.slow_nats import SlowLink, slow_upstream
from tccal_sandbox.testing import wait_for_async
from tcs_gateway.commands import durable_name

#: How late the gateway's bytes reach NATS: its pull requests outlive its fetches by as much.
UPSTREAM_DELAY = 0.3
FETCH_TIMEOUT = 1.0


async def a_fetch_begins(link: SlowLink) -> float:
    """When the gateway begins its next fetch, read off the wire: an idle fetch sends a pull request at once and,
    once JetStream's 'no messages' came back through the slow link, a second one; the gap before a fetch's first
    request is the longer one (the rest of the previous fetch's wait)."""

    def newest_opens_a_fetch(seen: int) -> float | None:
        requests = link.pull_requests
        if len(requests) > max(seen, 1) and requests[-1] - requests[-2] > 1.5 * UPSTREAM_DELAY:
            return requests[-1]
        return None

    seen = len(link.pull_requests)
    began: float = await wait_for_async(lambda: newest_opens_a_fetch(seen), timeout=10, interval=0.01, what="a fetch")
    return began


async def at(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def test_a_stopped_gateway_hands_back_the_commands_that_reached_it_after_its_last_fetch(world: World) -> None:
    settings = gateway_settings(world.sync, [server_settings()], fetch_timeout=FETCH_TIMEOUT)
    commands = [world.commands.upsert_command("ann@example.test", occurrence(f"handback-{n}")) for n in range(4)]
    async with slow_upstream(world.nats_url, UPSTREAM_DELAY) as link:
        gateway = await RunningGateway(settings, link.url).start()
        began = await a_fetch_begins(link)
        await at(began + 0.4)  # the fetch has sent both its requests and waits; it gives up at began + 1 s
        stopping = asyncio.create_task(gateway.stop())
        for n, command in enumerate(commands):  # after the fetch gave up, before its request expires on the server
            await at(began + FETCH_TIMEOUT + 0.05 * (n + 1))
            await world.commands.publish(command)
        await asyncio.wait_for(stopping, 30)

    pull = await world.commands.bus.js.pull_subscribe_bind(durable_name(SERVER_ID), TCS_COMMANDS)
    got: list[str] = []
    deadline = time.monotonic() + 10  # a third of ack_wait
    while len(got) < len(commands) and time.monotonic() < deadline:
        try:
            messages = await pull.fetch(len(commands), timeout=1.0)
        except TimeoutError:
            continue
        for message in messages:
            got.append(message.subject)
            await message.ack()
    await pull.unsubscribe()
    assert len(got) == len(commands), f"{len(commands) - len(got)} of {len(commands)} commands stranded"

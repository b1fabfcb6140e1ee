"""Unauthenticated peers cannot lock TrueConf Server out (issue #17; docs/bridge-protocol.md §11, tcs.bridgeLimits).

Hostile clients connect from other loopback addresses (127.0.0.2 and up: Linux routes all of 127.0.0.0/8 to lo)
through real sockets, while the emulated TrueConf Server connects from 127.0.0.1 and has to keep working:
reconnect, authenticate, and get a calendar push through. Every attack here locks the server out, or is simply
not stopped, with the bridge as it was before (one global cap of 64, no handshake timeout, no back-off).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from tcs_gateway_testkit import (
    ACCEPT,
    BOB,
    SECRET,
    SERVER_ID,
    RawBridgeClient,
    World,
    admin,
    bridge_state,
    calendar,
    gateway_protocol_errors,
    gateway_settings,
    occurrence,
    server_settings,
    today_at,
    wait_connected,
)

from tccal_sandbox.testing import wait_for_async
from tcs_gateway.bridge.guard import BACKED_OFF, BAD_SECRET, OVER_ADDRESS_CAP, OVER_TOTAL_CAP, BridgeGuard
from trueconf.calendar.v1 import commands_pb2

LEGIT = "127.0.0.1"
HOSTILE = "127.0.0.2"


# --------------------------------------------------------------------------------------------- hostile clients
def _upgrade_request(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Hostile:
    """Raw sockets from one local address: upgraded-and-silent connections and slowloris ones."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self.writers: list[asyncio.StreamWriter] = []
        self.outcomes: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    async def _open(self, local: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(local, 0))
        except OSError:
            self._count("connect failed")
            return None
        self.writers.append(writer)
        return reader, writer

    async def upgrade_and_hold(self, local: str) -> None:
        """Complete the WebSocket handshake (RFC 6455 §4.1), then never send `auth`."""
        opened = await self._open(local)
        if opened is None:
            return
        reader, writer = opened
        try:
            writer.write(_upgrade_request(self.port, self.path))
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 30)
        except (OSError, TimeoutError):
            self._count("refused")
            self.writers.remove(writer)
            writer.close()
            return
        if status.startswith(b"HTTP/1.1 101"):
            self._count("upgraded")
            return
        # Refused: closed as accepted (nothing read), or an HTTP status. This socket is done with.
        self._count(status.decode(errors="replace").split(" ")[1] if status else "refused")
        self.writers.remove(writer)
        writer.close()

    async def slowloris(self, local: str, every: float = 0.3) -> None:
        """Trickle the upgrade request one byte at a time; never finish it."""
        opened = await self._open(local)
        if opened is None:
            return
        reader, writer = opened
        request = _upgrade_request(self.port, self.path)[:-2]  # never the final CRLF
        task = asyncio.get_running_loop().create_task(self._trickle(reader, writer, request, every))
        self._tasks.append(task)

    async def _trickle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, every: float
    ) -> None:
        try:
            for index in range(len(data)):
                writer.write(data[index : index + 1])
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1), every) == b"":
                        break
        except OSError:
            pass
        self._count("slowloris closed by the gateway")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()


async def _flood(hostile: Hostile, addresses: list[str], per_address: int, *, slowloris: int = 0) -> None:
    """`per_address` upgraded-and-silent connections from each address, plus `slowloris` trickling ones from each,
    opened 50 at a time (the listen backlog is finite)."""
    jobs = [hostile.upgrade_and_hold(a) for a in addresses for _ in range(per_address)]
    jobs += [hostile.slowloris(a) for a in addresses for _ in range(slowloris)]
    for start in range(0, len(jobs), 50):
        await asyncio.gather(*jobs[start : start + 50])


def _guard(running: Any) -> BridgeGuard:
    guard = running.gateway.bridge.guard
    assert isinstance(guard, BridgeGuard)
    return guard


async def _round_trip(world: World, tcs: Any, meeting: str) -> None:
    """A calendar push goes from the command stream through the bridge to TCS and its acknowledgement back."""
    command = world.commands.upsert_command(BOB, occurrence(meeting, start=today_at(10), attendees=[(BOB, ACCEPT)]))
    await world.commands.publish(command)
    result = await world.commands.result_of(command.command_id, timeout=30)
    assert result.status == commands_pb2.COMMAND_STATUS_OK, result
    assert meeting in {event["id"] for event in await calendar(tcs, BOB)}


async def _reconnect(tcs: Any, connections: int) -> float:
    """Drop TCS's connection; seconds until it is authenticated again (its reconnect delay, 0.1 s, included)."""
    started = time.monotonic()
    await admin(tcs, "POST", "/bridge/drop", {"mode": "abort"})
    await wait_connected(tcs, connections=connections, timeout=60)
    return time.monotonic() - started


@contextlib.contextmanager
def _bridge_log(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """INFO and above from the bridge while the block runs."""
    caplog.set_level(logging.INFO, logger="tcs_gateway")
    first = len(caplog.records)
    taken: list[logging.LogRecord] = []
    yield taken
    taken.extend(r for r in caplog.records[first:] if r.name.startswith("tcs_gateway.bridge"))


def _about(records: list[logging.LogRecord], address: str) -> list[logging.LogRecord]:
    return [
        r
        for r in records
        if getattr(r, "address", None) == address or str(getattr(r, "peer", "")).startswith(f"{address}:")
    ]


# --------------------------------------------------------------------------------------------- the tests
async def test_500_hostile_connections_from_another_address_leave_the_real_server_working(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    # The attacker's best case: its connections may sit 60 s before the upgrade and 60 s before auth. A second
    # server id lets a hand-driven client time connect + auth from 127.0.0.1 without replacing the emulator.
    probe = server_settings(server_id="probe.example.test#vcs", secret="probe-secret")
    settings = gateway_settings(world.sync, [server_settings(), probe], handshake_timeout=60.0, auth_timeout=60.0)
    gateway = await world.gateway(settings)
    tcs = await world.tcs(gateway.url)
    await wait_connected(tcs)
    guard = _guard(gateway)
    hostile = Hostile(gateway.gateway.bridge.port, settings.bridge_path)
    try:
        with _bridge_log(caplog) as records:
            flood_started = time.monotonic()
            await _flood(hostile, [HOSTILE], per_address=400, slowloris=100)
            flood_seconds = time.monotonic() - flood_started
            # The attack failed: 127.0.0.2 holds no more than its cap, everything else was closed as accepted.
            assert hostile.outcomes.get("upgraded", 0) <= settings.max_unauthenticated_per_address, hostile.outcomes
            assert guard.refused[OVER_ADDRESS_CAP] >= 500 - settings.max_unauthenticated_per_address
            # ... and the real server still gets in and works, under the flood: the admitted hostile sockets stay
            # open and 127.0.0.2 keeps opening more, 50 at a time, until the checks are done.
            stop = asyncio.Event()

            async def keep_flooding() -> None:
                while not stop.is_set():
                    await _flood(hostile, [HOSTILE], per_address=50)

            flooding = asyncio.get_running_loop().create_task(keep_flooding())
            await asyncio.sleep(0.2)
            reconnect_seconds = await _reconnect(tcs, connections=2)
            await _round_trip(world, tcs, "during-flood")
            probe_started = time.monotonic()
            async with RawBridgeClient(gateway.url) as client:
                assert (await client.auth(server_id=probe.id, secret=probe.secret))["payload"]["errorCode"] == 0
                auth_ms = (time.monotonic() - probe_started) * 1000
            stop.set()
            await flooding
            assert guard.pending_total <= settings.max_unauthenticated_per_address
            attempts = sum(hostile.outcomes.values())
            assert attempts > 600 and guard.refused[OVER_ADDRESS_CAP] >= attempts - 108, hostile.outcomes
        hostile_lines = _about(records, HOSTILE)
        assert 1 <= len(hostile_lines) <= 2, [r.getMessage() for r in hostile_lines]
        state = await bridge_state(tcs)
        assert gateway_protocol_errors(state) == []
        assert gateway.server().session is not None
        print(
            f"\nflood of 500 from {HOSTILE} opened in {flood_seconds:.2f} s, {attempts} in all: {hostile.outcomes}; "
            f"refused {dict(guard.refused)}; TCS reconnected and authenticated in {reconnect_seconds:.2f} s; "
            f"connect + auth from {LEGIT} during the flood: {auth_ms:.0f} ms; "
            f"bridge log lines about {HOSTILE}: {len(hostile_lines)}"
        )
    finally:
        await hostile.close()


async def test_a_flood_from_many_addresses_fills_the_total_cap_but_not_for_a_known_server(world: World) -> None:
    settings = gateway_settings(
        world.sync, [server_settings()], handshake_timeout=60.0, auth_timeout=60.0, max_unauthenticated=64
    )
    gateway = await world.gateway(settings)
    tcs = await world.tcs(gateway.url)
    await wait_connected(tcs)  # 127.0.0.1 is now an address that authenticated
    guard = _guard(gateway)
    hostile = Hostile(gateway.gateway.bridge.port, settings.bridge_path)
    addresses = [f"127.0.0.{n}" for n in range(10, 70)]  # 60 addresses x 8 = 480 connections, each under its cap
    try:
        await _flood(hostile, addresses, per_address=settings.max_unauthenticated_per_address)
        assert guard.pending_total == 64, hostile.outcomes
        assert guard.refused[OVER_TOTAL_CAP] >= 480 - 64, dict(guard.refused)
        assert hostile.outcomes.get("upgraded", 0) <= 64
        reconnect_seconds = await _reconnect(tcs, connections=2)
        assert guard.pending_total == 64  # the cap was full all along
        await _round_trip(world, tcs, "during-distributed-flood")
        print(f"\n480 from 60 addresses: {hostile.outcomes}; known TCS re-authenticated in {reconnect_seconds:.2f} s")
    finally:
        await hostile.close()


async def test_slowloris_and_silent_peers_are_closed_but_a_real_server_is_not(world: World) -> None:
    settings = gateway_settings(world.sync, [server_settings()], handshake_timeout=1.0, auth_timeout=2.0)
    gateway = await world.gateway(settings)
    port = gateway.gateway.bridge.port
    hostile = Hostile(port, settings.bridge_path)

    async def closed_after(reader: asyncio.StreamReader) -> float:
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(reader.read(4096), 20) != b"":
                pass
        return time.monotonic() - started

    try:
        # A peer that trickles its upgrade request, a byte every 0.3 s (the whole request would take ~45 s).
        await hostile.slowloris(HOSTILE, every=0.3)
        # A peer that opens TCP and sends nothing.
        reader, _ = await asyncio.open_connection("127.0.0.1", port, local_addr=(HOSTILE, 0))
        silent_seconds = await closed_after(reader)
        await wait_for_async(
            lambda: hostile.outcomes.get("slowloris closed by the gateway") == 1,
            timeout=20,
            what="the slowloris peer closed by the gateway",
        )
        assert silent_seconds < 15
        # A peer that upgrades and never sends `auth`: 4008 after authTimeoutSec.
        async with RawBridgeClient(gateway.url) as silent:
            assert await silent.closed(timeout=20) == 4008
        # A real server is not in a hurry after the upgrade: the handshake timeout does not touch it.
        async with RawBridgeClient(gateway.url) as tcs:
            assert (await tcs.auth())["payload"]["errorCode"] == 0
            await asyncio.sleep(3 * settings.handshake_timeout)
            assert (await tcs.call("ping", {}))["payload"]["errorCode"] == 0
        assert _guard(gateway).pending_total == 0
        print(f"\nsilent TCP closed after {silent_seconds:.2f} s (handshakeTimeoutSec 1)")
    finally:
        await hostile.close()


async def _guess(port: int, path: str, secret: str, local: str, server_id: str = SERVER_ID) -> str:
    """One auth attempt over a fresh connection from `local`: what the gateway answered."""
    connector = aiohttp.TCPConnector(local_addr=(local, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            async with session.ws_connect(f"ws://127.0.0.1:{port}{path}", autoclose=False) as ws:
                frame = {"type": 1, "id": 1, "method": "auth"}
                frame["payload"] = {"serverId": server_id, "secret": secret, "protocolVersion": 1}
                await ws.send_str(json.dumps(frame))
                message = await ws.receive(timeout=10)
                if message.type != aiohttp.WSMsgType.TEXT:
                    return f"closed {ws.close_code}"
                return f"errorCode {json.loads(message.data)['payload']['errorCode']}"
        except aiohttp.WSServerHandshakeError as exc:
            return f"HTTP {exc.status}"
        except (aiohttp.ClientError, OSError) as exc:
            return type(exc).__name__


async def test_guessing_the_secret_backs_the_address_off(world: World, caplog: pytest.LogCaptureFixture) -> None:
    settings = gateway_settings(
        world.sync,
        [server_settings()],
        auth_failures_before_backoff=3,
        auth_backoff_initial=0.5,
        auth_backoff_max=2.0,
    )
    gateway = await world.gateway(settings)
    port, path = gateway.gateway.bridge.port, settings.bridge_path
    guard = _guard(gateway)
    answers: dict[str, int] = {}
    # A connection from the guesser's address, upgraded before the guessing starts and keeping its auth for later.
    early_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(HOSTILE, 0)))
    early = await early_session.ws_connect(f"ws://127.0.0.1:{port}{path}", autoclose=False)
    with _bridge_log(caplog) as records:
        started = time.monotonic()
        attempts = 0
        while attempts < 200 or time.monotonic() - started < 3.0:
            answer = await _guess(port, path, f"guess-{attempts}", HOSTILE)
            answers[answer] = answers.get(answer, 0) + 1
            attempts += 1
        guessing_seconds = time.monotonic() - started
        # While it is backed off, even the right secret from that address is refused without being compared.
        assert guard.backed_off(HOSTILE, SERVER_ID) > 0
        assert await _guess(port, path, SECRET, HOSTILE) == "errorCode 9"
        try:
            frame = {"type": 1, "id": 1, "method": "auth"}
            frame["payload"] = {"serverId": SERVER_ID, "secret": SECRET, "protocolVersion": 1}
            await early.send_str(json.dumps(frame))
            reply = json.loads((await early.receive(timeout=10)).data)["payload"]
            assert reply["errorCode"] == 9 and reply["retryAfterMs"] > 0, reply
            assert (await early.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE
            assert early.close_code == 1013
        finally:
            await early.close()
            await early_session.close()
        # The right secret from another address works at once.
        legit_started = time.monotonic()
        async with RawBridgeClient(gateway.url) as tcs:
            assert (await tcs.auth())["payload"]["errorCode"] == 0
        legit_seconds = time.monotonic() - legit_started
    checked = answers.get("errorCode 5", 0)  # BAD_SECRET: the secret was compared
    refused_fast = answers.get("errorCode 9", 0)
    # 3 guesses, then one more each time the back-off (0.5, 1, 2, 2, ... s) ran out.
    assert 3 <= checked <= 3 + int(guessing_seconds / 0.5) + 1, answers
    assert refused_fast >= attempts - checked - 5, answers
    assert guard.refused[BAD_SECRET] == checked
    assert guard.refused[BACKED_OFF] >= refused_fast
    # Logging: no line per attempt; one line per address per interval (60 s), this run is shorter.
    hostile_lines = _about(records, HOSTILE)
    assert len(hostile_lines) == 1, [r.getMessage() for r in hostile_lines]
    # Once the back-off (at most 2 s here) has run out, the right secret gets in from that address too.
    await asyncio.sleep(settings.auth_backoff_max + 0.2)
    assert await _guess(port, path, SECRET, HOSTILE) == "errorCode 0"
    assert guard.backed_off(HOSTILE, SERVER_ID) == 0
    print(
        f"\n{attempts} guesses from {HOSTILE} in {guessing_seconds:.1f} s: {answers}; "
        f"auth from {LEGIT} meanwhile took {legit_seconds * 1000:.0f} ms; log lines about {HOSTILE}: "
        f"{len(hostile_lines)}"
    )


async def test_guessing_another_servers_secret_behind_the_same_address_does_not_back_off_the_real_server(
    world: World,
) -> None:
    """NAT: a hostile client shares 127.0.0.1 with TrueConf Server Y. Its wrong secrets for server X (and for ids
    that are not whitelisted at all) back off only those ids at that address; Y's right secret from the same
    address gets in at once, X's own right secret stays refused until its back-off runs out. With the back-off
    keyed by address alone, Y was answered errorCode 9 (close 1013) for as long as the guessing went on."""
    other = "tcs-other.example.test#vcs"
    settings = gateway_settings(
        world.sync,
        [server_settings(), server_settings(server_id=other, secret="other-secret")],
        auth_failures_before_backoff=3,
        auth_backoff_initial=30.0,
        auth_backoff_max=60.0,
    )
    gateway = await world.gateway(settings)
    port, path = gateway.gateway.bridge.port, settings.bridge_path
    guard = _guard(gateway)
    guesses = [await _guess(port, path, f"guess-{n}", LEGIT, server_id=other) for n in range(6)]
    assert guesses == ["errorCode 5"] * 3 + ["errorCode 9"] * 3, guesses
    invented = [await _guess(port, path, "x", LEGIT, server_id=f"invented-{n}#vcs") for n in range(6)]
    assert invented == ["errorCode 4"] * 3 + ["errorCode 9"] * 3, invented  # new ids buy no fresh attempts
    assert guard.backed_off(LEGIT, other) > 0
    assert guard.backed_off(LEGIT, "invented-99#vcs") > 0
    assert guard.backed_off(LEGIT, SERVER_ID) == 0
    # The attacked id is refused even with its right secret (the secret is not looked at) ...
    assert await _guess(port, path, "other-secret", LEGIT, server_id=other) == "errorCode 9"
    # ... while server Y behind the same address authenticates at once and gets its calendar push through.
    async with RawBridgeClient(gateway.url) as raw:
        assert (await raw.auth())["payload"]["errorCode"] == 0
    tcs = await world.tcs(gateway.url)
    await wait_connected(tcs)
    await _round_trip(world, tcs, "nat-neighbour-meeting")
    assert guard.refused[BACKED_OFF] == 7

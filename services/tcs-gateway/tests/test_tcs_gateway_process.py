"""`python -m tcs_gateway` as a real process: it serves the bridge and GatewayService, consumes commands, drains
on SIGTERM (the WebSocket closed with 1001, exit code 0), and after a restart still knows whom it serves."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from tcs_gateway_testkit import (
    ADMIN_TOKEN,
    SERVER_ID,
    World,
    admin,
    bridge_state,
    calendar,
    occurrence,
    wait_connected,
)

from tccal_sandbox.embedded import free_port
from tccal_sandbox.testing import bearer, wait_for_async
from trueconf.calendar.v1 import commands_pb2, common_pb2, gateway_pb2, gateway_pb2_grpc

BOB = "bob@example.test"


def write_config(path: Path, world: World, ws_port: int, grpc_port: int, http_port: int, rest_url: str) -> None:
    config: dict[str, Any] = {
        "wsPort": ws_port,
        "productWhitelist": {"tcs": [SERVER_ID]},
        "cache": {"backward": 2, "forward": 3},
        "calendarProviders": [
            {
                "host": "exchange.example.test",
                "credentials": [{"login": "svc", "password": "svc-password"}],
                "users": ["carol@example.test"],
            }
        ],
        "nats": {"url": world.nats_url},
        "grpc": {
            # the installation's token: the process calls the (guarded) SyncServer with tcs-gateway's token
            # derived from it, and its own GatewayService takes it from administrators
            "adminToken": ADMIN_TOKEN,
            "services": {
                "tcs-gateway": {"host": "127.0.0.1", "grpcPort": grpc_port, "httpPort": http_port},
                "sync-engine": {"grpcPort": 1, "httpPort": 2, "address": world.sync.address},
            },
        },
        "tcs": {
            "servers": [
                {
                    "id": SERVER_ID,
                    "secret": "bridge-secret",
                    "restUrl": rest_url,
                    "clientId": "tc-calendar-connector",
                    "clientSecret": "connector-secret",
                    "verifyTls": False,
                }
            ]
        },
        "telemetry": {"logFormat": "json", "logLevel": "INFO"},
        "allowPlaintextPasswords": True,
    }
    path.write_text(json.dumps(config), encoding="utf-8")


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TC_CALENDAR_CONFIG", None)
    with log.open("ab") as stream:
        return subprocess.Popen(
            [sys.executable, "-m", "tcs_gateway", "--config", str(config)],
            stdout=stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )


def ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def list_servers(grpc_port: int) -> gateway_pb2.ListServersResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}", interceptors=[bearer(ADMIN_TOKEN)]) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        response: gateway_pb2.ListServersResponse = await stub.ListServers(gateway_pb2.ListServersRequest(), timeout=5)
        return response


async def stop(process: subprocess.Popen[bytes], log: Path) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(process.wait, 30)
    except subprocess.TimeoutExpired:
        process.kill()
        tail = await asyncio.to_thread(log.read_text)
        raise AssertionError(f"tcs-gateway did not stop on SIGTERM:\n{tail[-3000:]}") from None


async def test_the_gateway_process_serves_drains_and_remembers(world: World, tmp_path: Path) -> None:
    ws_port, grpc_port, http_port = free_port(), free_port(), free_port()
    tcs = await world.tcs(f"ws://127.0.0.1:{ws_port}/bridge/v1")
    config = tmp_path / "config.json"
    log = tmp_path / "gateway.log"
    write_config(config, world, ws_port, grpc_port, http_port, tcs.rest_url)
    process = start(config, log)
    try:
        await wait_for_async(lambda: asyncio.to_thread(ready, http_port), timeout=30, what=f"/readyz\n{log}")
        await wait_connected(tcs)
        meeting = occurrence("p1", attendees=[(BOB, common_pb2.RESPONSE_TYPE_ACCEPT)])
        push = world.commands.upsert_command(BOB, meeting)
        await world.commands.publish(push)
        assert (await world.commands.result_of(push.command_id)).status == commands_pb2.COMMAND_STATUS_OK
        assert [e["id"] for e in await calendar(tcs, BOB)] == ["p1"]
        create = world.commands.conference_command("conference_upsert", "p1")
        create.conference_upsert.topic = "Process check"
        create.conference_upsert.owner = "alice@example.test"
        await world.commands.publish(create)
        result = await world.commands.result_of(create.command_id)
        assert result.status == commands_pb2.COMMAND_STATUS_OK, result.error
        assert result.conference.url.startswith("https://tcs.example.test/c/")

        async def three_users() -> gateway_pb2.ListServersResponse | None:
            listed = await list_servers(grpc_port)
            return listed if listed.servers[0].users == 3 else None

        listed = await wait_for_async(three_users, what="3 users asked for")
        status = listed.servers[0]
        assert status.server_id == SERVER_ID and status.connected and status.peer.startswith("127.0.0.1:")
        assert status.HasField("connected_since") and status.HasField("last_seen")
        assert status.queue_depth == 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as bare:  # the servers' state is the admin's
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gateway_pb2_grpc.GatewayServiceStub(bare).ListServers(gateway_pb2.ListServersRequest())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await stop(process, log) == 0
        closes = (await bridge_state(tcs))["close_history"]
        assert {"code": 1001, "initiator": "gateway"}.items() <= closes[-1].items()
        text = log.read_text()
        assert "TrueConf Server authenticated" in text
        assert "bridge-secret" not in text and "connector-secret" not in text and ADMIN_TOKEN not in text
        await admin(tcs, "POST", "/bridge/disconnect")
        late = world.commands.upsert_command(BOB, occurrence("p2", attendees=[(BOB, common_pb2.RESPONSE_TYPE_ACCEPT)]))
        await world.commands.publish(late)  # while no gateway runs: it waits in the stream
        process = start(config, log)
        await wait_for_async(lambda: asyncio.to_thread(ready, http_port), timeout=30, what="/readyz after the restart")
        listed = await list_servers(grpc_port)
        assert listed.servers[0].users == 3  # remembered (JetStream KV), TCS has not asked again yet
        assert not listed.servers[0].connected
        snapshots_before = int((await bridge_state(tcs))["pushes_received"].get("calendar.snapshot", 0))
        await admin(tcs, "POST", "/bridge/connect")
        assert (await world.commands.result_of(late.command_id)).status == commands_pb2.COMMAND_STATUS_OK
        assert sorted(e["id"] for e in await calendar(tcs, BOB)) == ["p1", "p2"]

        async def snapshots() -> bool:
            received = int((await bridge_state(tcs))["pushes_received"].get("calendar.snapshot", 0))
            return received - snapshots_before == 3  # alice and bob (asked before the restart), carol (users)

        await wait_for_async(snapshots, what="a snapshot for every remembered user")
        assert await stop(process, log) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

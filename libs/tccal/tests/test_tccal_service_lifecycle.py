"""A service process for real: ready only while PostgreSQL and NATS are, clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import json
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tccal.grpckit import GrpcServer
from tccal_sandbox.embedded import EmbeddedNats, EmbeddedPostgres, PortReservation, free_port, free_ports
from tccal_sandbox.runner import Sandbox
from tccal_sandbox.testing import nats_config, short_tmpdir, wait_for


def readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


def _check(port: int, name: str) -> str:
    """One readiness check's text as /readyz reports it ("" when unreachable)."""
    checks = readyz(port)[1].get("checks", {})
    return str(checks.get(name, "")) if isinstance(checks, dict) else ""


def health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError:
            return -1
        return int(reply.status)


def test_sync_engine_readiness_follows_its_dependencies(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    pg_dir = short_tmpdir("tcpgl")
    postgres = EmbeddedPostgres(pg_dir)
    postgres.start()
    grpc_port, http_port = free_port(), free_port()
    config = {
        "dbConnectionConfig": {
            "host": postgres.socket_dir,
            "port": 5432,
            "user": "postgres",
            "database": "postgres",
        },
        "nats": nats_config(nats_server, "sync-engine"),
        "productWhitelist": {"tcs": ["video.example.com#vcs"]},
        "grpc": {"services": {"sync-engine": {"grpcPort": grpc_port, "httpPort": http_port}}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_engine", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    restarted = EmbeddedNats(nats_server.store_dir, port=nats_server.port)  # same users: kept in the store dir
    try:
        wait_for(lambda: readyz(http_port)[0] == 200, timeout=60, what="sync-engine ready")
        wait_for(lambda: health(grpc_port) == health_pb2.HealthCheckResponse.SERVING, what="gRPC SERVING")

        nats_server.stop()
        wait_for(lambda: readyz(http_port)[0] == 503, timeout=30, what="not ready without NATS")
        _, body = readyz(http_port)
        assert str(body["checks"]["nats"]).startswith("down")  # type: ignore[index]
        assert body["checks"]["postgres"] == "ok"  # type: ignore[index]
        wait_for(lambda: health(grpc_port) == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
        restarted.start()
        wait_for(lambda: readyz(http_port)[0] == 200, timeout=30, what="ready again with NATS back")

        postgres.stop()
        wait_for(lambda: readyz(http_port)[0] == 503, timeout=30, what="not ready without PostgreSQL")
        # PostgreSQL stays away until the engine's own work has met the outage ("postgres-writes": the loop waiting
        # for licensing's first answer reads every second): coming back must end that wait too, however the outage
        # fell between the loops' ticks (a wait its loop never ended once kept the engine not ready for good).
        wait_for(lambda: _check(http_port, "postgres-writes").startswith("down"), timeout=30, what="writes wait")
        postgres.start()
        wait_for(lambda: readyz(http_port)[0] == 200, timeout=60, what="ready again with PostgreSQL back")

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        output = process.stdout.read().decode() if process.stdout else ""
        lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        messages = [entry["message"] for entry in lines]
        assert "sync-engine stopping" in messages and "sync-engine stopped" in messages
    finally:
        if process.poll() is None:
            process.kill()
        postgres.stop()
        restarted.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


def test_free_ports_are_all_different_and_bindable() -> None:
    """The sandbox takes its services' ports in one call: one port handed out twice once put licensing and the
    sync-engine on the same gRPC port (gRPC binds with SO_REUSEPORT, so both started)."""
    ports = free_ports(64)
    assert len(set(ports)) == 64
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


async def test_a_service_on_a_port_another_process_serves_stops_naming_it(tmp_path: Path) -> None:
    """Another process (here: another sandbox's gRPC server) already serves the configured grpcPort: the
    sync-engine exits at once with exit code 2 and a line naming the address, instead of sharing the port with it
    (SO_REUSEPORT) and answering only some of the connections its callers open."""
    squatter = GrpcServer("127.0.0.1", 0, admin_token="another-sandboxs-admin-token")
    grpc_port = await squatter.start()
    unused_db, unused_nats, http_port = free_ports(3)  # nothing listens there: the gRPC port is tried first
    config = {
        "dbConnectionConfig": {"host": "127.0.0.1", "port": unused_db, "user": "postgres", "database": "postgres"},
        "nats": {"url": f"nats://127.0.0.1:{unused_nats}"},
        "productWhitelist": {"tcs": ["video.example.com#vcs"]},
        "grpc": {"services": {"sync-engine": {"grpcPort": grpc_port, "httpPort": http_port}}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sync_engine", "--config", str(path), stderr=asyncio.subprocess.PIPE
    )
    try:
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), 120)
        except TimeoutError:
            pytest.fail(f"sync-engine kept running on 127.0.0.1:{grpc_port}, a port another process serves")
        assert process.returncode == 2, stderr.decode()
        assert f"sync-engine: gRPC cannot listen on 127.0.0.1:{grpc_port}: the port is in use" in stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await squatter.stop(0)


async def test_reserved_ports_are_held_from_other_processes_but_our_servers_listen_on_them() -> None:
    """PortReservation keeps its ports from everybody else until released (a plain bind is refused, so a bind to
    port 0 of another sandbox never gets one) while our servers, which set SO_REUSEADDR, bind them: a gRPC server
    (bound alone) and an aiohttp site as the probes and the bridge use."""
    reservation = PortReservation(3)
    grpc_port, http_port, held = reservation.ports
    server = GrpcServer("127.0.0.1", grpc_port)
    runner = web.AppRunner(web.Application())
    try:
        with socket.socket() as other, pytest.raises(OSError, match="in use") as taken:
            other.bind(("127.0.0.1", held))
        assert taken.value.errno == errno.EADDRINUSE
        assert await server.start() == grpc_port
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", http_port).start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:  # it answers on the held port
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        reservation.release()
        await server.stop(0)
        await runner.cleanup()
    with socket.socket() as other:
        other.bind(("127.0.0.1", held))  # released: free for anybody


def test_the_sandbox_holds_its_services_ports_until_they_are_ready(tmp_path: Path) -> None:
    """The sandbox picks its services' ports when it writes the config and holds them until every service is
    ready (listening), so another sandbox started at the same time cannot pick one of them in between."""
    box = Sandbox(tmp_path)
    db = {"host": str(tmp_path), "port": 5432, "user": "postgres", "database": "calendar"}
    config = json.loads(box.write_config(db, "nats://127.0.0.1:4222").read_text())
    ports = [port for entry in config["grpc"]["services"].values() for port in (entry["grpcPort"], entry["httpPort"])]
    try:
        for port in [*ports, config["wsPort"]]:
            with socket.socket() as other, pytest.raises(OSError, match="in use"):
                other.bind(("127.0.0.1", port))
        box.wait_ready(1.0)  # no child left to wait for: all listen
        for port in [*ports, config["wsPort"]]:
            with socket.socket() as other:
                other.bind(("127.0.0.1", port))
    finally:
        box.stop()

"""`tc-calendar sandbox`: everything up and ready, a complete ready-file, and nothing left after SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tccal_sandbox.testing import running_sandbox


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its parent to reap it has stopped running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_sandbox_up_ready_and_stopped_without_orphans() -> None:
    with running_sandbox(prefix="tcsbx", timeout=150) as sandbox:
        ready, process = sandbox.ready, sandbox.process
        assert set(ready["services"]) == {"ews-ingest", "sync-engine", "tcs-gateway", "licensing"}
        assert ready["services"]["tcs-gateway"]["ws"].startswith("ws://127.0.0.1:")
        assert ready["nats"]["url"].startswith("nats://127.0.0.1:")
        assert ready["postgres"]["dsn"].startswith("postgresql://")
        for name, endpoints in ready["services"].items():
            with grpc.insecure_channel(endpoints["grpc"]) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        assert ready["exchange"]["ews_url"].endswith("/EWS/Exchange.asmx")
        assert "alice@sandbox.test" in ready["exchange"]["mailboxes"]
        assert ready["exchange"]["service_account"]["password"]
        assert ready["trueconf"]["server_id"] == "video.sandbox.test#vcs"
        assert ready["trueconf"]["inspect_url"].endswith("/inspect")
        assert ready["registration"]["url"].startswith("http://127.0.0.1:")
        assert ready["license"]["message"].startswith("Your product successfully registered.")
        pids = ready["processes"]
        assert {
            "ews-ingest",
            "sync-engine",
            "tcs-gateway",
            "licensing",
            "postgres",
            "nats-server",
            "exchange-emulator",
            "trueconf-emulator",
            "registration-emulator",
        } <= set(pids)
        assert all(alive(pid) for pid in pids.values())

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        leftovers = {name: pid for name, pid in pids.items() if alive(pid)}
        assert not leftovers, f"still running after the sandbox stopped: {leftovers}"
        assert "sandbox stopped" in sandbox.output()

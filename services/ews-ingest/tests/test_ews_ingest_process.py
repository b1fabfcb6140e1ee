"""`python -m ews_ingest` as a real process: readiness, the gRPC API, changes with trace context, SIGTERM; and a bad
config stopping it with exit code 2."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from ews_ingest_support import (
    ChangeCollector,
    FakeLicensing,
    Outlook,
    ingest_config,
    new_mailboxes,
    provider_section,
)

from exchange_emulator.testing import EmulatorHandle
from tccal_sandbox.embedded import free_port
from tccal_sandbox.testing import bearer, wait_for_async
from trueconf.calendar.v1 import ingest_pb2, ingest_pb2_grpc

ADMIN_TOKEN = "ingest-process-admin-token"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _spawn(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "ews_ingest", "--config", str(config)], stdout=log_file, stderr=subprocess.STDOUT
        )


async def test_real_process(
    emu: EmulatorHandle,
    nats_url: str,
    licensing: FakeLicensing,
    collector: ChangeCollector,
    outlook: Outlook,
    tmp_path: Path,
) -> None:
    (owner,) = new_mailboxes(emu, "owner")
    await outlook.do(outlook.meeting, owner, "before the process")
    grpc_port, http_port = free_port(), free_port()
    # licensing guarded as in production: the seats (and so the sync) come only with ews-ingest's own token
    await licensing.stop()
    await licensing.start(admin_token=ADMIN_TOKEN)
    config: dict[str, Any] = ingest_config(nats_url, licensing.address, [provider_section(emu, [owner])])
    config["grpc"]["adminToken"] = ADMIN_TOKEN
    config["grpc"]["services"]["ews-ingest"] = {"host": "127.0.0.1", "grpcPort": grpc_port, "httpPort": http_port}
    config["telemetry"] = {"logLevel": "INFO", "logFormat": "json"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    log_path = tmp_path / "ews-ingest.log"
    process = await asyncio.to_thread(_spawn, path, log_path)
    try:
        ready_url = f"http://127.0.0.1:{http_port}/readyz"

        async def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"ews-ingest exited with {process.returncode}: {log_path.read_text()}")
            return await asyncio.to_thread(_ready, ready_url)

        await wait_for_async(ready, timeout=30, what="/readyz")
        await collector.start()
        await collector.wait(lambda c: c.event.subject == "before the process", what="initial load")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}", interceptors=[bearer(ADMIN_TOKEN)]) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)

            async def syncing() -> bool:
                listed = await stub.ListMailboxes(ingest_pb2.ListMailboxesRequest())
                return any(m.mailbox == owner and m.state == ingest_pb2.MAILBOX_STATE_SYNCING for m in listed.mailboxes)

            await wait_for_async(syncing, what="mailbox SYNCING over gRPC")
            await outlook.do(outlook.meeting, owner, "while the process runs")
            await collector.wait(lambda c: c.event.subject == "while the process runs", what="streamed change")
            received = collector.received_for(lambda c: c.event.subject == "while the process runs")
            assert received is not None and received.headers.get("traceparent", "").startswith("00-")
            answer = await stub.ResyncMailbox(ingest_pb2.ResyncMailboxRequest(mailbox=owner))
            assert answer.published == 2
        assert licensing.requests, "ews-ingest asked licensing for seats with its token"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as bare:  # no token: mailboxes stay private
            for call, ask in (
                (ingest_pb2_grpc.IngestServiceStub(bare).ListMailboxes, ingest_pb2.ListMailboxesRequest()),
                (ingest_pb2_grpc.IngestServiceStub(bare).ResyncMailbox, ingest_pb2.ResyncMailboxRequest(mailbox=owner)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(ask)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
        assert code == 0, log_path.read_text()
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        messages = [line["message"] for line in lines]
        assert "ews-ingest stopped" in messages
        assert "Svc-Passw0rd" not in log_path.read_text()  # secrets never logged
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_bad_config_exits_with_code_2(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "allowPlaintextPasswords": True,
                "calendarProviders": [
                    {"host": "ex.example.com", "maxConcurrency": 0, "credentials": [{"login": "a", "password": "p"}]}
                ],
            }
        )
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ews_ingest", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "calendarProviders[0].maxConcurrency" in result.stderr

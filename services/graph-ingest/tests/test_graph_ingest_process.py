"""`python -m graph_ingest` as a real process: its own endpoints and NATS identity, readiness through a real token,
the initial load, a clean SIGTERM, no secret in the log; a wrong secret keeps it unready and says which setting."""

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

from ews_ingest_support import ChangeCollector
from graph_ingest_support import GraphWriter, SeatServer, graph_config, graph_provider, new_mailboxes

from graph_emulator.testing import READONLY_APP_SECRET, EmulatorProcess
from tccal_sandbox.embedded import EmbeddedNats, free_port
from tccal_sandbox.testing import nats_config, wait_for_async


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


def _spawn(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "graph_ingest", "--config", str(config)], stdout=log_file, stderr=subprocess.STDOUT
        )


def _write_config(tmp_path: Path, config: dict[str, Any], nats_server: EmbeddedNats) -> tuple[Path, int]:
    http_port = free_port()
    config["grpc"]["services"]["graph-ingest"] = {"host": "127.0.0.1", "grpcPort": free_port(), "httpPort": http_port}
    config["nats"] = nats_config(nats_server, "graph-ingest")
    config["telemetry"] = {"logLevel": "INFO", "logFormat": "json"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path, http_port


async def test_real_process_loads_the_mailbox_and_stops_cleanly(
    emu: EmulatorProcess,
    nats_server: EmbeddedNats,
    seats: SeatServer,
    collector: ChangeCollector,
    writer: GraphWriter,
    tmp_path: Path,
) -> None:
    (mailbox,) = new_mailboxes(emu, "mira")
    await writer.create(mailbox, "before the process")
    path, http_port = _write_config(
        tmp_path, graph_config(seats.address, [graph_provider(emu, [mailbox])]), nats_server
    )
    log_path = tmp_path / "graph-ingest.log"
    process = await asyncio.to_thread(_spawn, path, log_path)
    try:

        async def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"graph-ingest exited with {process.returncode}: {log_path.read_text()}")
            status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{http_port}/readyz")
            return status == 200

        await wait_for_async(ready, timeout=30, what="/readyz")
        await collector.start()
        change = await collector.wait(lambda c: c.event.subject == "before the process", what="the initial load")
        assert change.mailbox == mailbox
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
        assert code == 0, log_path.read_text()
        text = log_path.read_text()
        messages = [json.loads(line)["message"] for line in text.splitlines() if line.startswith("{")]
        assert "graph-ingest stopped" in messages
        assert READONLY_APP_SECRET not in text  # the client secret is never logged
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_a_wrong_secret_keeps_the_process_unready_naming_the_setting(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, tmp_path: Path
) -> None:
    (mailbox,) = new_mailboxes(emu, "nils")
    config = graph_config(seats.address, [graph_provider(emu, [mailbox], secret="wrong-secret")])
    path, http_port = _write_config(tmp_path, config, nats_server)
    log_path = tmp_path / "graph-ingest.log"
    process = await asyncio.to_thread(_spawn, path, log_path)
    try:

        async def refused() -> str | None:
            if process.poll() is not None:
                raise AssertionError(f"graph-ingest exited with {process.returncode}: {log_path.read_text()}")
            status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{http_port}/readyz")
            return body if status == 503 and "clientSecret" in body else None

        body = await wait_for_async(refused, timeout=30, what="/readyz refusing with the reason")
        assert "calendarProviders[0].clientSecret" in body and "AADSTS7000215" in body
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)


async def test_bad_config_exits_with_code_2(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "allowPlaintextPasswords": True,
                "calendarProviders": [
                    {"type": "graph", "tenantId": "contoso", "clientId": "x", "clientSecret": "s", "cloud": "moon"}
                ],
            }
        )
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "graph_ingest", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "calendarProviders[0].tenantId" in result.stderr and "calendarProviders[0].cloud" in result.stderr

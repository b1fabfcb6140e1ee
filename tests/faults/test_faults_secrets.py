"""No secret ever reaches a log: every line every product of this session wrote is scanned.

Runs last: tests/faults/conftest.py moves it after every other test of the session. The secrets: the Exchange
service account password, the bridge secret and the OAuth client secret (state_dir/secrets/*), the machine key
(raw and base64), and the gRPC admin token. When run on its own it first starts a product and drives it
(meetings, refused admin calls, a bridge drop) to make logs.
"""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import grpc
from e2e_support import email
from faults_support import ADMIN_TOKEN, LOAD, SECRET_SOURCES, Load, converge, launch, write_load

from trueconf.calendar.v1 import ingest_pb2, ingest_pb2_grpc


def secrets_of(state: Path) -> dict[str, str]:
    found = {f"secrets/{p.name}": p.read_text().strip() for p in (state / "secrets").iterdir() if p.is_file()}
    key = (state / "machine.key").read_bytes()
    found["machine.key (file)"] = key.decode(errors="replace").strip()
    found["machine.key (base64)"] = base64.b64encode(key).decode()
    found["machine.key (hex)"] = key.hex()
    return {name: value for name, value in found.items() if len(value) >= 8}


def test_no_secret_in_any_log_line() -> None:
    if not SECRET_SOURCES:
        with launch() as fp:
            load = Load("SECR", max(20, LOAD // 4))
            write_load(fp, load, load.plan())
            fp.trueconf_admin("POST", "/bridge/drop", {"mode": "abort"})
            with fp.product.channel("ews-ingest") as channel:
                stub = ingest_pb2_grpc.IngestServiceStub(channel)
                with contextlib.suppress(grpc.RpcError):
                    stub.ResyncMailbox(ingest_pb2.ResyncMailboxRequest(mailbox=email("alice")), timeout=10)
            import time

            converge(fp, load, time.monotonic(), "secrets scan load", "bridge abort")
    leaks: list[str] = []
    scanned = 0
    for state in SECRET_SOURCES:
        wanted = secrets_of(state)
        wanted["grpc adminToken"] = ADMIN_TOKEN
        logs = sorted((state / "logs").glob("*.log"))
        for log in logs:
            if not log.exists():
                continue
            for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
                scanned += 1
                leaks += [f"{log.name}:{number}: {name}" for name, value in wanted.items() if value in line]
    assert scanned > 100, f"only {scanned} log lines: nothing was scanned"
    assert not leaks, f"secrets in logs: {leaks[:20]}"

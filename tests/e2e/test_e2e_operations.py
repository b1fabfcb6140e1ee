"""Licensing, registration, access control, secrets and tracing of the whole product, end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from concurrent import futures
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import SEND, Product, email, http_json, local_time, running_product, wait_until
from exchangelib import CalendarItem
from exchangelib.properties import Attendee, Mailbox
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tccal import secrets
from tccal_sandbox.embedded import free_port
from tccal_sandbox.testing import connect_nats
from trueconf.calendar.v1 import (
    gateway_pb2,
    gateway_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    licensing_pb2,
    licensing_pb2_grpc,
)


def product_env(product: Product, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "TC_CALENDAR_CONFIG": product.ready["config"],
        "TC_CALENDAR_KEY_FILE": str(product.state_dir / "machine.key"),
        **extra,
    }


def tc_calendar(product: Product, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tccal.cli", *args],
        capture_output=True,
        text=True,
        env=product_env(product, **env),
        cwd=cwd,
        timeout=120,
    )


def ask_for_seats_now(product: Product) -> None:
    """What an administrator's `license` change does for a running ews-ingest: the seats control subject."""

    async def publish() -> None:
        connection = await connect_nats(product.ready, "licensing")  # as licensing's CLI does
        await connection.publish("calendar.v1.control.seats", b"{}")
        await connection.drain()

    asyncio.run(publish())


def issue_key(product: Product, tier: str, seats: int) -> str:
    """The registration authority's manager issuing a key (registration_emulator issue-key)."""
    state = str(product.state_dir / "registration")
    command = [sys.executable, "-m", "registration_emulator", "--state-dir", state, "issue-key", "--tier", tier]
    return subprocess.run([*command, "--seats", str(seats)], capture_output=True, text=True, check=True).stdout.strip()


def simple_meeting(product: Product, organizer: str, subject: str, attendee: str, days: int = 2) -> Any:
    account = product.account(organizer)
    start = local_time(days, 13)
    item = CalendarItem(
        account=account,
        folder=account.calendar,
        subject=subject,
        start=start,
        end=start + timedelta(minutes=30),
        required_attendees=[Attendee(mailbox=Mailbox(email_address=email(attendee)))],
    )
    item.save(send_meeting_invitations=SEND)
    return item


def mailboxes(product: Product) -> list[ingest_pb2.MailboxStatus]:
    with product.channel("ews-ingest") as channel:
        reply = ingest_pb2_grpc.IngestServiceStub(channel).ListMailboxes(ingest_pb2.ListMailboxesRequest(), timeout=10)
    return list(reply.mailboxes)


def test_1_2_free_license_syncs_50_accounts_users_first() -> None:
    with running_product("--license", "free", "--extra-mailboxes", "55", "--configured-users", "demo") as product:

        def allocated() -> list[ingest_pb2.MailboxStatus] | None:
            boxes = mailboxes(product)
            refused = [b for b in boxes if b.state == ingest_pb2.MAILBOX_STATE_NO_SEAT]
            return boxes if len(boxes) == 60 and len(refused) == 10 else None

        boxes = wait_until(allocated, 120, "60 mailboxes known, 10 of them refused a seat")
        by_address = {b.mailbox: b for b in boxes}
        for who in ("alice", "bob", "carol", "dave", "erin"):
            assert by_address[email(who)].state != ingest_pb2.MAILBOX_STATE_NO_SEAT, f"{who} is in `users`"
            assert by_address[email(who)].configured
        refused = [b for b in boxes if b.state == ingest_pb2.MAILBOX_STATE_NO_SEAT]
        assert all(not b.configured and b.last_error for b in refused)
        with product.channel("licensing") as channel:
            info = licensing_pb2_grpc.LicensingServiceStub(channel).GetLicense(licensing_pb2.GetLicenseRequest())
        assert info.tier == licensing_pb2.LICENSE_TIER_FREE and info.seats == 50
        # the sandbox runs guarded: the seats above came through ews-ingest's own token at licensing, and a
        # caller without one learns nothing and takes no seat (issue #17)
        with product.channel("licensing", authorized=False) as bare:
            stub = licensing_pb2_grpc.LicensingServiceStub(bare)
            for call, request in (
                (stub.GetLicense, licensing_pb2.GetLicenseRequest()),
                (
                    stub.AllocateSeats,
                    licensing_pb2.AllocateSeatsRequest(
                        mailboxes=[licensing_pb2.SeatRequest(mailbox=email("mallory"), configured=True)], providers=1
                    ),
                ),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    call(request, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_2_4_2_offline_registration_then_sync_starts() -> None:
    with running_product("--license", "none") as product:
        key = issue_key(product, "standard", 20)
        work = product.state_dir / "offline"
        work.mkdir()
        unreachable = f"http://127.0.0.1:{free_port()}"
        request = tc_calendar(product, "--register", key, cwd=work, TC_CALENDAR__LICENSE__REGISTRATIONURL=unreachable)
        assert request.returncode != 0
        assert (work / "regoffline.crg").exists() and "regoffline.crg" in request.stdout + request.stderr
        subprocess.run(
            [
                sys.executable,
                "-m",
                "registration_emulator",
                "--state-dir",
                str(product.state_dir / "registration"),
                "sign-offline",
                str(work / "regoffline.crg"),
                "-o",
                str(work / "regoffline2.crg"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        installed = tc_calendar(
            product,
            "--offline_reg",
            str(work / "regoffline2.crg"),
            cwd=work,
            TC_CALENDAR__LICENSE__REGISTRATIONURL=unreachable,
        )
        assert installed.returncode == 0, installed.stderr
        assert "Your product successfully registered offline. Now you can run tc_calendar" in installed.stdout
        ask_for_seats_now(product)
        simple_meeting(product, "alice", "After offline registration", "bob")
        product.wait_events("bob", "After offline registration", timeout=120)


def test_3_1_3_product_whitelist_refuses_other_servers(product: Product) -> None:
    from trueconf_emulator.testing import start_emulator

    gateway_url = product.ready["services"]["tcs-gateway"]["ws"]
    # One after the other: they connect from the same address as the real server, and the bridge backs an address
    # off after 3 refused auths (docs/bridge-protocol.md §11) - two at once would soon be answered 1013 instead.
    rogue = start_emulator(server_id="rogue.example.test#vcs", gateway_url=gateway_url, secret="whatever")
    wrong_secret = None
    try:
        for code in (4003, 4001):
            if code == 4001:
                rogue.stop()
                wrong_secret = start_emulator(
                    server_id=product.ready["trueconf"]["server_id"], gateway_url=gateway_url, secret="not-the-secret"
                )
            emulator = rogue if wrong_secret is None else wrong_secret

            def refused(emulator: Any = emulator, code: int = code) -> bool:
                state = http_json(f"{emulator.inspect_url}/bridge")
                return any(entry.get("code") == code for entry in state.get("close_history", []))

            wait_until(refused, 90, f"the gateway closing with {code}")
            assert http_json(f"{emulator.inspect_url}/bridge")["authenticated_connections"] == 0
        with product.channel("tcs-gateway") as channel:
            servers = gateway_pb2_grpc.GatewayServiceStub(channel).ListServers(gateway_pb2.ListServersRequest())
        connected = {s.server_id for s in servers.servers if s.connected}
        assert "rogue.example.test#vcs" not in connected
        assert product.ready["trueconf"]["server_id"] in connected
    finally:
        rogue.stop()
        if wrong_secret is not None:
            wrong_secret.stop()


def test_3_hash_pass_output_makes_a_working_config(product: Product, tmp_path: Path) -> None:
    password = product.ready["exchange"]["service_account"]["password"]
    result = tc_calendar(product, "--hash_pass", password, "second-password")
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 2
    encrypted = lines[0].removeprefix("Your encrypted data: ")
    assert encrypted.startswith("dGNf")
    config = json.loads(Path(product.ready["config"]).read_text())
    config["calendarProviders"][0]["credentials"][0]["password"] = encrypted
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    check = tc_calendar(product, "config", "check", str(path))
    assert check.returncode == 0, check.stderr
    key_file = str(product.state_dir / "machine.key")
    os.environ["TC_CALENDAR_KEY_FILE"] = key_file
    assert secrets.decrypt(encrypted) == password
    account = product.account("alice")
    assert account.calendar.total_count is not None, "the impersonation account logs in with that password"


class TraceCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: records (service, trace id, span name) of everything exported."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - OTLP method name
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
                )
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append((service, span.trace_id.hex(), span.name))
        return trace_service_pb2.ExportTraceServiceResponse()


def test_1_1_1_one_exchange_change_is_one_trace_across_the_services() -> None:
    collector = TraceCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with running_product(env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}) as product:
            # Seats first: a meeting the engine learns of before licensing has seated bob reaches bob's calendar by
            # the seat round that seats him (a new trace), not by the change's own trace (sync_engine/seats.py).
            simple_meeting(product, "alice", "Seats are known", "bob")
            product.wait_events("bob", "Seats are known")
            simple_meeting(product, "alice", "Traced meeting", "bob")
            product.wait_events("bob", "Traced meeting")

            def spanning_trace() -> str | None:
                with collector.lock:
                    services: dict[str, set[str]] = {}
                    for service, trace_id, _ in collector.spans:
                        services.setdefault(trace_id, set()).add(service)
                wanted = {"ews-ingest", "sync-engine", "tcs-gateway"}
                return next((t for t, s in services.items() if wanted <= s), None)

            try:
                trace_id = wait_until(
                    spanning_trace, 60, "one trace with spans of ews-ingest, sync-engine, tcs-gateway"
                )
            except AssertionError:
                with collector.lock:  # what did arrive, per trace: which service or hop drops the context
                    seen: dict[str, set[tuple[str, str]]] = {}
                    for service, trace_id, name in collector.spans:
                        seen.setdefault(trace_id, set()).add((service, name))
                problems = [
                    line for line in product.log("sync-engine").splitlines() if "WARNING" in line or "ERROR" in line
                ]
                raise AssertionError(
                    f"no trace spans the three services; traces seen: {seen}; sync-engine's warnings: {problems[-20:]}"
                ) from None
            names = {(s, n) for s, t, n in collector.spans if t == trace_id}
            assert {s for s, _ in names} >= {"ews-ingest", "sync-engine", "tcs-gateway"}
    finally:
        server.stop(0)


@pytest.mark.parametrize("auto_sync", [True, False])
def test_3_1_2_cache_autosync_first_start(auto_sync: bool) -> None:
    """autoSync true: meetings made before the first sync are shown; false: only what changes from then on."""
    override = json.dumps({"cache": {"autoSync": auto_sync}})
    with running_product("--license", "none", "--config-override", override) as product:
        simple_meeting(product, "carol", "Made before the first sync", "bob")
        key = issue_key(product, "standard", 20)
        registered = tc_calendar(product, "--register", key)
        assert registered.returncode == 0, registered.stderr
        ask_for_seats_now(product)
        wait_until(
            lambda: all(b.state == ingest_pb2.MAILBOX_STATE_SYNCING for b in mailboxes(product)) and mailboxes(product),
            120,
            "every mailbox synced for the first time",
        )
        simple_meeting(product, "carol", "Made after the first sync", "bob")
        product.wait_events("bob", "Made after the first sync", timeout=120)
        shown_before = product.events("bob", "Made before the first sync")
        if auto_sync:
            product.wait_events("bob", "Made before the first sync")
        else:
            assert shown_before == []

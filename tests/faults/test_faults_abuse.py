"""Bad input from every side: each gets a clear error, the rest keeps working, nothing stored is lost.

One product whose gRPC admin calls need a bearer token (grpc.adminToken, encrypted with its own machine key).
Before the abuse a meeting is made; after it, that meeting is still shown and a new one flows end to end.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from e2e_support import SEND, email, local_time
from exchangelib import CalendarItem
from exchangelib.properties import Attendee, Mailbox
from faults_support import ADMIN_TOKEN, FaultProduct, launch

from trueconf.calendar.v1 import ingest_pb2, ingest_pb2_grpc, licensing_pb2, licensing_pb2_grpc

MAX_FRAME = 1_048_576


@pytest.fixture(scope="module")
def guarded() -> Iterator[FaultProduct]:
    with launch(admin_token=ADMIN_TOKEN) as running:
        before = meeting(running, "alice", "Abuse: stored before", "bob", days=4)
        running.product.wait_events("bob", "Abuse: stored before", lambda f: f[0]["conference"] is not None)
        yield running
        # nothing stored is lost, and a normal meeting still flows after all the abuse
        (kept,) = running.product.wait_events("bob", "Abuse: stored before")
        assert kept["cancelled"] is False and kept["conference"] is not None, kept
        assert before.subject == kept["subject"]
        meeting(running, "carol", "Abuse: flows afterwards", "alice", days=5)
        running.product.wait_events("alice", "Abuse: flows afterwards", lambda f: f[0]["conference"] is not None)


def meeting(fp: FaultProduct, organizer: str, subject: str, attendee: str, days: int = 3, **fields: Any) -> Any:
    account = fp.product.account(organizer)
    start = fields.pop("start", local_time(days, 11))
    item = CalendarItem(
        account=account,
        folder=account.calendar,
        subject=subject,
        start=start,
        end=fields.pop("end", start + timedelta(minutes=30)),
        location=fields.pop("location", "@trueconf"),
        required_attendees=[Attendee(mailbox=Mailbox(email_address=email(attendee)))],
        **fields,
    )
    item.save(send_meeting_invitations=SEND)
    return item


def env_of(fp: FaultProduct, **extra: str) -> dict[str, str]:
    return {**fp.env(), **extra}


# --- gRPC ---------------------------------------------------------------------------------------------------
def test_grpc_admin_calls_without_token_are_refused(guarded: FaultProduct) -> None:
    product = guarded.product
    with product.channel("ews-ingest") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", ADMIN_TOKEN),)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ResyncMailbox(
                    ingest_pb2.ResyncMailboxRequest(mailbox=email("alice")), metadata=metadata, timeout=10
                )
            assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            assert "adminToken" in (refused.value.details() or ""), refused.value.details()
        stub.ResyncMailbox(
            ingest_pb2.ResyncMailboxRequest(mailbox=email("alice")),
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            timeout=30,
        )
        assert stub.ListMailboxes(ingest_pb2.ListMailboxesRequest(), timeout=10).mailboxes, "queries need no token"
    with product.channel("licensing") as channel:
        licensing = licensing_pb2_grpc.LicensingServiceStub(channel)
        before = licensing.GetLicense(licensing_pb2.GetLicenseRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            licensing.RegisterOnline(licensing_pb2.RegisterOnlineRequest(key="FREE-ANYTHING"), timeout=10)
        assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        after = licensing.GetLicense(licensing_pb2.GetLicenseRequest(), timeout=10)
        assert (after.tier, after.seats) == (before.tier, before.seats), "the refused call changed the license"


# --- the calendar bridge ------------------------------------------------------------------------------------
async def bridge_client(url: str, frames: list[Any]) -> tuple[int | None, list[Any]]:
    """Connect as a would-be TrueConf Server, send `frames`, collect replies until the gateway closes (≤ 15 s)."""
    replies: list[Any] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
        for frame in frames:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))
        try:
            async with asyncio.timeout(15):
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        replies.append(json.loads(message.data))
        except TimeoutError:
            return None, replies
        return ws.close_code, replies


def auth(server_id: str, secret: str) -> dict[str, Any]:
    payload = {"serverId": server_id, "secret": secret, "protocolVersion": 1, "serverVersion": "5.5.3"}
    return {"type": 1, "id": 1, "method": "auth", "payload": payload}


def test_bridge_refuses_malformed_oversized_and_foreign_clients(guarded: FaultProduct) -> None:
    url = guarded.ready["services"]["tcs-gateway"]["ws"]
    server_id = guarded.ready["trueconf"]["server_id"]
    real_secret = (guarded.state_dir / "secrets" / "bridge-secret").read_text().strip()
    cases: list[tuple[str, list[Any], set[int]]] = [
        ("not whitelisted", [auth("rogue.example.test#vcs", real_secret)], {4003}),
        ("wrong secret", [auth(server_id, "not-the-secret")], {4001}),
        ("binary frame", [b"\x00\xff" * 100], {1003}),
        ("oversized frame", ["x" * (MAX_FRAME + 1024)], {4009}),
        ("never authenticates", ["{not json", json.dumps([1, 2, 3])], {4008}),
    ]
    for name, frames, codes in cases:
        code, replies = asyncio.run(bridge_client(url, frames))
        assert code in codes, f"{name}: closed with {code}, expected {codes}; replies {replies}"
        if name == "never authenticates":
            assert [r["payload"]["errorCode"] for r in replies][:2] == [1, 1], replies
    bridge = guarded.bridge()
    assert bridge["state"] == "connected" and bridge["authenticated_connections"] >= 1
    assert "rogue.example.test#vcs" not in json.dumps(bridge.get("users", []))


# --- bad calendar data through EWS ---------------------------------------------------------------------------
@contextmanager
def client_checks_lifted() -> Iterator[None]:
    """exchangelib refuses these values before sending; a less careful EWS client would not (xs:int in the schema)."""
    from exchangelib.recurrence import DailyPattern, EndDatePattern, NumberedPattern

    number = NumberedPattern.get_field_by_fieldname("number")
    interval = DailyPattern.get_field_by_fieldname("interval")
    saved = (number.max, interval.min, EndDatePattern.clean)
    number.max, interval.min = None, None
    EndDatePattern.clean = lambda self, version=None: None
    try:
        yield
    finally:
        number.max, interval.min, EndDatePattern.clean = saved


def test_absurd_recurrences(guarded: FaultProduct) -> None:
    from exchangelib.recurrence import DailyPattern, Recurrence

    product = guarded.product
    start = local_time(3, 8)
    outcomes: dict[str, str] = {}
    cases: dict[str, Callable[[], Any]] = {
        "count 1e9": lambda: Recurrence(pattern=DailyPattern(interval=1), start=start.date(), number=10**9),
        "interval 0": lambda: Recurrence(pattern=DailyPattern(interval=0), start=start.date(), number=3),
        "end before start": lambda: Recurrence(
            pattern=DailyPattern(interval=1), start=start.date(), end=start.date() - timedelta(days=30)
        ),
    }
    with client_checks_lifted():
        for label, build in cases.items():
            try:
                meeting(guarded, "alice", f"Abuse: {label}", "bob", start=start, recurrence=build())
                outcomes[label] = "accepted by Exchange"
            except Exception as exc:  # Exchange refused it: what the user's client would see
                outcomes[label] = f"refused by Exchange: {type(exc).__name__}: {exc}"
    events: list[dict[str, Any]] = []
    window_days = 31 * 4 + 2  # cache.backward 1 + forward 3 months, daily
    if outcomes["count 1e9"] == "accepted by Exchange":
        # sync-engine caps a series at 10,000 occurrences and logs "recurrence cannot be expanded" naming the value
        events = product.wait_events("bob", "Abuse: count 1e9", timeout=120)
        assert len(events) <= window_days, f"{len(events)} occurrences shown: not bounded by the cache window"
    for label in ("interval 0", "end before start"):
        if outcomes[label] == "accepted by Exchange":
            shown = product.events("bob", f"Abuse: {label}")
            assert len(shown) <= window_days, f"{label}: {len(shown)} occurrences"
    print("absurd recurrences:", outcomes)
    assert "1000000000" in product.log("sync-engine") or len(events) > 1, "neither expanded nor a clear error"


def test_huge_body_is_shown_and_does_not_block_the_mailbox() -> None:
    with launch() as fresh:
        huge = "Agenda " + "lorem ipsum " * 200_000  # ~2.4 MB plain-text body
        meeting(fresh, "bob", "Abuse: huge body", "carol", body=huge)
        meeting(fresh, "bob", "Abuse: after the huge body", "carol")
        fresh.product.wait_events("carol", "Abuse: after the huge body", timeout=60)
        (big,) = fresh.product.wait_events("carol", "Abuse: huge body", timeout=30)
        assert big["body"].startswith("Agenda lorem ipsum")


# --- configuration and licenses ------------------------------------------------------------------------------
def test_config_with_every_key_wrong_is_refused_naming_keys(guarded: FaultProduct, tmp_path: Path) -> None:
    bad = {
        "wsPort": "four-three-one-five",
        "dbConnectionConfig": {"host": 5, "port": -1, "user": [], "database": {}},
        "launchConference": "yes",
        "syncConferenceParticipants": 3,
        "temporalConfParticipantsMode": "no",
        "cache": {"autoSync": "sometimes", "backward": -4, "forward": "many"},
        "productWhitelist": {"tcs": "not-a-list"},
        "calendarProviders": [{"host": 7, "port": "x", "type": "gmail", "credentials": "none", "users": 5}],
        "nats": {"url": 12},
        "grpc": {"adminToken": 5},
        "telemetry": {"logLevel": "LOUD"},
        "noSuchKey": True,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(bad))
    result = subprocess.run(
        [sys.executable, "-m", "tccal.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        env=env_of(guarded),
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    for key in ("wsPort", "launchConference", "cache", "productWhitelist"):
        assert key in output, f"{key} not named in: {output}"
    assert "four-three-one-five" in output, output


def test_tampered_license_is_refused_and_the_license_in_force_stays(guarded: FaultProduct) -> None:
    from licensing.offline import OfflineResponse
    from tccal.embedded import free_port

    work = guarded.state_dir / "tamper"
    work.mkdir()
    registration = str(guarded.state_dir / "registration")
    authority = [sys.executable, "-m", "registration_emulator", "--state-dir", registration]
    key = subprocess.run(
        [*authority, "issue-key", "--tier", "standard", "--seats", "20"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    unreachable = env_of(guarded, TC_CALENDAR__LICENSE__REGISTRATIONURL=f"http://127.0.0.1:{free_port()}")
    cli = [sys.executable, "-m", "tccal.cli"]
    asked = subprocess.run([*cli, "--register", key], capture_output=True, text=True, env=unreachable, cwd=work)
    assert asked.returncode != 0 and (work / "regoffline.crg").exists(), asked.stderr
    subprocess.run(
        [*authority, "sign-offline", str(work / "regoffline.crg"), "-o", str(work / "regoffline2.crg")],
        capture_output=True,
        text=True,
        check=True,
    )
    response = OfflineResponse.decode((work / "regoffline2.crg").read_bytes())
    envelope: dict[str, Any] = json.loads(json.dumps(response.envelope))
    envelope["license"]["seats"] = 100000
    (work / "tampered.crg").write_bytes(OfflineResponse(response.request_id, envelope).encode())
    with guarded.product.channel("licensing") as channel:
        before = licensing_pb2_grpc.LicensingServiceStub(channel).GetLicense(licensing_pb2.GetLicenseRequest())
    refused = subprocess.run(
        [*cli, "--offline_reg", "tampered.crg"], capture_output=True, text=True, env=unreachable, cwd=work, timeout=60
    )
    assert refused.returncode != 0 and "modified after the authority signed it" in refused.stderr, refused.stderr
    with guarded.product.channel("licensing") as channel:
        after = licensing_pb2_grpc.LicensingServiceStub(channel).GetLicense(licensing_pb2.GetLicenseRequest())
    assert (after.tier, after.seats, after.license_id) == (before.tier, before.seats, before.license_id)

"""tcs-gateway replicas (issue #18 point 2): a TrueConf Server's commands are consumed only by the replica holding
the server's lease in TCS_GATEWAY_LEASES - the one where its bridge session is - and move when that replica dies.

The sandbox runs its own tcs-gateway ("s"); the test starts two more, "a" and "b", as separate processes with the
sandbox's tcs-gateway config (other ports), and points the TrueConf emulator at a with b as the fallback URL (what a
Kubernetes Service does: the reconnect after a pod died lands on another replica). Leases are short here
(TCS_GATEWAY_LEASE_SECONDS=6, renewed every 1.5 s, fenced 2 s before expiry) so a takeover fits a test.

What is asserted through real interfaces: the lease's owner in the KV bucket; each replica's log (which one
consumed the commands); the emulator's conferences (REST API v4), its REST log (one conference creation per
meeting) and bridge inspection (which URL it is connected to). kill -9 of a: the emulator reconnects to b, b takes
the lease once a's expired and a new meeting's conference reaches TrueConf (the time is printed: FAILOVER ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone
from exchangelib.properties import Attendee, Mailbox

from tccal.subjects import GATEWAY_LEASES_BUCKET
from tccal_sandbox.demo import Ews
from tccal_sandbox.testing import (
    SandboxProcess,
    ServiceReplica,
    connect_nats,
    running_sandbox,
    start_service_replica,
    wait_for,
)
from tcs_gateway.server_lease import lease_key

LEASES = {
    "TCS_GATEWAY_LEASE_SECONDS": "6",
    "TCS_GATEWAY_LEASE_RENEW_SECONDS": "1.5",
    "TCS_GATEWAY_LEASE_MARGIN_SECONDS": "2",
}
#: After a kill -9 the emulator reconnects to b within its reconnect backoff (at most 1 s here); b takes the lease
#: after a's expired (6 s) and its next round (1.5 s); the conference command then runs (REST, a few seconds).
FAILOVER_BOUND_SECONDS = 6 + 1.5 + 30
DOMAIN = "sandbox.test"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with running_sandbox("--no-demo", env={**LEASES, "TCS_GATEWAY_REPLICA": "s"}, timeout=300) as running:
        yield running


def start_replica(sandbox: SandboxProcess, name: str) -> ServiceReplica:
    """Another tcs-gateway process with the sandbox's tcs-gateway config (its own bridge, gRPC and HTTP ports)."""
    return start_service_replica(sandbox, "tcs-gateway", name, env=LEASES)


def http_json(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def bridge(sandbox: SandboxProcess) -> dict[str, Any]:
    inspected: dict[str, Any] = http_json(f"{sandbox.ready['trueconf']['inspect_url']}/bridge")
    return inspected


def conferences(sandbox: SandboxProcess) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = http_json(f"{sandbox.ready['trueconf']['inspect_url']}/conferences")
    return found


def server_id(sandbox: SandboxProcess) -> str:
    config = json.loads(Path(sandbox.ready["services"]["tcs-gateway"]["config"]).read_text())
    return str(config["tcs"]["servers"][0]["id"])


def lease_owner(sandbox: SandboxProcess) -> str | None:
    """The replica name (TCS_GATEWAY_REPLICA) holding the server's lease, or None."""

    async def read() -> str | None:
        nc = await connect_nats(sandbox.ready)
        try:
            kv = await nc.jetstream().key_value(GATEWAY_LEASES_BUCKET)
            try:
                entry = await kv.get(lease_key(server_id(sandbox)))
            except Exception:  # no key: nobody holds it
                return None
            return str(json.loads(entry.value or b"{}")["owner"]).rsplit("-", 1)[0] if entry.value else None
        finally:
            await nc.close()

    return asyncio.run(read())


def conference_meeting(sandbox: SandboxProcess, subject: str) -> None:
    """Carol invites Bob with "@trueconf" as the location (a conference with the defaults), as Outlook does."""
    account = sandbox.ready["exchange"]["service_account"]
    ews = Ews(sandbox.ready["exchange"]["ews_url"], account["username"], account["password"])
    carol = ews.account(f"carol@{DOMAIN}")
    start = EWSDateTime.from_datetime(datetime.now(UTC) + timedelta(days=3)).astimezone(EWSTimeZone("UTC"))
    CalendarItem(
        account=carol,
        folder=carol.calendar,
        subject=subject,
        start=start,
        end=start + timedelta(minutes=30),
        location="@trueconf",
        required_attendees=[Attendee(mailbox=Mailbox(email_address=f"bob@{DOMAIN}"))],
    ).save(send_meeting_invitations="SendToAllAndSaveCopy")


def conference_creations(sandbox: SandboxProcess) -> int:
    """REST API v4 calls that created a conference (POST /conferences), as TrueConf logged them."""
    log: list[dict[str, Any]] = http_json(f"{sandbox.ready['trueconf']['inspect_url']}/rest-log")
    return sum(1 for e in log if e["method"] == "POST" and e["path"].rstrip("/").endswith("/conferences"))


def conference_for(sandbox: SandboxProcess, subject: str) -> dict[str, Any] | None:
    return next((c for c in conferences(sandbox) if c.get("topic") == subject), None)


def test_commands_follow_the_bridge_session_and_move_after_kill9(sandbox: SandboxProcess) -> None:
    replicas: list[ServiceReplica] = []
    try:
        a = start_replica(sandbox, "a")
        replicas.append(a)
        b = start_replica(sandbox, "b")
        replicas.append(b)
        created_before = conference_creations(sandbox)
        http_json(
            f"{sandbox.ready['trueconf']['admin_url']}/bridge/target",
            "PUT",
            {"gateway_url": a.ws, "gateway_fallback_urls": [b.ws]},
        )
        wait_for(lambda: bridge(sandbox).get("connected_url") == a.ws, 30, what="TrueConf connected to a")
        # s (no session) held the lease since it started; a, having the session, asked for it and got it
        wait_for(lambda: lease_owner(sandbox) == "a", 30, what="a holds the server's lease")
        # the lease first, then a binds the commands' consumer (a JetStream request) and says so: CI once read a's
        # log between the two
        wait_for(lambda: "consuming commands" in a.log(), 30, what="a consuming the server's commands")
        consumed_by_b_before = b.log().count("consuming commands")

        conference_meeting(sandbox, "Replicas before kill")
        wait_for(lambda: conference_for(sandbox, "Replicas before kill"), 90, what="conference made through a")
        assert lease_owner(sandbox) == "a"
        assert b.log().count("consuming commands") == consumed_by_b_before  # b did not start consuming meanwhile

        killed_at = time.monotonic()
        a.kill()
        conference_meeting(sandbox, "Replicas after kill")
        wait_for(lambda: bridge(sandbox).get("connected_url") == b.ws, 30, what="TrueConf reconnected to b")
        wait_for(
            lambda: conference_for(sandbox, "Replicas after kill"),
            FAILOVER_BOUND_SECONDS,
            what="conference made after the failover",
        )
        failover = time.monotonic() - killed_at
        print(f"\nFAILOVER: a conference command ran {failover:.1f} s after kill -9 of the lease holder")
        wait_for(lambda: lease_owner(sandbox) == "b", 30, what="b holds the server's lease")
        assert "consuming commands" in b.log()

        # nothing ran twice: one conference per meeting, each created by one REST call (two replicas running the
        # same command would both find no conference and both create one)
        topics = Counter(str(c.get("topic")) for c in conferences(sandbox))
        assert topics["Replicas before kill"] == 1 and topics["Replicas after kill"] == 1, topics
        assert conference_creations(sandbox) - created_before == 2
    finally:
        for replica in replicas:
            with contextlib.suppress(Exception):
                replica.stop()

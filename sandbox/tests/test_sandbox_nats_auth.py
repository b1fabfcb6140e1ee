"""The sandbox's NATS as a shipped setup must be (issue #17 High 1): users with least-privilege permissions and
random passwords kept in the state dir, nobody without credentials, and the whole product working within its
permissions - nats-server reports no permission violation while the demo meetings flow end to end."""

from __future__ import annotations

import asyncio
import json
import stat
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import Error as NatsError

from tccal.nats_auth import IDENTITIES
from tccal.subjects import ondemand_subject
from tccal_sandbox.testing import connect_nats, running_sandbox, short_tmpdir, wait_for


def calendar_of(ready: dict[str, Any], email: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{ready['trueconf']['inspect_url']}/calendars/{email}", timeout=5) as response:
        events: list[dict[str, Any]] = json.loads(response.read())
    return events


async def connects(ready: dict[str, Any], identity: str) -> bool:
    connection = await connect_nats(ready, identity)
    await connection.close()
    return True


async def ask_on_demand(ready: dict[str, Any], mailbox: str) -> dict[str, Any]:
    """What tcs-gateway does for a user TrueConf asked for: a request ews-ingest answers (allow_responses)."""
    connection = await connect_nats(ready, "tcs-gateway")
    try:
        reply = await connection.request(ondemand_subject(mailbox), json.dumps({"mailbox": mailbox}).encode(), 10)
    finally:
        await connection.close()
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def anonymous(url: str) -> None:
    connection = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    await connection.close()


def test_sandbox_nats_has_users_keeps_them_and_the_product_stays_within_its_permissions() -> None:
    state = short_tmpdir("tcsbxa")
    with running_sandbox(prefix="tcsbxa", timeout=150, state_dir=state) as sandbox:
        ready = sandbox.ready
        credentials = ready["nats"]["credentials"]
        assert set(credentials) == set(IDENTITIES)
        assert len({c["password"] for c in credentials.values()}) == len(IDENTITIES), "one password each"
        for identity in IDENTITIES:
            assert asyncio.run(connects(ready, identity)), identity
        with pytest.raises((NatsError, OSError)):
            asyncio.run(anonymous(ready["nats"]["url"]))
        ready_file = state / "ready.json"
        assert stat.S_IMODE(ready_file.stat().st_mode) == 0o600, "the ready-file holds credentials"
        for name, endpoints in ready["services"].items():  # each service its own identity
            assert json.loads(Path(endpoints["config"]).read_text())["nats"]["user"] == name

        # the demo went through every stream and KV bucket: a conference created and confirmed (TCS_RESULTS)
        wait_for(
            lambda: any((e.get("conference") or {}).get("url") for e in calendar_of(ready, "alice@sandbox.test")),
            120,
            what="a demo meeting with its conference in alice's TrueConf calendar",
        )
        # request/reply across identities: tcs-gateway's inbox, ews-ingest allowed to answer only that request
        assert asyncio.run(ask_on_demand(ready, "bob@sandbox.test"))["mailbox"] == "bob@sandbox.test"
        log = Path(ready["nats"]["server_config"]).parent / "nats-server.log"
        text = log.read_text(errors="replace")
        assert "Violation" not in text, [line for line in text.splitlines() if "Violation" in line][:10]
        first = credentials
    with running_sandbox("--no-demo", prefix="tcsbxa", timeout=150, state_dir=state) as again:
        assert again.ready["nats"]["credentials"] == first, "a restart on the same state dir keeps the passwords"
        assert asyncio.run(connects(again.ready, "ews-ingest"))

"""The control API adds tenants, apps and mailboxes at run time; tenants are isolated; bad configuration is refused
with a message naming the bad value."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from graph_emulator_support import SCOPES, credential, graph_client
from msgraph.generated.models.o_data_errors.o_data_error import ODataError

from graph_emulator.testing import ControlError, EmulatorProcess

FABRIKAM = "3f2a9c1d-5e6b-4a7c-8d9e-0f1a2b3c4d5e"


async def test_tenant_app_and_mailbox_added_at_run_time_are_served_and_isolated(emu: EmulatorProcess) -> None:
    emu.control("POST", "/tenants", {"id": FABRIKAM, "users": [{"userPrincipalName": "dana@fabrikam.test"}]})
    emu.control(
        "POST",
        f"/tenants/{FABRIKAM}/apps",
        {"client_id": "fab-app", "client_secret": "fab-secret", "permissions": ["Calendars.ReadWrite"]},
    )
    added = emu.control(
        "POST", f"/tenants/{FABRIKAM}/users", {"userPrincipalName": "eve@fabrikam.test", "displayName": "Eve"}
    )
    fabrikam = graph_client(emu, "fab-app", "fab-secret", FABRIKAM, max_retries=0)
    eve = await fabrikam.users.by_user_id("eve@fabrikam.test").get()
    assert eve is not None and eve.id == added["id"] and eve.display_name == "Eve"
    # An app of one tenant sees no user of another, in either direction.
    with pytest.raises(ODataError) as caught:
        await fabrikam.users.by_user_id("alice@contoso.test").events.get()
    assert caught.value.response_status_code == 404
    with pytest.raises(ODataError) as caught:
        await graph_client(emu, max_retries=0).users.by_user_id("dana@fabrikam.test").events.get()
    assert caught.value.response_status_code == 404
    with pytest.raises(ControlError) as refused:
        emu.control("POST", f"/tenants/{FABRIKAM}/users", {"userPrincipalName": "eve@fabrikam.test"})
    assert refused.value.status == 400 and "already exists" in refused.value.text


def test_bad_configuration_is_refused_naming_the_value(tmp_path: Path) -> None:
    config = tmp_path / "graph.json"
    config.write_text(
        json.dumps(
            {"tenants": [{"id": "t", "apps": [{"client_id": "a", "client_secret": "s", "permissions": ["Mail.Read"]}]}]}
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "graph_emulator", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "config.tenants[0].apps[0].permissions" in result.stderr and "Mail.Read" in result.stderr


async def test_request_counter_counts_wire_requests_and_batch_members_apart(emu: EmulatorProcess) -> None:
    """GET /_emulator/requests: a token, one Graph GET and one $batch of two are 3 requests on the wire (token, graph,
    batch) and 3 list-events operations; the control API's own calls are not counted."""
    before = emu.control("GET", "/requests")
    async with credential(emu) as cred:
        token = (await cred.get_token(*SCOPES)).token
    headers = {"Authorization": f"Bearer {token}"}
    events = "/users/alice@contoso.test/events"
    context = ssl.create_default_context(cafile=emu.ca_file)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{emu.graph_url}{events}", headers=headers, ssl=context) as resp:
            assert resp.status == 200, await resp.text()
        batch = {"requests": [{"id": str(i), "method": "GET", "url": events} for i in range(2)]}
        async with session.post(f"{emu.graph_url}/$batch", json=batch, headers=headers, ssl=context) as resp:
            assert resp.status == 200, await resp.text()
    emu.control("GET", "/state")
    after = emu.control("GET", "/requests")
    for kind, added in (("token", 1), ("graph", 1), ("batch", 1)):
        assert after["http"].get(kind, 0) - before["http"].get(kind, 0) == added, (kind, before, after)
    assert after["total"] - before["total"] == 3
    listed = after["operations"]["GET list_events"] - before["operations"].get("GET list_events", 0)
    assert listed == 3, after["operations"]

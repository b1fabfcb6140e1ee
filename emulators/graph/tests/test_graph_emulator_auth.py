"""Client-credentials tokens and their check: azure-identity and msgraph-sdk against the emulator."""

from __future__ import annotations

import pytest
from azure.core.exceptions import ClientAuthenticationError
from graph_emulator_support import SCOPES, credential, graph_client
from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
from msgraph.generated.models.event import Event
from msgraph.generated.models.item_body import ItemBody
from msgraph.generated.models.o_data_errors.o_data_error import ODataError

from graph_emulator.testing import READONLY_APP_ID, READONLY_APP_SECRET, EmulatorProcess


async def test_token_is_issued_for_the_graph_default_scope(emu: EmulatorProcess) -> None:
    async with credential(emu) as cred:
        token = await cred.get_token(*SCOPES)
    assert token.token
    assert token.expires_on > 0


async def test_wrong_secret_is_refused_with_aadsts7000215(emu: EmulatorProcess) -> None:
    async with credential(emu, secret="not-the-secret") as cred:
        with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
            await cred.get_token(*SCOPES)


async def test_sdk_reads_a_user_by_principal_name(emu: EmulatorProcess) -> None:
    client = graph_client(emu)
    user = await client.users.by_user_id("alice@contoso.test").get()
    assert user is not None
    assert user.id == emu.user_id("alice@contoso.test")
    assert user.user_principal_name == "alice@contoso.test"


async def test_expired_token_answers_401_invalid_authentication_token(emu: EmulatorProcess) -> None:
    client = graph_client(emu, max_retries=0)
    await client.users.by_user_id("alice@contoso.test").events.get()
    emu.control("POST", "/tokens/expire")
    with pytest.raises(ODataError) as caught:
        await client.users.by_user_id("alice@contoso.test").events.get()
    assert caught.value.response_status_code == 401
    assert caught.value.error is not None
    assert caught.value.error.code == "InvalidAuthenticationToken"


async def test_read_only_app_cannot_create_events_403(emu: EmulatorProcess) -> None:
    client = graph_client(emu, READONLY_APP_ID, READONLY_APP_SECRET, max_retries=0)
    page = await client.users.by_user_id("bob@contoso.test").events.get()
    assert page is not None and page.value == []
    event = Event(
        subject="not allowed",
        body=ItemBody(content="x"),
        start=DateTimeTimeZone(date_time="2030-01-07T09:00:00", time_zone="UTC"),
        end=DateTimeTimeZone(date_time="2030-01-07T10:00:00", time_zone="UTC"),
    )
    with pytest.raises(ODataError) as caught:
        await client.users.by_user_id("bob@contoso.test").events.post(event)
    assert caught.value.response_status_code == 403
    assert caught.value.error is not None and caught.value.error.code == "ErrorAccessDenied"


async def test_user_of_no_tenant_is_404_invalid_user(emu: EmulatorProcess) -> None:
    client = graph_client(emu, max_retries=0)
    with pytest.raises(ODataError) as caught:
        await client.users.by_user_id("mallory@elsewhere.test").events.get()
    assert caught.value.response_status_code == 404
    assert caught.value.error is not None and caught.value.error.code == "ErrorInvalidUser"

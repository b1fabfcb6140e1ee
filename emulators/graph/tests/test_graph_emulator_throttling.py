"""Outlook limits per app and mailbox: the concurrency limit and the request window answer 429 with Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from graph_emulator_support import graph_client
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph_core.requests.batch_request_content import BatchRequestContent
from msgraph_core.requests.batch_request_item import BatchRequestItem
from msgraph_core.requests.batch_response_content import BatchResponseContent
from msgraph_core.requests.batch_response_item import BatchResponseItem

from graph_emulator.testing import APP_ID, TENANT_ID, EmulatorProcess, build_config, start_emulator


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    config = build_config(extra={"throttling": {"concurrent_requests": 2, "requests_per_window": 6, "window_s": 600}})
    with start_emulator(config) as handle:
        yield handle


async def _in_flight(emu: EmulatorProcess, user: str, count: int) -> None:
    while True:
        state = await asyncio.to_thread(emu.control, "GET", f"/mailboxes/{user}")
        if state["requests"].get(APP_ID, {}).get("in_flight") == count:
            return
        await asyncio.sleep(0.05)


async def test_request_beyond_the_concurrency_limit_gets_429_with_retry_after(emu: EmulatorProcess) -> None:
    client = graph_client(emu, max_retries=0)
    user = "alice@contoso.test"
    emu.control("POST", f"/mailboxes/{user}/hold")
    held = [asyncio.create_task(client.users.by_user_id(user).events.get()) for _ in range(2)]
    try:
        await asyncio.wait_for(_in_flight(emu, user, 2), 30)
        with pytest.raises(ODataError) as caught:
            await client.users.by_user_id(user).events.get()
        assert caught.value.response_status_code == 429
        assert caught.value.error is not None and caught.value.error.code == "ApplicationThrottled"
        headers = caught.value.response_headers  # httpx.Headers: case-insensitive
        assert headers is not None and int(headers["Retry-After"]) >= 1
        # Another mailbox is not limited by this one.
        other = await client.users.by_user_id("bob@contoso.test").events.get()
        assert other is not None
    finally:
        emu.control("POST", f"/mailboxes/{user}/release")
    for page in await asyncio.gather(*held):
        assert page is not None
    state = emu.control("GET", f"/mailboxes/{user}")["requests"][APP_ID]
    assert (state["max_in_flight"], state["throttled"]) == (2, 1)


async def test_requests_beyond_the_window_limit_get_429_until_the_window_moves(emu: EmulatorProcess) -> None:
    client = graph_client(emu, max_retries=0)
    user = "carol@contoso.test"
    for _ in range(6):
        await client.users.by_user_id(user).events.get()
    with pytest.raises(ODataError) as caught:
        await client.users.by_user_id(user).events.get()
    assert caught.value.response_status_code == 429
    headers = caught.value.response_headers  # httpx.Headers: case-insensitive
    assert headers is not None and 1 <= int(headers["Retry-After"]) <= 600


async def test_each_request_of_a_batch_counts_against_the_window(emu: EmulatorProcess) -> None:
    emu.control("POST", f"/tenants/{TENANT_ID}/users", {"userPrincipalName": "dave@contoso.test"})
    client = graph_client(emu, max_retries=0)
    user = client.users.by_user_id("dave@contoso.test")
    batch = BatchRequestContent({})
    for index in range(8):
        batch.add_request(str(index), BatchRequestItem(user.events.to_get_request_information(), id=str(index)))
    response = await client.batch.post(batch)
    assert isinstance(response, BatchResponseContent)
    assert response.get_response_status_codes() == {str(i): 200 if i < 6 else 429 for i in range(8)}
    throttled = response.get_response_by_id("7")
    assert isinstance(throttled, BatchResponseItem) and throttled.headers is not None
    assert 1 <= int(throttled.headers["Retry-After"]) <= 600


async def test_parallel_batch_members_count_against_the_mailbox_concurrency_limit(emu: EmulatorProcess) -> None:
    """Graph runs up to four members of a batch at once, each one of the mailbox's concurrent requests: with a
    limit of 2 the third member answers 429 with its own Retry-After while the other two succeed."""
    emu.control("POST", f"/tenants/{TENANT_ID}/users", {"userPrincipalName": "erin@contoso.test"})
    client = graph_client(emu, max_retries=0)
    user = client.users.by_user_id("erin@contoso.test")
    batch = BatchRequestContent({})
    for index in range(3):
        batch.add_request(str(index), BatchRequestItem(user.events.to_get_request_information(), id=str(index)))
    emu.control("POST", "/mailboxes/erin@contoso.test/hold")
    try:
        posted = asyncio.create_task(client.batch.post(batch))
        await asyncio.wait_for(_in_flight(emu, "erin@contoso.test", 2), 30)
    finally:
        emu.control("POST", "/mailboxes/erin@contoso.test/release")
    response = await posted
    assert isinstance(response, BatchResponseContent)
    statuses = response.get_response_status_codes()
    assert sorted(statuses.values()) == [200, 200, 429]
    throttled = response.get_response_by_id(next(k for k, v in statuses.items() if v == 429))
    assert isinstance(throttled, BatchResponseItem) and throttled.headers is not None
    assert int(throttled.headers["Retry-After"]) >= 1
    state = emu.control("GET", "/mailboxes/erin@contoso.test")["requests"][APP_ID]
    assert (state["max_in_flight"], state["throttled"]) == (2, 1)

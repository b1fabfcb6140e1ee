"""Exchange's throttling budgets ("EWS throttling in Exchange"): concurrent calls, open streaming connections and
subscriptions, each charged to the impersonated mailbox; over budget is ErrorExceededConnectionCount /
ErrorExceededSubscriptionCount, and the budget is back when the calls end. Limits shrunk by config here; the
defaults are Exchange's."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from exchange_emulator_support import SERVICE_PASSWORD, SERVICE_USER
from exchangelib import IMPERSONATION, NTLM, Account, Configuration, Credentials, FailFast
from exchangelib.errors import (
    ErrorExceededConnectionCount,
    ErrorExceededSubscriptionCount,
    ErrorServerBusy,
    SessionPoolMinSizeReached,
)
from exchangelib.protocol import close_connections
from lxml import etree

from exchange_emulator.config import EmulatorConfig
from exchange_emulator.testing import DEFAULT_CONFIG, EmulatorHandle, SoapAnswer, running_emulator
from tccal_sandbox.testing import wait_for

LIMITS = {"max_concurrency": 3, "hanging_connection_limit": 2, "max_subscriptions": 4}


@pytest.fixture(scope="module")
def tight() -> Iterator[EmulatorHandle]:
    with running_emulator({**DEFAULT_CONFIG, "throttling": LIMITS}, extra_args=["--minute-seconds", "1"]) as emu:
        yield emu
    close_connections()


def _account(emu: EmulatorHandle, email: str) -> Account:
    config = Configuration(
        service_endpoint=emu.ews_url,
        credentials=Credentials(SERVICE_USER, SERVICE_PASSWORD),
        auth_type=NTLM,
        retry_policy=FailFast(),
        max_connections=10,
    )
    account = Account(email, config=config, access_type=IMPERSONATION, autodiscover=False)
    # exchangelib answers ErrorExceededConnectionCount by shrinking its session pool under a non-reentrant lock,
    # which deadlocks once every session is busy; like ews-ingest (IngestProtocol), keep the pool and see the error.
    account.protocol.decrease_poolsize = _keep_pool_size
    return account


def _keep_pool_size() -> None:
    raise SessionPoolMinSizeReached("the test keeps its session pool size")


def test_exchange_defaults() -> None:
    limits = EmulatorConfig.from_json({}).throttling
    assert (limits.max_concurrency, limits.hanging_connection_limit, limits.max_subscriptions) == (27, 3, 5000)


def _get_root(emu: EmulatorHandle, mailbox: str) -> SoapAnswer:
    """One raw GetFolder: exchangelib answers ErrorExceededConnectionCount by shrinking its own pool and trying
    again, so the budget itself is seen only on the wire."""
    return emu.post_soap(
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="root"/></m:FolderIds></m:GetFolder>',
        mailbox=mailbox,
    )


def _verdict(response: SoapAnswer) -> str:
    if response.status_code == 200 and b"NoError" in response.content:
        return "ok"
    if b"ErrorExceededConnectionCount" in response.content and b"MaxConcurrency" in response.content:
        return "refused"
    return f"{response.status_code}: {response.text[:300]}"


def test_concurrent_calls_over_the_budget_are_refused_then_allowed_again(tight: EmulatorHandle) -> None:
    owner = tight.admin.add_mailbox("busy@example.com")["email"]
    other = tight.admin.add_mailbox("calm@example.com")["email"]
    tight.admin.add_fault(kind="latency", latency_ms=1500, operation="GetFolder", mailbox=owner)
    results: list[str] = []

    def call() -> None:
        results.append(_verdict(_get_root(tight, owner)))

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == ["ok", "ok", "ok", "refused", "refused"], results  # 3 held at once, 2 refused
    assert _verdict(_get_root(tight, other)) == "ok"  # another mailbox's budget is its own
    tight.admin.clear_faults()
    assert _verdict(_get_root(tight, owner)) == "ok"  # the budget is back once the calls ended


def test_streaming_connections_and_subscriptions_have_their_limits(tight: EmulatorHandle) -> None:
    owner = tight.admin.add_mailbox("streamer@example.com")["email"]
    acc = _account(tight, owner)
    subscriptions = [acc.calendar.subscribe_to_streaming() for _ in range(4)]
    with pytest.raises(ErrorExceededSubscriptionCount):
        acc.calendar.subscribe_to_streaming()
    outcomes: list[Any] = []

    def stream(sub_id: str) -> None:
        try:
            outcomes.append(list(acc.calendar.get_streaming_events([sub_id], connection_timeout=2)))
        except Exception as exc:
            outcomes.append(exc)

    held = [threading.Thread(target=stream, args=(s,)) for s in subscriptions[:2]]
    for thread in held:
        thread.start()
    wait_for(lambda: tight.admin.info()["open_streams"] >= 2, what="two open streams")
    with pytest.raises(ErrorExceededConnectionCount):
        list(acc.calendar.get_streaming_events([subscriptions[2]], connection_timeout=1))
    for thread in held:
        thread.join(timeout=30)
    assert all(o == [] for o in outcomes), outcomes
    assert list(acc.calendar.get_streaming_events([subscriptions[2]], connection_timeout=1)) == []
    acc.calendar.unsubscribe(subscriptions[3])
    assert acc.calendar.subscribe_to_streaming()  # one slot freed


def test_a_spent_time_budget_answers_server_busy_until_it_recharges() -> None:
    # 100 ms charged per call, 350 ms burst, 100 ms earned a second, refused as soon as the balance is below zero
    budget = {"call_cost_ms": 100, "max_burst_ms": 350, "recharge_rate_ms": 360_000, "cutoff_balance_ms": 0}
    with running_emulator({**DEFAULT_CONFIG, "throttling": budget}) as emu:
        owner = emu.admin.add_mailbox("spender@example.com")["email"]
        other = emu.admin.add_mailbox("saver@example.com")["email"]
        verdicts = [_verdict(_get_root(emu, owner)) for _ in range(4)]
        assert verdicts == ["ok"] * 4  # 350 -> 250 -> 150 -> 50 -> about -50
        refused = _get_root(emu, owner)
        assert b"ErrorServerBusy" in refused.content, refused.text
        back_off = int(etree.fromstring(refused.content).findtext(".//{*}Value[@Name='BackOffMilliseconds']"))
        assert 200 <= back_off <= 1000, back_off  # the ~50 ms deficit takes about half a second to earn back
        assert _verdict(_get_root(emu, other)) == "ok"  # another mailbox's budget is its own
        wait_for(lambda: _verdict(_get_root(emu, owner)) == "ok", timeout=5, what="the recharged budget")
        # exchangelib raises it with the server's back-off for a FailFast policy
        busy = _until_busy(_account(emu, owner))
        assert busy.back_off is not None and 0 < busy.back_off <= 1.1


def _until_busy(account: Account) -> ErrorServerBusy:
    for _ in range(10):
        try:
            account.root.refresh()
        except ErrorServerBusy as busy:
            return busy
    raise AssertionError("ten calls of 100 ms each never spent a 350 ms budget")

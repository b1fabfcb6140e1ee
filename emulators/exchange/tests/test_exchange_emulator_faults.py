"""Fault injection over the admin API, as exchangelib sees it: ErrorServerBusy with BackOffMilliseconds, HTTP 503,
added latency."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from exchangelib import FailFast
from exchangelib.errors import ErrorServerBusy

from exchange_emulator.testing import EmulatorError, EmulatorHandle


@pytest.fixture(autouse=True)
def _clear_faults(emu: EmulatorHandle) -> Iterator[None]:
    emu.admin.clear_faults()
    yield
    emu.admin.clear_faults()


def test_server_busy_back_off_is_reported_to_exchangelib(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner, retry_policy=FailFast())
    _ = acc.calendar  # version probe and folder before the fault
    emu.admin.add_fault(kind="server_busy", operation="FindItem", mailbox=owner, back_off_ms=250, count=1)
    with pytest.raises(ErrorServerBusy) as info:
        list(acc.calendar.all())
    assert info.value.back_off == 0.25
    assert list(acc.calendar.all()) == []  # the fault fired once


def test_server_busy_is_retried_after_back_off(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner, max_wait=10)
    _ = acc.calendar
    before = emu.admin.requests()["operations"].get("FindItem", 0)
    emu.admin.add_fault(kind="server_busy", operation="FindItem", back_off_ms=100, count=2)
    assert list(acc.calendar.all()) == []
    assert emu.admin.requests()["operations"]["FindItem"] - before == 3
    assert emu.admin.get("/faults") == []


def test_server_busy_beyond_max_wait_gives_up(emu: EmulatorHandle, account, mailboxes) -> None:
    from exchangelib.errors import RateLimitError

    (owner,) = mailboxes("owner")
    acc = account(owner, max_wait=1)
    _ = acc.calendar
    emu.admin.add_fault(kind="server_busy", operation="FindItem", mailbox=owner, back_off_ms=60_000)
    with pytest.raises(RateLimitError):
        list(acc.calendar.all())


def test_http_503_is_retried(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner, max_wait=10)
    _ = acc.calendar
    rule = emu.admin.add_fault(kind="http_503", operation="FindItem", rate=1.0, count=1)
    assert rule["kind"] == "http_503"
    assert list(acc.calendar.all()) == []
    assert emu.admin.get("/faults") == []


def test_http_503_with_fail_fast(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner, retry_policy=FailFast())
    _ = acc.calendar
    emu.admin.add_fault(kind="http_503", mailbox=owner, count=1)
    with pytest.raises(ErrorServerBusy):
        list(acc.calendar.all())


def test_latency_fault_and_validation(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    rule = emu.admin.add_fault(kind="latency", latency_ms=50, mailbox=owner)
    list(acc.calendar.all())
    (listed,) = [f for f in emu.admin.get("/faults") if f["id"] == rule["id"]]
    assert listed["injected"] >= 1
    emu.admin.delete(f"/faults/{rule['id']}")
    with pytest.raises(EmulatorError, match="fault kind"):
        emu.admin.add_fault(kind="meteor")
    with pytest.raises(EmulatorError, match="rate"):
        emu.admin.add_fault(kind="server_busy", rate=2)

"""Bulk seeding through the admin API (2,000 mailboxes x 25 meetings) followed by an EWS sync of one mailbox;
the exchange_emulator.testing helper (async context manager) on its own subprocess."""

from __future__ import annotations

import datetime as dt

import pytest
from exchangelib import UTC, EWSDateTime

from exchange_emulator.testing import EmulatorHandle, emulator


def test_bulk_seed_then_sync_one_mailbox(emu: EmulatorHandle, account) -> None:
    result = emu.admin.seed(
        mailboxes=2000,
        meetings_per_mailbox=25,
        recurring_fraction=0.2,
        attendees_per_meeting=2,
        domain="seed.example.org",
        prefix="user",
        start="2034-03-01T00:00:00+00:00",
    )
    assert result["mailboxes"] == 2000 and result["meetings"] == 50_000 and result["attendee_copies"] == 100_000
    target = "user01234@seed.example.org"
    stored = emu.admin.items(target)
    assert len(stored) == 75  # 25 organized + 2 x 25 invitations from the two previous mailboxes
    recurring = [i for i in stored if i["type"] == "RecurringMaster"]
    assert 0 < len(recurring) < 75
    acc = account(target)
    changes = list(acc.calendar.sync_items(max_changes_returned=50, only_fields=["id", "uid", "subject", "organizer"]))
    assert len(changes) == 75 and all(kind == "create" for kind, _ in changes)
    assert {i.uid for _, i in changes} == {i["uid"] for i in stored}
    organizers = {i.organizer.email_address for _, i in changes}
    assert organizers == {target, "user01233@seed.example.org", "user01232@seed.example.org"}
    view = list(acc.calendar.view(start=EWSDateTime(2034, 3, 1, tzinfo=UTC), end=EWSDateTime(2034, 6, 1, tzinfo=UTC)))
    assert len(view) > 75  # recurring meetings expand to several occurrences
    assert emu.admin.info()["mailboxes"] >= 2000


@pytest.mark.asyncio
async def test_async_helper_starts_and_stops_emulator() -> None:
    config = {
        "version": "Exchange2019",
        "service_accounts": [{"username": "svc@helper.example.com", "password": "pw-1", "impersonation": True}],
        "mailboxes": [{"email": "one@helper.example.com"}],
    }
    async with emulator(config, strict=True) as handle:
        info = handle.admin.info()
        assert info["version"] == "Exchange2019" and info["strict"] is True
        assert handle.service_account.username == "svc@helper.example.com"
        assert handle.mailboxes == ["one@helper.example.com"]
        assert handle.ews_url.endswith("/EWS/Exchange.asmx") and handle.autodiscover_url.endswith("autodiscover.svc")
        import asyncio

        from exchangelib import IMPERSONATION, NTLM, Account, Configuration, Credentials, FaultTolerance

        def probe() -> str:
            cfg = Configuration(
                service_endpoint=handle.ews_url,
                credentials=Credentials("svc@helper.example.com", "pw-1"),
                auth_type=NTLM,
                retry_policy=FaultTolerance(max_wait=5),
            )
            acc = Account("one@helper.example.com", config=cfg, access_type=IMPERSONATION)
            try:
                return str(acc.version.build)
            finally:
                acc.protocol.close()

        assert await asyncio.to_thread(probe) == "15.2.1544.4"
        process = handle.process
        handle.assert_no_violations()
    assert process.poll() is not None
    _ = dt

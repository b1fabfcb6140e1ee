"""Several calendarProviders (two Exchange emulator processes), several credentials per provider, autodiscover."""

from __future__ import annotations

from collections import Counter

from ews_ingest_support import (
    EMULATOR_CONFIG,
    SVC2_PASSWORD,
    SVC2_USER,
    SVC_PASSWORD,
    SVC_USER,
    ChangeCollector,
    FakeLicensing,
    Outlook,
    ingest_config,
    new_mailboxes,
    provider_section,
    running_ingest,
)

from exchange_emulator.testing import EmulatorHandle, emulator
from tccal.subjects import calendar_subject


async def test_two_providers_and_several_credentials(
    emu: EmulatorHandle, nats_url: str, licensing: FakeLicensing, collector: ChangeCollector, outlook: Outlook
) -> None:
    async with emulator(EMULATOR_CONFIG, strict=True) as second:
        second_outlook = Outlook(second)
        try:
            first_users = new_mailboxes(emu, "a1", "a2", "a3", "a4")
            second_users = new_mailboxes(second, "b1", "b2")
            both = [(SVC_USER, SVC_PASSWORD), (SVC2_USER, SVC2_PASSWORD)]
            providers = [
                provider_section(emu, first_users, credentials=both),
                # the second is reached by autodiscover (as behind a DAG) and named by its own host
                provider_section(second, second_users, host="localhost", autodiscover=True, auth="basic"),
            ]
            config = ingest_config(nats_url, licensing.address, providers)
            async with running_ingest(config) as h:
                await collector.start()
                await h.synced(*first_users, *second_users)
                await h.streamed(*first_users, *second_users)
                entries = h.scheduler.entries
                # mailboxes are spread over the provider's credentials
                assert Counter(entries[m].credential for m in first_users) == {SVC_USER: 2, SVC2_USER: 2}
                assert {entries[m].provider for m in second_users} == {"localhost"}
                for mailbox in first_users:
                    await outlook.do(outlook.meeting, mailbox, f"from first {mailbox}")
                for mailbox in second_users:
                    await second_outlook.do(second_outlook.meeting, mailbox, f"from second {mailbox}")
                for mailbox, provider in [(m, "127.0.0.1") for m in first_users] + [
                    (m, "localhost") for m in second_users
                ]:
                    change = await collector.wait(lambda c, m=mailbox: c.mailbox == m and "from" in c.event.subject)  # type: ignore[misc]
                    assert change.provider == provider
                    received = collector.received_for(lambda c, cid=change.change_id: c.change_id == cid)  # type: ignore[misc]
                    assert received is not None and received.subject == calendar_subject(provider, mailbox)
                requests = second.admin.requests()
                assert requests["operations"].get("GetUserSettings", 0) >= len(second_users)
                assert licensing.requests[-1].providers == 2
            second.assert_no_violations()
        finally:
            second_outlook.close()

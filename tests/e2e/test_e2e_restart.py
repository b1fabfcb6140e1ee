"""The new user's sequence of issue #15: `make run`, Ctrl+C, `make run` again on the same state, then README's
exchangelib snippet. The second run must carry the new meeting into TrueConf as the first did, keep the first run's
meetings (Exchange's mailboxes live in the state dir like PostgreSQL's and NATS's data) and not write the demo twice."""

from __future__ import annotations

import datetime
import time
from collections import Counter

from e2e_support import Product, email, wait_until
from exchangelib import IMPERSONATION, NTLM, Account, CalendarItem, Configuration, Credentials, EWSDateTime, EWSTimeZone

from tccal_sandbox.testing import running_sandbox, short_tmpdir


def readme_snippet(ready: dict, subject: str) -> None:  # type: ignore[type-arg]
    """README's walkthrough, step 1, as written there."""
    exchange = ready["exchange"]
    config = Configuration(
        service_endpoint=exchange["ews_url"],
        auth_type=NTLM,
        credentials=Credentials(exchange["service_account"]["username"], exchange["service_account"]["password"]),
    )
    bob = Account("bob@sandbox.test", config=config, autodiscover=False, access_type=IMPERSONATION)
    start = EWSDateTime.now(EWSTimeZone("Europe/Berlin")) + datetime.timedelta(hours=1)
    CalendarItem(
        account=bob,
        folder=bob.calendar,
        subject=subject,
        location="@trueconf",
        start=start,
        end=start + datetime.timedelta(minutes=30),
        required_attendees=["alice@sandbox.test"],
    ).save(send_meeting_invitations="SendToAllAndSaveCopy")


def test_1_1_a_restarted_sandbox_syncs_a_new_meeting_like_the_first_run() -> None:
    state = short_tmpdir("tcrestart")
    with running_sandbox(state_dir=state) as first:
        product = Product(first.ready, state, first.process)
        demo = first.ready.get("demo") or []
        assert demo, "the first run writes the demo meetings"
        wait_until(lambda: product.events("alice", demo[0]), 60, "the demo in alice's TrueConf calendar")
        readme_snippet(first.ready, "Before the restart")
        wait_until(lambda: product.events("alice", "Before the restart"), 30, "the first run's meeting")
    assert (state / "exchange" / "mailboxes.pickle").exists(), sorted(p.name for p in (state / "exchange").iterdir())
    with running_sandbox(state_dir=state) as second:
        product = Product(second.ready, state, second.process)
        assert not second.ready.get("demo"), "the demo is written once per state dir"
        made = time.monotonic()
        readme_snippet(second.ready, "After the restart")
        # the first run's engine stopped cleanly: what it handed back is no reason for the second to wait ack_wait
        [event] = wait_until(
            lambda: [e for e in product.events("alice", "After the restart") if e["conference"]],
            30,
            "the second run's meeting, with its conference, in alice's TrueConf calendar",
        )
        took = time.monotonic() - made
        assert event["organizer"] == email("bob")
        print(f"new meeting after the restart reached TrueConf with its conference in {took:.2f} s")
        subjects = Counter(e["subject"] for e in product.calendar("alice"))
        assert subjects["Before the restart"] == 1  # kept, not doubled
        # and TrueConf has the conference its event points at: the first run may have been stopped between the
        # event's first push and its conference (the event is shown at once, the conference follows); then the
        # second run finishes that work - within ack_wait (30 s) if a stop had to kill a service mid-command
        (before,) = wait_until(
            lambda: [e for e in product.events("alice", "Before the restart") if e["conference"]],
            45,
            "the first run's meeting with its conference",
        )
        assert product.conference(before["conference"]["id"]) is not None
        assert Counter(e["subject"] for e in product.calendar("alice"))["Before the restart"] == 1
        assert all(subjects[name] <= 1 for name in demo if not name.lower().startswith("weekly")), subjects
        account = product.account("bob")
        assert {"Before the restart", "After the restart"} <= {i.subject for i in account.calendar.all()}

"""Seats enforced end to end, through the running product (issue #17: with a 3-seat license erin had no seat and
still got alice's meeting in her TrueConf calendar; ews-ingest kept its seats forever while licensing was
unreachable).

The real licensing, ews-ingest, sync-engine and tcs-gateway of `tc-calendar sandbox`, the Exchange and TrueConf
emulators; what users see is read from the TrueConf emulator's inspection endpoint. Seat leases are 15 s
(LICENSING_SEAT_LEASE_SECONDS), so stopping licensing (SIGSTOP: the process is there but answers nothing) for
longer than that lets every seat run out; SIGCONT brings it back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from e2e_support import SEND, Product, email, local_time, running_product, wait_until
from exchangelib import CalendarItem
from exchangelib.properties import Attendee, Mailbox

from tccal_sandbox.testing import connect_nats
from trueconf.calendar.v1 import ingest_pb2, ingest_pb2_grpc, sync_pb2, sync_pb2_grpc

LEASE_SECONDS = 15
SUBJECT = "Seats, end to end"


def register(product: Product, seats: int) -> None:
    """A new Standard license with `seats` accounts, registered as the guide says (tc_calendar --register), and
    ews-ingest told at once (the seats control subject, as `license` changes do)."""
    key = subprocess.run(
        [
            sys.executable,
            "-m",
            "registration_emulator",
            "--state-dir",
            str(product.state_dir / "registration"),
            "issue-key",
            "--tier",
            "standard",
            "--seats",
            str(seats),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {
        **os.environ,
        "TC_CALENDAR_CONFIG": product.ready["config"],
        "TC_CALENDAR_KEY_FILE": str(product.state_dir / "machine.key"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tccal.cli", "--register", key], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr

    async def announce() -> None:
        connection = await connect_nats(product.ready, "licensing")
        await connection.publish("calendar.v1.control.seats", b"{}")
        await connection.drain()

    asyncio.run(announce())


def team_meeting(product: Product, organizer: str, attendees: list[str]) -> Any:
    account = product.account(organizer)
    start = local_time(2, 15)
    item = CalendarItem(
        account=account,
        folder=account.calendar,
        subject=SUBJECT,
        start=start,
        end=start + timedelta(minutes=30),
        required_attendees=[Attendee(mailbox=Mailbox(email_address=email(who))) for who in attendees],
    )
    item.save(send_meeting_invitations=SEND)
    return item


def mailbox_states(product: Product) -> dict[str, ingest_pb2.MailboxStatus]:
    with product.channel("ews-ingest") as channel:
        reply = ingest_pb2_grpc.IngestServiceStub(channel).ListMailboxes(ingest_pb2.ListMailboxesRequest(), timeout=10)
    return {m.mailbox: m for m in reply.mailboxes}


def engine_events(product: Product, who: str) -> list[Any]:
    """What the engine decided `who`'s TrueConf calendar shows (SyncService.ListEvents, as tcs-gateway reads it)."""
    with product.channel("sync-engine") as channel:
        request = sync_pb2.ListEventsRequest(user=email(who))
        now = datetime.now(UTC)
        getattr(request, "from").FromDatetime(now - timedelta(days=1))
        request.to.FromDatetime(now + timedelta(days=30))
        return list(sync_pb2_grpc.SyncServiceStub(channel).ListEvents(request, timeout=10).occurrences)


def without(product: Product, who: str) -> bool:
    return not product.events(who, SUBJECT)


def test_no_seat_no_calendar_and_seats_end_with_their_lease_while_licensing_is_stopped() -> None:
    # five configured users (the demo people, in this order), four seats: erin, listed last, has none
    with running_product(
        "--license", "standard", "--seats", "4", env={"LICENSING_SEAT_LEASE_SECONDS": str(LEASE_SECONDS)}
    ) as product:
        states = wait_until(
            lambda: (lambda s: s if email("erin") in s and len(s) == 5 else None)(mailbox_states(product)),
            120,
            "the five configured mailboxes known to ews-ingest",
        )
        wait_until(
            lambda: mailbox_states(product)[email("erin")].state == ingest_pb2.MAILBOX_STATE_NO_SEAT,
            120,
            "erin without a seat",
        )
        assert all(states[email(w)].configured for w in ("alice", "bob", "carol", "dave", "erin"))

        team_meeting(product, "alice", ["bob", "carol", "dave", "erin"])
        for who in ("alice", "bob", "carol", "dave"):
            product.wait_events(who, SUBJECT, timeout=120)
        # erin is invited, but nothing of the meeting reaches her TrueConf calendar (the engine decided it for
        # all five at once, so it would be there by now)
        assert without(product, "erin") and engine_events(product, "erin") == []

        # a seat frees (a license with one more account): erin's calendar comes in
        register(product, 5)
        product.wait_events("erin", SUBJECT, timeout=120)

        # licensing stops answering: once the 15 s leases end, ews-ingest stops every mailbox and TrueConf
        # calendars are emptied; when licensing answers again everything comes back
        licensing = int(product.ready["processes"]["licensing"])
        os.kill(licensing, signal.SIGSTOP)
        try:
            everyone = ("alice", "bob", "carol", "dave", "erin")
            wait_until(
                lambda: all(without(product, who) for who in everyone),
                120,
                "every TrueConf calendar emptied once the seat leases ended",
            )
            stopped = mailbox_states(product)
            assert all(stopped[email(who)].state == ingest_pb2.MAILBOX_STATE_NO_SEAT for who in everyone), stopped
            assert all("seat lease ended" in stopped[email(who)].last_error for who in everyone)
        finally:
            os.kill(licensing, signal.SIGCONT)
        for who in ("alice", "bob", "carol", "dave", "erin"):
            product.wait_events(who, SUBJECT, timeout=120)
        resumed = mailbox_states(product)
        assert all(resumed[email(w)].state != ingest_pb2.MAILBOX_STATE_NO_SEAT for w in resumed)

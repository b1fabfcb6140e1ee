"""Meeting messages through transport: an attendee's copy appears after the organizer's call has returned, messages
to one attendee may arrive out of order, and an out-of-date one is not applied (transport.py)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest
from exchange_emulator_support import SERVICE_PASSWORD, SERVICE_USER
from exchangelib import IMPERSONATION, NTLM, UTC, Account, Attendee, CalendarItem, Configuration, Credentials
from exchangelib import Mailbox as EwsMailbox

from exchange_emulator.testing import DEFAULT_CONFIG, EmulatorHandle, running_emulator
from exchange_emulator.transport import Transport
from tccal_sandbox.testing import wait_for


@pytest.fixture(scope="module")
def slow_mail() -> Iterator[EmulatorHandle]:
    config = {**DEFAULT_CONFIG, "meeting_delivery": {"delay_ms": 700, "jitter_ms": 0}}
    with running_emulator(config) as emu:
        yield emu


@pytest.fixture(scope="module")
def jittery_mail() -> Iterator[EmulatorHandle]:
    config = {**DEFAULT_CONFIG, "meeting_delivery": {"delay_ms": 0, "jitter_ms": 600}}
    with running_emulator(config) as emu:
        yield emu


def _account(emu: EmulatorHandle, email: str) -> Account:
    config = Configuration(
        service_endpoint=emu.ews_url, credentials=Credentials(SERVICE_USER, SERVICE_PASSWORD), auth_type=NTLM
    )
    return Account(email, config=config, access_type=IMPERSONATION, autodiscover=False)


def _meeting(organizer: Account, attendee: str, subject: str) -> CalendarItem:
    start = dt.datetime(2031, 3, 4, 10, tzinfo=UTC)
    item = CalendarItem(
        account=organizer,
        folder=organizer.calendar,
        subject=subject,
        start=start,
        end=start + dt.timedelta(hours=1),
        required_attendees=[Attendee(mailbox=EwsMailbox(email_address=attendee))],
    )
    item.save(send_meeting_invitations="SendToAllAndSaveCopy")
    return item


def _subjects(emu: EmulatorHandle, mailbox: str) -> list[str]:
    return [i["subject"] for i in emu.admin.items(mailbox)]


def test_the_attendee_copy_arrives_after_the_call_returns(slow_mail: EmulatorHandle) -> None:
    org, att = (slow_mail.admin.add_mailbox(f"{n}@example.com")["email"] for n in ("org1", "att1"))
    organizer = _account(slow_mail, org)
    sent = time.monotonic()
    item = _meeting(organizer, att, "Travels through transport")
    assert _subjects(slow_mail, att) == []  # the organizer's CreateItem has returned; the request has not arrived
    assert slow_mail.admin.info()["meeting_messages"]["in_transit"] == 1
    wait_for(lambda: _subjects(slow_mail, att) == ["Travels through transport"], what="the meeting request")
    assert time.monotonic() - sent >= 0.7
    # the attendee's answer travels back the same way
    copy = next(iter(_account(slow_mail, att).calendar.all()))
    copy.accept(message_disposition="SendAndSaveCopy")
    responses = lambda: [a["response"] for a in slow_mail.admin.items(org)[0]["attendees"]]  # noqa: E731
    assert responses() == ["NoResponseReceived"]
    wait_for(lambda: responses() == ["Accept"], what="the response at the organizer")
    # and so does the cancellation
    item.cancel()
    wait_for(lambda: slow_mail.admin.items(att)[0]["is_cancelled"], what="the cancellation")


def test_out_of_order_messages_leave_the_newest_state(jittery_mail: EmulatorHandle) -> None:
    org = jittery_mail.admin.add_mailbox("org2@example.com")["email"]
    attendees = [jittery_mail.admin.add_mailbox(f"att2-{n}@example.com")["email"] for n in range(6)]
    organizer = _account(jittery_mail, org)
    for n, attendee in enumerate(attendees):
        item = _meeting(organizer, attendee, f"first {n}")
        item.subject = f"second {n}"
        item.save(update_fields=["subject"], send_meeting_invitations="SendToAllAndSaveCopy")
    for n, attendee in enumerate(attendees):
        wait_for(lambda a=attendee, k=n: _subjects(jittery_mail, a) == [f"second {k}"], what=f"attendee {n}")
    # an overtaken request may still be on its way: it arrives out of date and changes nothing
    messages = wait_for(
        lambda: (m := jittery_mail.admin.info()["meeting_messages"])["in_transit"] == 0 and m, what="empty queues"
    )
    assert all(_subjects(jittery_mail, a) == [f"second {n}"] for n, a in enumerate(attendees))
    assert messages["delivered"] + messages["out_of_date"] == 12


def test_an_older_message_arriving_later_is_out_of_date() -> None:
    class Arrivals:
        def __init__(self, *delays_ms: float) -> None:
            self.delays = list(delays_ms)

        def uniform(self, low: float, high: float) -> float:
            return self.delays.pop(0)

    transport = Transport(0, 1000)
    transport._random = Arrivals(900, 100)  # type: ignore[assignment]  # the request is slower than the update
    applied: list[str] = []
    transport.send(("att@example.com", "uid-1"), lambda: applied.append("request"), whole=True)
    transport.send(("att@example.com", "uid-1"), lambda: applied.append("update"), whole=True)
    assert transport.in_transit == 2
    assert transport.flush() == 2
    assert applied == ["update"] and transport.out_of_date == 1


def test_a_partial_message_is_never_overtaken_by_an_older_one() -> None:
    class Arrivals:
        def uniform(self, low: float, high: float) -> float:
            return 900.0 if not applied_order else 0.0

    applied_order: list[str] = []
    transport = Transport(0, 1000)
    transport._random = Arrivals()  # type: ignore[assignment]
    # the exception's update (whole series) is slow; the occurrence cancelled after it must wait for it
    transport.send(("att@example.com", "uid-2"), lambda: applied_order.append("series with exception"), whole=True)
    applied_order.append("sent")
    transport.send(("att@example.com", "uid-2"), lambda: applied_order.append("occurrence cancelled"))
    transport.flush()
    assert applied_order == ["sent", "series with exception", "occurrence cancelled"]

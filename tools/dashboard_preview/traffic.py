"""Meetings written into a running sandbox's Exchange through EWS with exchangelib, as Outlook writes them (the
sandbox's demo helpers: `tccal_sandbox.demo`), so that every stage of the connector has work to show: a new meeting,
then its move to another time, and every third one cancelled."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tccal_sandbox.demo import DEMO_ZONE, Ews

PEOPLE = ("alice", "bob", "carol", "dave", "erin")


@dataclass
class Traffic:
    """Meetings written so far: created, moved and cancelled."""

    created: int = 0
    moved: int = 0
    cancelled: int = 0


def ews_of(ready: dict[str, Any]) -> Ews:
    """The sandbox's Exchange, reached with its impersonating service account (ready-file `exchange`)."""
    account = ready["exchange"]["service_account"]
    return Ews(ready["exchange"]["ews_url"], account["username"], account["password"])


def write_meetings(
    ready: dict[str, Any],
    *,
    duration_s: float,
    pause_s: float = 2.0,
    progress: Callable[[Traffic], None] | None = None,
) -> Traffic:
    """For `duration_s` seconds: each round one person organizes a meeting with the next person, moves it by an
    hour, and cancels every third one; `pause_s` between rounds. Returns what was written."""
    from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone

    ews = ews_of(ready)
    domain = ready["exchange"]["mailboxes"][0].split("@", 1)[1]
    accounts = {name: ews.account(f"{name}@{domain}") for name in PEOPLE}
    zone = EWSTimeZone(DEMO_ZONE)
    traffic = Traffic()
    deadline = time.monotonic() + duration_s
    round_number = 0
    while time.monotonic() < deadline:
        organizer = accounts[PEOPLE[round_number % len(PEOPLE)]]
        attendee = accounts[PEOPLE[(round_number + 1) % len(PEOPLE)]]
        day = datetime.now(zone).date() + timedelta(days=1 + round_number % 20)
        start = EWSDateTime(day.year, day.month, day.day, 8 + round_number % 9, 0, tzinfo=zone)
        item = CalendarItem(
            account=organizer,
            folder=organizer.calendar,
            subject=f"Dashboard run meeting {round_number + 1}",
            start=start,
            end=start + timedelta(minutes=30),
            required_attendees=[attendee.primary_smtp_address],
        )
        item.save(send_meeting_invitations="SendToAllAndSaveCopy")
        traffic.created += 1
        time.sleep(pause_s / 2)
        item.start, item.end = item.start + timedelta(hours=1), item.end + timedelta(hours=1)
        item.save(update_fields=["start", "end"], send_meeting_invitations="SendToAllAndSaveCopy")
        traffic.moved += 1
        if round_number % 3 == 2:
            item.cancel()
            traffic.cancelled += 1
        round_number += 1
        if progress is not None:
            progress(traffic)
        time.sleep(pause_s / 2)
    return traffic

"""GetItem asks for FETCH_FIELDS only (mailbox_sync.py): the events normalized from such answers must equal those
normalized from answers with every property, for items that use every field normalization reads — attendees and
their answers, an HTML body, the TrueConf marker property, private sensitivity, all-day, a time zone, and a series
with a modified and a deleted occurrence (read through the exchange emulator, which answers the shape it is asked)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from ews_ingest_support import Outlook, new_mailboxes, soon
from exchangelib import EWSDateTime, EWSTimeZone, HTMLBody
from exchangelib.recurrence import Recurrence, WeeklyPattern

from ews_ingest.conference_marker import MarkerParser, register_marker_property
from ews_ingest.mailbox_sync import fetch_fields
from ews_ingest.normalize import normalize
from exchange_emulator.testing import EmulatorHandle
from tccal.config.schema import ConferenceDefaults
from tccal_sandbox.testing import wait_for_async

MARKER = MarkerParser(frozenset({"video.example.com"}), ConferenceDefaults.model_validate({}))
BERLIN = EWSTimeZone("Europe/Berlin")


def _normalized(account: Any, only_fields: list[str] | None) -> dict[str, Any]:
    """Every calendar item of `account` fetched with `only_fields` (None: every property), normalized by item id."""
    ids = [(item.id, item.changekey) for item in account.calendar.all().only("id", "changekey")]
    items = list(account.fetch(ids=ids, folder=account.calendar, only_fields=only_fields))
    occurrences = [
        (occurrence.id, occurrence.changekey)
        for item in items
        if item.type == "RecurringMaster"
        for occurrence in item.modified_occurrences or []
    ]
    exceptions = {
        item.id: item for item in account.fetch(ids=occurrences, folder=account.calendar, only_fields=only_fields)
    }
    return {item.id: normalize(item, marker=MARKER, exceptions=exceptions) for item in items}


async def test_the_fetched_properties_normalize_as_every_property_does(emu: EmulatorHandle, outlook: Outlook) -> None:
    register_marker_property()
    org, bob, eve = new_mailboxes(emu, "fetch-org", "fetch-bob", "fetch-eve")
    marker = json.dumps({"mode": "S|L", "access": "private", "podiums": 3})
    await outlook.do(
        outlook.meeting,
        org,
        "Planning",
        attendees=[bob],
        optional=[eve],
        start=soon(days=5),
        location="Room 4",
        body=HTMLBody("<html><body><p>Agenda: <b>budget</b></p></body></html>"),
        sensitivity="Private",
        trueconf_meeting_marker=marker,
    )
    day = dt.date.today() + dt.timedelta(days=9)
    await outlook.do(
        outlook.meeting,
        org,
        "Offsite",
        start=EWSDateTime(day.year, day.month, day.day, 0, 0, tzinfo=BERLIN),
        minutes=24 * 60,
        is_all_day=True,
    )
    first = dt.date.today() + dt.timedelta(days=7)
    series = await outlook.do(
        outlook.meeting,
        org,
        "Weekly sync",
        attendees=[bob],
        start=EWSDateTime(first.year, first.month, first.day, 9, 0, tzinfo=BERLIN),
        recurrence=Recurrence(pattern=WeeklyPattern(interval=1, weekdays=[first.isoweekday()]), start=first, number=6),
    )

    def edit() -> None:
        second = series.occurrence(2)
        second.refresh()
        second.subject = "Weekly sync (special)"
        second.start = second.start + dt.timedelta(hours=2)
        second.end = second.end + dt.timedelta(hours=2)
        second.save(update_fields=["subject", "start", "end"], send_meeting_invitations="SendToAllAndSaveCopy")
        fourth = series.occurrence(4)
        fourth.refresh()
        fourth.delete(send_meeting_cancellations="SendToAllAndSaveCopy")

    await outlook.do(edit)

    def bob_has_everything(account: Any) -> bool:
        events = _normalized(account, None).values()
        weekly = [event for event in events if event.subject == "Weekly sync"]
        return sorted(event.subject for event in events) == ["Planning", "Weekly sync"] and (
            len(weekly[0].modified_occurrences) == 1 and len(weekly[0].deleted_occurrences) == 1
        )

    # Exchange delivers the invitations and the series' updates to bob's calendar a little later (the emulator's
    # late delivery): compare his copies once all of them are there, so both reads see the same calendar.
    bob_account = outlook.account(bob)
    await wait_for_async(
        lambda: outlook.do(bob_has_everything, bob_account), timeout=120, what="bob's copies of the three meetings"
    )
    by_mailbox = {}
    for mailbox in (org, bob):  # the organizer's copies and an attendee's
        account = outlook.account(mailbox)
        fields = fetch_fields(account.version)
        assert "mime_content" not in fields and "trueconf_meeting_marker" in fields
        every = await outlook.do(_normalized, account, None)
        fetched = await outlook.do(_normalized, account, fields)
        assert fetched == every
        by_mailbox[mailbox] = list(fetched.values())
    # the comparison saw every field in use: the organizer's copies hold all of them
    events = by_mailbox[org]
    assert sorted(event.subject for event in events) == ["Offsite", "Planning", "Weekly sync"]
    (planning,) = [event for event in events if event.subject == "Planning"]
    assert planning.body == "Agenda: budget" and planning.HasField("conference")
    assert {a.person.email for a in planning.attendees} >= {bob, eve}
    (offsite,) = [event for event in events if event.subject == "Offsite"]
    assert offsite.all_day
    (weekly,) = [event for event in events if event.subject == "Weekly sync"]
    assert len(weekly.modified_occurrences) == 1 and len(weekly.deleted_occurrences) == 1
    assert weekly.modified_occurrences[0].subject == "Weekly sync (special)"
    assert weekly.time_zone == "Europe/Berlin"
    assert by_mailbox[bob]  # the attendee's copies were compared too

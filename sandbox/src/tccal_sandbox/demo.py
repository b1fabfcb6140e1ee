"""Demo meetings for the sandbox, written through EWS with exchangelib the way Outlook writes them.

One plain meeting, one with a TrueConf conference (the add-in's TrueConfMeeting property), a weekly series with
an edited occurrence, a cancelled meeting, and one made by a delegate on the owner's behalf.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

DEMO_ZONE = "Europe/Berlin"


@dataclass(frozen=True)
class Ews:
    url: str
    username: str
    password: str

    def account(self, mailbox: str) -> Any:
        from exchangelib import IMPERSONATION, NTLM, Account, Configuration, Credentials

        config = Configuration(
            service_endpoint=self.url, credentials=Credentials(self.username, self.password), auth_type=NTLM
        )
        return Account(primary_smtp_address=mailbox, config=config, autodiscover=False, access_type=IMPERSONATION)


def shared_calendar(delegate: Any, owner: str) -> Any:
    """The owner's calendar folder as a delegate opens it (Outlook: File > Open > Other User's Folder)."""
    from exchangelib.folders import Calendar, DistinguishedFolderId, SingleFolderQuerySet
    from exchangelib.properties import Mailbox

    folder = SingleFolderQuerySet(
        account=delegate,
        folder=Calendar(
            root=delegate.root,
            _distinguished_id=DistinguishedFolderId(id="calendar", mailbox=Mailbox(email_address=owner)),
        ),
    ).resolve()
    if not isinstance(folder, Calendar):
        raise PermissionError(f"{delegate.primary_smtp_address} cannot open the calendar of {owner}: {folder}")
    return folder


def _at(day: int, hour: int, minute: int = 0) -> Any:
    from exchangelib import EWSDateTime, EWSTimeZone

    zone = EWSTimeZone(DEMO_ZONE)
    today = datetime.now(zone).date() + timedelta(days=day)
    return EWSDateTime(today.year, today.month, today.day, hour, minute, tzinfo=zone)


def seed_demo(ews: Ews, domain: str) -> list[str]:
    """Create the demo meetings; return their subjects."""
    from exchangelib import CalendarItem
    from exchangelib.recurrence import Recurrence, WeeklyPattern

    from ews_ingest.conference_marker import MARKER_FIELD, register_marker_property

    register_marker_property()
    alice, bob, carol, dave, erin = (ews.account(f"{n}@{domain}") for n in ("alice", "bob", "carol", "dave", "erin"))
    send = "SendToAllAndSaveCopy"
    made: list[str] = []

    plain = CalendarItem(
        account=alice,
        folder=alice.calendar,
        subject="Marketing department meeting",
        body="Discussion of the work done last week.",
        location="Room 4.12",
        start=_at(1, 9),
        end=_at(1, 9, 30),
        required_attendees=[bob.primary_smtp_address],
        optional_attendees=[carol.primary_smtp_address],
    )
    plain.save(send_meeting_invitations=send)
    made.append(plain.subject)

    conference = CalendarItem(
        account=bob,
        folder=bob.calendar,
        subject="Quarterly review (TrueConf)",
        body="Join from the TrueConf app.",
        start=_at(1, 11),
        end=_at(1, 12),
        required_attendees=[alice.primary_smtp_address, erin.primary_smtp_address],
    )
    setattr(
        conference,
        MARKER_FIELD,
        json.dumps({"access": "private", "mode": "S|L Auto", "pin": "879651", "muteMic": True, "muteCamera": True}),
    )
    conference.save(send_meeting_invitations=send)
    made.append(conference.subject)

    first_monday = _at((7 - _at(0, 0).weekday()) % 7 or 7, 10)
    weekly = CalendarItem(
        account=carol,
        folder=carol.calendar,
        subject="Weekly planning",
        start=first_monday,
        end=first_monday + timedelta(minutes=45),
        required_attendees=[alice.primary_smtp_address],
        recurrence=Recurrence(
            pattern=WeeklyPattern(interval=1, weekdays=[1], first_day_of_week=1), start=first_monday.date(), number=8
        ),
    )
    weekly.save(send_meeting_invitations=send)
    made.append(weekly.subject)
    second = weekly.occurrence(2)
    second.refresh()
    second.start, second.end = second.start + timedelta(hours=2), second.end + timedelta(hours=2)
    second.save(update_fields=["start", "end"], send_meeting_invitations="SendToAllAndSaveCopy")

    cancelled = CalendarItem(
        account=alice,
        folder=alice.calendar,
        subject="Budget sync",
        start=_at(2, 15),
        end=_at(2, 15, 30),
        required_attendees=[bob.primary_smtp_address, erin.primary_smtp_address],
    )
    cancelled.save(send_meeting_invitations=send)
    cancelled.cancel()
    made.append(cancelled.subject)

    owner_calendar = shared_calendar(dave, alice.primary_smtp_address)
    delegated = CalendarItem(
        account=dave,
        folder=owner_calendar,
        subject="1:1 with Alice (booked by Dave)",
        start=_at(3, 14),
        end=_at(3, 14, 30),
        required_attendees=[erin.primary_smtp_address],
    )
    delegated.save(send_meeting_invitations=send)
    made.append(delegated.subject)
    return made

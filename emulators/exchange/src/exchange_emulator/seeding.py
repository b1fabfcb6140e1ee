"""Bulk seeding of mailboxes and meetings straight into the store (admin API), for load tests and benchmarks."""

from __future__ import annotations

import datetime as dt
import gc
import random
from typing import Any

from .calendar import Calendar
from .model import Attendee, CalendarItem, Mailbox, Store, utcnow
from .recurrence import Recurrence
from .xmlutil import UTC

SEED_KEYS = {
    "mailboxes",
    "meetings_per_mailbox",
    "recurring_fraction",
    "attendees_per_meeting",
    "domain",
    "prefix",
    "start",
    "days",
    "time_zone",
    "seed",
}


def seed(store: Store, cal: Calendar, spec: dict[str, Any]) -> dict[str, Any]:
    unknown = set(spec) - SEED_KEYS
    if unknown:
        raise ValueError(f"unknown seed fields {sorted(unknown)}; expected some of {sorted(SEED_KEYS)}")
    n_mbx = int(spec.get("mailboxes", 0))
    per = int(spec.get("meetings_per_mailbox", 0))
    fraction = float(spec.get("recurring_fraction", 0.0))
    n_att = int(spec.get("attendees_per_meeting", 2))
    domain = str(spec.get("domain", "example.com"))
    prefix = str(spec.get("prefix", "user"))
    days = int(spec.get("days", 28))
    tz = str(spec.get("time_zone", "UTC"))
    if n_mbx < 1 or per < 0 or not 0.0 <= fraction <= 1.0 or n_att < 0 or days < 1:
        raise ValueError(
            f"invalid seed spec {spec!r}: mailboxes >= 1, meetings_per_mailbox >= 0, "
            f"0 <= recurring_fraction <= 1, attendees_per_meeting >= 0, days >= 1"
        )
    rnd = random.Random(spec.get("seed", 1))
    start_text = spec.get("start")
    base = (
        dt.datetime.fromisoformat(start_text).astimezone(UTC)
        if start_text
        else utcnow().replace(hour=0, minute=0, second=0)
    )
    # Cyclic GC passes over a growing heap dominate bulk creation; pause it and freeze the result afterwards.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _seed(store, cal, rnd, base, n_mbx, per, fraction, n_att, domain, prefix, days, tz)
    finally:
        if gc_was_enabled:
            gc.enable()
        gc.freeze()


def _seed(
    store: Store,
    cal: Calendar,
    rnd: random.Random,
    base: dt.datetime,
    n_mbx: int,
    per: int,
    fraction: float,
    n_att: int,
    domain: str,
    prefix: str,
    days: int,
    tz: str,
) -> dict[str, Any]:
    mailboxes: list[Mailbox] = [store.add_mailbox(f"{prefix}{i:05d}@{domain}") for i in range(n_mbx)]
    n_att = min(n_att, n_mbx - 1)
    created = copies = 0
    for idx, org in enumerate(mailboxes):
        for k in range(per):
            start = base + dt.timedelta(
                days=rnd.randrange(days), hours=8 + rnd.randrange(9), minutes=30 * rnd.randrange(2)
            )
            item = CalendarItem(
                no=store.next_item_no(),
                mailbox=org,
                uid="",
                start=start,
                end=start + dt.timedelta(minutes=30 * (1 + rnd.randrange(4))),
                start_tz=tz,
                end_tz=tz,
                subject=f"Seeded meeting {k + 1} of {org.email}",
                body=f"Agenda {k + 1}",
                location=f"Room {rnd.randrange(100)}",
            )
            if rnd.random() < fraction:
                item.recurrence = Recurrence(
                    "WeeklyRecurrence",
                    "NumberedRecurrence",
                    start.astimezone(UTC).date(),
                    interval=1,
                    days_of_week=[start.strftime("%A")],
                    first_day_of_week="Monday",
                    number=10,
                )
            for j in range(1, n_att + 1):
                other = mailboxes[(idx + j) % n_mbx]
                item.required.append(Attendee(other.email, other.display_name))
            cal.create(org, item, "SendToAllAndSaveCopy" if n_att else "SendToNone", org.display_name)
            created += 1
            copies += n_att
    return {
        "mailboxes": n_mbx,
        "meetings": created,
        "attendee_copies": copies,
        "first_mailbox": mailboxes[0].email,
        "last_mailbox": mailboxes[-1].email,
    }

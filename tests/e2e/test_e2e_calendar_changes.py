"""A reconnecting TrueConf Server gets only what changed (docs/bridge-protocol.md §6.2 "Changes since a sequence"),
end to end: Outlook (EWS) in, the real sync-engine's history (`shown` seqs, the outbox's removals), tcs-gateway,
the TrueConf emulator out.

dave holds his calendar in TrueConf; TrueConf goes away; in Outlook dave renames one appointment, deletes another
and makes a new one; TrueConf comes back refusing pushes for a while, so only its getCalendarList can bring the
changes: it asks with sinceSeq and incremental and receives exactly the two changed events and the one removal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from e2e_support import Product, email, http_json, local_time, wait_until
from exchangelib import CalendarItem

from trueconf.calendar.v1 import sync_pb2, sync_pb2_grpc

DAVE = "dave"


def _appointment(product: Product, subject: str, days: int) -> Any:
    account = product.account(DAVE)
    start = local_time(days, 10)
    item = CalendarItem(
        account=account, folder=account.calendar, subject=subject, start=start, end=start + timedelta(minutes=30)
    )
    item.save()
    item.refresh()
    return item


def _engine_subjects(product: Product) -> set[str]:
    """dave's calendar as the sync-engine shows it (SyncService.ListEvents, as the administrator)."""
    now = datetime.now(UTC)
    request = sync_pb2.ListEventsRequest(user=email(DAVE))
    getattr(request, "from").FromDatetime(now - timedelta(days=1))
    request.to.FromDatetime(now + timedelta(days=60))
    with product.channel("sync-engine") as channel:
        response = sync_pb2_grpc.SyncServiceStub(channel).ListEvents(request, timeout=10)
    return {occurrence.subject for occurrence in response.occurrences}


def test_6_2_a_reconnecting_trueconf_gets_only_the_changes_since_its_seq(product: Product) -> None:
    admin = product.ready["trueconf"]["admin_url"]
    inspect = product.ready["trueconf"]["inspect_url"]
    _appointment(product, "Changes: kept", 11)  # unchanged: not in the answer
    renamed = _appointment(product, "Changes: to rename", 12)
    deleted = _appointment(product, "Changes: to delete", 13)
    for subject in ("Changes: kept", "Changes: to rename", "Changes: to delete"):
        product.wait_events(DAVE, subject)
    before = http_json(f"{inspect}/bridge")["calendar_lists"]

    http_json(f"{admin}/bridge/disconnect", "POST", {})
    try:
        renamed.subject = "Changes: renamed"
        renamed.save()
        deleted.delete()
        _appointment(product, "Changes: new", 14)
        wait_until(
            lambda: (
                (lambda found: found >= {"Changes: renamed", "Changes: new"} and "Changes: to delete" not in found)(
                    _engine_subjects(product)
                )
                or None
            ),
            60,
            "dave's three changes in the sync-engine",
        )
        http_json(f"{admin}/bridge/acks", "PUT", {"mode": "refuse"})
    finally:
        http_json(f"{admin}/bridge/connect", "POST", {})

    def listed_again() -> dict[str, Any] | None:
        lists: dict[str, Any] = http_json(f"{inspect}/bridge")["calendar_lists"]
        return lists if lists["incremental_events"] > before["incremental_events"] else None

    try:
        lists = wait_until(listed_again, 60, "TrueConf's incremental list of dave's calendar")
    finally:
        http_json(f"{admin}/bridge/acks", "PUT", {"mode": "normal"})
    assert lists["incremental_events"] - before["incremental_events"] == 2  # renamed, new
    assert lists["incremental_removed"] - before["incremental_removed"] == 1  # deleted
    assert lists["incremental_refused"] == before["incremental_refused"]
    assert lists["whole_history"] == before["whole_history"]
    subjects = {event["subject"] for event in product.calendar(DAVE)}
    assert {"Changes: kept", "Changes: renamed", "Changes: new"} <= subjects
    assert not {"Changes: to rename", "Changes: to delete"} & subjects

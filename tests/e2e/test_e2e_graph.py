"""Guide §4 "Working with the calendar" for Exchange Online mailboxes, end to end: Microsoft Graph in (the Graph
emulator, written through Graph's REST API as Outlook on the web would), TrueConf apps (emulator) out.

The sandbox runs with --graph: a hybrid organisation, alice … erin on Exchange Server (EWS) and frank and grace in
Exchange Online (Graph), all on TrueConf Server. Each test writes only through Graph (or EWS for the on-premises
side) and checks only what the TrueConf emulator holds, as tests/e2e/test_e2e_calendar.py does for EWS.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from e2e_support import (
    SEND,
    GraphOutlook,
    Product,
    email,
    graph_attendees,
    graph_datetime,
    graph_time,
    local_time,
    running_product,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from tccal.metric_names import EXPORTED
from trueconf.calendar.v1 import common_pb2, sync_pb2, sync_pb2_grpc

#: The add-in's TrueConfMeeting property as Graph names it (README.md publishes the property set GUID).
MARKER_PROPERTY = "String {7f3a2a5e-44b4-4bd4-9f5e-2b8c7c8e0a11} Name TrueConfMeeting"


@pytest.fixture(scope="module")
def hybrid() -> Iterator[Product]:
    """The sandbox with --graph (its default license then is Enterprise: two providers)."""
    with running_product("--graph") as running:
        yield running


@pytest.fixture(scope="module")
def outlook(hybrid: Product) -> GraphOutlook:
    return GraphOutlook(hybrid.ready["graph"])


def graph_meeting(
    outlook: GraphOutlook,
    organizer: str,
    subject: str,
    *,
    days: int = 1,
    hour: int = 9,
    minutes: int = 30,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    marker: dict[str, Any] | None = None,
    location: str | None = None,
    body: str | None = None,
) -> dict[str, Any]:
    start = graph_time(days, hour)
    event: dict[str, Any] = {
        "subject": subject,
        "start": graph_datetime(start),
        "end": graph_datetime(start + timedelta(minutes=minutes)),
        "attendees": graph_attendees(required, optional),
    }
    if location is not None:
        event["location"] = {"displayName": location}
    if body is not None:
        event["body"] = {"contentType": "text", "content": body}
    if marker is not None:
        event["singleValueExtendedProperties"] = [{"id": MARKER_PROPERTY, "value": json.dumps(marker)}]
    return outlook.create(organizer, event)


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def invited(product: Product, conference_id: str) -> set[str]:
    conference = product.conference(conference_id) or {"invitations": []}
    return {str(i["id"]).split("@")[0] for i in conference["invitations"]}


def test_graph_sandbox_runs_graph_ingest_with_an_enterprise_license(hybrid: Product) -> None:
    graph = hybrid.ready["graph"]
    assert graph["mailboxes"] == [email("frank"), email("grace")]
    assert "graph-ingest" in hybrid.ready["services"] and "graph-emulator" in hybrid.ready["processes"]
    assert hybrid.ready["license"]["tier"] == "enterprise"
    assert "exchange" in hybrid.ready, "the EWS side stays"


def test_graph_ingest_exports_the_metric_names_the_rules_may_use(hybrid: Product) -> None:
    """graph-ingest's /metrics holds its names of tccal.metric_names (the sandbox has no notificationUrl, so the
    notification counters and throttled waits are not provoked) and nothing of its own the list does not name."""

    def names() -> set[str] | None:
        url = f"{hybrid.ready['services']['graph-ingest']['http']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        found = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
        return found if "graph_ingest_delta_rounds_total" in found else None

    exported = wait_until(names, 60, "a delta round counted by graph-ingest")
    event_driven = {
        "graph_ingest_notifications_total",
        "graph_ingest_throttled_waits_total",
        "graph_ingest_throttled_wait_seconds_total",
    }
    ours = {name for name, (_, owner) in EXPORTED.items() if owner == "graph-ingest"}
    assert ours - event_driven <= exported
    assert {name for name in exported if name.startswith("graph_ingest_")} <= ours


def test_graph_4_1_plain_meeting_is_grey_for_cloud_and_on_premises_attendees(
    hybrid: Product, outlook: GraphOutlook
) -> None:
    start = graph_time(1, 9)
    graph_meeting(
        outlook,
        "frank",
        "Cloud marketing meeting",
        required=("grace",),
        optional=("alice",),
        body="Discussion of the work done last week.",
        location="Room 4.12",
    )
    for who in ("frank", "grace", "alice"):
        (event,) = hybrid.wait_events(who, "Cloud marketing meeting")
        assert event["conference"] is None, "no conference: grey"
        assert event["organizer"] == email("frank")
        assert instant(event["start"]) == start and instant(event["end"]) == start + timedelta(minutes=30)
        assert event["cancelled"] is False
    roles = {a["email"]: a["role"] for a in hybrid.events("grace", "Cloud marketing meeting")[0]["attendees"]}
    assert roles[email("grace")] == "required" and roles[email("alice")] == "optional"
    assert hybrid.events("erin", "Cloud marketing meeting") == [], "not invited: not shown"


def test_graph_hybrid_on_premises_organizer_invites_a_cloud_attendee(hybrid: Product) -> None:
    from exchangelib import CalendarItem
    from exchangelib.properties import Attendee, Mailbox

    account = hybrid.account("bob")
    start = local_time(2, 11)
    CalendarItem(
        account=account,
        folder=account.calendar,
        subject="On-premises planning",
        start=start,
        end=start + timedelta(minutes=45),
        required_attendees=[Attendee(mailbox=Mailbox(email_address=email("frank")))],
    ).save(send_meeting_invitations=SEND)
    (event,) = hybrid.wait_events("frank", "On-premises planning")
    assert event["organizer"] == email("bob") and instant(event["start"]) == start
    hybrid.wait_events("bob", "On-premises planning")


def test_graph_4_1_1_keyword_trueconf_creates_a_conference_inviting_the_attendees(
    hybrid: Product, outlook: GraphOutlook
) -> None:
    created = graph_meeting(outlook, "grace", "Cloud standup", days=3, required=("frank", "bob"), location="@trueconf")
    (event,) = hybrid.wait_events("frank", "Cloud standup", lambda found: found[0]["conference"] is not None)
    link = event["conference"]
    assert link["url"] == f"https://video.sandbox.test/c/{link['id']}", "turquoise: Join link"
    conference = wait_until(lambda: hybrid.conference(link["id"]), 30, "conference")
    assert conference["mode"] == "S|L Auto" and conference["access"] == "private"
    assert "grace" in conference["owner"]
    wait_until(lambda: {"frank", "bob"} <= invited(hybrid, link["id"]), 30, "frank and bob invited")
    (bobs,) = hybrid.wait_events("bob", "Cloud standup", lambda found: found[0]["conference"] is not None)
    assert bobs["conference"]["id"] == link["id"], "the on-premises attendee sees the same conference"
    outlook.update("grace", created["id"], {"attendees": graph_attendees(required=("frank", "bob", "carol"))})
    wait_until(lambda: "carol" in invited(hybrid, link["id"]), 30, "carol invited after being added")
    hybrid.wait_events("carol", "Cloud standup", lambda found: found[0]["conference"] is not None)


def test_graph_4_1_1_add_in_marker_sets_the_conference_settings(hybrid: Product, outlook: GraphOutlook) -> None:
    marker = {"access": "private", "mode": "PxP", "pin": "879651", "waitingRoom": True, "recording": True}
    graph_meeting(outlook, "frank", "Cloud all on screen", days=4, required=("grace",), marker=marker)
    (event,) = hybrid.wait_events("grace", "Cloud all on screen", lambda found: found[0]["conference"] is not None)
    conference = wait_until(lambda: hybrid.conference(event["conference"]["id"]), 30, "conference")
    assert conference["mode"] == "PxP" and conference["pin"] == "879651"
    assert conference["waiting_room_enabled"] is True and conference["recording_enabled"] is True
    assert "frank" in conference["owner"]


def test_graph_4_2_1_reschedule_moves_event_and_conference_schedule(hybrid: Product, outlook: GraphOutlook) -> None:
    created = graph_meeting(
        outlook, "frank", "Cloud design review", days=5, hour=10, required=("grace", "carol"), marker={"mode": "S|L"}
    )
    (event,) = hybrid.wait_events("grace", "Cloud design review", lambda found: found[0]["conference"] is not None)
    moved = graph_time(6, 12)
    outlook.update(
        "frank",
        created["id"],
        {"start": graph_datetime(moved), "end": graph_datetime(moved + timedelta(minutes=30))},
    )
    for who in ("grace", "carol", "frank"):
        (now,) = hybrid.wait_events(who, "Cloud design review", lambda found: instant(found[0]["start"]) == moved)
        assert now["conference"]["id"] == event["conference"]["id"]

    def schedule_moved() -> bool:
        conference = hybrid.conference(event["conference"]["id"]) or {}
        return int(conference.get("schedule", {}).get("start_time", 0)) == int(moved.timestamp())

    wait_until(schedule_moved, 30, "conference schedule at the new start")


def test_graph_4_2_3_organizer_deleting_the_meeting_cancels_it_and_its_conference(
    hybrid: Product, outlook: GraphOutlook
) -> None:
    created = graph_meeting(
        outlook, "frank", "Cloud budget sync", days=7, required=("grace", "erin"), marker={"mode": "PxP"}
    )
    (event,) = hybrid.wait_events("grace", "Cloud budget sync", lambda found: found[0]["conference"] is not None)
    conference_id = event["conference"]["id"]
    outlook.delete("frank", created["id"])
    for who in ("grace", "erin"):
        hybrid.wait_events(who, "Cloud budget sync", lambda found: found[0]["cancelled"] is True)
    wait_until(lambda: hybrid.conference(conference_id) is None, 30, "the conference deleted on TrueConf Server")


def test_graph_1_3_answers_follow_and_a_decline_uninvites(hybrid: Product, outlook: GraphOutlook) -> None:
    created = graph_meeting(
        outlook, "frank", "Cloud answers", days=8, required=("grace",), optional=("bob",), marker={"mode": "S|L Auto"}
    )
    (event,) = hybrid.wait_events("frank", "Cloud answers", lambda found: found[0]["conference"] is not None)
    conference_id = event["conference"]["id"]
    wait_until(lambda: {"grace", "bob"} <= invited(hybrid, conference_id), 30, "grace and bob invited")
    outlook.external_answer("frank", created["id"], "bob", "accepted")  # bob's reply from Exchange Server
    outlook.answer("grace", outlook.copy_of("grace", created["iCalUId"])["id"], "decline")

    def answers() -> dict[str, str] | None:
        events = hybrid.events("frank", "Cloud answers")
        got = {a["email"]: a["response"] for a in events[0]["attendees"]} if events else {}
        want = {email("bob"): "accepted", email("grace"): "declined"}
        return got if all(got.get(k) == v for k, v in want.items()) else None

    got = wait_until(answers, 60, "the answers in the organizer's TrueConf calendar")
    assert got[email("frank")] == "organizer"
    wait_until(lambda: "grace" not in invited(hybrid, conference_id), 30, "grace uninvited after declining")
    assert "bob" in invited(hybrid, conference_id)
    wait_until(lambda: hybrid.events("grace", "Cloud answers") == [], 30, "gone from grace's calendar")
    (bobs,) = hybrid.events("bob", "Cloud answers")
    assert bobs["cancelled"] is False


def test_graph_4_1_private_meeting_is_busy_without_details(hybrid: Product, outlook: GraphOutlook) -> None:
    start = graph_time(9, 15)
    outlook.create(
        "grace",
        {
            "subject": "Cloud doctor appointment",
            "start": graph_datetime(start),
            "end": graph_datetime(start + timedelta(minutes=30)),
            "attendees": graph_attendees(required=("frank",)),
            "sensitivity": "private",
            "body": {"contentType": "text", "content": "confidential"},
            "location": {"displayName": "Clinic"},
        },
    )

    def private_view() -> list[dict[str, Any]]:
        return [e for e in hybrid.calendar("frank") if e.get("private") and e["organizer"] == email("grace")]

    (event,) = wait_until(private_view, 60, "the private meeting in frank's calendar")
    assert event["subject"] in (None, "") and event["attendees"] == []
    assert event["body"] in (None, "") and event["location"] in (None, "")


def test_graph_4_2_2_weekly_series_with_a_moved_and_a_deleted_occurrence(
    hybrid: Product, outlook: GraphOutlook
) -> None:
    first = graph_time(1, 10)
    first += timedelta(days=(0 - first.weekday()) % 7)  # the next Monday, 10:00 Berlin
    master = outlook.create(
        "grace",
        {
            "subject": "Cloud weekly",
            "start": graph_datetime(first),
            "end": graph_datetime(first + timedelta(minutes=45)),
            "attendees": graph_attendees(required=("frank", "carol")),
            "recurrence": {
                "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"], "firstDayOfWeek": "monday"},
                "range": {"type": "numbered", "startDate": first.date().isoformat(), "numberOfOccurrences": 4},
            },
        },
    )
    for who in ("frank", "carol"):
        hybrid.wait_events(who, "Cloud weekly", lambda found: len(found) == 4)
    window = f"startDateTime={first.date().isoformat()}T00:00:00Z&endDateTime={(first + timedelta(weeks=5)).date()}"
    instances = outlook.request("GET", f"/users/{email('grace')}/events/{master['id']}/instances?{window}")["value"]
    second, third = sorted(instances, key=lambda i: str(i["start"]["dateTime"]))[1:3]
    moved = first + timedelta(weeks=1, hours=4)
    outlook.update(
        "grace",
        second["id"],
        {"start": graph_datetime(moved), "end": graph_datetime(moved + timedelta(minutes=45))},
    )
    outlook.delete("grace", third["id"])
    expected = sorted([first, moved, first + timedelta(weeks=3)])
    for who in ("frank", "carol"):
        events = hybrid.wait_events(
            who,
            "Cloud weekly",
            lambda found: sorted(instant(e["start"]) for e in found) == expected,  # the deleted one gone, as EWS
        )
        assert all(e["organizer"] == email("grace") for e in events)
    # The engine holds the series' rule from the master graph-ingest read (not just bare instances), with the moved
    # occurrence as a modified one; the occurrences above come from its expansion, each once.
    with hybrid.channel("sync-engine") as channel:
        meeting = sync_pb2_grpc.SyncServiceStub(channel).GetMeeting(
            sync_pb2.GetMeetingRequest(uid=master["iCalUId"]), timeout=10
        )
    rule = meeting.recurrence
    assert rule.WhichOneof("pattern") == "weekly" and list(rule.weekly.days_of_week) == [common_pb2.DAY_OF_WEEK_MONDAY]
    assert (rule.start_date, rule.number_of_occurrences) == (first.date().isoformat(), 4)

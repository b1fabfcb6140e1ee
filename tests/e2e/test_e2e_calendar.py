"""Guide §4 "Working with the calendar", end to end: Outlook (EWS) in, TrueConf apps (emulator) out.

Each test writes to Exchange only through EWS with exchangelib and checks only what the TrueConf emulator holds.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from e2e_support import SEND, Product, email, local_time, wait_until
from exchangelib import CalendarItem
from exchangelib.properties import Attendee, Mailbox

from ews_ingest.conference_marker import MARKER_FIELD, register_marker_property

register_marker_property()


def meeting(
    product: Product,
    organizer: str,
    subject: str,
    *,
    days: int = 1,
    hour: int = 9,
    minutes: int = 30,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    marker: dict[str, Any] | None = None,
    **fields: Any,
) -> Any:
    account = product.account(organizer)
    start = local_time(days, hour)
    item = CalendarItem(
        account=account,
        folder=fields.pop("folder", account.calendar),
        subject=subject,
        start=start,
        end=start + timedelta(minutes=minutes),
        required_attendees=[Attendee(mailbox=Mailbox(email_address=email(w))) for w in required] or None,
        optional_attendees=[Attendee(mailbox=Mailbox(email_address=email(w))) for w in optional] or None,
        **fields,
    )
    if marker is not None:
        setattr(item, MARKER_FIELD, json.dumps(marker))
    item.save(send_meeting_invitations=SEND)
    item.refresh()  # the UID and change key Exchange gave it
    return item


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_4_1_event_scheduling_plain_meeting_is_grey_for_organizer_and_attendees(product: Product) -> None:
    item = meeting(
        product,
        "alice",
        "Marketing department meeting",
        required=("bob",),
        optional=("carol",),
        body="Discussion of the work done last week.",
        location="Room 4.12",
    )
    for who in ("alice", "bob", "carol"):
        (event,) = product.wait_events(who, "Marketing department meeting")
        assert event["conference"] is None, "no conference: grey"
        assert event["organizer"] == email("alice")
        assert instant(event["start"]) == item.start and instant(event["end"]) == item.end
        assert event["cancelled"] is False
    roles = {a["email"]: a["role"] for a in product.events("bob", "Marketing department meeting")[0]["attendees"]}
    assert roles[email("bob")] == "required" and roles[email("carol")] == "optional"
    assert product.events("erin", "Marketing department meeting") == [], "not invited: not shown"


MODES = {"Smart meeting": "S|L Auto", "Moderated role-based": "S|L", "All on screen": "PxP", "Video lecture": "OxP"}


def test_4_1_1_event_with_conference_each_mode_gets_conference_and_join_link(product: Product) -> None:
    for label, mode in MODES.items():
        meeting(
            product,
            "bob",
            f"Conference {label}",
            days=2,
            required=("alice",),
            marker={
                "access": "private",
                "mode": mode,
                "pin": "879651",
                "waitingRoom": True,
                "recording": True,
                "muteMic": True,
                "muteCamera": True,
                "maxParticipants": 30,
            },
        )
    meeting(product, "bob", "Webinar", days=2, hour=12, required=("alice",), marker={"access": "public", "mode": "OxP"})
    for label, mode in MODES.items():
        (event,) = product.wait_events("alice", f"Conference {label}", lambda found: found[0]["conference"] is not None)
        link = event["conference"]
        assert link["url"] == f"https://video.sandbox.test/c/{link['id']}", "turquoise: Join link"
        conference = wait_until(lambda cid=link["id"]: product.conference(cid), 30, f"conference of {label}")
        assert conference["mode"] == mode
        assert conference["access"] == "private"
        assert conference["pin"] == "879651"
        assert conference["waiting_room_enabled"] is True and conference["recording_enabled"] is True
        assert conference["on_join_mute_mic"] is True and conference["on_join_mute_camera"] is True
        assert "bob" in conference["owner"]
    (webinar,) = product.wait_events("alice", "Webinar", lambda found: found[0]["conference"] is not None)
    assert wait_until(lambda: product.conference(webinar["conference"]["id"]), 30, "webinar")["access"] == "public"


def test_4_1_1_keyword_trueconf_in_location_creates_a_conference_with_defaults(product: Product) -> None:
    meeting(product, "carol", "Standup", days=3, required=("bob",), location="@trueconf")
    (event,) = product.wait_events("bob", "Standup", lambda found: found[0]["conference"] is not None)
    conference = wait_until(lambda: product.conference(event["conference"]["id"]), 30, "conference")
    assert conference["mode"] == "S|L Auto" and conference["access"] == "private"


def test_4_2_1_reschedule_moves_event_and_conference_schedule(product: Product) -> None:
    item = meeting(product, "alice", "Design review", days=4, hour=10, required=("bob",), marker={"mode": "S|L"})
    (event,) = product.wait_events("bob", "Design review", lambda found: found[0]["conference"] is not None)
    item.start, item.end = item.start + timedelta(days=1, hours=2), item.end + timedelta(days=1, hours=2)
    item.save(update_fields=["start", "end"], send_meeting_invitations=SEND)
    (moved,) = product.wait_events("bob", "Design review", lambda found: instant(found[0]["start"]) == item.start)
    assert moved["conference"]["id"] == event["conference"]["id"]

    def schedule_moved() -> bool:
        conference = product.conference(event["conference"]["id"]) or {}
        return int(conference.get("schedule", {}).get("start_time", 0)) == int(item.start.timestamp())

    wait_until(schedule_moved, 30, "conference schedule at the new start")


def test_4_2_3_event_cancellation_shows_cancelled_and_deletes_conference(product: Product) -> None:
    item = meeting(product, "alice", "Budget sync", days=5, required=("bob", "erin"), marker={"mode": "PxP"})
    (event,) = product.wait_events("bob", "Budget sync", lambda found: found[0]["conference"] is not None)
    conference_id = event["conference"]["id"]
    item.cancel()
    for who in ("bob", "erin", "alice"):
        product.wait_events(who, "Budget sync", lambda found: found[0]["cancelled"] is True)
    wait_until(lambda: product.conference(conference_id) is None, 30, "the conference deleted on TrueConf Server")


def test_4_2_3_attendee_deleting_own_copy_hides_it_only_for_them(product: Product) -> None:
    item = meeting(product, "erin", "Coffee chat", days=6, required=("bob", "carol"))
    product.wait_events("bob", "Coffee chat")
    product.wait_events("carol", "Coffee chat")
    product.copy_of("bob", item.uid).delete(send_meeting_cancellations="SendToNone")
    wait_until(lambda: product.events("bob", "Coffee chat") == [], 30, "gone for bob")
    assert product.events("carol", "Coffee chat")[0]["cancelled"] is False
    assert product.events("erin", "Coffee chat")[0]["cancelled"] is False


def test_1_3_answers_follow_in_real_time(product: Product) -> None:
    item = meeting(product, "alice", "Answers", days=7, required=("bob",), optional=("carol", "erin"))
    product.wait_events("alice", "Answers")
    product.copy_of("bob", item.uid).accept()
    product.copy_of("carol", item.uid).tentatively_accept()
    product.copy_of("erin", item.uid).decline()

    def answers() -> dict[str, str] | None:
        events = product.events("alice", "Answers")
        got = {a["email"]: a["response"] for a in events[0]["attendees"]} if events else {}
        want = {email("bob"): "accepted", email("carol"): "tentative", email("erin"): "declined"}
        return got if all(got.get(k) == v for k, v in want.items()) else None

    got = wait_until(answers, 60, "the answers in the organizer's TrueConf calendar")
    assert got[email("alice")] == "organizer"
    (bob_view,) = product.events("bob", "Answers")
    assert bob_view["my_response"] == "accepted"


def test_4_1_2_delegation_owner_is_organizer_and_conference_owner(product: Product) -> None:
    meeting(
        product,
        "dave",
        "Board prep (booked by Dave)",
        days=8,
        required=("erin",),
        folder=product.delegate_calendar("dave", "alice"),
        marker={"mode": "S|L Auto"},
    )
    (event,) = product.wait_events("erin", "Board prep (booked by Dave)", lambda f: f[0]["conference"] is not None)
    assert event["organizer"] == email("alice")
    (own,) = product.wait_events("alice", "Board prep (booked by Dave)")
    assert own["my_response"] == "organizer"
    conference = wait_until(lambda: product.conference(event["conference"]["id"]), 30, "conference")
    assert "alice" in conference["owner"] and "dave" not in conference["owner"]


def test_4_1_private_meeting_is_busy_without_details(product: Product) -> None:
    meeting(
        product,
        "carol",
        "Doctor appointment",
        days=9,
        required=("bob",),
        sensitivity="Private",
        body="confidential",
        location="Clinic",
    )

    def private_view() -> list[dict[str, Any]]:
        return [e for e in product.calendar("bob") if e.get("private") and e["organizer"] == email("carol")]

    (event,) = wait_until(private_view, 60, "the private meeting in bob's calendar")
    assert event["subject"] in (None, "") and event["attendees"] == []
    assert event["body"] in (None, "") and event["location"] in (None, "")


def test_3_1_2_sync_conference_participants_follow_the_attendees(product: Product) -> None:
    item = meeting(product, "bob", "Sprint demo", days=10, required=("alice",), marker={"mode": "S|L Auto"})
    (event,) = product.wait_events("alice", "Sprint demo", lambda f: f[0]["conference"] is not None)
    conference_id = event["conference"]["id"]

    def invited() -> set[str]:
        conference = product.conference(conference_id) or {"invitations": []}
        return {str(i["id"]).split("@")[0] for i in conference["invitations"]}

    wait_until(lambda: "alice" in invited(), 30, "alice invited")
    item.required_attendees = [Attendee(mailbox=Mailbox(email_address=email(w))) for w in ("alice", "erin")]
    item.save(update_fields=["required_attendees"], send_meeting_invitations=SEND)
    wait_until(lambda: {"alice", "erin"} <= invited(), 30, "erin invited after being added")
    product.copy_of("erin", item.uid).decline()
    wait_until(lambda: "erin" not in invited() and "alice" in invited(), 30, "erin uninvited after declining")


def test_3_1_2_launch_conference_runs_it_at_start(product: Product) -> None:
    from exchangelib import EWSDateTime, EWSTimeZone

    account = product.account("alice")
    start = EWSDateTime.now(EWSTimeZone("UTC")) + timedelta(seconds=25)
    item = CalendarItem(
        account=account,
        folder=account.calendar,
        subject="Starts soon",
        start=start,
        end=start + timedelta(minutes=30),
        required_attendees=[Attendee(mailbox=Mailbox(email_address=email("bob")))],
    )
    setattr(item, MARKER_FIELD, json.dumps({"mode": "S|L Auto"}))
    item.save(send_meeting_invitations=SEND)
    item.refresh()
    (event,) = product.wait_events("bob", "Starts soon", lambda f: f[0]["conference"] is not None)
    conference = wait_until(
        lambda: (c := product.conference(event["conference"]["id"])) and c["state"] == "running" and c,
        90,
        "the conference running at the meeting's start",
    )
    assert conference["state"] == "running"

"""What TrueConf users see of Exchange meetings (admin guide §4.1 "Creating events", §4.1.2 "Delegation",
§4.2.3 "Event cancellation"; docs/architecture.md §5.2), proven by publishing CalendarChanges to CALENDAR and reading
TcsCommands from TCS_COMMANDS and the SyncService API."""

from __future__ import annotations

from datetime import timedelta

from sync_engine_testkit import (
    ANNA,
    BOB,
    CAROL,
    DAVE,
    T0,
    Harness,
    as_attendee_copy,
    attendee,
    event,
    full_spec,
    mid,
)

from trueconf.calendar.v1 import calendar_pb2, common_pb2

ACCEPT = common_pb2.RESPONSE_TYPE_ACCEPT
DECLINE = common_pb2.RESPONSE_TYPE_DECLINE
TENTATIVE = common_pb2.RESPONSE_TYPE_TENTATIVE
NO_RESPONSE = common_pb2.RESPONSE_TYPE_NO_RESPONSE_RECEIVED
ORGANIZER = common_pb2.RESPONSE_TYPE_ORGANIZER


def answers(occurrence: calendar_pb2.Occurrence) -> dict[str, int]:
    return {a.person.email: a.response for a in occurrence.attendees}


async def test_meeting_is_shown_to_its_organizer_and_synced_attendees_with_their_answers(harness: Harness) -> None:
    """Guide §4.1: shown to the organizer and invited users of `users`; grey (no conference); answers follow."""
    await harness.start_engine()
    start = T0 + timedelta(days=1)
    organizer_copy = event(
        "uid-plain",
        start=start,
        attendees=[attendee(BOB), attendee(CAROL, role=common_pb2.ATTENDEE_ROLE_OPTIONAL)],
    )
    await harness.upsert(ANNA, organizer_copy)
    upserts = await harness.wait_command("calendar_upsert", 2)
    await harness.settle()
    assert sorted(c.calendar_upsert.user for c in upserts) == [ANNA, BOB]  # carol is not a known user (yet)
    shown = {c.calendar_upsert.user: c.calendar_upsert.occurrence for c in upserts}
    anna_view = shown[ANNA]
    assert anna_view.id == mid("uid-plain") == anna_view.meeting_id
    assert anna_view.subject == "Marketing department meeting"
    assert anna_view.body == "Discussion of the work done last week."
    assert anna_view.location == "Room 4"
    assert anna_view.start.ToDatetime().isoformat() == "2026-03-03T07:00:00"
    assert anna_view.end.ToDatetime().isoformat() == "2026-03-03T07:30:00"
    assert anna_view.time_zone == "Europe/Berlin"
    assert anna_view.organizer.email == ANNA
    assert anna_view.my_response == ORGANIZER
    assert not anna_view.HasField("conference")  # grey
    assert not anna_view.cancelled and not anna_view.private and not anna_view.recurring
    assert shown[BOB].my_response == NO_RESPONSE
    assert {a.person.email: a.role for a in anna_view.attendees} == {
        BOB: common_pb2.ATTENDEE_ROLE_REQUIRED,
        CAROL: common_pb2.ATTENDEE_ROLE_OPTIONAL,
    }
    assert all(c.calendar_upsert.seq >= 1 for c in upserts)
    assert [o.id for o in await harness.events(ANNA)] == [mid("uid-plain")]
    assert await harness.events(CAROL) == []

    # Bob accepts in Outlook: his copy says so; everyone's attendee list follows, Bob sees his own answer.
    await harness.upsert(BOB, as_attendee_copy(organizer_copy, ACCEPT))
    await harness.wait_command("calendar_upsert", 1, user=BOB, occurrence__my_response=ACCEPT)
    anna_update = await harness.wait_for(
        lambda: [
            c for c in harness.of("calendar_upsert", user=ANNA) if answers(c.calendar_upsert.occurrence)[BOB] == ACCEPT
        ],
        "Anna's view showing Bob's acceptance",
    )
    assert anna_update[0].calendar_upsert.occurrence.my_response == ORGANIZER

    # Carol's mailbox becomes synced (a change for one of her own items): the meeting now shows for her too.
    await harness.upsert(CAROL, event("uid-carol-own", start=T0 + timedelta(days=2), organizer=CAROL))
    carol = await harness.wait_command("calendar_upsert", 1, user=CAROL, occurrence__uid="uid-plain")
    assert carol[0].calendar_upsert.occurrence.my_response == NO_RESPONSE

    # Carol answers tentatively, then Bob declines: real-time answers.
    await harness.upsert(CAROL, as_attendee_copy(organizer_copy, TENTATIVE))
    await harness.wait_command("calendar_upsert", 1, user=CAROL, occurrence__my_response=TENTATIVE)
    bob_declines = as_attendee_copy(organizer_copy, DECLINE)
    await harness.upsert(BOB, bob_declines)
    await harness.wait_command("calendar_upsert", 1, user=BOB, occurrence__my_response=DECLINE)
    await harness.settle()
    final = {o.my_response for o in await harness.events(BOB)}
    assert final == {DECLINE}  # a declined meeting stays in the calendar, marked declined
    anna_now = (await harness.events(ANNA))[0]
    assert answers(anna_now) == {BOB: DECLINE, CAROL: TENTATIVE}
    meeting = await harness.meeting("uid-plain")
    assert meeting.mailboxes == [ANNA, BOB, CAROL]
    assert {a.person.email: a.response for a in meeting.attendees} == {BOB: DECLINE, CAROL: TENTATIVE}
    # Per-user sequences only ever grow.
    for user in (ANNA, BOB, CAROL):
        seqs = [c.calendar_upsert.seq for c in harness.of("calendar_upsert", user=user)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_attendee_deleting_their_copy_hides_it_only_for_them(harness: Harness) -> None:
    """docs/architecture.md §5.2: an attendee deleting their copy hides the meeting only for them."""
    await harness.start_engine()
    organizer_copy = event("uid-del", start=T0 + timedelta(days=1), attendees=[attendee(BOB), attendee(CAROL)])
    await harness.upsert(ANNA, organizer_copy)
    await harness.upsert(BOB, as_attendee_copy(organizer_copy, ACCEPT))
    await harness.upsert(CAROL, as_attendee_copy(organizer_copy, ACCEPT))
    await harness.wait_command("calendar_upsert", 1, user=CAROL)
    await harness.settle()
    before = len(harness.commands)
    await harness.delete(BOB, "uid-del")
    deletes = await harness.wait_command("calendar_delete", 1)
    await harness.settle()
    assert [(d.calendar_delete.user, d.calendar_delete.occurrence_id) for d in deletes] == [(BOB, mid("uid-del"))]
    assert [c.command.WhichOneof("command") for c in harness.commands[before:]] == ["calendar_delete"]
    assert await harness.events(BOB) == []
    assert len(await harness.events(ANNA)) == 1 and len(await harness.events(CAROL)) == 1
    # A later change by the organizer does not bring it back for Bob (he is a configured user, still hidden).
    moved = event("uid-del", start=T0 + timedelta(days=1, hours=1), attendees=[attendee(BOB), attendee(CAROL)])
    await harness.upsert(ANNA, moved)
    await harness.wait_command("calendar_upsert", 1, user=CAROL, occurrence__start__seconds=moved.start.seconds)
    await harness.settle()
    assert harness.of("calendar_upsert", user=BOB, occurrence__start__seconds=moved.start.seconds) == []


async def test_cancelled_meeting_shows_cancelled_for_everyone(harness: Harness) -> None:
    """Guide §4.2.3: a cancelled event is marked "Canceled" in the calendars of its users."""
    await harness.start_engine()
    organizer_copy = event("uid-cancel", start=T0 + timedelta(days=1), attendees=[attendee(BOB)])
    await harness.upsert(ANNA, organizer_copy)
    await harness.wait_command("calendar_upsert", 2)
    cancelled = event("uid-cancel", start=T0 + timedelta(days=1), attendees=[attendee(BOB)], cancelled=True, sequence=1)
    await harness.upsert(ANNA, cancelled)
    cancels = await harness.wait_command("calendar_cancel", 2)
    await harness.settle()
    assert sorted((c.calendar_cancel.user, c.calendar_cancel.occurrence_id) for c in cancels) == [
        (ANNA, mid("uid-cancel")),
        (BOB, mid("uid-cancel")),
    ]
    for user in (ANNA, BOB):
        [occurrence] = await harness.events(user)
        assert occurrence.cancelled and occurrence.subject == "Marketing department meeting"
    assert harness.of("calendar_delete") == []


async def test_organizer_deleting_the_meeting_cancels_it_for_everyone(harness: Harness) -> None:
    """docs/architecture.md §5.2: cancel = organizer cancels *or deletes*; attendees see it cancelled."""
    await harness.start_engine()
    organizer_copy = event("uid-orgdel", start=T0 + timedelta(days=1), attendees=[attendee(BOB), attendee(DAVE)])
    await harness.upsert(ANNA, organizer_copy)
    await harness.upsert(DAVE, as_attendee_copy(organizer_copy, ACCEPT))
    await harness.wait_command("calendar_upsert", 1, user=DAVE, occurrence__my_response=ACCEPT)
    await harness.settle()
    await harness.delete(ANNA, "uid-orgdel")
    cancels = await harness.wait_command("calendar_cancel", 3)
    await harness.settle()
    assert sorted(c.calendar_cancel.user for c in cancels) == [ANNA, BOB, DAVE]
    assert (await harness.events(DAVE))[0].my_response == ACCEPT
    # A personal appointment (no attendees) deleted by its owner is simply removed.
    await harness.upsert(ANNA, event("uid-appt", start=T0 + timedelta(days=3)))
    await harness.wait_command("calendar_upsert", 1, occurrence__uid="uid-appt")
    await harness.delete(ANNA, "uid-appt")
    await harness.wait_command("calendar_delete", 1, occurrence_id=mid("uid-appt"))


async def test_private_meeting_is_shown_without_details(harness: Harness) -> None:
    """docs/architecture.md §5.2: private meetings show as busy without details (Sensitivity PRIVATE)."""
    await harness.start_engine()
    await harness.upsert(
        ANNA,
        event(
            "uid-private",
            start=T0 + timedelta(days=1),
            attendees=[attendee(BOB)],
            sensitivity=common_pb2.SENSITIVITY_PRIVATE,
            subject="Salary review",
            body="Confidential numbers",
            location="HR office",
        ),
    )
    upserts = await harness.wait_command("calendar_upsert", 2)
    for command in upserts:
        occurrence = command.calendar_upsert.occurrence
        assert occurrence.private
        assert (occurrence.subject, occurrence.body, occurrence.location) == ("", "", "")
        assert list(occurrence.attendees) == []
        assert occurrence.start.seconds == (T0 + timedelta(days=1)).timestamp()
        assert occurrence.organizer.email == ANNA


async def test_delegate_made_meeting_has_the_owner_as_organizer_and_conference_owner(harness: Harness) -> None:
    """Guide §4.1.2: an event created by a delegate lists the owner as organizer (and conference owner)."""
    await harness.start_engine()
    await harness.upsert(CAROL, event("uid-secretary-own", start=T0 + timedelta(days=5), organizer=CAROL))
    await harness.upsert(
        ANNA,
        event(
            "uid-delegated",
            start=T0 + timedelta(days=1),
            attendees=[attendee(BOB)],
            delegate=CAROL,
            conference=full_spec(),
        ),
    )
    [create] = await harness.wait_command("conference_upsert", 1)
    assert create.conference_upsert.owner == ANNA
    upserts = await harness.wait_command("calendar_upsert", 2, occurrence__uid="uid-delegated")
    await harness.settle()
    assert sorted(c.calendar_upsert.user for c in upserts) == [ANNA, BOB]  # not the delegate
    assert {c.calendar_upsert.occurrence.organizer.email for c in upserts} == {ANNA}
    assert [o.uid for o in await harness.events(CAROL)] == ["uid-secretary-own"]


async def test_out_of_order_and_stale_changes_are_ignored(harness: Harness) -> None:
    """docs/architecture.md §4.2: a change older than what is stored is dropped; a late change of another item is
    not."""
    await harness.start_engine()
    newer = event("uid-ooo", start=T0 + timedelta(days=1), subject="New subject")
    older = event("uid-ooo", start=T0 + timedelta(days=1), subject="Old subject")
    other = event("uid-other", start=T0 + timedelta(days=2), subject="Other item")
    await harness.publish(harness.mailboxes.upsert(ANNA, newer, sequence=5))
    await harness.wait_command("calendar_upsert", 1, occurrence__subject="New subject")
    await harness.publish(harness.mailboxes.upsert(ANNA, older, sequence=3))
    await harness.publish(harness.mailboxes.upsert(ANNA, other, sequence=4))
    await harness.publish(harness.mailboxes.delete(ANNA, "uid-ooo", sequence=2))
    await harness.wait_command("calendar_upsert", 1, occurrence__subject="Other item")
    await harness.settle()
    assert harness.of("calendar_upsert", occurrence__subject="Old subject") == []
    assert harness.of("calendar_delete") == []
    assert sorted(o.subject for o in await harness.events(ANNA)) == ["New subject", "Other item"]
    async with harness.connect() as connection:
        stored = await connection.fetchval(
            "SELECT sequence FROM items WHERE mailbox = $1 AND item_id = $2",
            ANNA,
            harness.mailboxes.item_id(ANNA, "uid-ooo"),
        )
        last = await connection.fetchval("SELECT last_sequence FROM mailboxes WHERE mailbox = $1", ANNA)
    assert (stored, last) == (5, 5)


async def test_all_day_event(harness: Harness) -> None:
    await harness.start_engine()
    item = event("uid-all-day", start=T0 + timedelta(days=2, hours=-8), duration=timedelta(days=1))
    item.all_day = True
    await harness.upsert(ANNA, item)
    [upsert] = await harness.wait_command("calendar_upsert", 1)
    occurrence = upsert.calendar_upsert.occurrence
    assert occurrence.all_day
    assert (occurrence.start.ToDatetime().isoformat(), occurrence.end.ToDatetime().isoformat()) == (
        "2026-03-03T23:00:00",
        "2026-03-04T23:00:00",
    )

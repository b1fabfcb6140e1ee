"""Conferences of meetings (guide §4.1.1 "Event with a conference", §3.1.2 "Conference Setup",
§4.2.1 "How to reschedule events", §4.2.3 "Event cancellation"; docs/architecture.md §4.4, §5.2)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sync_engine_testkit import (
    ANNA,
    BOB,
    CAROL,
    DAVE,
    ROOM,
    SERVER,
    T0,
    Harness,
    as_attendee_copy,
    attendee,
    event,
    full_spec,
    mid,
)

from sync_engine.ids import to_datetime
from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import commands_pb2, common_pb2, sync_pb2

ACCEPT = common_pb2.RESPONSE_TYPE_ACCEPT
DECLINE = common_pb2.RESPONSE_TYPE_DECLINE
CONFERENCE_ID = "561849261795"
START = T0 + timedelta(hours=3)


def invitation_emails(invitations: Any) -> list[str]:
    return [i.email for i in invitations]


def meeting_with_conference(uid: str, start: Any = START, **changes: Any) -> Any:
    return event(
        uid,
        start=start,
        duration=timedelta(hours=1),
        attendees=[
            attendee(BOB, ACCEPT),
            attendee(CAROL, DECLINE),
            attendee(DAVE),
            attendee(ROOM, ACCEPT, common_pb2.ATTENDEE_ROLE_RESOURCE),
        ],
        conference=full_spec(),
        **changes,
    )


async def create_conference(harness: Harness, uid: str = "uid-conf") -> commands_pb2.TcsCommand:
    await harness.upsert(ANNA, meeting_with_conference(uid))
    [create] = await harness.wait_command("conference_upsert", 1, meeting_id=mid(uid))
    await harness.result(create, conference_id=CONFERENCE_ID)
    await harness.wait_command("calendar_upsert", 2, occurrence__conference__id=CONFERENCE_ID)
    await harness.settle()
    return create


async def test_meeting_with_conference_creates_it_and_turns_turquoise(harness: Harness) -> None:
    """Guide §4.1.1: the add-in's settings create a conference; the event then shows the Join link."""
    await harness.start_engine()
    await harness.upsert(ANNA, meeting_with_conference("uid-conf"))
    [create] = await harness.wait_command("conference_upsert", 1)
    upsert = create.conference_upsert
    assert create.server_id == SERVER and create.attempt == 1
    assert upsert.meeting_id == mid("uid-conf") and upsert.conference_id == ""
    assert upsert.topic == "Marketing department meeting"
    assert upsert.owner == ANNA
    assert upsert.spec == full_spec()  # every field of the add-in's settings, as given
    assert upsert.schedule.type == commands_pb2.SCHEDULE_TYPE_ONCE
    assert to_datetime(upsert.schedule.start) == START
    assert upsert.schedule.duration_seconds == 3600
    assert upsert.schedule.time_zone == "Europe/Berlin"  # the meeting's zone: TrueConf's special_time_offset
    assert upsert.sync_invitations
    assert invitation_emails(upsert.invitations) == [BOB, DAVE]  # not the decliner, the organizer or the room
    grey = await harness.wait_command("calendar_upsert", 2)
    assert all(not c.calendar_upsert.occurrence.HasField("conference") for c in grey)
    [pending] = await harness.conferences()
    assert pending.state == sync_pb2.CONFERENCE_STATE_PENDING and pending.owner == ANNA
    assert to_datetime(pending.next_launch) == START

    await harness.result(create, conference_id=CONFERENCE_ID)
    turquoise = await harness.wait_command("calendar_upsert", 2, occurrence__conference__id=CONFERENCE_ID)
    await harness.settle()
    assert sorted(c.calendar_upsert.user for c in turquoise) == [ANNA, BOB]
    assert {c.calendar_upsert.occurrence.conference.url for c in turquoise} == {
        f"https://video.example.com/c/{CONFERENCE_ID}"
    }
    [created] = await harness.conferences()
    assert created.state == sync_pb2.CONFERENCE_STATE_CREATED
    assert created.conference.id == CONFERENCE_ID and created.server_id == SERVER
    meeting = await harness.meeting("uid-conf")
    assert meeting.conference.id == CONFERENCE_ID
    assert meeting.conference_spec == full_spec()
    assert [o.conference.id for o in meeting.occurrences] == [CONFERENCE_ID]
    assert await harness.listed_commands(sync_pb2.COMMAND_FILTER_FAILED) == []
    pending_ids = {c.command.command_id for c in await harness.listed_commands(sync_pb2.COMMAND_FILTER_PENDING)}
    assert create.command_id not in pending_ids  # confirmed by TrueConf Server
    assert len(harness.of("conference_upsert")) == 1  # nothing changed since: no update


async def test_reschedule_moves_event_conference_schedule_and_launch(harness: Harness) -> None:
    """Guide §4.2.1 / docs/architecture.md §5.2: rescheduling moves the event, the conference schedule and the
    launch."""
    engine = await harness.start_engine()
    await create_conference(harness)
    moved_start = START + timedelta(days=1, hours=2)
    await harness.upsert(ANNA, meeting_with_conference("uid-conf", start=moved_start, sequence=1))
    moved = await harness.wait_command("calendar_upsert", 2, occurrence__start__seconds=int(moved_start.timestamp()))
    assert {c.calendar_upsert.occurrence.conference.id for c in moved} == {CONFERENCE_ID}
    [update] = await harness.wait_command("conference_upsert", 1, conference_id=CONFERENCE_ID)
    assert to_datetime(update.conference_upsert.schedule.start) == moved_start
    assert update.conference_upsert.spec == full_spec() and update.conference_upsert.owner == ANNA
    await harness.settle()
    [info] = await harness.conferences()
    assert to_datetime(info.next_launch) == moved_start

    harness.clock.advance(START - T0 + timedelta(minutes=1))  # the old start has come: nothing happens
    assert await engine.engine.launch_due() == 0
    await harness.settle()
    assert harness.of("conference_run") == []
    harness.clock.advance(moved_start - harness.clock.now())
    [run] = await harness.wait_command("conference_run", 1)
    assert run.conference_run.conference_id == CONFERENCE_ID
    assert to_datetime(run.conference_run.occurrence_start) == moved_start


async def test_cancel_and_delete_remove_the_conference_and_its_launch(harness: Harness) -> None:
    """Guide §4.2.3 / docs/architecture.md §5.2: cancelling shows "Cancelled" and deletes the conference; never
    launched."""
    engine = await harness.start_engine()
    await create_conference(harness)
    await harness.upsert(ANNA, meeting_with_conference("uid-conf", cancelled=True, sequence=1))
    cancels = await harness.wait_command("calendar_cancel", 2)
    assert sorted(c.calendar_cancel.user for c in cancels) == [ANNA, BOB]
    [delete] = await harness.wait_command("conference_delete", 1)
    assert delete.conference_delete.conference_id == CONFERENCE_ID
    assert delete.conference_delete.meeting_id == mid("uid-conf")
    await harness.settle()
    [info] = await harness.conferences()
    assert info.state == sync_pb2.CONFERENCE_STATE_DELETED and not info.HasField("next_launch")

    # The organizer deletes another meeting outright: same outcome.
    await harness.upsert(ANNA, meeting_with_conference("uid-conf-2"))
    [create] = await harness.wait_command("conference_upsert", 1, meeting_id=mid("uid-conf-2"))
    await harness.result(create, conference_id="2222")
    await harness.wait_command("calendar_upsert", 1, occurrence__conference__id="2222")
    await harness.delete(ANNA, "uid-conf-2")
    await harness.wait_command("conference_delete", 1, conference_id="2222")
    await harness.wait_command("calendar_cancel", 2, occurrence_id=mid("uid-conf-2"))

    harness.clock.advance(START - T0 + timedelta(minutes=5))
    assert await engine.engine.launch_due() == 0
    await harness.settle()
    assert harness.of("conference_run") == []


async def test_conference_commands_follow_the_join_link_host(harness: Harness) -> None:
    """docs/architecture.md §4.4/§4.5: calendar commands go to every server; a join link selects the conference's
    server;
    a linked conference is shown at once and never created or deleted by the connector."""
    servers = [
        {
            "id": "alpha.example.com#vcs",
            "secret": "s",
            "restUrl": "https://alpha.example.com/api/v4",
            "clientId": "c",
            "clientSecret": "s",
        },
        {
            "id": "beta#vcs",
            "secret": "s",
            "restUrl": "https://video.beta.example.com/api/v4",
            "clientId": "c",
            "clientSecret": "s",
        },
    ]
    await harness.start_engine(tcs={"servers": servers})
    linked_spec = common_pb2.ConferenceSpec(
        source=common_pb2.CONFERENCE_SOURCE_JOIN_LINK,
        existing_conference_id="777",
        join_link_host="video.beta.example.com",
    )
    await harness.upsert(ANNA, event("uid-linked", start=START, attendees=[attendee(BOB)], conference=linked_spec))
    shown = await harness.wait_command("calendar_upsert", 4)
    assert sorted((c.server_id, c.calendar_upsert.user) for c in shown) == [
        ("alpha.example.com#vcs", ANNA),
        ("alpha.example.com#vcs", BOB),
        ("beta#vcs", ANNA),
        ("beta#vcs", BOB),
    ]
    assert {c.calendar_upsert.occurrence.conference.url for c in shown} == {"https://video.beta.example.com/c/777"}
    subjects = {p.subject for p in harness.commands}
    assert subjects == {"tcs.v1.commands.alpha%2Eexample%2Ecom#vcs", "tcs.v1.commands.beta#vcs"}
    [invitations] = await harness.wait_command("invitations_sync", 1)
    assert invitations.server_id == "beta#vcs" and invitation_emails(invitations.invitations_sync.invitations) == [BOB]

    keyword = common_pb2.ConferenceSpec(source=common_pb2.CONFERENCE_SOURCE_KEYWORD)
    await harness.upsert(ANNA, event("uid-keyword", start=START, location="@trueconf", conference=keyword))
    [create] = await harness.wait_command("conference_upsert", 1)
    assert create.server_id == "alpha.example.com#vcs"  # no join link: the first server
    assert create.conference_upsert.spec.mode == common_pb2.CONFERENCE_MODE_SMART_MEETING  # conferenceDefaults
    assert create.conference_upsert.spec.access == common_pb2.CONFERENCE_ACCESS_PRIVATE
    await harness.settle()
    assert harness.of("conference_upsert", meeting_id=mid("uid-linked")) == []

    await harness.upsert(
        ANNA, event("uid-linked", start=START, attendees=[attendee(BOB)], conference=linked_spec, cancelled=True)
    )
    await harness.wait_command("calendar_cancel", 2, user=BOB)
    await harness.settle()
    assert harness.of("conference_delete") == []  # not ours to delete
    states = {c.meeting_id: c.state for c in await harness.conferences()}
    assert states[mid("uid-linked")] == sync_pb2.CONFERENCE_STATE_DELETED


@pytest.mark.parametrize(
    ("sync_participants", "temporal"),
    [(True, False), (False, False), (True, True)],
    ids=["sync-as-scheduled", "no-sync", "temporal-at-launch"],
)
async def test_invitations_follow_sync_conference_participants(
    harness: Harness, sync_participants: bool, temporal: bool
) -> None:
    """Guide §3.1.2 / seed 000 §3.0.2: syncConferenceParticipants and temporalConfParticipantsMode."""
    await harness.start_engine(syncConferenceParticipants=sync_participants, temporalConfParticipantsMode=temporal)
    organizer_copy = meeting_with_conference("uid-inv")
    await harness.upsert(ANNA, organizer_copy)
    [create] = await harness.wait_command("conference_upsert", 1)
    await harness.result(create, conference_id=CONFERENCE_ID)
    await harness.wait_command("calendar_upsert", 2, occurrence__conference__id=CONFERENCE_ID)
    # Bob changes his mind and declines in his own copy.
    await harness.upsert(BOB, as_attendee_copy(organizer_copy, DECLINE))
    await harness.wait_command("calendar_upsert", 1, user=BOB, occurrence__my_response=DECLINE)
    harness.clock.advance(START - T0)
    [run] = await harness.wait_command("conference_run", 1)
    await harness.settle()
    syncs = harness.of("invitations_sync")
    if sync_participants and not temporal:
        assert create.conference_upsert.sync_invitations
        assert invitation_emails(create.conference_upsert.invitations) == [BOB, DAVE]
        assert [invitation_emails(s.invitations_sync.invitations) for s in syncs] == [[DAVE]]
        assert list(run.conference_run.invitations) == []
    elif temporal:
        assert not create.conference_upsert.sync_invitations and list(create.conference_upsert.invitations) == []
        assert syncs == []
        assert invitation_emails(run.conference_run.invitations) == [DAVE]  # who has not declined, at launch
    else:
        assert not create.conference_upsert.sync_invitations and list(create.conference_upsert.invitations) == []
        assert syncs == []
        assert list(run.conference_run.invitations) == []


async def test_retryable_failure_is_retried_and_permanent_failure_is_listed(harness: Harness) -> None:
    """A RETRYABLE failure becomes a new command (attempt + 1) after a backoff; a PERMANENT one stays visible."""
    await harness.start_engine()
    await harness.upsert(ANNA, meeting_with_conference("uid-retry"))
    [first] = await harness.wait_command("conference_upsert", 1)
    await harness.result(first, commands_pb2.COMMAND_STATUS_RETRYABLE_ERROR, error="HTTP 503 from TrueConf Server")
    failed = await poll_failed(harness, 1)
    assert failed[0].command.command_id == first.command_id
    assert failed[0].status == commands_pb2.COMMAND_STATUS_RETRYABLE_ERROR
    assert failed[0].last_error == "HTTP 503 from TrueConf Server" and failed[0].attempts == 1
    assert to_datetime(failed[0].next_attempt) > harness.clock.now()
    await harness.settle()
    assert len(harness.of("conference_upsert")) == 1  # the retry waits for its backoff
    harness.clock.advance(timedelta(minutes=1))
    [_, second] = await harness.wait_command("conference_upsert", 2)
    assert second.attempt == 2 and second.command_id == f"{first.command_id}/attempt/2"
    assert second.conference_upsert == first.conference_upsert
    await harness.result(second, conference_id=CONFERENCE_ID)
    await harness.wait_command("calendar_upsert", 2, occurrence__conference__id=CONFERENCE_ID)
    await harness.settle()
    assert await harness.listed_commands(sync_pb2.COMMAND_FILTER_FAILED) == []

    # A calendar push failing retryably is sent again with a fresh seq.
    [push] = harness.of("calendar_upsert", user=BOB, occurrence__conference__id=CONFERENCE_ID)
    await harness.result(push, commands_pb2.COMMAND_STATUS_RETRYABLE_ERROR, error="user offline")
    await poll_failed(harness, 1)
    harness.clock.advance(timedelta(minutes=1))
    retried = await harness.wait_for(
        lambda: [c for c in harness.of("calendar_upsert", user=BOB) if c.attempt == 2], "the retried push"
    )
    assert retried[0].calendar_upsert.seq > push.calendar_upsert.seq
    assert retried[0].calendar_upsert.occurrence == push.calendar_upsert.occurrence

    # A permanent failure: the conference is marked failed and the command listed, never retried.
    await harness.upsert(ANNA, meeting_with_conference("uid-permanent"))
    [bad] = await harness.wait_command("conference_upsert", 1, meeting_id=mid("uid-permanent"))
    await harness.result(bad, commands_pb2.COMMAND_STATUS_PERMANENT_ERROR, error="400: pin must be 4-10 digits")
    await harness.settle()
    failed = await poll_failed(harness, 2)
    permanent = [f for f in failed if f.command.command_id == bad.command_id]
    assert permanent and permanent[0].status == commands_pb2.COMMAND_STATUS_PERMANENT_ERROR
    assert permanent[0].last_error == "400: pin must be 4-10 digits"
    states = {c.meeting_id: (c.state, c.last_error) for c in await harness.conferences()}
    assert states[mid("uid-permanent")] == (sync_pb2.CONFERENCE_STATE_FAILED, "400: pin must be 4-10 digits")
    harness.clock.advance(timedelta(hours=1))
    await harness.settle()
    assert len(harness.of("conference_upsert", meeting_id=mid("uid-permanent"))) == 1


async def poll_failed(harness: Harness, count: int) -> list[sync_pb2.CommandInfo]:
    async def enough() -> list[sync_pb2.CommandInfo] | None:
        failed = await harness.listed_commands(sync_pb2.COMMAND_FILTER_FAILED)
        return failed if len(failed) >= count else None

    found: list[sync_pb2.CommandInfo] = await wait_for_async(enough, timeout=20, what=f"{count} failed commands")
    return found


async def test_conference_commands_carry_their_order_and_a_superseded_one_is_not_retried(harness: Harness) -> None:
    """Each conference command carries the meeting's command number (the gateway's fence, commands.proto
    TcsCommand.conference_order), retries keep it; a command the gateway answers SUPERSEDED is neither retried nor
    listed as failed, and changes nothing the newer command decided."""
    await harness.start_engine()
    create = await create_conference(harness)
    await harness.upsert(ANNA, meeting_with_conference("uid-conf", cancelled=True, sequence=1))
    [delete] = await harness.wait_command("conference_delete", 1)
    assert 0 < create.conference_order < delete.conference_order
    await harness.result(delete, commands_pb2.COMMAND_STATUS_RETRYABLE_ERROR, error="HTTP 503")
    await poll_failed(harness, 1)
    harness.clock.advance(timedelta(minutes=1))
    [_, retry] = await harness.wait_command("conference_delete", 2)
    assert retry.attempt == 2 and retry.conference_order == delete.conference_order
    await harness.result(retry)
    await harness.settle()

    await harness.upsert(ANNA, meeting_with_conference("uid-other"))
    [other] = await harness.wait_command("conference_upsert", 1, meeting_id=mid("uid-other"))
    await harness.result(other, commands_pb2.COMMAND_STATUS_SUPERSEDED, error="not run: command 9 ran after it")
    await harness.settle()
    harness.clock.advance(timedelta(hours=1))
    await harness.settle()
    assert len(harness.of("conference_upsert", meeting_id=mid("uid-other"))) == 1
    assert await harness.listed_commands(sync_pb2.COMMAND_FILTER_FAILED) == []
    [info] = [c for c in await harness.conferences() if c.meeting_id == mid("uid-conf")]
    assert info.state == sync_pb2.CONFERENCE_STATE_DELETED

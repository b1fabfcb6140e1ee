"""launchConference (guide §3.1.2: "sends a request to TrueConf Server when an event starts"; docs/architecture.md
§5.2):
launched at start, after a restart while still on, never when cancelled or finished, once with two engines."""

from __future__ import annotations

from datetime import timedelta

from sync_engine_testkit import ANNA, BOB, T0, Harness, attendee, event, full_spec, mid

from sync_engine.ids import to_datetime
from trueconf.calendar.v1 import commands_pb2


async def conference_meeting(harness: Harness, uid: str, start_in: timedelta, duration: timedelta) -> str:
    """Publish a meeting with a conference starting `start_in` after T0 and confirm its creation."""
    await harness.upsert(
        ANNA, event(uid, start=T0 + start_in, duration=duration, attendees=[attendee(BOB)], conference=full_spec())
    )
    [create] = await harness.wait_command("conference_upsert", 1, meeting_id=mid(uid))
    conference_id = f"c-{uid}"
    await harness.result(create, conference_id=conference_id)
    await harness.wait_command("calendar_upsert", 1, occurrence__conference__id=conference_id)
    return conference_id


async def test_conference_is_launched_at_the_start_of_the_meeting(harness: Harness) -> None:
    engine = await harness.start_engine()
    conference_id = await conference_meeting(harness, "uid-launch", timedelta(hours=1), timedelta(minutes=30))
    harness.clock.advance(timedelta(minutes=59))
    assert await engine.engine.launch_due() == 0
    await harness.settle()
    assert harness.of("conference_run") == []
    harness.clock.advance(timedelta(minutes=1))
    [run] = await harness.wait_command("conference_run", 1)
    assert run.conference_run.conference_id == conference_id
    assert run.conference_run.meeting_id == mid("uid-launch")
    assert to_datetime(run.conference_run.occurrence_start) == T0 + timedelta(hours=1)
    assert run.server_id == "video.example.com#vcs"
    await harness.settle()
    [info] = await harness.conferences()
    assert to_datetime(info.last_launch) == T0 + timedelta(hours=1) and not info.HasField("next_launch")


async def test_launch_missed_while_down_happens_on_recovery_unless_finished_or_cancelled(harness: Harness) -> None:
    engine = await harness.start_engine()
    long_id = await conference_meeting(harness, "uid-long", timedelta(hours=1), timedelta(hours=2))
    await conference_meeting(harness, "uid-short", timedelta(minutes=30), timedelta(minutes=30))
    await conference_meeting(harness, "uid-cancelled", timedelta(minutes=45), timedelta(hours=2))
    await harness.upsert(
        ANNA,
        event(
            "uid-cancelled",
            start=T0 + timedelta(minutes=45),
            duration=timedelta(hours=2),
            attendees=[attendee(BOB)],
            conference=full_spec(),
            cancelled=True,
            sequence=1,
        ),
    )
    await harness.wait_command("conference_delete", 1)
    await harness.settle()
    await harness.stop_engine(engine)  # the engine is down while the meetings start

    harness.clock.advance(timedelta(hours=1, minutes=30))  # long: still on; short: finished; cancelled: cancelled
    await harness.start_engine(api=False)
    [run] = await harness.wait_command("conference_run", 1)
    assert run.conference_run.conference_id == long_id
    await harness.settle()
    async with harness.connect() as connection:
        states = dict(await connection.fetch("SELECT meeting_id, state FROM launches ORDER BY meeting_id"))
    assert states == {mid("uid-long"): "launched", mid("uid-short"): "missed"}
    assert len(harness.of("conference_run")) == 1


async def test_two_engines_launch_each_occurrence_once(harness: Harness) -> None:
    first = await harness.start_engine()
    second = await harness.start_engine(api=False)
    uids = [f"uid-pair-{n}" for n in range(12)]
    for uid in uids:
        await conference_meeting(harness, uid, timedelta(minutes=10), timedelta(minutes=30))
    await harness.settle()
    harness.clock.advance(timedelta(minutes=10))
    runs = await harness.wait_command("conference_run", len(uids))
    await harness.settle()
    # Both schedulers look again: nothing is due any more.
    assert await first.engine.launch_due() == 0 and await second.engine.launch_due() == 0
    await harness.settle()
    runs = harness.of("conference_run")
    assert sorted(r.conference_run.meeting_id for r in runs) == sorted(mid(uid) for uid in uids)
    assert len({r.command_id for r in runs}) == len(uids)
    assert all(isinstance(r, commands_pb2.TcsCommand) for r in runs)


async def launch_states(harness: Harness, wanted: set[str]) -> bool:
    async with harness.connect() as connection:
        states = {str(s) for s in await connection.fetchval("SELECT array_agg(DISTINCT state) FROM launches")}
    return states == wanted


async def test_a_forward_clock_jump_launches_what_it_skipped_and_not_what_is_over(harness: Harness) -> None:
    """NTP steps the wall clock 10 minutes forward while the engine runs: the meeting whose start fell inside the
    skipped minutes is still on and is launched; the one that ended inside them is not."""
    engine = await harness.start_engine()
    skipped_id = await conference_meeting(harness, "uid-skipped", timedelta(minutes=5), timedelta(minutes=30))
    await conference_meeting(harness, "uid-over", timedelta(minutes=2), timedelta(minutes=5))
    later_id = await conference_meeting(harness, "uid-later", timedelta(minutes=20), timedelta(minutes=30))
    await harness.settle()
    harness.clock.advance(timedelta(minutes=10))
    [run] = await harness.wait_command("conference_run", 1)
    assert run.conference_run.conference_id == skipped_id
    await harness.settle()
    assert await engine.engine.launch_due() == 0
    async with harness.connect() as connection:
        states = dict(await connection.fetch("SELECT meeting_id, state FROM launches ORDER BY meeting_id"))
    assert states == {mid("uid-skipped"): "launched", mid("uid-over"): "missed", mid("uid-later"): "planned"}
    harness.clock.advance(timedelta(minutes=10))
    runs = await harness.wait_command("conference_run", 2)
    assert [r.conference_run.conference_id for r in runs] == [skipped_id, later_id]


async def test_a_clock_that_ran_ahead_does_not_cancel_launches_for_good(harness: Harness) -> None:
    """Issue #17: the wall clock jumps hours ahead (a bad NTP answer, a wrong manual setting), the scheduler takes
    the meetings for finished and marks their launches missed; when the clock is set right again those meetings
    are still ahead or on, and each is launched at its start - not lost for good."""
    await harness.start_engine()
    soon_id = await conference_meeting(harness, "uid-soon", timedelta(minutes=5), timedelta(minutes=30))
    later_id = await conference_meeting(harness, "uid-later", timedelta(minutes=40), timedelta(minutes=30))
    await harness.settle()
    harness.clock.advance(timedelta(hours=3))  # both look over
    await harness.wait_for(lambda: launch_states(harness, {"missed"}), "both launches marked missed")
    assert harness.of("conference_run") == []

    harness.clock.advance(timedelta(hours=-3, minutes=10))  # set right: "soon" is on, "later" is ahead
    [run] = await harness.wait_command("conference_run", 1)
    assert run.conference_run.conference_id == soon_id
    await harness.settle()
    assert len(harness.of("conference_run")) == 1
    harness.clock.advance(timedelta(minutes=30))
    runs = await harness.wait_command("conference_run", 2)
    assert [r.conference_run.conference_id for r in runs] == [soon_id, later_id]
    await harness.settle()
    async with harness.connect() as connection:
        states = dict(await connection.fetch("SELECT meeting_id, state FROM launches ORDER BY meeting_id"))
    assert states == {mid("uid-soon"): "launched", mid("uid-later"): "launched"}

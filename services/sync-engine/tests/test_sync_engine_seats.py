"""Seats enforced end to end (issue #17: with a 3-seat license erin had no seat and still got alice's meeting in
TrueConf): the engine asks licensing's ListSeats (a SeatServer over real gRPC here; the real licensing in the
sandbox test tests/e2e/test_e2e_seats.py) and shows nothing of, and nothing to, a mailbox without a seat."""

from __future__ import annotations

from datetime import timedelta

from sync_engine_testkit import ANNA, BOB, CAROL, DAVE, T0, Harness, SeatServer, attendee, event, full_spec, mid

from tccal.grpckit import service_token
from trueconf.calendar.v1 import commands_pb2

USERS = [ANNA, BOB, CAROL, DAVE]
PROVIDERS = [
    {"host": "exchange.example.com", "credentials": [{"login": "svc@example.com", "password": "plain"}], "users": USERS}
]


def calendar(harness: Harness, user: str) -> set[str]:
    """The occurrence ids `user`'s TrueConf calendar holds, from every calendar command pushed so far."""
    held: set[str] = set()
    for published in harness.commands:
        command: commands_pb2.TcsCommand = published.command
        kind = command.WhichOneof("command")
        if kind == "calendar_upsert" and command.calendar_upsert.user == user:
            held.add(command.calendar_upsert.occurrence.id)
        elif kind == "calendar_delete" and command.calendar_delete.user == user:
            held.discard(command.calendar_delete.occurrence_id)
    return held


async def shows(harness: Harness, user: str, *occurrences: str) -> None:
    await harness.wait_for(lambda: calendar(harness, user) == set(occurrences), f"{user}'s calendar = {occurrences}")


async def test_a_configured_user_without_a_seat_gets_nothing_until_a_seat_and_loses_it_with_the_seat(
    harness: Harness,
) -> None:
    seats = await SeatServer({who: timedelta(days=1) for who in (ANNA, BOB, CAROL)}).start()
    try:
        await harness.start_engine(seats=seats, calendarProviders=PROVIDERS, grpc={"adminToken": "seats-admin"})
        # ANNA (seated) invites everyone, DAVE (configured, no seat) included
        await harness.upsert(
            ANNA,
            event(
                "uid-team",
                start=T0 + timedelta(days=1),
                attendees=[attendee(BOB), attendee(CAROL), attendee(DAVE)],
                conference=full_spec(),
            ),
        )
        [create] = await harness.wait_command("conference_upsert", 1, meeting_id=mid("uid-team"))
        # the seated organizer's conference invites whom she invited, seated or not (docs/architecture.md §5.5)
        invited = {i.email for i in create.conference_upsert.invitations}
        assert invited == {BOB, CAROL, DAVE}
        # a meeting DAVE organizes (his copy reached the engine, say from before he lost his seat): nothing of it
        await harness.upsert(DAVE, event("uid-daves", start=T0 + timedelta(days=2), attendees=[attendee(ANNA)]))
        await harness.upsert(
            DAVE,
            event("uid-daves-conf", start=T0 + timedelta(days=3), attendees=[attendee(ANNA)], conference=full_spec()),
        )
        await harness.settle()
        for who in (ANNA, BOB, CAROL):
            await shows(harness, who, mid("uid-team"))
        assert calendar(harness, DAVE) == set()
        assert harness.of("conference_upsert", meeting_id=mid("uid-daves-conf")) == []
        assert await harness.events(DAVE) == []
        # the engine asked licensing as itself
        assert set(seats.callers) == {f"Bearer {service_token('seats-admin', 'sync-engine')}"}

        # DAVE gets a seat: his calendar comes in - the meeting he is invited to and his own, with its conference
        seats.seats[DAVE] = timedelta(days=1)
        await shows(harness, DAVE, mid("uid-team"), mid("uid-daves"), mid("uid-daves-conf"))
        await harness.wait_command("conference_upsert", 1, meeting_id=mid("uid-daves-conf"))
        await shows(harness, ANNA, mid("uid-team"), mid("uid-daves"), mid("uid-daves-conf"))

        # BOB loses his seat (licensing no longer names him): his calendar empties, the others keep theirs
        del seats.seats[BOB]
        await shows(harness, BOB)
        await harness.settle()
        assert calendar(harness, CAROL) == {mid("uid-team")}
        assert calendar(harness, ANNA) == {mid("uid-team"), mid("uid-daves"), mid("uid-daves-conf")}
    finally:
        await seats.stop()


async def test_seats_run_out_while_licensing_is_unreachable_and_come_back_with_it(harness: Harness) -> None:
    seats = await SeatServer({ANNA: timedelta(hours=1), BOB: timedelta(minutes=10)}).start()
    try:
        await harness.start_engine(seats=seats, calendarProviders=PROVIDERS)
        await harness.upsert(ANNA, event("uid-lease", start=T0 + timedelta(days=1), attendees=[attendee(BOB)]))
        await shows(harness, BOB, mid("uid-lease"))
        seats.answering = False
        calls = seats.calls
        await harness.wait_for(lambda: seats.calls > calls + 2, "the engine asking the unreachable licensing")
        harness.clock.advance(timedelta(minutes=9))
        await harness.wait_for(lambda: seats.calls > calls + 5, "more unanswered asks")
        assert calendar(harness, BOB) == {mid("uid-lease")}  # his lease still runs
        harness.clock.advance(timedelta(minutes=2))  # BOB's lease ended, ANNA's has not
        await shows(harness, BOB)
        assert calendar(harness, ANNA) == {mid("uid-lease")}
        harness.clock.advance(timedelta(hours=1))  # ANNA's lease ended too
        await shows(harness, ANNA)

        seats.seats = {ANNA: timedelta(hours=1), BOB: timedelta(hours=1)}
        seats.answering = True  # licensing answers again
        await shows(harness, ANNA, mid("uid-lease"))
        await shows(harness, BOB, mid("uid-lease"))
    finally:
        await seats.stop()


async def test_an_organizer_without_a_seat_holds_the_conference_and_launches_nothing(harness: Harness) -> None:
    seats = await SeatServer({ANNA: timedelta(days=1), BOB: timedelta(days=1)}).start()
    try:
        await harness.start_engine(seats=seats, calendarProviders=PROVIDERS)
        await harness.upsert(
            ANNA,
            event("uid-held", start=T0 + timedelta(hours=1), attendees=[attendee(BOB)], conference=full_spec()),
        )
        [create] = await harness.wait_command("conference_upsert", 1, meeting_id=mid("uid-held"))
        await harness.result(create, conference_id="c-held")
        await harness.wait_command("calendar_upsert", 2, occurrence__conference__id="c-held")
        await harness.settle()

        del seats.seats[ANNA]  # the organizer loses her seat before the meeting starts
        await shows(harness, ANNA)
        await harness.settle()
        async with harness.connect() as connection:
            assert await connection.fetchval("SELECT count(*) FROM launches") == 0
        harness.clock.advance(timedelta(hours=1, minutes=5))
        await harness.settle()
        assert harness.of("conference_run") == [] and harness.of("conference_delete") == []
        assert len(harness.of("conference_upsert")) == 1

        seats.seats[ANNA] = timedelta(days=1)  # back, while the meeting is on: launched
        [run] = await harness.wait_command("conference_run", 1)
        assert run.conference_run.conference_id == "c-held"
        await shows(harness, ANNA, mid("uid-held"))
    finally:
        await seats.stop()


async def test_nothing_is_decided_before_licensing_first_answers(harness: Harness) -> None:
    seats = await SeatServer({ANNA: timedelta(days=1), BOB: timedelta(days=1)}).start()
    seats.answering = False
    try:
        await harness.start_engine(seats=seats, calendarProviders=PROVIDERS)
        await harness.upsert(ANNA, event("uid-first", start=T0 + timedelta(days=1), attendees=[attendee(BOB)]))
        calls = seats.calls
        await harness.wait_for(lambda: seats.calls > calls + 5, "the engine asking licensing")
        assert harness.commands == []
        async with harness.connect() as connection:
            assert await connection.fetchval("SELECT count(*) FROM items") == 0  # the change waits in JetStream
        seats.answering = True
        await shows(harness, ANNA, mid("uid-first"))
        await shows(harness, BOB, mid("uid-first"))
    finally:
        await seats.stop()

"""graph-ingest against the Graph emulator (a subprocess) and a real NATS JetStream: initial sync, changes, restart,
expired delta tokens, the conference marker and refused credentials."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta
from ews_ingest_support import ChangeCollector
from graph_ingest_support import (
    FAST,
    GraphWriter,
    SeatServer,
    graph_config,
    graph_provider,
    new_mailboxes,
    running_graph,
    soon,
)

from graph_emulator.testing import READONLY_APP_ID, EmulatorProcess
from graph_ingest.graph import GraphClient
from graph_ingest.settings import GraphSettings
from tccal.clock import FakeClock
from tccal.config import Config
from tccal.secrets import reveal
from tccal_sandbox.embedded import EmbeddedNats
from tccal_sandbox.testing import wait_for_async
from trueconf.calendar.v1 import calendar_pb2, common_pb2

UPSERT = calendar_pb2.CHANGE_TYPE_UPSERT
DELETE = calendar_pb2.CHANGE_TYPE_DELETE
BEGIN = calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_BEGIN
END = calendar_pb2.CHANGE_TYPE_MAILBOX_RESYNC_END


async def test_initial_sync_publishes_each_event_once_with_its_details(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    organizer, attendee = new_mailboxes(emu, "anna", "boris")
    start = soon(days=2, hour=9)
    meeting = await writer.create(
        organizer, "Quarterly review", start=start, minutes=45, attendees=(attendee,), location="Room 1", body="Agenda"
    )
    plain = [await writer.create(organizer, f"Focus time {n}", start=soon(days=4 + n)) for n in range(6)]
    copy = await writer._call("GET", f"/users/{attendee}/events")
    config = graph_config(seats.address, [graph_provider(emu, [organizer, attendee], name="m365")])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        await graph.rounds(organizer)
        await graph.rounds(attendee)
        expected = {meeting["id"], *(e["id"] for e in plain)}
        await collector.wait(lambda c: c.mailbox == attendee, what="the attendee's copy")
        await wait_for_async(
            lambda: {c.item_id for c in collector.of(organizer)} >= expected, timeout=20, what="every event"
        )
        assert graph.status(organizer).totals.pages >= 2  # 7 events in pages of 5: the nextLink was followed
    changes = collector.of(organizer)
    assert Counter(c.item_id for c in changes) == dict.fromkeys(expected, 1)
    assert {c.type for c in changes} == {UPSERT}
    assert {c.origin for c in changes} == {calendar_pb2.CHANGE_ORIGIN_INITIAL_LOAD}
    assert {c.provider for c in changes} == {"m365"}
    sequences = [c.sequence for c in changes]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    review = next(c for c in changes if c.item_id == meeting["id"])
    event = review.event
    assert review.change_id == f"{organizer}/{meeting['id']}/{meeting['changeKey']}"
    assert (event.subject, event.location, event.body) == ("Quarterly review", "Room 1", "Agenda")
    assert event.start.ToDatetime().isoformat() == start.replace(tzinfo=None).isoformat()
    assert (event.end.seconds - event.start.seconds) == 45 * 60
    assert event.kind == calendar_pb2.ITEM_KIND_SINGLE and event.uid == meeting["iCalUId"]
    assert event.organizer.email == organizer and event.is_meeting
    assert event.my_response == common_pb2.RESPONSE_TYPE_ORGANIZER
    # Graph's "none" (no answer recorded in the organizer's copy) is EWS's "Unknown"
    assert [(a.person.email, a.response, a.role) for a in event.attendees] == [
        (attendee, common_pb2.RESPONSE_TYPE_UNKNOWN, common_pb2.ATTENDEE_ROLE_REQUIRED)
    ]
    assert not event.HasField("conference")
    (attendee_copy,) = collector.of(attendee)
    assert attendee_copy.event.uid == meeting["iCalUId"] and attendee_copy.item_id == copy["value"][0]["id"]
    assert attendee_copy.event.my_response == common_pb2.RESPONSE_TYPE_NO_RESPONSE_RECEIVED


async def test_create_update_delete_and_an_answer_arrive_as_calendar_changes(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    organizer, attendee = new_mailboxes(emu, "clara", "dmitri")
    config = graph_config(seats.address, [graph_provider(emu, [organizer, attendee])])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        await graph.rounds(organizer)
        await graph.rounds(attendee)
        created = await writer.create(organizer, "Design sync", attendees=(attendee,))
        await graph.poll(organizer)
        first = await collector.wait(lambda c: c.item_id == created["id"], what="the created event")
        assert first.type == UPSERT and first.origin == calendar_pb2.CHANGE_ORIGIN_SYNC
        assert first.provider == f"graph-{emu.ready['tenants'][0]['id']}"

        moved = soon(days=5, hour=14)
        updated = await writer.update(
            organizer,
            created["id"],
            {"subject": "Design sync (moved)", "start": {"dateTime": moved.strftime("%Y-%m-%dT%H:%M:%S"),
             "timeZone": "UTC"}, "end": {"dateTime": moved.replace(hour=15).strftime("%Y-%m-%dT%H:%M:%S"),
             "timeZone": "UTC"}},
        )  # fmt: skip
        await graph.poll(organizer)
        second = await collector.wait(
            lambda c: c.item_id == created["id"] and c.event.change_key == updated["changeKey"], what="the update"
        )
        assert second.event.subject == "Design sync (moved)"
        assert second.event.start.ToDatetime().isoformat() == moved.replace(tzinfo=None).isoformat()
        assert second.sequence > first.sequence

        copy = (await writer._call("GET", f"/users/{attendee}/events"))["value"][0]
        await writer.accept(attendee, copy["id"])
        await graph.poll(organizer)
        answered = await collector.wait(
            lambda c: (
                c.item_id == created["id"]
                and any(a.response == common_pb2.RESPONSE_TYPE_ACCEPT for a in c.event.attendees)
            ),
            what="the organizer's copy with the accepted answer",
        )
        assert [a.person.email for a in answered.event.attendees] == [attendee]

        await writer.delete(organizer, created["id"])
        await graph.poll(organizer)
        gone = await collector.wait(lambda c: c.item_id == created["id"] and c.type == DELETE, what="the delete")
        assert gone.change_id == f"{organizer}/{created['id']}/deleted"
        assert gone.sequence > answered.sequence


async def test_checkpoint_survives_a_restart_without_duplicates(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    (mailbox,) = new_mailboxes(emu, "elena")
    for n in range(7):
        await writer.create(mailbox, f"Standing item {n}", start=soon(days=2 + n))
    config = graph_config(seats.address, [graph_provider(emu, [mailbox])])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        status = await graph.rounds(mailbox)
        assert status.totals.published == 7
        last = status.checkpoint.last_sequence if status.checkpoint else 0
    added = await writer.create(mailbox, "After the restart")
    async with running_graph(config, nats_server) as graph:
        status = await graph.rounds(mailbox)
        assert status.checkpoint is not None and status.checkpoint.initial_done
        assert status.totals.published == 1  # only the new event: the delta link was kept in KV
    await collector.wait(lambda c: c.item_id == added["id"], what="the event made while graph-ingest was down")
    changes = collector.of(mailbox)
    assert len(changes) == 8 and len({c.item_id for c in changes}) == 8
    newest = next(c for c in changes if c.item_id == added["id"])
    assert newest.sequence > last  # sequences continue after the restart, never reused


async def test_expired_delta_token_rereads_the_mailbox_inside_a_resync_frame(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    (mailbox,) = new_mailboxes(emu, "fedor")
    kept = [await writer.create(mailbox, f"Kept {n}", start=soon(days=2 + n)) for n in range(3)]
    doomed = await writer.create(mailbox, "Deleted while the token was lost")
    first = soon(days=2, hour=7)
    series = await writer.create(  # its master too is published again inside the frame, so the engine keeps it
        mailbox,
        "Series",
        start=first,
        recurrence={
            "pattern": {"type": "daily", "interval": 1},
            "range": {"type": "numbered", "startDate": first.date().isoformat(), "numberOfOccurrences": 2},
        },
    )
    config = graph_config(seats.address, [graph_provider(emu, [mailbox])])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        await graph.rounds(mailbox)
        emu.control("POST", "/delta/expire", {"user": mailbox})
        await writer.delete(mailbox, doomed["id"])
        added = await writer.create(mailbox, "Made while the token was lost")
        status = await graph.poll(mailbox)
        assert status.totals.token_resets == 1 and status.totals.snapshots == 1
        assert status.checkpoint is not None and not status.checkpoint.reread
    changes = collector.of(mailbox)
    kinds = [c.type for c in changes]
    assert kinds.count(BEGIN) == 1 and kinds.count(END) == 1
    begin, end = kinds.index(BEGIN), kinds.index(END)
    assert begin < end
    framed = changes[begin + 1 : end]
    assert changes[begin].resync.token == changes[end].resync.token
    assert changes[end].change_id == f"{mailbox}/resync-end/{changes[end].resync.token}"
    # everything that exists is inside the frame (nothing lost), the deleted event is not (the engine drops it)
    instances = {c.item_id for c in framed if c.event.kind == calendar_pb2.ITEM_KIND_OCCURRENCE}
    assert len(instances) == 2
    assert {c.item_id for c in framed} == {*(e["id"] for e in kept), added["id"], series["id"], *instances}
    assert {c.origin for c in framed} == {calendar_pb2.CHANGE_ORIGIN_RESYNC}
    assert all(c.change_id.endswith(f"/resync/{changes[begin].resync.token}") for c in framed)
    assert doomed["id"] not in {c.item_id for c in framed}
    assert [c.sequence for c in changes] == sorted(c.sequence for c in changes)
    # each event (and the master) published once before the frame, once inside it; nothing else
    assert len(changes) == 7 + 2 + 7


async def test_trueconf_keyword_link_and_add_in_marker_mark_conference_requests(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    (mailbox,) = new_mailboxes(emu, "galina")
    keyword = await writer.create(mailbox, "Board call @trueconf")
    link = await writer.create(mailbox, "Linked", body="Join: https://video.example.com/c/4711 please")
    addin = await writer.create(mailbox, "Add-in", marker=json.dumps({"mode": "S|L", "access": "public", "pin": 1234}))
    none = await writer.create(mailbox, "Mail me at someone@trueconf.com")
    config = graph_config(seats.address, [graph_provider(emu, [mailbox])])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        await graph.rounds(mailbox)
    events = {c.item_id: c.event for c in collector.of(mailbox)}
    spec = events[keyword["id"]].conference
    assert spec.source == common_pb2.CONFERENCE_SOURCE_KEYWORD
    assert (spec.mode, spec.access, spec.max_podiums, spec.recording_enabled) == (
        common_pb2.CONFERENCE_MODE_ALL_ON_SCREEN,
        common_pb2.CONFERENCE_ACCESS_PRIVATE,
        4,
        True,
    )
    linked = events[link["id"]].conference
    assert linked.source == common_pb2.CONFERENCE_SOURCE_JOIN_LINK
    assert (linked.existing_conference_id, linked.join_link_host) == ("4711", "video.example.com")
    marked = events[addin["id"]].conference
    assert marked.source == common_pb2.CONFERENCE_SOURCE_EXTENDED_PROPERTY
    assert (marked.mode, marked.access, marked.pin) == (
        common_pb2.CONFERENCE_MODE_MODERATED,
        common_pb2.CONFERENCE_ACCESS_PUBLIC,
        "1234",
    )
    assert not events[none["id"]].HasField("conference")


async def test_only_seated_mailboxes_are_synced(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    seated, unseated = new_mailboxes(emu, "hanna", "igor")
    await writer.create(seated, "Seated")
    await writer.create(unseated, "Not seated")
    seats.denied.add(unseated)
    config = graph_config(seats.address, [graph_provider(emu, [seated, unseated])])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        await graph.rounds(seated)
        assert graph.runtime.seats.refused == {unseated: "refused by the test licensing"}
        assert graph.status(unseated).rounds == 0
    assert seats.calls >= 1  # graph-ingest's service token passed licensing's access policy
    assert collector.of(unseated) == []
    assert len(collector.of(seated)) == 1


async def test_a_wrong_client_secret_names_the_provider_entry(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector
) -> None:
    (mailbox,) = new_mailboxes(emu, "jana")
    config = graph_config(seats.address, [graph_provider(emu, [mailbox], secret="not-the-secret", name="cloud")])
    async with running_graph(config, nats_server, FAST) as graph:
        status = graph.status(mailbox)
        await wait_for_async(lambda: status.failures > 0, timeout=30, what="the refused token")
        error = status.last_error
        try:
            await graph.runtime.graph_ready()
        except ConnectionError as exc:
            ready_error = str(exc)
        else:
            raise AssertionError("graph-ingest reported ready with a wrong client secret")
    assert "calendarProviders[0] (cloud)" in error
    assert "calendarProviders[0].clientSecret" in error
    assert "invalid_client" in error and "AADSTS7000215" in error
    assert "calendarProviders[0].clientSecret" in ready_error


async def test_series_master_is_published_with_its_recurrence_exception_and_cancelled_occurrence(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    (mailbox,) = new_mailboxes(emu, "kira")
    first = soon(days=1, hour=8)
    weekday = first.strftime("%A").lower()
    series = await writer.create(
        mailbox,
        "Weekly standup",
        start=first,
        minutes=15,
        recurrence={
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [weekday], "firstDayOfWeek": "monday"},
            "range": {"type": "numbered", "startDate": first.date().isoformat(), "numberOfOccurrences": 3},
        },
    )
    config = graph_config(seats.address, [graph_provider(emu, [mailbox])])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        await graph.rounds(mailbox)
        await wait_for_async(lambda: len(collector.of(mailbox)) == 4, timeout=20, what="master and three occurrences")
        (master,) = [c for c in collector.of(mailbox) if c.event.kind == calendar_pb2.ITEM_KIND_RECURRING_MASTER]
        assert master.item_id == series["id"] and master.event.uid == series["iCalUId"]
        rule = master.event.recurrence
        assert rule.WhichOneof("pattern") == "weekly" and rule.weekly.interval == 1
        assert list(rule.weekly.days_of_week) == [common_pb2.DayOfWeek.Value(f"DAY_OF_WEEK_{weekday.upper()}")]
        assert rule.weekly.first_day_of_week == common_pb2.DAY_OF_WEEK_MONDAY
        assert (rule.start_date, rule.number_of_occurrences) == (first.date().isoformat(), 3)
        assert not master.event.modified_occurrences and not master.event.deleted_occurrences
        occurrences = sorted(
            (c for c in collector.of(mailbox) if c.item_id != series["id"]), key=lambda c: c.event.start.seconds
        )
        assert {c.event.kind for c in occurrences} == {calendar_pb2.ITEM_KIND_OCCURRENCE}
        assert {c.event.uid for c in occurrences} == {series["iCalUId"]}
        assert [c.event.recurrence_id.seconds for c in occurrences] == [c.event.start.seconds for c in occurrences]
        assert occurrences[1].event.start.seconds - occurrences[0].event.start.seconds == 7 * 86400
        second, third = occurrences[1], occurrences[2]
        await writer.update(mailbox, second.item_id, {"subject": "Weekly standup (long)"})
        await writer.delete(mailbox, third.item_id)
        await graph.poll(mailbox)
        changed = await collector.wait(
            lambda c: c.item_id == second.item_id and c.event.kind == calendar_pb2.ITEM_KIND_EXCEPTION,
            what="the exception",
        )
        assert changed.event.subject == "Weekly standup (long)"
        assert changed.event.recurrence_id == second.event.recurrence_id
        await collector.wait(lambda c: c.item_id == third.item_id and c.type == DELETE, what="the cancelled one")
        again = await collector.wait(
            lambda c: c.item_id == series["id"] and len(c.event.deleted_occurrences) == 1, what="the master again"
        )
        assert list(again.event.deleted_occurrences) == [third.event.recurrence_id]
        (modified,) = again.event.modified_occurrences
        assert (modified.item_id, modified.subject) == (second.item_id, "Weekly standup (long)")
        assert modified.original_start == second.event.recurrence_id
        # The whole series deleted: its instances are @removed and the known master is found gone.
        await writer.delete(mailbox, series["id"])
        await graph.poll(mailbox)
        await collector.wait(lambda c: c.item_id == series["id"] and c.type == DELETE, what="the master deleted")


async def test_windows_time_zone_html_body_sensitivity_and_cancellation_are_normalized(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    (mailbox,) = new_mailboxes(emu, "olga")
    day = soon(days=6).date().isoformat()
    created = await writer._call(
        "POST",
        f"/users/{mailbox}/events",
        {
            "subject": "Berlin meeting",
            "start": {"dateTime": f"{day}T10:00:00", "timeZone": "W. Europe Standard Time"},
            "end": {"dateTime": f"{day}T11:00:00", "timeZone": "W. Europe Standard Time"},
            "body": {"contentType": "html", "content": "<html><body><p>Bring <b>slides</b></p></body></html>"},
            "sensitivity": "private",
        },
    )
    config = graph_config(seats.address, [graph_provider(emu, [mailbox])])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        await graph.rounds(mailbox)
        change = await collector.wait(lambda c: c.item_id == created["id"], what="the Berlin meeting")
        event = change.event
        assert (event.time_zone, event.windows_time_zone) == ("Europe/Berlin", "W. Europe Standard Time")
        berlin = dt.datetime.fromisoformat(f"{day}T10:00:00").replace(tzinfo=ZoneInfo("Europe/Berlin"))
        assert event.start.ToDatetime(tzinfo=dt.UTC) == berlin.astimezone(dt.UTC)
        assert event.body == "Bring slides"
        assert event.sensitivity == common_pb2.SENSITIVITY_PRIVATE and not event.is_meeting
        # an expired access token (Graph answers 401) is replaced without failing the round
        acquired = graph.runtime.clients[graph.status(mailbox).provider].tokens.acquired
        emu.control("POST", "/tokens/expire", {})
        await writer._call("POST", f"/users/{mailbox}/events/{created['id']}/cancel", {"comment": "off"})
        await graph.poll(mailbox)
        cancelled = await collector.wait(
            lambda c: c.item_id == created["id"] and (c.type == DELETE or c.event.cancelled), what="the cancellation"
        )
        assert graph.runtime.clients[graph.status(mailbox).provider].tokens.acquired == acquired + 1
        assert cancelled.sequence > change.sequence


async def test_never_more_than_four_requests_of_a_mailbox_in_flight(emu: EmulatorProcess, writer: GraphWriter) -> None:
    """Outlook allows 4 concurrent requests per app and mailbox (the emulator answers a fifth with 429
    MailboxConcurrency). With the mailbox's requests held in flight by the emulator, ten GETs at once: four reach
    Graph, six wait in graph-ingest, none is refused; released, all ten succeed."""
    (mailbox,) = new_mailboxes(emu, "pavel")
    created = await writer.create(mailbox, "Parallel")
    config = Config.model_validate(graph_config("127.0.0.1:1", [graph_provider(emu, [mailbox])]))
    settings = GraphSettings.from_config(config, lambda v: reveal(v, allow_plaintext=True), FAST)
    client = GraphClient(settings.providers[0], FAST)
    url = client.url(f"/users/{mailbox}/events/{created['id']}")
    await client.tokens.token()
    emu.control("POST", f"/mailboxes/{mailbox}/hold", {})
    try:
        calls = [asyncio.create_task(client.get(mailbox, url)) for _ in range(10)]

        def usage() -> dict[str, int]:
            found = emu.control("GET", f"/mailboxes/{mailbox}")["requests"].get(READONLY_APP_ID)
            return dict(found or {"in_flight": 0, "throttled": 0, "max_in_flight": 0})

        await wait_for_async(lambda: usage()["in_flight"] == 4, timeout=20, what="four requests held in flight")
        assert client.limit(mailbox).locked()  # the other six wait here, not at Graph
    finally:
        emu.control("POST", f"/mailboxes/{mailbox}/release", {})
    answers = await asyncio.gather(*calls)
    await client.close()
    assert {a["id"] for a in answers} == {created["id"]}
    assert usage()["throttled"] == 0 and usage()["max_in_flight"] == 4 and client.stats.throttled == 0


async def test_a_new_day_rereads_the_mailbox_for_the_moved_window(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    """A delta token keeps the window it was made with; when the cache window moves to the next day the mailbox is
    read again for the new window inside a resync frame (an event that entered the window is published)."""
    (mailbox,) = new_mailboxes(emu, "rita")
    clock = FakeClock(dt.datetime.now(dt.UTC))
    # cache.forward is 2 months: an event 2 months and 3 days ahead is outside today's window, inside in 5 days
    ahead = clock.now() + relativedelta(months=2) + dt.timedelta(days=3)
    inside = await writer.create(mailbox, "Inside the window")
    later = await writer.create(mailbox, "Enters the window later", start=ahead.replace(minute=0, second=0))
    config = graph_config(seats.address, [graph_provider(emu, [mailbox])])
    async with running_graph(config, nats_server, clock=clock) as graph:
        await collector.start()
        await graph.rounds(mailbox)
        await collector.wait(lambda c: c.item_id == inside["id"], what="the event inside the window")
        assert later["id"] not in {c.item_id for c in collector.of(mailbox)}
        await graph.poll(mailbox)  # the same day: an ordinary round, no re-read
        assert graph.status(mailbox).totals.snapshots == 0
        clock.advance(dt.timedelta(days=5))
        status = await graph.poll(mailbox)
        assert status.totals.snapshots == 1
        await collector.wait(lambda c: c.item_id == later["id"], what="the event that entered the window")
    kinds = [c.type for c in collector.of(mailbox)]
    assert kinds.count(BEGIN) == 1 and kinds.count(END) == 1
    end = next(c for c in collector.of(mailbox) if c.type == END)
    assert end.resync.token.startswith("window-")


async def test_every_graph_recurrence_pattern_and_range_becomes_the_masters_recurrence(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    """patternedRecurrence → common.Recurrence for the six pattern types and the three range types, read from the
    masters graph-ingest fetched (the emulator renders them as Graph documents them)."""
    (mailbox,) = new_mailboxes(emu, "ugo")
    first = soon(days=2, hour=9)
    day = first.date().isoformat()
    end = (first + dt.timedelta(days=300)).date().isoformat()
    weekday = first.strftime("%A").lower()
    next_day = (first + dt.timedelta(days=1)).strftime("%A").lower()
    # relativeYearly must have an occurrence in the window: the week of `first` in its month
    index = ("first", "second", "third", "fourth", "last")[(first.day - 1) // 7]
    patterns: dict[str, tuple[dict[str, object], dict[str, object]]] = {
        "daily": ({"type": "daily", "interval": 3}, {"type": "numbered", "numberOfOccurrences": 5}),
        "weekly": (
            {"type": "weekly", "interval": 2, "daysOfWeek": [weekday, next_day], "firstDayOfWeek": "monday"},
            {"type": "endDate", "endDate": end},
        ),
        "absoluteMonthly": ({"type": "absoluteMonthly", "interval": 1, "dayOfMonth": first.day}, {"type": "noEnd"}),
        "relativeMonthly": (
            {
                "type": "relativeMonthly",
                "interval": 2,
                "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                "index": "last",
            },
            {"type": "noEnd"},
        ),
        "absoluteYearly": (
            {"type": "absoluteYearly", "interval": 2, "month": first.month, "dayOfMonth": first.day},
            {"type": "numbered", "numberOfOccurrences": 3},
        ),
        "relativeYearly": (
            {"type": "relativeYearly", "interval": 3, "month": first.month, "daysOfWeek": [weekday], "index": index},
            {"type": "noEnd"},
        ),
    }
    created: dict[str, dict[str, object]] = {}
    for name, (pattern, boundary) in patterns.items():
        created[name] = await writer.create(
            mailbox, name, start=first, recurrence={"pattern": pattern, "range": {**boundary, "startDate": day}}
        )
    config = graph_config(seats.address, [graph_provider(emu, [mailbox])])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        await graph.rounds(mailbox)

        def masters() -> dict[str, calendar_pb2.CalendarEvent]:
            found = [c for c in collector.of(mailbox) if c.event.kind == calendar_pb2.ITEM_KIND_RECURRING_MASTER]
            return {c.event.subject: c.event for c in found}

        await wait_for_async(lambda: len(masters()) == 6, timeout=20, what="six masters")
    got = {name: event.recurrence for name, event in masters().items()}
    assert {name: event.item_id for name, event in masters().items()} == {n: e["id"] for n, e in created.items()}
    assert {name: rule.start_date for name, rule in got.items()} == dict.fromkeys(patterns, day)
    day_of = common_pb2.DayOfWeek.Value(f"DAY_OF_WEEK_{weekday.upper()}")
    assert (got["daily"].daily.interval, got["daily"].number_of_occurrences) == (3, 5)
    weekly = got["weekly"]
    assert (weekly.weekly.interval, weekly.weekly.first_day_of_week, weekly.end_date) == (
        2,
        common_pb2.DAY_OF_WEEK_MONDAY,
        end,
    )
    assert list(weekly.weekly.days_of_week) == [
        day_of,
        common_pb2.DayOfWeek.Value(f"DAY_OF_WEEK_{next_day.upper()}"),
    ]
    assert (got["absoluteMonthly"].absolute_monthly.day_of_month, got["absoluteMonthly"].no_end) == (first.day, True)
    relative = got["relativeMonthly"].relative_monthly
    assert (relative.interval, relative.days_of_week, relative.week_index) == (
        2,
        common_pb2.DAY_OF_WEEK_WEEKDAY,
        common_pb2.WEEK_INDEX_LAST,
    )
    yearly = got["absoluteYearly"]
    absolute_yearly = yearly.absolute_yearly
    assert (absolute_yearly.interval, absolute_yearly.month, absolute_yearly.day_of_month) == (
        2,
        first.month,
        first.day,
    )
    assert yearly.number_of_occurrences == 3
    relative_yearly = got["relativeYearly"].relative_yearly
    assert (
        relative_yearly.interval,
        relative_yearly.month,
        relative_yearly.days_of_week,
        relative_yearly.week_index,
    ) == (
        3,
        first.month,
        day_of,
        common_pb2.WeekIndex.Value(f"WEEK_INDEX_{index.upper()}"),
    )


async def test_series_master_lists_occurrences_cancelled_and_moved_after_the_cache_window(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, collector: ChangeCollector, writer: GraphWriter
) -> None:
    """The engine looks up to SERIES_HORIZON past the window for a series' next occurrence, so the master names the
    occurrences cancelled there too (Graph v1.0 only leaves them out of `instances`, read over that whole span in
    several ranges of one $batch); an exception there is a modified occurrence. Beyond the horizon nothing is read."""
    (mailbox,) = new_mailboxes(emu, "wren")
    first = soon(days=1, hour=9)
    series = await writer.create(
        mailbox,
        "Weekly planning",
        start=first,
        minutes=30,
        recurrence={
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [first.strftime("%A").lower()]},
            "range": {"type": "noEnd", "startDate": first.date().isoformat()},
        },
    )

    async def occurrence(weeks: int) -> dict[str, object]:
        at = first + dt.timedelta(weeks=weeks)
        query = f"startDateTime={at:%Y-%m-%dT00:00:00Z}&endDateTime={at + dt.timedelta(days=1):%Y-%m-%dT00:00:00Z}"
        (found,) = (await writer._call("GET", f"/users/{mailbox}/events/{series['id']}/instances?{query}"))["value"]
        return dict(found)

    # The test config's window is 1 month back and 2 months ahead: week 16 and 20 are past it, inside the horizon;
    # week 150 (~1,050 days) is past window + SERIES_HORIZON (800 days).
    moved_at = first + dt.timedelta(weeks=16, hours=2)
    await writer.update(
        mailbox,
        str((await occurrence(16))["id"]),
        {
            "subject": "Weekly planning (moved)",
            "start": {"dateTime": f"{moved_at:%Y-%m-%dT%H:%M:%S}", "timeZone": "UTC"},
            "end": {"dateTime": f"{moved_at + dt.timedelta(minutes=30):%Y-%m-%dT%H:%M:%S}", "timeZone": "UTC"},
        },
    )
    await writer.delete(mailbox, str((await occurrence(20))["id"]))
    await writer.delete(mailbox, str((await occurrence(150))["id"]))
    before = emu.control("GET", "/requests")["operations"].get("GET instances", 0)
    config = graph_config(seats.address, [graph_provider(emu, [mailbox])])
    async with running_graph(config, nats_server) as graph:
        await collector.start()
        await graph.rounds(mailbox)
        found = await collector.wait(
            lambda c: c.event.kind == calendar_pb2.ITEM_KIND_RECURRING_MASTER and c.mailbox == mailbox,
            what="the series master",
        )
    master = found.event
    assert [d.ToDatetime(dt.UTC) for d in master.deleted_occurrences] == [first + dt.timedelta(weeks=20)]
    assert [
        (m.original_start.ToDatetime(dt.UTC), m.start.ToDatetime(dt.UTC), m.subject)
        for m in master.modified_occurrences
    ] == [(first + dt.timedelta(weeks=16), moved_at, "Weekly planning (moved)")]
    ranges = emu.control("GET", "/requests")["operations"]["GET instances"] - before
    assert ranges >= 3, "the span (~3 months + 800 days) is read as several ranges of at most 366 days"

"""What TrueConf users see of a Graph series: graph-ingest publishes the master (with its recurrence, the modified
and the cancelled occurrence) and the instances; the real sync-engine (PostgreSQL, the same JetStream) shows every
occurrence once — the master's expansion and the instance messages name the same occurrence id
(<meeting>@<original start>), the exception's time and subject win, the cancelled occurrence is gone even though
Graph never returned it as an instance."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from graph_ingest_support import GraphWriter, SeatServer, graph_config, graph_provider, new_mailboxes, running_graph
from sync_engine_testkit import Harness

from graph_emulator.testing import EmulatorProcess
from sync_engine.ids import to_datetime
from tccal.clock import FakeClock
from tccal_sandbox.embedded import EmbeddedNats


@pytest.fixture
async def engine(pg_dsn: str, nats_url: str) -> AsyncIterator[Harness]:
    world = await Harness(pg_dsn, nats_url).open()
    world.clock = FakeClock(dt.datetime.now(dt.UTC))
    try:
        await world.start_engine()
        yield world
    finally:
        await world.close()


def _shown(occurrences: list[object]) -> list[tuple[dt.datetime, str, bool]]:
    return sorted((to_datetime(o.start), o.subject, o.cancelled) for o in occurrences)  # type: ignore[attr-defined]


async def test_weekly_series_with_a_modified_and_a_cancelled_occurrence_shows_each_occurrence_once(
    emu: EmulatorProcess, nats_server: EmbeddedNats, seats: SeatServer, writer: GraphWriter, engine: Harness
) -> None:
    (mailbox,) = new_mailboxes(emu, "vera")
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    first = now + dt.timedelta(days=1, hours=1)
    series = await writer.create(
        mailbox,
        "Weekly review",
        start=first,
        minutes=30,
        recurrence={
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [first.strftime("%A").lower()]},
            "range": {"type": "numbered", "startDate": first.date().isoformat(), "numberOfOccurrences": 4},
        },
    )
    window = f"startDateTime={first:%Y-%m-%dT00:00:00Z}&endDateTime={first + dt.timedelta(weeks=5):%Y-%m-%dT00:00:00Z}"
    instances = (await writer._call("GET", f"/users/{mailbox}/events/{series['id']}/instances?{window}"))["value"]
    second, third = sorted(instances, key=lambda i: str(i["originalStart"]))[1:3]
    moved = first + dt.timedelta(weeks=1, hours=3)
    await writer.update(
        mailbox,
        second["id"],
        {
            "subject": "Weekly review (moved)",
            "start": {"dateTime": f"{moved:%Y-%m-%dT%H:%M:%S}", "timeZone": "UTC"},
            "end": {"dateTime": f"{moved + dt.timedelta(minutes=30):%Y-%m-%dT%H:%M:%S}", "timeZone": "UTC"},
        },
    )
    await writer.delete(mailbox, third["id"])  # cancelled before graph-ingest ever saw it: only the master knows
    config = graph_config(seats.address, [graph_provider(emu, [mailbox])])
    async with running_graph(config, nats_server) as graph:
        await graph.rounds(mailbox)
        await engine.settle()
        expected = [
            (first, "Weekly review", False),
            (moved, "Weekly review (moved)", False),
            (first + dt.timedelta(weeks=3), "Weekly review", False),
        ]
        span = (now - dt.timedelta(days=1), now + dt.timedelta(weeks=6))
        shown = _shown(await engine.events(mailbox, *span))
        assert shown == expected
        meeting = await engine.meeting(series["iCalUId"])  # the engine holds the master's rule, not bare instances
        assert meeting.recurrence.WhichOneof("pattern") == "weekly" and meeting.recurrence.number_of_occurrences == 4
        # Later changes through delta: the moved one cancelled too, the master published again without it.
        await writer.delete(mailbox, second["id"])
        await graph.poll(mailbox)
        await engine.settle()
        assert _shown(await engine.events(mailbox, *span)) == [expected[0], expected[2]]

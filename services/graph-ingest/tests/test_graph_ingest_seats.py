"""Seats follow licensing's announcement: a mailbox refused a seat starts syncing as soon as a message arrives on
`calendar.v1.control.seats` (what `licensing --register` sends after a licence change), not at the next refresh
(an hour in these tests); one that loses its seat stops."""

from __future__ import annotations

from ews_ingest_support import ChangeCollector
from graph_ingest_support import (
    GraphHarness,
    GraphWriter,
    SeatServer,
    graph_config,
    graph_provider,
    new_mailboxes,
    publish_as_admin,
    running_graph,
)

from graph_emulator.testing import EmulatorProcess
from tccal.subjects import SEATS_SUBJECT
from tccal_sandbox.embedded import EmbeddedNats
from tccal_sandbox.testing import wait_for_async


async def _answers(graph: GraphHarness, count: int) -> None:
    async def done() -> bool:
        return graph.runtime.seats.answers >= count

    await wait_for_async(done, timeout=30, what=f"{count} AllocateSeats answer(s)")


async def test_an_announced_licence_change_grants_and_takes_seats_at_once(
    emu: EmulatorProcess,
    nats_server: EmbeddedNats,
    nats_url: str,
    seats: SeatServer,
    collector: ChangeCollector,
    writer: GraphWriter,
) -> None:
    first, later = new_mailboxes(emu, "tamara", "ulyana")
    await writer.create(first, "Seated from the start")
    waiting = await writer.create(later, "Waits for a licence")
    seats.denied.add(later)
    config = graph_config(seats.address, [graph_provider(emu, [first, later])])
    async with running_graph(config, nats_server) as graph:  # seat refresh: an hour (FAST)
        await collector.start()
        await graph.rounds(first)
        assert graph.runtime.seats.refused == {later: "refused by the test licensing"}
        assert graph.status(later).rounds == 0
        seats.denied.clear()  # the new licence has room
        await publish_as_admin(nats_url, SEATS_SUBJECT, b"{}")
        await graph.rounds(later)
        arrived = await collector.wait(lambda c: c.mailbox == later, what="the newly seated mailbox's event")
        assert arrived.item_id == waiting["id"]
        assert graph.runtime.seats.granted == {first, later}
        answered = graph.runtime.seats.answers
        seats.denied.add(first)  # a smaller licence
        await publish_as_admin(nats_url, SEATS_SUBJECT, b"{}")
        await _answers(graph, answered + 1)
        assert graph.runtime.seats.granted == {later}
        assert graph.runtime.seats.refused == {first: "refused by the test licensing"}

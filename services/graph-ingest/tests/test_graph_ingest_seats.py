"""Seats follow licensing's announcement: a mailbox refused a seat starts syncing as soon as a message arrives on
`calendar.v1.control.seats` (what `licensing --register` sends after a licence change), not at the next refresh
(an hour in these tests); one that loses its seat stops."""

from __future__ import annotations

from graph_ingest_support import GraphHarness, GraphTestbed, graph_provider, new_mailboxes, publish_as_admin

from tccal.subjects import SEATS_SUBJECT
from tccal_sandbox.testing import wait_for_async


async def _answers(graph: GraphHarness, count: int) -> None:
    async def done() -> bool:
        return graph.runtime.seats.answers >= count

    await wait_for_async(done, timeout=30, what=f"{count} AllocateSeats answer(s)")


async def test_an_announced_licence_change_grants_and_takes_seats_at_once(testbed: GraphTestbed) -> None:
    seats, collector = testbed.seats, testbed.collector
    first, later = new_mailboxes(testbed.emu, "tamara", "ulyana")
    await testbed.writer.create(first, "Seated from the start")
    waiting = await testbed.writer.create(later, "Waits for a licence")
    seats.denied.add(later)
    async with testbed.running([graph_provider(testbed.emu, [first, later])]) as graph:  # seat refresh: an hour
        await collector.start()
        await graph.rounds(first)
        assert graph.runtime.seats.refused == {later: "refused by the test licensing"}
        assert graph.status(later).rounds == 0
        seats.denied.clear()  # the new licence has room
        await publish_as_admin(testbed.nats_url, SEATS_SUBJECT, b"{}")
        await graph.rounds(later)
        arrived = await collector.wait(lambda c: c.mailbox == later, what="the newly seated mailbox's event")
        assert arrived.item_id == waiting["id"]
        assert graph.runtime.seats.granted == {first, later}
        answered = graph.runtime.seats.answers
        seats.denied.add(first)  # a smaller licence
        await publish_as_admin(testbed.nats_url, SEATS_SUBJECT, b"{}")
        await _answers(graph, answered + 1)
        assert graph.runtime.seats.granted == {later}
        assert graph.runtime.seats.refused == {first: "refused by the test licensing"}

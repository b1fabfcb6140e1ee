"""The engine as it runs in production: `python -m sync_engine --config config.json` (docs/architecture.md §3, §9)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sync_engine_testkit import (
    ANNA,
    BOB,
    EngineProcess,
    Harness,
    SeatServer,
    attendee,
    config_dict,
    event,
    full_spec,
    mid,
    wait_ready,
)

from sync_engine.ids import to_timestamp
from tccal.grpckit import service_token
from tccal.nats_auth import ADMIN
from tccal_sandbox.embedded import EmbeddedNats, EmbeddedPostgres
from tccal_sandbox.testing import short_tmpdir, wait_for_async
from trueconf.calendar.v1 import ingest_pb2, sync_pb2, sync_pb2_grpc


async def test_engine_process_serves_meetings_api_metrics_resync_and_stops_on_sigterm(
    harness: Harness, seat_server: SeatServer, tmp_path: Path
) -> None:
    document = config_dict(harness.pg_dsn, harness.nats_url, licensing=seat_server.address)
    document["grpc"]["adminToken"] = "s3cret-admin-token"
    process = EngineProcess(document, tmp_path).start()
    admin = [("authorization", "Bearer s3cret-admin-token")]
    try:
        await wait_ready(process)
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
        harness.mailboxes.observed_at = datetime.now(UTC).replace(microsecond=0)
        await harness.upsert(ANNA, event("proc-1", start=start, attendees=[attendee(BOB)], conference=full_spec()))
        [create] = await harness.wait_command("conference_upsert", 1)
        await harness.result(create, conference_id="4242")
        await harness.wait_command("calendar_upsert", 2, occurrence__conference__id="4242")

        async with grpc.aio.insecure_channel(process.grpc_address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            api = sync_pb2_grpc.SyncServiceStub(channel)
            request = sync_pb2.ListEventsRequest(user=BOB)
            getattr(request, "from").CopyFrom(to_timestamp(start - timedelta(hours=1)))
            request.to.CopyFrom(to_timestamp(start + timedelta(hours=1)))

            # tcs-gateway's identity lists a user's events (its snapshots), the admin too; nobody else
            gateway = [("authorization", f"Bearer {service_token('s3cret-admin-token', 'tcs-gateway')}")]

            async def bob_sees_the_join_link() -> bool:
                occurrences = (await api.ListEvents(request, metadata=gateway)).occurrences
                return [o.conference.id for o in occurrences] == ["4242"]

            await wait_for_async(bob_sees_the_join_link, what="Bob's event with the conference")
            assert [o.conference.id for o in (await api.ListEvents(request, metadata=admin)).occurrences] == ["4242"]
            # a caller holding the list as of the user's seq learns that nothing changed, without the occurrences
            listed = await api.ListEvents(request, metadata=gateway)
            assert listed.seq >= 1 and not listed.unchanged
            since = sync_pb2.ListEventsRequest()
            since.CopyFrom(request)
            since.since_seq = listed.seq
            held = await api.ListEvents(since, metadata=gateway)
            assert held.unchanged and held.seq == listed.seq and len(held.occurrences) == 0
            since.since_seq = listed.seq - 1
            behind = await api.ListEvents(since, metadata=gateway)
            assert not behind.unchanged and [o.conference.id for o in behind.occurrences] == ["4242"]
            ingest = [("authorization", f"Bearer {service_token('s3cret-admin-token', 'ews-ingest')}")]
            for metadata, code in (
                ([], grpc.StatusCode.UNAUTHENTICATED),
                ([("authorization", "Bearer guessed")], grpc.StatusCode.UNAUTHENTICATED),
                (ingest, grpc.StatusCode.PERMISSION_DENIED),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await api.ListEvents(request, metadata=metadata)
                assert denied.value.code() == code
            # meetings, conferences (links, PINs) and commands are the admin's, not the gateway's
            for call, ask in (
                (api.GetMeeting, sync_pb2.GetMeetingRequest(meeting_id=mid("proc-1"))),
                (api.ListConferences, sync_pb2.ListConferencesRequest()),
                (api.ListCommands, sync_pb2.ListCommandsRequest()),
            ):
                for metadata, code in (
                    ([], grpc.StatusCode.UNAUTHENTICATED),
                    (gateway, grpc.StatusCode.PERMISSION_DENIED),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as denied:
                        await call(ask, metadata=metadata)
                    assert denied.value.code() == code
            conferences = await api.ListConferences(sync_pb2.ListConferencesRequest(), metadata=admin)
            assert conferences.conferences

            # ResyncMailbox: a control message for ews-ingest; the mailbox's items stay until the re-read judges them.
            requests: list[ingest_pb2.ResyncMailboxRequest] = []

            async def on_request(message: object) -> None:
                requests.append(ingest_pb2.ResyncMailboxRequest.FromString(message.data))  # type: ignore[attr-defined]

            subscription = await harness.bus.nc.subscribe("calendar.v1.control.resync.>", cb=on_request)
            await harness.bus.nc.flush()  # the server has the subscription before the engine publishes
            resync = sync_pb2.SyncResyncMailboxRequest(mailbox="Anna@Example.com")
            with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
                await api.ResyncMailbox(resync)  # an admin call without the bearer token
            assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
            response = await api.ResyncMailbox(resync, metadata=admin)
            assert response.published == 1
            await wait_for_async(lambda: _true(bool(requests)), timeout=120, what="the resync request")
            assert [r.mailbox for r in requests] == [ANNA]
            await subscription.unsubscribe()
            async with harness.connect() as connection:  # nothing is cleared: the re-read's END judges the items
                assert await connection.fetchval("SELECT count(*) FROM items WHERE mailbox = $1", ANNA) == 1
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await api.ResyncMailbox(sync_pb2.SyncResyncMailboxRequest(mailbox="not-an-address"), metadata=admin)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            # ews-ingest answers with the mailbox's items again: they are rebuilt, nothing is pushed twice.
            before = len(harness.commands)
            again = await harness.upsert(
                ANNA, event("proc-1", start=start, attendees=[attendee(BOB)], conference=full_spec())
            )

            async def rebuilt() -> bool:
                async with harness.connect() as connection:
                    stored = await connection.fetchval("SELECT max(sequence) FROM items WHERE mailbox = $1", ANNA)
                    return bool(stored == again.sequence)

            await wait_for_async(rebuilt, what="the resynced item")
            await harness.settle()
            assert len(harness.commands) == before
            meeting = await api.GetMeeting(sync_pb2.GetMeetingRequest(meeting_id=mid("proc-1")), metadata=admin)
            assert meeting.conference.id == "4242" and meeting.mailboxes == [ANNA]

        async with aiohttp.ClientSession() as session, session.get(process.http_url + "/metrics") as metrics:
            text = await metrics.text()
        assert "sync_engine_changes_applied" in text and "sync_engine_commands_emitted" in text
        assert "sync_engine_relay_lag_seconds" in text
    finally:
        code = process.terminate()
    assert code == 0, process.output()


async def test_sigterm_finishes_the_messages_at_hand_and_nothing_is_lost(
    harness: Harness, seat_server: SeatServer, tmp_path: Path
) -> None:
    document = config_dict(harness.pg_dsn, harness.nats_url, licensing=seat_server.address)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    process = EngineProcess(document, tmp_path).start()
    await wait_ready(process)
    uids = [f"burst-{n}" for n in range(40)]
    for uid in uids:
        await harness.upsert(ANNA, event(uid, start=start, attendees=[attendee(BOB)]))
    await harness.wait_command("calendar_upsert", 2)
    assert process.terminate() == 0, process.output()
    again = EngineProcess(document, tmp_path).start()
    try:
        await wait_ready(again)
        await harness.wait_command("calendar_upsert", 2 * len(uids))
        await harness.settle()
    finally:
        assert again.terminate() == 0, again.output()
    upserts = harness.of("calendar_upsert")
    assert len(upserts) == 2 * len(uids)  # each meeting pushed once to each user: nothing twice, nothing lost
    assert len({c.command_id for c in upserts}) == len(upserts)


async def test_two_engine_processes_launch_an_occurrence_once(
    harness: Harness, seat_server: SeatServer, tmp_path: Path
) -> None:
    first_config = config_dict(harness.pg_dsn, harness.nats_url, licensing=seat_server.address)
    second_config = config_dict(harness.pg_dsn, harness.nats_url, licensing=seat_server.address)
    first = EngineProcess(first_config, tmp_path).start()
    second = EngineProcess(second_config, tmp_path).start()
    try:
        await asyncio.gather(wait_ready(first), wait_ready(second))
        start = datetime.now(UTC) + timedelta(seconds=3)
        await harness.upsert(
            ANNA, event("proc-launch", start=start, duration=timedelta(minutes=20), conference=full_spec())
        )
        [create] = await harness.wait_command("conference_upsert", 1)
        await harness.result(create, conference_id="77")
        [run] = await harness.wait_command("conference_run", 1)
        assert run.conference_run.conference_id == "77"

        async def launched() -> bool:
            async with harness.connect() as connection:
                state = await connection.fetchval(
                    "SELECT state FROM launches WHERE meeting_id = $1", mid("proc-launch")
                )
            return bool(state == "launched")

        await wait_for_async(launched, what="the launch recorded")
        await asyncio.sleep(1.5)  # several scheduler ticks of both processes after the launch
        await harness.settle()
        assert len(harness.of("conference_run")) == 1
    finally:
        codes = (first.terminate(), second.terminate())
    assert codes == (0, 0), first.output() + second.output()


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
def own_pg_server() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test alone: the test shuts it down under the engine."""
    directory = short_tmpdir("tcpgstop")
    server = EmbeddedPostgres(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_sigterm_stops_the_engine_while_nats_is_gone_and_postgresql_is_stopped(
    own_pg_server: EmbeddedPostgres, nats_server: EmbeddedNats, seat_server: SeatServer, tmp_path: Path
) -> None:
    """systemd stops a service with SIGTERM and kills it TimeoutStopSec later: the engine exits on its own, with
    code 0, whatever its NATS and PostgreSQL do — a running engine whose NATS was killed and whose PostgreSQL
    shut down, and one (re)started while both are gone and still retrying to connect. Nothing waits on them without
    bound (connect retries, the loops, bus and pool closes)."""
    document = config_dict(own_pg_server.dsn("postgres"), nats_server.url_for(ADMIN), licensing=seat_server.address)
    running = EngineProcess(document, tmp_path).start()
    restarted = EngineProcess(document, tmp_path)
    try:
        await wait_ready(running)
        assert nats_server.process is not None
        nats_server.process.kill()
        nats_server.process.wait(10)
        own_pg_server.stop()  # pg_ctl stop: the engine's sessions are ended, new ones refused
        assert running.process is not None and running.process.poll() is None
        assert running.terminate(timeout=20) == 0, running.output()

        restarted.start()

        async with aiohttp.ClientSession() as session:

            async def up_and_not_ready() -> bool:  # started: its connect loops retry NATS and PostgreSQL
                async with session.get(restarted.http_url + "/readyz") as response:
                    return response.status == 503

            await wait_for_async(up_and_not_ready, what="the restarted engine up", tolerate=(aiohttp.ClientError,))
        # before the stop path was bounded the connect retries ran on, and this waited for ever (killed at 20 s)
        assert restarted.terminate(timeout=20) == 0, restarted.output()
    finally:
        for process in (running.process, restarted.process):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)

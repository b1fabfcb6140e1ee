"""Dead letters of the engine's consumers: listed and replayed in the engine itself (SyncService ListDeadLetters /
ReplayDeadLetters, `tc-calendar dead-letters list|replay`), issue #17.

Real dead letters are made by the engine itself (`nats.maxDeliver` 2): a change whose sequence PostgreSQL's bigint
cannot hold (never applicable), and a change refused while an operator's wrong constraint was in place (a trigger
raising 23514 check_violation — data, not infrastructure), which applies once the constraint is gone.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result
from sync_engine_testkit import ANNA, BOB, T0, Harness, attendee, config_dict, event, mid

from sync_engine.api import POLICY, SERVICE_NAME, SyncApi
from sync_engine.cli import dead_letters
from tccal.grpckit import GrpcServer
from tccal.subjects import CALENDAR, DEADLETTER
from tccal_sandbox.testing import free_port
from trueconf.calendar.v1 import sync_pb2, sync_pb2_grpc

WRONG_CONSTRAINT = """
CREATE FUNCTION tc_wrong_constraint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = 'new row violates check constraint "subject_short"';
END $$;
CREATE TRIGGER tc_wrong_constraint BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION tc_wrong_constraint();
"""


def _meeting(uid: str, day: int) -> Any:
    return event(uid, start=T0 + timedelta(days=day), attendees=[attendee(BOB)], subject=f"subject {uid}")


async def _count(harness: Harness) -> int:
    return int((await harness.bus.js.stream_info(DEADLETTER)).state.messages)


async def _make_dead_letters(harness: Harness) -> None:
    """Two dead letters from the engine: the never-applicable one first, then the wrongly refused one."""
    never = harness.mailboxes.upsert(ANNA, _meeting("uid-never", 1), sequence=2**64 - 1)
    await harness.publish(never)
    await harness.wait_for(lambda: _count(harness), "the first dead letter")
    async with harness.connect() as connection:
        await connection.execute(WRONG_CONSTRAINT)
    await harness.upsert(BOB, _meeting("uid-refused", 2))
    await harness.wait_for(lambda: _at_least(harness, 2), "the second dead letter")
    async with harness.connect() as connection:
        await connection.execute("DROP TRIGGER tc_wrong_constraint ON items; DROP FUNCTION tc_wrong_constraint()")


async def _at_least(harness: Harness, count: int) -> int | None:
    found = await _count(harness)
    return found if found >= count else None


async def _calendar_messages(harness: Harness) -> int:
    return int((await harness.bus.js.stream_info(CALENDAR)).state.messages)


async def test_dead_letters_are_listed_and_replayed_in_the_engine(harness: Harness) -> None:
    await harness.start_engine(max_deliver=2)
    assert harness.api is not None
    before = datetime.now(UTC) - timedelta(seconds=5)
    await harness.upsert(ANNA, _meeting("uid-fine", 3))
    await harness.wait_command("calendar_upsert", 2, occurrence__meeting_id=mid("uid-fine"))
    await _make_dead_letters(harness)
    other = await harness.bus.js.publish(  # another service's dead letter: listed (marked), never replayed here
        "dlq.tcs_results.ews-ingest-writeback",
        b"\x0a\x03cmd",
        headers={"Tc-Dlq-Stream": "TCS_RESULTS", "Tc-Dlq-Subject": "tcs.v1.results.video%2Eexample%2Ecom#vcs"},
    )

    listed: sync_pb2.ListDeadLettersResponse = await harness.api.ListDeadLetters(sync_pb2.ListDeadLettersRequest())
    assert listed.total == 3
    never, refused, writeback = listed.dead_letters
    assert (writeback.id, writeback.durable, writeback.message_id) == (other.seq, "ews-ingest-writeback", "cmd")
    assert never.id < refused.id
    assert (never.stream, never.durable) == (CALENDAR, "sync-engine-calendar")
    assert never.mailbox == ANNA and refused.mailbox == BOB
    assert never.subject.startswith("calendar.v1.changes.") and never.subject.endswith("anna@example%2Ecom")
    assert "DataError" in never.reason and "int64" in never.reason
    assert "CheckViolationError" in refused.reason and "subject_short" in refused.reason
    assert refused.message_id.startswith(BOB + "/")
    assert never.dead_lettered_at.ToDatetime(tzinfo=UTC) >= before

    # an unknown id refuses the whole call, naming it, and replays nothing
    with pytest.raises(grpc.aio.AioRpcError) as refused_call:
        await harness.api.ReplayDeadLetters(sync_pb2.ReplayDeadLettersRequest(ids=[refused.id, 999]))
    assert refused_call.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no dead letter with id 999" in str(refused_call.value.details())
    assert await _count(harness) == 3
    with pytest.raises(grpc.aio.AioRpcError) as not_ours:
        await harness.api.ReplayDeadLetters(sync_pb2.ReplayDeadLettersRequest(ids=[other.seq]))
    assert not_ours.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ews-ingest-writeback, not sync-engine's: ews-ingest's join-link write-back" in str(not_ours.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as neither:
        await harness.api.ReplayDeadLetters(sync_pb2.ReplayDeadLettersRequest())
    assert neither.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # the wrongly refused change, replayed, reaches TrueConf and leaves the dead-letter stream; it is applied in the
    # engine itself, not published into CALENDAR again (sync-engine may not publish there: tccal.nats_auth)
    calendar_before = await _calendar_messages(harness)
    replayed: sync_pb2.ReplayDeadLettersResponse = await harness.api.ReplayDeadLetters(
        sync_pb2.ReplayDeadLettersRequest(ids=[refused.id])
    )
    assert [one.id for one in replayed.replayed] == [refused.id] and not replayed.failed
    await harness.wait_command("calendar_upsert", 1, occurrence__meeting_id=mid("uid-refused"))
    assert await _calendar_messages(harness) == calendar_before
    left: sync_pb2.ListDeadLettersResponse = await harness.api.ListDeadLetters(sync_pb2.ListDeadLettersRequest())
    assert [one.id for one in left.dead_letters] == [never.id, other.seq]
    with pytest.raises(grpc.aio.AioRpcError) as again:  # replayed once: its id is gone
        await harness.api.ReplayDeadLetters(sync_pb2.ReplayDeadLettersRequest(ids=[refused.id]))
    assert again.value.code() == grpc.StatusCode.NOT_FOUND

    # a change that can never be applied fails again: it stays under its id, and the answer says why
    again_all: sync_pb2.ReplayDeadLettersResponse = await harness.api.ReplayDeadLetters(
        sync_pb2.ReplayDeadLettersRequest(all=True)
    )
    assert not again_all.replayed and [one.id for one in again_all.failed] == [never.id]  # not ews-ingest's
    assert "DataError" in again_all.failed[0].reason, again_all.failed[0].reason
    assert await _listed_ids(harness, lambda ids: True) == [never.id, other.seq]
    assert harness.of("calendar_upsert", occurrence__meeting_id=mid("uid-never")) == []
    assert await _calendar_messages(harness) == calendar_before


async def _listed_ids(harness: Harness, accept: Any) -> Any:
    assert harness.api is not None
    listed = await harness.api.ListDeadLetters(sync_pb2.ListDeadLettersRequest())
    ids = [one.id for one in listed.dead_letters]
    return ids if accept(ids) else None


async def test_cli_lists_and_replays_with_the_admin_token_of_config_json(harness: Harness, tmp_path: Path) -> None:
    engine = await harness.start_engine(max_deliver=2, api=False)
    token = "dl-admin-token"
    server = GrpcServer("127.0.0.1", 0, policy=POLICY, admin_token=token)
    server.add(sync_pb2_grpc.add_SyncServiceServicer_to_server, SyncApi(engine.engine), SERVICE_NAME)
    port = await server.start()
    harness.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    harness.api = sync_pb2_grpc.SyncServiceStub(harness.channel)
    try:
        await _make_dead_letters(harness)
        grpc_section = {"adminToken": token, "services": {"sync-engine": {"grpcPort": port, "httpPort": free_port()}}}
        good = tmp_path / "config.json"
        good.write_text(json.dumps(config_dict(harness.pg_dsn, harness.nats_url, grpc=grpc_section)))
        wrong = tmp_path / "wrong.json"
        wrong.write_text(
            json.dumps(config_dict(harness.pg_dsn, harness.nats_url, grpc={**grpc_section, "adminToken": "nope"}))
        )

        listed = await _cli("list", "--json", "--config", str(good))
        assert listed.exit_code == 0, listed.output
        document = json.loads(listed.output)
        assert document["total"] == 2
        ids = [one["id"] for one in document["dead_letters"]]
        assert [one["mailbox"] for one in document["dead_letters"]] == [ANNA, BOB]
        assert all(one["reason"] and one["dead_lettered_at"] for one in document["dead_letters"])

        table = await _cli("list", "--config", str(good))
        assert table.exit_code == 0 and "2 dead letter(s)" in table.output and BOB in table.output

        unauthenticated = await _cli("list", "--config", str(wrong))
        assert unauthenticated.exit_code == 1 and "authorization: Bearer" in unauthenticated.output

        unknown = await _cli("replay", "--id", "4242", "--config", str(good))
        assert unknown.exit_code == 1 and "no dead letter with id 4242" in unknown.output
        not_a_number = await _cli("replay", "--id", "abc", "--config", str(good))
        assert not_a_number.exit_code == 2 and "'abc' is not a valid integer" in not_a_number.output
        neither = await _cli("replay", "--config", str(good))
        assert neither.exit_code == 2 and "--id ID" in neither.output

        replayed = await _cli("replay", "--id", str(ids[1]), "--config", str(good))
        assert replayed.exit_code == 0 and f"replayed {ids[1]} from calendar.v1.changes." in replayed.output
        await harness.wait_command("calendar_upsert", 1, occurrence__meeting_id=mid("uid-refused"))
        assert await _count(harness) == 1
        failing = await _cli("replay", "--all", "--config", str(good))
        assert failing.exit_code == 1, failing.output
        assert f"failed again {ids[0]} from calendar.v1.changes." in failing.output and "DataError" in failing.output
        assert "0 dead letter(s) replayed, 1 failed again and kept" in failing.output
        assert await _count(harness) == 1
    finally:
        await server.stop(0)


async def _cli(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, dead_letters, list(args))

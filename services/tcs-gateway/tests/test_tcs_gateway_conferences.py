"""Conferences through TrueConf Server REST API v4 (docs/architecture.md §4.4): every field, idempotency, tokens,
backoff, invitations, run/stop, permanent and retryable failures — against the TrueConf emulator's REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tcs_gateway_testkit import (
    SERVER_ID,
    CommandClient,
    World,
    admin,
    gateway_settings,
    inspect,
    rest_log,
    server_settings,
    stamp,
    today_at,
)

from tccal.subjects import TCS_COMMANDS
from tccal_sandbox.testing import wait_for_async
from tcs_gateway.commands import durable_name
from tcs_gateway.rest.conferences import conference_id_for
from trueconf.calendar.v1 import commands_pb2, common_pb2

OK = commands_pb2.COMMAND_STATUS_OK
RETRYABLE = commands_pb2.COMMAND_STATUS_RETRYABLE_ERROR
PERMANENT = commands_pb2.COMMAND_STATUS_PERMANENT_ERROR


def upsert(
    meeting: str,
    *,
    mode: int = common_pb2.CONFERENCE_MODE_SMART_MEETING,
    access: int = common_pb2.CONFERENCE_ACCESS_PRIVATE,
    invitees: list[str] | None = None,
    topic: str = "Quarterly review",
    start: datetime | None = None,
    weekly: bool = False,
    **spec: Any,
) -> commands_pb2.TcsCommand:
    command = CommandClient.conference_command("conference_upsert", meeting)
    body = command.conference_upsert
    body.topic = topic
    body.owner = "alice@example.test"
    body.spec.source = common_pb2.CONFERENCE_SOURCE_EXTENDED_PROPERTY
    body.spec.mode = common_pb2.ConferenceMode.ValueType(mode)
    body.spec.access = common_pb2.ConferenceAccess.ValueType(access)
    for name, value in spec.items():
        setattr(body.spec, name, value)
    body.schedule.type = commands_pb2.SCHEDULE_TYPE_WEEK if weekly else commands_pb2.SCHEDULE_TYPE_ONCE
    body.schedule.start.CopyFrom(stamp(start or today_at(10)))
    body.schedule.duration_seconds = 3600
    if invitees is not None:
        body.sync_invitations = True
        for email in invitees:
            body.invitations.add(email=email, display_name=email.split("@")[0].title())
    return command


async def run_command(world: World, command: commands_pb2.TcsCommand) -> commands_pb2.TcsCommandResult:
    await world.commands.publish(command)
    return await world.commands.result_of(command.command_id)


async def conference(tcs: Any, conference_id: str) -> dict[str, Any]:
    found: dict[str, Any] = await inspect(tcs, f"/conferences/{conference_id}")
    return found


def calls(log: list[dict[str, Any]], method: str, path: str) -> list[dict[str, Any]]:
    return [entry for entry in log if entry["method"] == method and entry["path"] == path]


async def rest_world(world: World, **overrides: Any) -> Any:
    tcs = await world.tcs(None)
    await world.gateway(gateway_settings(world.sync, [server_settings(tcs)], **overrides))
    return tcs


async def test_every_conference_field_reaches_trueconf_server(world: World) -> None:
    tcs = await rest_world(world)
    start = today_at(10)
    command = upsert(
        "meeting-fields",
        mode=common_pb2.CONFERENCE_MODE_MODERATED,
        invitees=["bob@example.test", "carol@example.test"],
        max_participants=50,
        max_podiums=6,
        pin="879651",
        waiting_room_enabled=True,
        recording_enabled=True,
        mute_mic_on_join=True,
        mute_camera_on_join=True,
        start=start,
    )
    result = await run_command(world, command)
    assert result.status == OK, result.error
    conference_id = conference_id_for("meeting-fields")
    assert result.conference.id == conference_id
    assert result.conference.url == f"https://tcs.example.test/c/{conference_id}"
    assert result.meeting_id == "meeting-fields"
    held = await conference(tcs, conference_id)
    assert held["topic"] == "Quarterly review"
    assert held["owner"] == "alice"
    assert held["mode"] == "S|L"
    assert held["access"] == "private"
    assert held["schedule"]["type"] == "once"
    assert held["schedule"]["start_time"] == int(start.timestamp())
    assert held["schedule"]["duration"] == 3600
    assert (held["max_participants"], held["max_podiums"]) == (50, 6)
    assert held["pin"] == "879651"
    assert held["waiting_room_enabled"] and held["recording_enabled"]
    assert held["on_join_mute_mic"] and held["on_join_mute_camera"]
    assert sorted(i["id"] for i in held["invitations"]) == ["bob", "carol"]
    assert held["url"] == result.conference.url
    # Every change comes through an update of the same conference.
    changed = upsert(
        "meeting-fields",
        mode=common_pb2.CONFERENCE_MODE_ALL_ON_SCREEN,
        access=common_pb2.CONFERENCE_ACCESS_PUBLIC,
        topic="Quarterly review (moved)",
        max_participants=20,
        start=today_at(12),
        weekly=True,
    )
    result = await run_command(world, changed)
    assert result.status == OK, result.error
    held = await conference(tcs, conference_id)
    assert held["topic"] == "Quarterly review (moved)"
    assert held["mode"] == "PxP" and held["access"] == "public"
    assert (held["max_participants"], held["max_podiums"]) == (20, 20)
    assert held["pin"] is None
    assert not held["waiting_room_enabled"] and not held["recording_enabled"]
    assert not held["on_join_mute_mic"] and not held["on_join_mute_camera"]
    assert held["schedule"]["type"] == "week"
    assert held["schedule"]["days"] == [today_at(12).strftime("%A").lower()]
    assert sorted(i["id"] for i in held["invitations"]) == ["bob", "carol"]  # sync_invitations false: untouched
    assert len(await inspect(tcs, "/conferences")) == 1
    # The four modes of the Outlook add-in.
    modes = {
        common_pb2.CONFERENCE_MODE_SMART_MEETING: "S|L Auto",
        common_pb2.CONFERENCE_MODE_MODERATED: "S|L",
        common_pb2.CONFERENCE_MODE_ALL_ON_SCREEN: "PxP",
        common_pb2.CONFERENCE_MODE_VIDEO_LECTURE: "OxP",
    }
    for mode, name in modes.items():
        result = await run_command(world, upsert(f"mode-{mode}", mode=mode))
        assert result.status == OK, result.error
        assert (await conference(tcs, result.conference.id))["mode"] == name


async def test_a_command_delivered_twice_creates_one_conference(world: World) -> None:
    tcs = await rest_world(world)
    command = upsert("meeting-twice", invitees=["bob@example.test"])
    await world.commands.publish(command, msg_id="first-delivery")
    await world.commands.publish(command, msg_id="second-delivery")  # a re-publish after the dedupe window
    again = upsert("meeting-twice", invitees=["bob@example.test"])  # a new command for the same meeting
    await world.commands.publish(again)
    assert (await world.commands.result_of(again.command_id)).status == OK

    async def both() -> bool:
        results = [r for r in await world.commands.results() if r.command_id == command.command_id]
        return len(results) == 1 and results[0].status == OK

    await wait_for_async(both, what="the result of the twice-delivered command")
    conferences = await inspect(tcs, "/conferences")
    assert [c["id"] for c in conferences] == [conference_id_for("meeting-twice")]
    log = await rest_log(tcs)
    assert len(calls(log, "POST", "/api/v4/conferences")) == 1
    assert not calls(log, "PATCH", f"/api/v4/conferences/{conference_id_for('meeting-twice')}")  # nothing changed


async def test_token_expiry_mid_run_and_refresh_before_expiry(world: World) -> None:
    tcs = await rest_world(world)
    assert (await run_command(world, upsert("meeting-token"))).status == OK
    await admin(tcs, "POST", "/tokens/expire")
    since = (await rest_log(tcs))[-1]["seq"]
    result = await run_command(world, upsert("meeting-token", topic="After expiry"))
    assert result.status == OK, result.error
    log = await rest_log(tcs, since)
    statuses = [(e["method"], e["path"], e["status"]) for e in log]
    first_401 = next(i for i, s in enumerate(statuses) if s[2] == 401)
    assert statuses[first_401 + 1] == ("POST", "/oauth2/v1/token", 200)
    assert statuses[first_401 + 2][2] == 200  # the same call again, with the fresh token
    assert sum(1 for s in statuses if s[2] == 401) == 1
    assert (await conference(tcs, conference_id_for("meeting-token")))["topic"] == "After expiry"
    # Short-lived tokens are refreshed before they expire: no 401 at all.
    await admin(tcs, "PUT", "/oauth", {"token_lifetime": 2})
    await admin(tcs, "POST", "/tokens/expire")
    assert (await run_command(world, upsert("meeting-token", topic="Short token"))).status == OK
    since = (await rest_log(tcs))[-1]["seq"]
    await wait_for_async(_later(2.3), what="the short token to near its end")
    assert (await run_command(world, upsert("meeting-token", topic="Refreshed"))).status == OK
    log = await rest_log(tcs, since)
    assert [e for e in log if e["status"] == 401] == []
    assert calls(log, "POST", "/oauth2/v1/token")


async def test_trueconf_server_as_its_own_clients_show_it(world: World) -> None:
    """What TrueConf's published clients (trueconf-eraser, trueconf-server-mcp) show the real server does: the
    token endpoint under /api/v4, a bad token answered 403, a taken id answered 400 uniqueValueAlreadyInUse,
    and a schedule that needs `time` and special_time_offset (the meeting's zone) and is answered without `time`."""
    tcs = await rest_world(world)
    # The documented token endpoint is missing on this server: the one under the API is used from then on.
    await admin(tcs, "POST", "/faults", {"path": "/oauth2/v1/token", "status": 404, "reason": "routeNotFound"})
    command = upsert("meeting-moscow", start=today_at(10))
    command.conference_upsert.schedule.time_zone = "Europe/Moscow"
    result = await run_command(world, command)
    assert result.status == OK, result.error
    log = await rest_log(tcs)
    assert [e["status"] for e in calls(log, "POST", "/oauth2/v1/token")] == [404]
    assert [e["status"] for e in calls(log, "POST", "/api/v4/oauth2/token")] == [200]
    held = await conference(tcs, conference_id_for("meeting-moscow"))
    assert held["schedule"]["special_time_offset"] == 180 and "time" not in held["schedule"]
    assert held["schedule"]["start_time"] == int(today_at(10).timestamp())
    # A token refused with 403 invalidToken is replaced once, like a 401.
    await admin(tcs, "POST", "/tokens/expire")
    await admin(tcs, "DELETE", "/faults")
    path = f"/api/v4/conferences/{conference_id_for('meeting-moscow')}"
    await admin(
        tcs, "POST", "/faults", {"method": "GET", "path": path, "status": 403, "reason": "invalidToken", "count": 1}
    )
    since = (await rest_log(tcs))[-1]["seq"]
    result = await run_command(world, upsert("meeting-moscow", topic="After a 403"))
    assert result.status == OK, result.error
    statuses = [(e["method"], e["path"], e["status"]) for e in await rest_log(tcs, since)]
    assert statuses[:3] == [("GET", path, 403), ("POST", "/api/v4/oauth2/token", 200), ("GET", path, 200)]
    # Created meanwhile by someone else: the create answers 400 uniqueValueAlreadyInUse, and the conference
    # is brought up to date instead of the command failing.
    await admin(tcs, "DELETE", "/faults")
    await admin(
        tcs,
        "POST",
        "/faults",
        {"method": "GET", "path": path, "status": 404, "reason": "conferenceNotFound", "count": 1},
    )
    since = (await rest_log(tcs))[-1]["seq"]
    result = await run_command(world, upsert("meeting-moscow", topic="Taken id"))
    assert result.status == OK, result.error
    log = await rest_log(tcs, since)
    [create] = calls(log, "POST", "/api/v4/conferences")
    assert create["status"] == 400
    assert (await conference(tcs, conference_id_for("meeting-moscow")))["topic"] == "Taken id"
    assert len(await inspect(tcs, "/conferences")) == 1


def _later(seconds: float) -> Any:
    import time

    deadline = time.monotonic() + seconds

    async def passed() -> bool:
        return time.monotonic() >= deadline

    return passed


async def test_429_and_503_back_off_then_succeed_or_report_retryable(world: World) -> None:
    tcs = await rest_world(world, rest_attempts=4)
    conference_id = conference_id_for("meeting-busy")
    await admin(tcs, "POST", "/faults", {"method": "POST", "path": "/api/v4/conferences", "status": 503, "count": 2})
    await admin(
        tcs,
        "POST",
        "/faults",
        {"method": "GET", "path": f"/api/v4/conferences/{conference_id}", "status": 429, "retry_after": 1, "count": 2},
    )
    result = await run_command(world, upsert("meeting-busy"))
    assert result.status == OK, result.error
    log = await rest_log(tcs)
    gets = calls(log, "GET", f"/api/v4/conferences/{conference_id}")
    assert [e["status"] for e in gets] == [429, 429, 404]
    gap = datetime.fromisoformat(gets[1]["at"]) - datetime.fromisoformat(gets[0]["at"])
    assert gap.total_seconds() >= 0.9  # Retry-After: 1 was honoured
    assert [e["status"] for e in calls(log, "POST", "/api/v4/conferences")] == [503, 503, 200]
    # A server that keeps failing: the attempts are used up and the command is reported retryable.
    await admin(tcs, "POST", "/faults", {"method": "POST", "path": "/api/v4/conferences/*/run", "status": 503})
    run = CommandClient.conference_command("conference_run", "meeting-busy")
    run.conference_run.conference_id = conference_id
    failed = await run_command(world, run)
    assert failed.status == RETRYABLE
    assert "503" in failed.error
    assert len(calls(await rest_log(tcs), "POST", f"/api/v4/conferences/{conference_id}/run")) == 4
    # A request TrueConf Server refuses for good (a PIN of 2 digits) is permanent, not retried.
    await admin(tcs, "DELETE", "/faults")
    bad = await run_command(world, upsert("meeting-bad-pin", pin="12"))
    assert bad.status == PERMANENT
    assert "pin" in bad.error
    assert len(calls(await rest_log(tcs), "POST", "/api/v4/conferences")) == 4  # 3 above + 1, no retries
    unknown_owner = upsert("meeting-no-owner")
    unknown_owner.conference_upsert.owner = "stranger@example.test"
    refused = await run_command(world, unknown_owner)
    assert refused.status == PERMANENT and "stranger@example.test" in refused.error


async def test_invitations_follow_the_engine_with_guests_where_public(world: World) -> None:
    tcs = await rest_world(world)
    conference_id = conference_id_for("meeting-invites")
    assert (await run_command(world, upsert("meeting-invites", invitees=["bob@example.test"]))).status == OK

    async def invited() -> list[str]:
        return sorted(i["id"] for i in (await conference(tcs, conference_id))["invitations"])

    assert await invited() == ["bob"]
    sync = CommandClient.conference_command("invitations_sync", "meeting-invites")
    sync.invitations_sync.conference_id = conference_id
    sync.invitations_sync.invitations.add(email="carol@example.test", display_name="Carol")
    sync.invitations_sync.invitations.add(email="dave@outside.test", display_name="Dave Outside")
    assert (await run_command(world, sync)).status == OK
    assert await invited() == ["carol"]  # bob removed; dave is no TrueConf user and the conference is private
    public = upsert(
        "meeting-invites",
        access=common_pb2.CONFERENCE_ACCESS_PUBLIC,
        invitees=["carol@example.test", "dave@outside.test", "bob@example.test"],
    )
    assert (await run_command(world, public)).status == OK
    assert await invited() == ["bob", "carol", "dave@outside.test"]
    guest = next(i for i in (await conference(tcs, conference_id))["invitations"] if i["id"] == "dave@outside.test")
    assert guest["display_name"] == "Dave"
    empty = CommandClient.conference_command("invitations_sync", "meeting-invites")
    empty.invitations_sync.conference_id = conference_id
    assert (await run_command(world, empty)).status == OK
    assert await invited() == []
    # Users are looked up by e-mail once, then served from the cache.
    lookups = [e["query"]["email"] for e in calls(await rest_log(tcs), "GET", "/api/v4/users")]
    assert sorted(lookups) == ["alice@example.test", "bob@example.test", "carol@example.test", "dave@outside.test"]


async def test_run_stop_and_delete(world: World) -> None:
    tcs = await rest_world(world)
    conference_id = conference_id_for("meeting-run")
    assert (await run_command(world, upsert("meeting-run", invitees=[]))).status == OK
    run = CommandClient.conference_command("conference_run", "meeting-run")
    run.conference_run.conference_id = conference_id
    run.conference_run.occurrence_start.CopyFrom(stamp(today_at(10)))
    run.conference_run.invitations.add(email="bob@example.test")  # temporalConfParticipantsMode: invited at launch
    result = await run_command(world, run)
    assert result.status == OK, result.error
    assert result.conference.id == conference_id
    held = await conference(tcs, conference_id)
    assert held["state"] == "running"
    assert [i["id"] for i in held["invitations"]] == ["bob"]
    again = CommandClient.conference_command("conference_run", "meeting-run")
    again.conference_run.conference_id = conference_id
    assert (await run_command(world, again)).status == OK  # already running: fine
    busy = await run_command(world, upsert("meeting-run", topic="Renamed while running"))
    assert busy.status == RETRYABLE and "running" in busy.error
    delete = CommandClient.conference_command("conference_delete", "meeting-run")
    delete.conference_delete.conference_id = conference_id
    assert (await run_command(world, delete)).status == OK
    assert await inspect(tcs, "/conferences") == []
    log = [(e["method"], e["path"]) for e in await rest_log(tcs)]
    stop = log.index(("POST", f"/api/v4/conferences/{conference_id}/stop"))
    assert log.index(("DELETE", f"/api/v4/conferences/{conference_id}")) > stop
    gone = CommandClient.conference_command("conference_delete", "meeting-run")
    assert (await run_command(world, gone)).status == OK  # already gone; the id comes from the meeting
    missing = CommandClient.conference_command("conference_run", "meeting-never-created")
    failed = await run_command(world, missing)
    assert failed.status == PERMANENT
    assert "404" in failed.error


async def test_a_create_redelivered_after_the_meetings_delete_ran_is_not_run(world: World) -> None:
    """JetStream redelivers an unacknowledged command after its AckWait, behind newer ones (also one acknowledged
    just before nats-server was killed: it loses acknowledgements it had not written). The meeting's create coming
    back after its delete ran must not make the deleted meeting's conference again (conference_order.py)."""
    tcs = await rest_world(world)
    conference_id = conference_id_for("meeting-fenced")
    create = upsert("meeting-fenced", invitees=[])
    create.conference_order = 1
    assert (await run_command(world, create)).status == OK
    delete = CommandClient.conference_command("conference_delete", "meeting-fenced")
    delete.conference_delete.conference_id = conference_id
    delete.conference_order = 2
    assert (await run_command(world, delete)).status == OK
    assert await inspect(tcs, "/conferences") == []

    await world.commands.publish(create, msg_id="the-create-delivered-again")
    consumer = durable_name(SERVER_ID)

    async def idle() -> bool:
        info = await world.commands.bus.js.consumer_info(TCS_COMMANDS, consumer)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await wait_for_async(idle, what="the gateway to have handled the redelivered create")
    assert await inspect(tcs, "/conferences") == [], "the deleted meeting's conference was made again"
    log = await rest_log(tcs)
    assert len(calls(log, "POST", "/api/v4/conferences")) == 1

    # A retry of the newest command (same order, next attempt) still runs; so does an unnumbered command.
    retry = CommandClient.conference_command("conference_delete", "meeting-fenced")
    retry.conference_delete.conference_id = conference_id
    retry.conference_order, retry.attempt = 2, 2
    assert (await run_command(world, retry)).status == OK
    unnumbered = upsert("meeting-unnumbered", invitees=[])
    assert (await run_command(world, unnumbered)).status == OK
    assert [c["id"] for c in await inspect(tcs, "/conferences")] == [conference_id_for("meeting-unnumbered")]

    # A stale command whose result was never published (the first try's publish failed) is answered SUPERSEDED.
    stale = upsert("meeting-fenced", topic="Decided before the delete")
    stale.conference_order = 1
    result = await run_command(world, stale)
    assert result.status == commands_pb2.COMMAND_STATUS_SUPERSEDED, result
    assert "command 2" in result.error
    assert [c["id"] for c in await inspect(tcs, "/conferences")] == [conference_id_for("meeting-unnumbered")]

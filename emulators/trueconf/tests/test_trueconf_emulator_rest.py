"""REST API v4 of the emulator over real HTTP against a real subprocess."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tccal_sandbox.testing import wait_for
from trueconf_emulator.testing import EmulatorProcess, HttpError, start_emulator

START = 1_893_484_800  # 2030-01-01T08:00:00Z


@pytest.fixture(scope="module")
def tcs() -> Iterator[EmulatorProcess]:
    handle = start_emulator()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def token(tcs: EmulatorProcess) -> str:
    return tcs.token()


@pytest.fixture(autouse=True)
def clean(tcs: EmulatorProcess) -> None:
    tcs.admin("POST", "/reset", {})


def call(
    tcs: EmulatorProcess,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    base: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    url = f"{base if base is not None else tcs.rest_url}{path}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def full_conference(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "topic": "Marketing department meeting",
        "description": "Discussion of the work done last week.",
        "owner": "alice",
        "mode": "S|L Auto",
        "access": "private",
        "schedule": {
            "type": "once",
            "start_time": START,
            "duration": 1800,
            "time": "08:00",
            "special_time_offset": 180,
        },
        "invitations": [
            {"id": "bob", "display_name": "Bob B.", "is_moderator": True},
            {"id": "carol@tcs.example.test", "display_name": "Carol", "is_moderator": False},
        ],
        "max_participants": 50,
        "max_podiums": 6,
        "pin": "879651",
        "waiting_room_enabled": True,
        "recording_enabled": True,
        "on_join_mute_mic": True,
        "on_join_mute_camera": False,
        "auto_termination_enabled": True,
        "broadcast_enabled": False,
        "tags": ["exchange", "calendar"],
        "auto_invite": 1,
        "rights": {"guest": {"chat_send": False}},
        "external_id": "AAMkAGI2TG93AAA=",
    }
    body.update(overrides)
    return body


def create(tcs: EmulatorProcess, token: str, body: dict[str, Any]) -> dict[str, Any]:
    status, _, reply = call(tcs, "POST", "/conferences", body, token=token)
    assert status == 200, reply
    conference: dict[str, Any] = reply["conference"]
    return conference


def error_location(reply: dict[str, Any]) -> str:
    location: str = reply["error"]["errors"][0]["location"]
    return location


# ------------------------------------------------------------------------------ OAuth2
def test_token_endpoint_and_bearer_checks(tcs: EmulatorProcess) -> None:
    base = tcs.base_url
    good = {"grant_type": "client_credentials", "client_id": tcs.client_id, "client_secret": tcs.client_secret}
    status, _, reply = call(tcs, "POST", "/oauth2/v1/token", good, base=base)
    assert status == 200
    assert reply["token_type"] == "Bearer" and reply["expires_in"] == 3600 and len(reply["access_token"]) == 40

    status, _, reply = call(tcs, "POST", "/oauth2/v1/token", {**good, "client_secret": "nope"}, base=base)
    assert (status, reply["error"]) == (400, "invalid_client")
    status, _, reply = call(tcs, "POST", "/oauth2/v1/token", {**good, "grant_type": "password"}, base=base)
    assert (status, reply["error"]) == (400, "unsupported_grant_type")
    form = f"grant_type=client_credentials&client_id={tcs.client_id}&client_secret={tcs.client_secret}".encode()
    status, _, reply = call(
        tcs,
        "POST",
        "/oauth2/v1/token",
        raw=form,
        base=base,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200
    basic = base64.b64encode(f"{tcs.client_id}:{tcs.client_secret}".encode()).decode()
    status, _, reply = call(
        tcs,
        "POST",
        "/oauth2/v1/token",
        {"grant_type": "client_credentials"},
        base=base,
        headers={"Authorization": f"Basic {basic}"},
    )
    assert status == 200
    token = reply["access_token"]

    status, headers, reply = call(tcs, "GET", "/users")
    assert status == 401 and reply["error"]["errors"][0]["reason"] == "authorizationRequired"
    assert "Bearer" in headers["WWW-Authenticate"]
    status, _, reply = call(tcs, "GET", "/users", token="0" * 40)
    assert status == 401 and reply["error"]["errors"][0]["reason"] == "invalidToken"
    assert call(tcs, "GET", "/users", token=token)[0] == 200
    assert call(tcs, "GET", f"/users?access_token={token}")[0] == 200

    assert tcs.admin("POST", "/tokens/expire")["expired"] >= 1
    status, _, reply = call(tcs, "GET", "/users", token=token)
    assert status == 401 and reply["error"]["errors"][0]["reason"] == "tokenExpired"

    log = tcs.inspect("/rest-log")
    token_calls = [entry for entry in log if entry["path"] == "/oauth2/v1/token" and entry["request_body"]]
    assert token_calls and all(entry["request_body"].get("client_secret") in (None, "***") for entry in token_calls)


def test_token_expires_after_its_lifetime(tcs: EmulatorProcess) -> None:
    long_lived = tcs.token()
    assert tcs.admin("PUT", "/oauth", {"token_lifetime": 1}) == {"token_lifetime": 1}
    try:
        short = tcs.token()

        def expired() -> bool:
            status, _, reply = call(tcs, "GET", "/users", token=short)
            return status == 401 and reply["error"]["errors"][0]["reason"] == "tokenExpired"

        wait_for(expired, timeout=15, what="the 1-second token expires")
    finally:
        tcs.admin("PUT", "/oauth", {"token_lifetime": 3600})
    assert call(tcs, "GET", "/users", token=long_lived)[0] == 200
    assert call(tcs, "GET", "/users", token=tcs.token())[0] == 200


# ------------------------------------------------------------------------------ users
def test_user_directory_lookup(tcs: EmulatorProcess, token: str) -> None:
    status, _, reply = call(tcs, "GET", "/users?email=ALICE@example.test", token=token)
    assert status == 200
    assert [user["id"] for user in reply["users"]] == ["alice"]
    alice = reply["users"][0]
    assert alice == {
        "id": "alice",
        "uid": "alice@tcs.example.test",
        "login_name": "alice",
        "email": "alice@example.test",
        "display_name": "Alice Archer",
        "first_name": "",
        "last_name": "",
        "is_active": True,
        "status": 0,
    }
    assert reply["next_page_id"] == -1
    status, _, reply = call(tcs, "GET", "/users/bob", token=token)
    assert (status, reply["user"]["email"]) == (200, "bob@example.test")
    status, _, reply = call(tcs, "GET", "/users/bob@tcs.example.test", token=token)
    assert (status, reply["user"]["id"]) == (200, "bob")
    status, _, reply = call(tcs, "GET", "/users/zed", token=token)
    assert status == 404 and reply["error"]["errors"][0]["reason"] == "userNotFound"
    status, _, reply = call(tcs, "GET", "/users?page_size=2", token=token)
    assert [user["id"] for user in reply["users"]] == ["alice", "bob"] and reply["next_page_id"] == 2
    status, _, reply = call(tcs, "GET", "/users?page_size=0", token=token)
    assert status == 400 and error_location(reply) == "page_size"


# ------------------------------------------------------------------------------ conferences
def test_every_conference_field_round_trips(tcs: EmulatorProcess, token: str) -> None:
    body = full_conference()
    created = create(tcs, token, body)
    status, _, reply = call(tcs, "GET", f"/conferences/{created['id']}", token=token)
    assert status == 200
    got = reply["conference"]
    for key, value in body.items():
        if key == "schedule":  # `time` is required in a request and never answered (start_time carries it)
            value = {k: v for k, v in value.items() if k != "time"}
        assert got[key] == value, key
    assert isinstance(got["created_at"], str) and got["created_at"].endswith("Z")
    assert got["state"] == "stopped" and got["url"] == f"https://tcs.example.test/c/{got['id']}"
    assert got["id"].isdigit() and len(got["id"]) == 12

    patch = {
        "topic": "Renamed",
        "description": "New agenda",
        "owner": "bob",
        "mode": "PxP",
        "access": "public",
        "schedule": {
            "type": "week",
            "start_time": START + 86_400,
            "duration": 3600,
            "time": "08:00",
            "special_time_offset": 0,
            "days": ["monday", "thursday"],
        },
        "max_participants": 9,
        "max_podiums": 9,
        "pin": None,
        "waiting_room_enabled": False,
        "recording_enabled": False,
        "on_join_mute_mic": False,
        "on_join_mute_camera": True,
        "auto_termination_enabled": False,
        "broadcast_enabled": True,
        "tags": [],
        "auto_invite": 0,
        "rights": None,
    }
    status, _, reply = call(tcs, "PATCH", f"/conferences/{created['id']}", patch, token=token)
    assert status == 200, reply
    status, _, reply = call(tcs, "GET", f"/conferences/{created['id']}", token=token)
    got = reply["conference"]
    for key, value in patch.items():
        if key == "schedule":
            value = {k: v for k, v in value.items() if k != "time"}
        assert got[key] == value, key
    assert got["pin_enabled"] is False
    assert got["invitations"] == [
        {"id": "bob", "display_name": "Bob B.", "is_moderator": True},
        {"id": "carol@tcs.example.test", "display_name": "Carol", "is_moderator": False},
    ]
    status, _, reply = call(tcs, "PATCH", f"/conferences/{created['id']}", {"schedule": {"type": "none"}}, token=token)
    assert reply["conference"]["schedule"] == {"type": "none"}

    [row] = tcs.inspect("/conferences")
    for key in ("id", "topic", "owner", "mode", "access", "state", "invitations", "schedule"):
        assert key in row
    assert row["id"] == created["id"] and row["schedule"] == {"type": "none"} and row["mode"] == "PxP"


def test_defaults_and_derived_values(tcs: EmulatorProcess, token: str) -> None:
    minimal = create(tcs, token, {"topic": "Quick", "owner": "alice", "mode": "OxP"})
    assert minimal["access"] == "private" and minimal["schedule"] == {"type": "none"}
    assert (minimal["max_participants"], minimal["max_podiums"]) == (120, 1)
    assert minimal["invitations"] == [] and minimal["pin"] is None and minimal["external_id"] is None
    weekly = create(
        tcs,
        token,
        {
            "topic": "Weekly",
            "owner": "alice",
            "mode": "S|L",
            "schedule": {
                "type": "week",
                "start_time": START,
                "duration": 900,
                "time": "08:00",
                "special_time_offset": 0,
                "days": ["friday"],
            },
        },
    )
    assert weekly["schedule"] == {
        "type": "week",
        "start_time": START,
        "duration": 900,
        "special_time_offset": 0,
        "days": ["friday"],
    }
    assert (weekly["max_participants"], weekly["max_podiums"]) == (250, 36)


def test_external_id_makes_creation_idempotent(tcs: EmulatorProcess, token: str) -> None:
    body = full_conference(external_id="meeting-42")
    first = create(tcs, token, body)
    status, headers, reply = call(tcs, "POST", "/conferences", {**body, "topic": "Changed"}, token=token)
    assert status == 200 and headers.get("Idempotent-Replayed") == "true"
    assert reply["conference"]["id"] == first["id"] and reply["conference"]["topic"] == body["topic"]
    status, _, reply = call(tcs, "GET", "/conferences?external_id=meeting-42", token=token)
    assert reply["results"] == 1 and [c["id"] for c in reply["conferences"]] == [first["id"]]
    other = create(tcs, token, full_conference(external_id="meeting-43"))
    assert other["id"] != first["id"]
    assert len(tcs.inspect("/conferences")) == 2
    topic = body["topic"]
    assert [c["id"] for c in tcs.inspect(f"/conferences?prefix={topic[:3]}")] == [first["id"], other["id"]]
    assert tcs.inspect("/conferences?prefix=Sales") == []

    status, _, _ = call(tcs, "DELETE", f"/conferences/{first['id']}", token=token)
    assert status == 200
    again = create(tcs, token, body)  # the key is free again once its conference is gone
    assert again["id"] != first["id"]


def test_custom_id_and_delete(tcs: EmulatorProcess, token: str) -> None:
    created = create(tcs, token, {"id": "weekly_sync_postman", "topic": "Sync", "owner": "alice", "mode": "PxP"})
    assert created["id"] == "weekly_sync_postman"
    status, _, reply = call(
        tcs,
        "POST",
        "/conferences",
        {"id": "weekly_sync_postman", "topic": "Sync", "owner": "alice", "mode": "PxP"},
        token=token,
    )
    assert status == 400 and reply["error"]["errors"][0]["reason"] == "uniqueValueAlreadyInUse"
    assert error_location(reply) == "id"
    status, _, reply = call(tcs, "DELETE", "/conferences/weekly_sync_postman", token=token)
    assert status == 200 and reply["conference"]["id"] == "weekly_sync_postman"
    status, _, reply = call(tcs, "GET", "/conferences/weekly_sync_postman", token=token)
    assert status == 404 and reply["error"]["errors"][0]["reason"] == "conferenceNotFound"


def test_run_and_stop(tcs: EmulatorProcess, token: str) -> None:
    conference_id = create(tcs, token, full_conference(external_id="run-1"))["id"]
    status, _, reply = call(tcs, "POST", f"/conferences/{conference_id}/run", token=token)
    assert (status, reply) == (200, {"state": "running"})
    status, _, reply = call(tcs, "GET", f"/conferences/{conference_id}", token=token)
    assert reply["conference"]["state"] == "running" and reply["conference"]["session_id"]
    status, _, reply = call(tcs, "POST", f"/conferences/{conference_id}/run", token=token)
    assert status == 400 and reply["error"]["errors"][0]["reason"] == "conferenceIsAlreadyRunning"

    status, _, reply = call(tcs, "PATCH", f"/conferences/{conference_id}", {"topic": "Moved"}, token=token)
    assert status == 400 and error_location(reply) == "topic"
    assert reply["error"]["errors"][0]["reason"] == "conferenceIsRunning"
    status, _, reply = call(tcs, "PATCH", f"/conferences/{conference_id}", {"description": "live"}, token=token)
    assert status == 200 and reply["conference"]["description"] == "live"

    status, _, reply = call(tcs, "POST", f"/conferences/{conference_id}/stop", token=token)
    assert (status, reply) == (200, {"state": "stopped"})
    status, _, reply = call(tcs, "POST", f"/conferences/{conference_id}/stop", token=token)
    assert status == 400 and reply["error"]["errors"][0]["reason"] == "conferenceIsNotRunning"
    status, _, reply = call(tcs, "POST", "/conferences/nope/run", token=token)
    assert status == 404
    [row] = tcs.inspect("/conferences")
    assert row["state"] == "stopped"


def test_invitations_add_list_update_remove(tcs: EmulatorProcess, token: str) -> None:
    conference_id = create(tcs, token, {"topic": "Inv", "owner": "alice", "mode": "S|L", "max_participants": 3})["id"]
    path = f"/conferences/{conference_id}/invitations"
    status, _, reply = call(tcs, "POST", path, {"id": "bob"}, token=token)
    assert status == 200 and reply["invitation"] == {"id": "bob", "display_name": "Bob Baker", "is_moderator": False}
    status, _, reply = call(tcs, "POST", path, {"id": "bob@tcs.example.test"}, token=token)
    assert status == 409 and reply["error"]["errors"][0]["reason"] == "invitationAlreadyExists"
    status, _, reply = call(tcs, "POST", path, {"id": "guest@partner.example"}, token=token)
    assert status == 400 and error_location(reply) == "id"
    assert reply["error"]["errors"][0]["reason"] == "guestsNotAllowed"
    status, _, reply = call(tcs, "POST", path, {"id": "ghost"}, token=token)
    assert status == 400 and reply["error"]["errors"][0]["reason"] == "userNotFound"
    status, _, reply = call(tcs, "POST", path, {"id": "carol", "display_name": "C."}, token=token)
    assert status == 200
    status, _, reply = call(tcs, "GET", path, token=token)
    assert [inv["id"] for inv in reply["invitations"]] == ["bob", "carol"]
    status, _, reply = call(tcs, "PUT", f"{path}/carol", {"display_name": "Carol Cole"}, token=token)
    assert reply["invitation"]["display_name"] == "Carol Cole"
    status, _, reply = call(tcs, "GET", f"{path}/bob@tcs.example.test", token=token)
    assert (status, reply["invitation"]["id"]) == (200, "bob")
    status, _, reply = call(tcs, "DELETE", f"{path}/bob", token=token)
    assert status == 200 and reply["invitation"]["id"] == "bob"
    status, _, reply = call(tcs, "DELETE", f"{path}/bob", token=token)
    assert status == 404 and reply["error"]["errors"][0]["reason"] == "invitationNotFound"
    status, _, reply = call(tcs, "GET", path, token=token)
    assert [inv["id"] for inv in reply["invitations"]] == ["carol"]
    assert tcs.inspect(f"/conferences/{conference_id}")["invitations"] == reply["invitations"]

    webinar = create(tcs, token, {"topic": "Webinar", "owner": "alice", "mode": "OxP", "access": "public"})["id"]
    status, _, reply = call(
        tcs, "POST", f"/conferences/{webinar}/invitations", {"id": "guest@partner.example"}, token=token
    )
    assert status == 200 and reply["invitation"]["id"] == "guest@partner.example"
    status, _, reply = call(tcs, "DELETE", f"/conferences/{webinar}/invitations/GUEST@partner.example", token=token)
    assert status == 200
    call(tcs, "POST", f"/conferences/{webinar}/invitations", {"id": "guest@partner.example"}, token=token)
    status, _, reply = call(tcs, "PATCH", f"/conferences/{webinar}", {"access": "private"}, token=token)
    assert status == 400 and error_location(reply) == "access"


def once(**fields: Any) -> dict[str, Any]:
    """A complete `once` schedule (TrueConf demands every field) with `fields` changed; None drops a field."""
    schedule: dict[str, Any] = {"type": "once", "start_time": START, "duration": 600, "time": "08:00"}
    schedule["special_time_offset"] = 180
    schedule.update(fields)
    return {key: value for key, value in schedule.items() if value is not None}


BAD_INPUT: list[tuple[str, dict[str, Any], str]] = [
    ("missing topic", {"topic": None}, "topic"),
    ("unknown mode", {"mode": "Auto"}, "mode"),
    ("unknown access", {"access": "secret"}, "access"),
    ("owner not a user", {"owner": "nobody"}, "owner"),
    ("duration too short", {"schedule": once(duration=30)}, "schedule.duration"),
    ("schedule type", {"schedule": {"type": "monthly"}}, "schedule.type"),
    ("start_time missing", {"schedule": once(start_time=None)}, "schedule.start_time"),
    ("time missing", {"schedule": once(time=None)}, "schedule.time"),
    ("offset missing", {"schedule": once(special_time_offset=None)}, "schedule.special_time_offset"),
    ("offset beyond UTC+14", {"schedule": once(special_time_offset=900)}, "schedule.special_time_offset"),
    ("start_time string", {"schedule": once(start_time="2030-01-01")}, "schedule.start_time"),
    ("bad weekday", {"schedule": once(type="week", days=["funday"])}, "schedule.days[0]"),
    ("days missing", {"schedule": once(type="week")}, "schedule.days"),
    ("time disagrees", {"schedule": once(time="09:00")}, "schedule.time"),
    ("extra schedule key", {"schedule": {"type": "none", "start_time": START}}, "schedule.start_time"),
    ("unknown invitee", {"invitations": [{"id": "ghost"}]}, "invitations[0].id"),
    ("invited twice", {"invitations": [{"id": "bob"}, {"id": "bob@tcs.example.test"}]}, "invitations[1].id"),
    ("invitation without id", {"invitations": [{"display_name": "x"}]}, "invitations[0].id"),
    ("too many participants", {"mode": "PxP", "max_participants": 1000, "max_podiums": None}, "max_participants"),
    ("podiums in OxP", {"mode": "OxP", "max_podiums": 3}, "max_podiums"),
    ("podiums above participants", {"max_participants": 5, "max_podiums": 6}, "max_podiums"),
    ("pin letters", {"pin": "12ab"}, "pin"),
    ("boolean as string", {"recording_enabled": "yes"}, "recording_enabled"),
    ("unknown field", {"colour": "teal"}, "colour"),
    ("topic too long", {"topic": "x" * 241}, "topic"),
    ("bad custom id", {"id": "bad id!"}, "id"),
    ("tags not strings", {"tags": [1]}, "tags[0]"),
]


@pytest.mark.parametrize(("label", "change", "location"), BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_refused_naming_the_field(
    tcs: EmulatorProcess, token: str, label: str, change: dict[str, Any], location: str
) -> None:
    body = full_conference(external_id=None)
    del body["external_id"]
    for key, value in change.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    status, _, reply = call(tcs, "POST", "/conferences", body, token=token)
    assert status == 400, (label, reply)
    assert error_location(reply) == location, label
    assert location in reply["error"]["message"]
    assert reply["error"]["code"] == 400
    assert tcs.inspect("/conferences") == []


def test_bad_bodies_and_routes(tcs: EmulatorProcess, token: str) -> None:
    status, _, reply = call(tcs, "POST", "/conferences", raw=b"{broken", token=token)
    assert status == 400 and reply["error"]["errors"][0]["reason"] == "parseError"
    status, _, reply = call(tcs, "POST", "/conferences", [1, 2], token=token)
    assert status == 400 and reply["error"]["errors"][0]["reason"] == "invalidBody"
    conference_id = create(tcs, token, {"topic": "P", "owner": "alice", "mode": "PxP"})["id"]
    status, _, reply = call(tcs, "PATCH", f"/conferences/{conference_id}", {"invitations": []}, token=token)
    assert status == 400 and error_location(reply) == "invitations"
    status, _, reply = call(tcs, "PATCH", f"/conferences/{conference_id}", {"max_podiums": 2}, token=token)
    assert status == 400 and error_location(reply) == "max_podiums"
    status, _, reply = call(tcs, "GET", "/webinars", token=token)
    assert status == 404 and reply["error"]["errors"][0]["reason"] == "routeNotFound"
    status, headers, reply = call(tcs, "PUT", "/conferences", {}, token=token)
    assert status == 405 and "POST" in headers["Allow"]


# ------------------------------------------------------------------------------ faults
def test_injected_429_503_and_latency(tcs: EmulatorProcess, token: str) -> None:
    rule = tcs.admin(
        "POST",
        "/faults",
        {"method": "POST", "path": "/api/v4/conferences", "status": 429, "retry_after": 3, "count": 2},
    )
    assert rule["remaining"] == 2
    body = {"topic": "Limited", "owner": "alice", "mode": "PxP"}
    for _ in range(2):
        status, headers, reply = call(tcs, "POST", "/conferences", body, token=token)
        assert status == 429 and headers["Retry-After"] == "3"
        assert reply["error"]["code"] == 429 and reply["error"]["errors"][0]["reason"] == "rateLimitExceeded"
    assert tcs.inspect("/conferences") == []
    assert call(tcs, "POST", "/conferences", body, token=token)[0] == 200

    tcs.admin("POST", "/faults", {"method": "GET", "path": "/api/v4/users*", "status": 503, "rate": 0.5})
    statuses = [call(tcs, "GET", "/users", token=token)[0] for _ in range(4)]
    assert statuses == [200, 503, 200, 503]

    tcs.admin("POST", "/faults", {"path": "/api/v4/conferences/*", "latency_ms": 200, "count": 1})
    conference_id = tcs.inspect("/conferences")[0]["id"]
    assert call(tcs, "GET", f"/conferences/{conference_id}", token=token)[0] == 200

    tcs.admin("POST", "/faults", {"path": "/oauth2/v1/token", "status": 503, "count": 1})
    with pytest.raises(HttpError) as caught:
        tcs.token()
    assert caught.value.status == 503
    tcs.token()

    rules = {rule["path"]: rule for rule in tcs.admin("GET", "/faults")}
    assert rules["/api/v4/conferences"]["injected"] == 2 and rules["/api/v4/conferences"]["remaining"] == 0
    assert rules["/api/v4/users*"]["matched"] == 4 and rules["/api/v4/users*"]["injected"] == 2

    log = tcs.inspect("/rest-log")
    assert [entry["status"] for entry in log if entry["path"] == "/api/v4/conferences"] == [429, 429, 200]
    slow = [entry for entry in log if entry["path"] == f"/api/v4/conferences/{conference_id}"]
    assert slow[0]["injected_latency_ms"] == 200 and slow[0]["injected"] is None
    assert all({"method", "path", "status"} <= set(entry) for entry in log)

    tcs.admin("DELETE", "/faults")
    assert tcs.admin("GET", "/faults") == []
    with pytest.raises(HttpError) as caught:
        tcs.admin("POST", "/faults", {"path": "/api/v4/users", "status": 200})
    assert caught.value.status == 400 and "status" in caught.value.body["error"]
    assert [call(tcs, "GET", "/users", token=token)[0] for _ in range(2)] == [200, 200]


def test_rest_log_pages_with_since(tcs: EmulatorProcess, token: str) -> None:
    call(tcs, "GET", "/users", token=token)
    first = tcs.inspect("/rest-log")
    assert len(first) == 1 and first[0]["method"] == "GET" and first[0]["path"] == "/api/v4/users"
    call(tcs, "GET", "/users/alice", token=token)
    later = tcs.inspect(f"/rest-log?since={first[0]['seq']}")
    assert [entry["path"] for entry in later] == ["/api/v4/users/alice"]
    assert later[0]["status"] == 200


def test_conferences_survive_a_restart_with_a_state_file(tmp_path: Any) -> None:
    """A real TrueConf Server keeps its conferences across a restart; with `state_file` the emulator does too, and
    a killed process leaves the last complete file (written through after every changing /api/ request)."""
    state = tmp_path / "conferences.pickle"
    first = start_emulator(extra={"state_file": str(state)})
    try:
        status, _, created = call(first, "POST", "/conferences", full_conference(), token=first.token())
        assert status == 200, created
        conference_id = created["conference"]["id"]
        first.process.kill()  # no orderly stop: the write-through must already hold it
        first.process.wait(10)
    finally:
        first.stop()
    second = start_emulator(extra={"state_file": str(state)})
    try:
        status, _, kept = call(second, "GET", f"/conferences/{conference_id}", token=second.token())
        assert status == 200 and kept["conference"]["topic"] == "Marketing department meeting", kept
    finally:
        second.stop()

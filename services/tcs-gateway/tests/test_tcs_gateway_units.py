"""Pure parts of the gateway: event objects (checked by the schema and by the TrueConf emulator's own rules),
sequence numbers, snapshot chunks, conference schedules, settings."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tccal.cache_window import CacheWindow, cache_window
from tccal.config import Config
from tccal.config.loader import parse_config_text
from tcs_gateway.bridge.events import (
    SEQ_SCALE,
    build_event,
    list_seq,
    push_seq,
    snapshot_seq,
)
from tcs_gateway.bridge.framing import FrameValidator, encode, encoded_size, request_frame
from tcs_gateway.bridge.guard import BAD_SECRET, OVER_ADDRESS_CAP, OVER_TOTAL_CAP, BridgeGuard
from tcs_gateway.bridge.payloads import (
    encoded_events_for,
    encoded_snapshot_payloads,
    event_budget,
    events_for,
    snapshot_payloads,
)
from tcs_gateway.rest.conferences import conference_id_for, parse_timestamp, schedule_body
from tcs_gateway.rest.http import retry_after_seconds
from tcs_gateway.settings import GatewaySettings, ServerSettings
from trueconf.calendar.v1 import calendar_pb2, commands_pb2, common_pb2
from trueconf_emulator.calendar import check_event, check_event_list, check_window

VALIDATOR = FrameValidator()
RESPONSES = list(common_pb2.ResponseType.values())
ROLES = list(common_pb2.AttendeeRole.values())
EMAILS = st.sampled_from(["alice@x.test", "bob@x.test", "carol@x.test", "Dave@X.test", "", "not-an-address"])


def _stamp(moment: datetime) -> calendar_pb2.Occurrence:
    occurrence = calendar_pb2.Occurrence()
    occurrence.start.FromDatetime(moment)
    return occurrence


@st.composite
def occurrences(draw: st.DrawFn) -> calendar_pb2.Occurrence:
    start = datetime(2025, 6, 1, tzinfo=UTC) + timedelta(minutes=draw(st.integers(0, 60 * 24 * 60)))
    value = calendar_pb2.Occurrence(
        id=draw(st.text(min_size=1, max_size=40)),
        meeting_id=draw(st.text(max_size=10)),
        uid=draw(st.text(max_size=10)),
        subject=draw(st.text(max_size=30)),
        body=draw(st.text(max_size=30)),
        location=draw(st.text(max_size=10)),
        time_zone=draw(st.sampled_from(["Europe/Moscow", "UTC", "", "W. Europe Standard Time", "Mars/Base"])),
        all_day=draw(st.booleans()),
        cancelled=draw(st.booleans()),
        private=draw(st.booleans()),
        recurring=draw(st.booleans()),
        organizer=common_pb2.Person(email=draw(EMAILS), name=draw(st.text(max_size=5))),
        my_response=draw(st.sampled_from(RESPONSES)),
    )
    value.start.FromDatetime(start)
    value.end.FromDatetime(start + timedelta(minutes=draw(st.integers(-30, 600))))
    for _ in range(draw(st.integers(0, 5))):
        value.attendees.add(
            person=common_pb2.Person(email=draw(EMAILS), name=draw(st.text(max_size=5))),
            role=draw(st.sampled_from(ROLES)),
            response=draw(st.sampled_from(RESPONSES)),
        )
    if draw(st.booleans()):
        value.conference.id = draw(st.sampled_from(["561849261795", "tcc_ab", "bad id!"]))
        value.conference.url = draw(st.sampled_from(["", "https://video.x.test/c/561849261795", "ftp://x"]))
    return value


@settings(max_examples=150, deadline=None)
@given(occurrences(), st.sampled_from(["alice@x.test", "bob@x.test", "dave@x.test"]), st.integers(1, 10**6))
def test_every_event_is_valid_for_the_schema_and_the_emulator(
    occurrence: calendar_pb2.Occurrence, user: str, engine_seq: int
) -> None:
    seq = push_seq(engine_seq)
    event = build_event(occurrence, user, seq, server_host="video.x.test")
    method = "calendar.cancel" if event["cancelled"] else "calendar.upsert"
    frame = request_frame(1, method, {"user": user, "seq": seq, "event": event})
    problem = VALIDATOR.problem(frame, f"{method}.request")
    assert problem is None, (problem, event)
    assert check_event(event, user, "event") is None, event
    if event["private"]:
        assert event["subject"] is None and event["attendees"] == [] and event["conference"] is None
    else:
        assert event["attendees"][0]["response"] == "organizer"


_JSON_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53) | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_JSON_TEXT, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(payload=st.dictionaries(_JSON_TEXT, _JSON_VALUES, max_size=6))
def test_frames_are_encoded_as_compact_json_byte_for_byte(payload: dict[str, object]) -> None:
    """encode / encoded_size (orjson) write exactly what json.dumps compact with non-ASCII unescaped writes: control
    characters, quotes, backslashes, every plane of Unicode, nested lists and objects."""
    frame = {"type": 1, "id": 7, "method": "calendar.upsert", "payload": payload}
    expected = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
    assert encode(frame) == expected
    assert encoded_size(frame) == len(expected.encode("utf-8"))


def test_event_times_as_the_protocol_writes_them() -> None:
    """start/end/updatedAt are UTC instants with a 6-digit fraction only when there is one (nanoseconds cut, not
    rounded); an end before the start or unset is the start; unset start and updatedAt are now; a timestamp
    outside 0001–9999 is refused with its value named."""

    def times(start: tuple[int, int], end: tuple[int, int], updated: tuple[int, int]) -> tuple[str, str, str]:
        occurrence = calendar_pb2.Occurrence(id="m")
        for field, (seconds, nanos) in (("start", start), ("end", end), ("updated_at", updated)):
            getattr(occurrence, field).seconds = seconds
            getattr(occurrence, field).nanos = nanos
        event = build_event(occurrence, "alice@x.test", 5, server_host="h")
        return event["start"], event["end"], event["updatedAt"]

    noon = int(datetime(2026, 12, 5, 12, tzinfo=UTC).timestamp())
    assert times((noon, 0), (noon + 1800, 999_999_999), (noon, 1500)) == (
        "2026-12-05T12:00:00Z",
        "2026-12-05T12:30:00.999999Z",
        "2026-12-05T12:00:00.000001Z",
    )
    assert times((noon, 5000), (noon, 4000), (noon, 0))[:2] == ("2026-12-05T12:00:00.000005Z",) * 2
    assert times((noon, 0), (noon - 60, 0), (noon, 0))[:2] == ("2026-12-05T12:00:00Z",) * 2
    assert times((noon, 0), (0, 0), (noon, 0))[:2] == ("2026-12-05T12:00:00Z",) * 2
    before = datetime.now(UTC).replace(microsecond=0)
    start, end, updated = times((0, 0), (0, 0), (0, 0))
    for text in (start, end, updated):
        assert before <= datetime.fromisoformat(text.replace("Z", "+00:00")) <= datetime.now(UTC), text
    assert times((-62_135_596_800, 0), (253_402_300_799, 0), (1, 0)) == (
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "1970-01-01T00:00:01Z",
    )
    with pytest.raises(ValueError, match="253402300800"):
        times((noon, 0), (253_402_300_800, 0), (noon, 0))


def test_my_response_and_organizer() -> None:
    occurrence = _stamp(datetime(2025, 6, 28, 8, tzinfo=UTC))
    occurrence.id = "m"
    occurrence.organizer.email = "Postman@Trust1.loc"
    occurrence.attendees.add(person=common_pb2.Person(email="mail_test169@trust1.loc"), response=4)
    occurrence.attendees.add(person=common_pb2.Person(email="postman@trust1.loc"), response=2)
    organizer = build_event(occurrence, "postman@trust1.loc", 5, server_host="h")
    assert organizer["myResponse"] == "organizer"
    assert [a["email"] for a in organizer["attendees"]] == ["postman@trust1.loc", "mail_test169@trust1.loc"]
    attendee = build_event(occurrence, "MAIL_TEST169@trust1.loc", 5, server_host="h")
    assert attendee["myResponse"] == "accepted"
    occurrence.my_response = common_pb2.RESPONSE_TYPE_TENTATIVE  # the user's own copy knows better
    attendee = build_event(occurrence, "mail_test169@trust1.loc", 5, server_host="h")
    assert attendee["myResponse"] == "tentative" and attendee["attendees"][1]["response"] == "tentative"
    occurrence.conference.id = "561849261795"
    assert build_event(occurrence, "x@y.z", 5, server_host="video.x.test")["conference"] == {
        "id": "561849261795",
        "url": "https://video.x.test/c/561849261795",
    }


def test_sequence_numbers() -> None:
    assert push_seq(1043) == 1043 * SEQ_SCALE
    first = snapshot_seq(1043, 0)
    second = snapshot_seq(1043, first)
    assert push_seq(1043) < first < second < push_seq(1044)
    assert snapshot_seq(1044, second) == push_seq(1044) + 1
    assert snapshot_seq(0, 0) == 1  # a user with no push yet
    assert list_seq(1043, second) == second and list_seq(1044, second) == push_seq(1044)
    ceiling = push_seq(7) + SEQ_SCALE - 1
    assert snapshot_seq(7, ceiling - 1) == ceiling and snapshot_seq(7, ceiling) == ceiling + 1
    with pytest.raises(ValueError, match="outside"):
        push_seq(0)


def test_snapshots_are_chunked_within_the_frame_limit() -> None:
    start = datetime(2025, 6, 2, 8, tzinfo=UTC)
    occurrences = []
    for index in range(40):
        occurrence = _stamp(start + timedelta(hours=index))
        occurrence.id = f"occ-{index}"
        occurrence.end.FromDatetime(start + timedelta(hours=index, minutes=30))
        occurrence.organizer.email = "alice@x.test"
        occurrence.body = "x" * 500
        occurrences.append(occurrence)
    outside = _stamp(datetime(2030, 1, 1, tzinfo=UTC))
    outside.id = "outside"
    outside.end.FromDatetime(datetime(2030, 1, 1, 1, tzinfo=UTC))
    occurrences.append(outside)
    window = CacheWindow(datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 7, 1, tzinfo=UTC))
    events = events_for(occurrences, "alice@x.test", 77, window, server_host="h", budget=8000)
    payloads = snapshot_payloads("alice@x.test", 77, window, events, 8192)
    assert len(payloads) > 3
    assert [p["chunkIndex"] for p in payloads] == list(range(len(payloads)))
    assert {p["chunkCount"] for p in payloads} == {len(payloads)}
    assert [e["id"] for p in payloads for e in p["events"]] == [f"occ-{i}" for i in range(40)]
    for payload in payloads:
        frame = request_frame(9, "calendar.snapshot", payload)
        assert encoded_size(frame) <= 8192
        assert VALIDATOR.problem(frame, "calendar.snapshot.request") is None
        assert check_event_list(payload["events"], "alice@x.test", (window.start, window.end), "events") is None
    empty = snapshot_payloads("alice@x.test", 78, window, [], 8192)
    assert [(p["chunkIndex"], p["chunkCount"], p["events"]) for p in empty] == [(0, 1, [])]


def test_a_snapshot_of_events_encoded_once_is_written_as_the_plain_frames() -> None:
    """A snapshot's frames, built of events encoded once (encoded_events_for, encoded_snapshot_payloads), are byte
    for byte `encode` of the plain frames (events_for, snapshot_payloads): the same chunks and the same JSON for
    non-ASCII and escaped texts, and for an event too large for the budget that is fitted."""
    start = datetime(2025, 6, 2, 8, tzinfo=UTC)
    subjects = ["«Планёрка» ёж", "会议 \U0001f600", 'line\u2028sep\u2029 \x00\x1f "q" \\', "Planning"]
    occurrences = []
    for index in range(12):
        occurrence = _stamp(start + timedelta(hours=index))
        occurrence.id = f"occ-{index % 10}"  # two ids twice: the later occurrence is the event
        occurrence.end.FromDatetime(start + timedelta(hours=index, minutes=30))
        occurrence.updated_at.FromDatetime(datetime(2025, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC))
        occurrence.subject = subjects[index % len(subjects)]
        occurrence.body = "Тело " * (3000 if index == 3 else 100)
        occurrence.organizer.email = "alice@x.test"
        occurrence.organizer.name = "Алиса"
        occurrences.append(occurrence)
    window = CacheWindow(datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 7, 1, tzinfo=UTC))
    user, seq, budget = "alice@x.test", 77_000_001, event_budget(8192)
    events = events_for(occurrences, user, seq, window, server_host="h", budget=budget)
    texts = encoded_events_for(occurrences, user, seq, window, server_host="h", budget=budget)
    assert [event["id"] for event in events] == [f"occ-{index}" for index in (*range(2, 10), 0, 1)]
    assert len(events[1]["body"]) < len(occurrences[3].body)  # occ-3, fitted to the budget
    # Frame limits a byte apart over more than an event's size: each chunk boundary is met exactly at the limit once.
    for max_frame in range(8192, 8192 + 1536):
        plain = [
            encode(request_frame(number, "calendar.snapshot", payload)).encode("utf-8")
            for number, payload in enumerate(snapshot_payloads(user, seq, window, events, max_frame), 1)
        ]
        encoded_once = [
            encode(request_frame(number, "calendar.snapshot", payload)).encode("utf-8")
            for number, payload in enumerate(encoded_snapshot_payloads(user, seq, window, texts, max_frame), 1)
        ]
        assert encoded_once == plain, max_frame
        assert len(plain) > 1 and all(len(frame) <= max_frame for frame in plain)
    written = b"".join(plain)
    assert all(json.dumps(subject, ensure_ascii=False)[1:-1].encode() in written for subject in subjects)


def test_cache_window_follows_the_guide() -> None:
    window = cache_window(datetime(2025, 6, 28, 15, 30, tzinfo=UTC), 2, 3)
    # the day 3 months ahead is in the window all day long: it ends at the next midnight (tccal.cache_window)
    assert (window.start, window.end) == (datetime(2025, 4, 28, tzinfo=UTC), datetime(2025, 9, 29, tzinfo=UTC))
    start, end = (moment.strftime("%Y-%m-%dT%H:%M:%SZ") for moment in (window.start, window.end))
    assert isinstance(check_window(start, end), tuple)
    today = cache_window(datetime(2025, 6, 28, tzinfo=UTC), 0, 0)
    assert today.end - today.start == timedelta(days=1)


def test_schedules_ids_and_retry_after() -> None:
    schedule = commands_pb2.ConferenceSchedule(type=commands_pb2.SCHEDULE_TYPE_ONCE, duration_seconds=24 * 3600)
    schedule.start.FromDatetime(datetime(2025, 6, 30, 7, tzinfo=UTC))  # a Monday
    once = {"type": "once", "start_time": 1751266800, "duration": 86_399, "time": "07:00", "special_time_offset": 0}
    assert schedule_body(schedule) == once
    schedule.time_zone = "Europe/Moscow"  # UTC+3: TrueConf shows 10:00; `time` stays the UTC wall clock
    assert schedule_body(schedule) == {**once, "special_time_offset": 180}
    schedule.time_zone = "America/New_York"  # summer: UTC-4
    assert schedule_body(schedule)["special_time_offset"] == -240
    schedule.time_zone = "Mars/Olympus_Mons"  # unknown: UTC, not a refused command
    assert schedule_body(schedule)["special_time_offset"] == 0
    schedule.type = commands_pb2.SCHEDULE_TYPE_WEEK
    schedule.duration_seconds = 0
    assert schedule_body(schedule)["days"] == ["monday"] and schedule_body(schedule)["duration"] == 60
    assert schedule_body(commands_pb2.ConferenceSchedule(type=commands_pb2.SCHEDULE_TYPE_ONCE)) == {"type": "none"}
    identifier = conference_id_for("040000008200E00074C5B7101A82E008")
    assert re.fullmatch(r"[A-Za-z0-9_]{1,128}", identifier) and identifier == conference_id_for(
        "040000008200E00074C5B7101A82E008"
    )
    assert conference_id_for("a") != conference_id_for("b")
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(None) == 1.0 and retry_after_seconds("soon") == 1.0
    later = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 <= retry_after_seconds(later) <= 31


def test_timestamps_in_answers_are_numbers_or_strings() -> None:
    """TrueConf answers timestamps as unix seconds, numeric strings or ISO 8601 (its own clients accept all)."""
    moment = 1751266800
    for value in (moment, float(moment), "1751266800", "2025-06-30T07:00:00Z", "2025-06-30T10:00:00+03:00"):
        assert parse_timestamp(value) == moment, value
    assert parse_timestamp("2025-06-30T07:00:00") == moment  # naive: UTC
    for bad in (None, True, "", "soon", {"t": 1}):
        assert parse_timestamp(bad) is None, bad


def test_settings_from_the_connector_config(tmp_path: Path) -> None:
    guide = Path(__file__).resolve().parents[3] / "docs" / "examples" / "config.guide.json"
    document = parse_config_text(guide.read_text(encoding="utf-8"), "config.guide.json")
    document["allowPlaintextPasswords"] = True
    document["tcs"] = {
        "servers": [
            {
                "id": "server.trueconf.name#vcs",
                "secret": "s",
                "restUrl": "https://video.example.com/api/v4/",
                "clientId": "c",
                "clientSecret": "cs",
            }
        ]
    }
    config = Config.model_validate(document)
    settings = GatewaySettings.from_config(config, lambda value: value)
    assert settings.ws_port == 4315 and settings.bridge_path == "/bridge/v1"
    assert settings.configured_users == ("name1@example.com", "name2@example.com", "name3@example.com")
    assert [s.id for s in settings.served_servers()] == ["server.trueconf.name#vcs"]
    server = settings.served_servers()[0]
    assert server.token_url == "https://video.example.com/oauth2/v1/token"
    assert server.host == "server.trueconf.name"
    assert (settings.window_backward_months, settings.window_forward_months) == (2, 3)
    # tcs.bridgeLimits: defaults, and every key reaching the gateway's settings.
    assert (settings.handshake_timeout, settings.auth_timeout) == (5.0, 10.0)
    assert (settings.max_unauthenticated_per_address, settings.max_unauthenticated) == (8, 256)
    assert (settings.auth_failures_before_backoff, settings.auth_backoff_initial) == (3, 1.0)
    assert (settings.auth_backoff_max, settings.refusal_log_interval) == (60.0, 60.0)
    limits = {
        "handshakeTimeoutSec": 2,
        "authTimeoutSec": 4.5,
        "maxUnauthenticatedPerAddress": 2,
        "maxUnauthenticated": 20,
        "authFailuresBeforeBackoff": 5,
        "backoffInitialSec": 0.5,
        "backoffMaxSec": 30,
        "logIntervalSec": 10,
    }
    tuned = GatewaySettings.from_config(
        Config.model_validate({**document, "tcs": {**document["tcs"], "bridgeLimits": limits}}), lambda value: value
    )
    assert (tuned.handshake_timeout, tuned.auth_timeout) == (2.0, 4.5)
    assert (tuned.max_unauthenticated_per_address, tuned.max_unauthenticated) == (2, 20)
    assert (tuned.auth_failures_before_backoff, tuned.auth_backoff_initial) == (5, 0.5)
    assert (tuned.auth_backoff_max, tuned.refusal_log_interval) == (30.0, 10.0)
    bad = {"maxUnauthenticatedPerAddress": 0}
    with pytest.raises(ValidationError, match="maxUnauthenticatedPerAddress"):
        Config.model_validate({**document, "tcs": {**document["tcs"], "bridgeLimits": bad}})
    document["tcs"]["tlsCertFile"] = str(tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="tlsCertFile"):
        GatewaySettings.from_config(Config.model_validate(document), lambda value: value)
    document["tcs"].pop("tlsCertFile")
    document["tcs"]["servers"][0]["restUrl"] = "video.example.com"
    with pytest.raises(ValueError, match=r"tcs.servers\[0\].restUrl"):
        GatewaySettings.from_config(Config.model_validate(document), lambda value: value)
    assert ServerSettings("a#vcs", "s", "http://h:1/x/api/v4", "c", "s").token_url == "http://h:1/x/oauth2/v1/token"


def test_the_guard_backs_off_exponentially_and_logs_once_per_address_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    settings = GatewaySettings(
        max_unauthenticated_per_address=2,
        max_unauthenticated=3,
        auth_failures_before_backoff=2,
        auth_backoff_initial=1.0,
        auth_backoff_max=8.0,
        refusal_log_interval=60.0,
        whitelist=("X#vcs", "y#vcs"),
    )
    guard = BridgeGuard(settings, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="tcs_gateway.bridge.guard")
    # Caps: two per address, three in all, and an address that authenticated is held only to its own cap.
    assert guard.admit("10.0.0.1") is None and guard.admit("10.0.0.1") is None
    assert guard.admit("10.0.0.1") == OVER_ADDRESS_CAP
    assert guard.admit("10.0.0.2") is None
    assert guard.admit("10.0.0.3") == OVER_TOTAL_CAP
    guard.auth_succeeded("10.0.0.3", "x#vcs")
    assert guard.admit("10.0.0.3") is None
    guard.release("10.0.0.1")
    assert guard.pending_total == 3
    # Back-off: none for the first failure, then 1, 2, 4, 8, 8 s; a success clears it.
    backoffs = []
    for _ in range(6):
        guard.auth_failed("10.0.0.9", "X#vcs", BAD_SECRET)
        backoffs.append(guard.backed_off("10.0.0.9", "x#vcs"))
    assert backoffs == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]
    # Keyed by (address, claimed id): another whitelisted id at that address, or X at another address, is free.
    assert guard.backed_off("10.0.0.9", "y#vcs") == 0.0 and guard.backed_off("10.0.0.8", "x#vcs") == 0.0
    # Ids that are not whitelisted share one key per address: inventing new ones buys no fresh attempts.
    guard.auth_failed("10.0.0.9", "made-up-1#vcs", BAD_SECRET)
    guard.auth_failed("10.0.0.9", "made-up-2#vcs", BAD_SECRET)
    assert guard.backed_off("10.0.0.9", "made-up-3#vcs") == 1.0 and guard.backed_off("10.0.0.9", "y#vcs") == 0.0
    now[0] += 8.5
    assert guard.backed_off("10.0.0.9", "x#vcs") == 0.0
    guard.auth_failed("10.0.0.9", "x#vcs", BAD_SECRET)
    assert guard.backed_off("10.0.0.9", "x#vcs") == 8.0
    guard.auth_succeeded("10.0.0.9", "x#vcs")
    assert guard.backed_off("10.0.0.9", "x#vcs") == 0.0
    # Logging: the first refusal of an address is written at once; the rest of its interval is one summary line.
    lines = [r for r in caplog.records if getattr(r, "address", "") == "10.0.0.9"]
    assert len(lines) == 1 and lines[0].refused == 1  # type: ignore[attr-defined]
    guard.flush()
    assert len([r for r in caplog.records if getattr(r, "address", "") == "10.0.0.9"]) == 1
    now[0] += 60
    guard.flush()
    lines = [r for r in caplog.records if getattr(r, "address", "") == "10.0.0.9"]
    assert len(lines) == 2 and lines[1].refused == 8  # type: ignore[attr-defined]
    now[0] += 600
    guard.flush()
    assert len([r for r in caplog.records if getattr(r, "address", "") == "10.0.0.9"]) == 2  # nothing new to say

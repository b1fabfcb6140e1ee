"""The small rules: conference marker detection, control-message parsing, KV keys, sequences, tuning, settings."""

from __future__ import annotations

import datetime as dt

import pytest

from ews_ingest.bus import ControlError, parse_control
from ews_ingest.conference_marker import MarkerParser, find_join_link, has_keyword, parse_property
from ews_ingest.held import HeldRequests
from ews_ingest.mailbox_sync import Window
from ews_ingest.settings import IngestSettings, Tuning
from ews_ingest.state import Checkpoint, key_token, mailbox_key
from tccal.config import Config
from tccal.config.schema import ConferenceDefaults
from tccal.subjects import subject_token, unescape_token
from trueconf.calendar.v1 import common_pb2, ingest_pb2

HOSTS = frozenset({"video.example.com"})
DEFAULTS = ConferenceDefaults()


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Weekly @trueconf", True),
        ("@TrueConf.", True),
        ("(@trueconf)", True),
        ("mail anna@trueconf.com", False),
        ("see @trueconf.ru", False),
        ("@trueconfx", False),
        ("", False),
    ],
)
def test_keyword(text: str, found: bool) -> None:
    assert has_keyword(text) is found


def test_join_link_only_for_whitelisted_hosts() -> None:
    link = find_join_link(HOSTS, "Room 5", "join https://VIDEO.example.com:443/c/abc-123_x now")
    assert link is not None and (link.host, link.conference_id) == ("video.example.com", "abc-123_x")
    assert link.url == "https://video.example.com/c/abc-123_x"
    assert find_join_link(HOSTS, "https://evil.example.net/c/abc") is None
    assert find_join_link(HOSTS, "http://video.example.com/c/abc") is None  # not https


def test_marker_priorities() -> None:
    parser = MarkerParser(HOSTS, DEFAULTS)
    assert parser.detect(None, "Lunch", "Canteen", "") is None
    keyword = parser.detect(None, "Sync @trueconf", "", "")
    assert keyword is not None and keyword.source == common_pb2.CONFERENCE_SOURCE_KEYWORD
    linked = parser.detect(None, "Sync @trueconf", "https://video.example.com/c/42", "")
    assert linked is not None and linked.source == common_pb2.CONFERENCE_SOURCE_JOIN_LINK
    assert linked.existing_conference_id == "42"
    prop = parser.detect('{"mode": "S|L"}', "x", "", "written back: https://video.example.com/c/7")
    assert prop is not None and prop.source == common_pb2.CONFERENCE_SOURCE_EXTENDED_PROPERTY
    assert (prop.mode, prop.existing_conference_id) == (common_pb2.CONFERENCE_MODE_MODERATED, "7")


def test_property_keys_and_defaults() -> None:
    defaults = ConferenceDefaults.model_validate({"mode": "OxP", "access": "public", "maxParticipants": 30})
    spec = parse_property('{"max_podiums": 3, "pin": 1234, "mute_camera": true}', defaults)
    assert (spec.mode, spec.access) == (common_pb2.CONFERENCE_MODE_VIDEO_LECTURE, common_pb2.CONFERENCE_ACCESS_PUBLIC)
    assert (spec.max_participants, spec.max_podiums, spec.pin, spec.mute_camera_on_join) == (30, 3, "1234", True)
    for bad, message in [
        ("[1]", "JSON object"),
        ('{"access": "secret"}', "access 'secret'"),
        ('{"podiums": -1}', "whole number"),
        ('{"recording": "yes"}', "true or false"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_property(bad, DEFAULTS)


def test_control_payloads() -> None:
    mailbox = "anna.smith@example.com"
    subject = f"calendar.v1.control.resync.{subject_token(mailbox)}"
    assert unescape_token(subject_token(mailbox)) == mailbox
    assert parse_control(subject, b"").mailbox == mailbox
    request = parse_control(subject, b'{"mailbox": "Anna.Smith@Example.com", "since": "2026-01-02T03:04:05Z"}')
    assert request.mailbox == mailbox
    assert request.since == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    proto = ingest_pb2.ResyncMailboxRequest(mailbox=mailbox)
    proto.since.FromDatetime(dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    parsed = parse_control("calendar.v1.control.resync.x", proto.SerializeToString())
    assert (parsed.mailbox, parsed.since) == (mailbox, dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    assert parse_control(subject, b'{"provider": "ex1.example.com"}').provider == "ex1.example.com"
    with pytest.raises(ControlError, match="not JSON"):
        parse_control(subject, b"{oops")
    with pytest.raises(ControlError, match="names no mailbox"):
        parse_control("calendar.v1.control.ondemand.nobody", b"")


def test_kv_keys_and_sequences() -> None:
    assert key_token("Anna@Example.com") == "anna=40example=2ecom"
    assert mailbox_key("127.0.0.1:443", "a@b.c") == "v1.mailbox.127=2e0=2e0=2e1=3a443.a=40b=2ec"
    checkpoint = Checkpoint(provider="p", mailbox="m")
    assert checkpoint.reserve(3)
    assert [checkpoint.next_sequence() for _ in range(3)] == [1, 2, 3]
    assert not checkpoint.reserve(10)
    # after a crash nothing below the saved ceiling is used again
    restored = Checkpoint.from_json({"provider": "p", "mailbox": "m", "last_sequence": 3, "sequence_ceiling": 1000})
    restored.reserve(1)
    assert restored.next_sequence() == 1001


def test_window() -> None:
    window = Window.around(dt.datetime(2026, 5, 20, 15, tzinfo=dt.UTC), 1, 2)
    assert window.start == dt.datetime(2026, 4, 20, tzinfo=dt.UTC)
    assert window.holds(dt.datetime(2026, 4, 19, 23, tzinfo=dt.UTC), dt.datetime(2026, 4, 20, 1, tzinfo=dt.UTC))
    assert not window.holds(dt.datetime(2026, 4, 1, tzinfo=dt.UTC), dt.datetime(2026, 4, 2, tzinfo=dt.UTC))
    assert window.holds(dt.date(2026, 7, 20), dt.date(2026, 7, 20))
    assert not window.holds(dt.datetime(2026, 7, 21, tzinfo=dt.UTC), dt.datetime(2026, 7, 22, tzinfo=dt.UTC))
    assert window.still_relevant(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert not window.still_relevant(dt.datetime(2026, 4, 19, tzinfo=dt.UTC))


def test_tuning_from_environment() -> None:
    tuning = Tuning.from_env({"EWS_INGEST_SAFETY_SYNC_SECONDS": "30", "EWS_INGEST_STREAM_GROUP_SIZE": "5"})
    assert (tuning.safety_sync_seconds, tuning.stream_group_size) == (30.0, 5)
    with pytest.raises(ValueError, match="EWS_INGEST_STREAM_MINUTES='x' is not a valid integer"):
        Tuning.from_env({"EWS_INGEST_STREAM_MINUTES": "x"})
    with pytest.raises(ValueError, match="1-30 minutes"):
        Tuning.from_env({"EWS_INGEST_STREAM_MINUTES": "45"})


def test_settings_from_config() -> None:
    config = Config.model_validate(
        {
            "allowPlaintextPasswords": True,
            "productWhitelist": {"tcs": ["Video.Example.com#vcs"]},
            "calendarProviders": [
                {"host": "ex.example.com", "credentials": [{"login": "a", "password": "p"}], "users": ["X@Y.com"]},
                {
                    "host": "ex.example.com",
                    "port": 8443,
                    "maxConcurrency": 1,
                    "autodiscoverPath": "/ad/x.svc",
                    "credentials": [{"login": "b", "password": "q"}],
                },
            ],
        }
    )
    settings = IngestSettings.from_config(config, lambda v: v.upper(), Tuning())
    first, second = settings.providers
    assert (first.name, second.name) == ("ex.example.com:443", "ex.example.com:8443")
    assert first.ews_url == "https://ex.example.com:443/EWS/Exchange.asmx"
    assert second.autodiscover_url == "https://ex.example.com:8443/ad/x.svc"
    assert second.connections == 2  # a streaming call holds one: never fewer than two
    assert first.credentials[0].password == "P"
    assert first.users == ("x@y.com",)
    assert settings.tcs_hosts == frozenset({"video.example.com"})


async def _nothing() -> None:
    return None


def test_held_requests_go_to_their_mailbox_owner_or_expire() -> None:
    owned: set[str] = set()
    held = HeldRequests(lambda mailbox: mailbox in owned, hold_seconds=3600)
    held.hold("ondemand", "late@example.com", _nothing)
    held.hold("resync", "elsewhere@example.com", _nothing)
    assert held.due() == [] and len(held) == 2  # nobody owned yet: both kept
    owned.add("late@example.com")
    assert [r.mailbox for r in held.due()] == ["late@example.com"]  # answered once, then gone
    assert held.mailboxes() == ["elsewhere@example.com"] and held.answered_late == 1
    expiring = HeldRequests(lambda mailbox: False, hold_seconds=0)
    expiring.hold("ondemand", "gone@example.com", _nothing)
    assert expiring.due() == [] and len(expiring) == 0  # its hold ended: another replica owned it and answered
    bounded = HeldRequests(lambda mailbox: False, hold_seconds=3600, limit=2)
    for n in range(3):
        bounded.hold("ondemand", f"m{n}@example.com", _nothing)
    assert bounded.mailboxes() == ["m1@example.com", "m2@example.com"]  # the oldest made room

"""The conference marker of docs/architecture.md §4.5, shared by every calendar provider (ews-ingest, graph-ingest):
does a meeting ask for a TrueConf conference, and with what settings?

(a) Extended property `TrueConfMeeting` in the PublicStrings namespace of our property set
    {MARKER_PROPERTY_SET_ID}, type String, holding a JSON object (README.md documents the keys); EWS reads it as an
    ExtendedFieldURI, Graph as the singleValueExtendedProperty MARKER_GRAPH_PROPERTY_ID;
(b) a join link `https://<whitelisted server host>/c/<conference id>` in location or body: use that conference;
(c) the keyword `@trueconf` in location or subject: create one with `conferenceDefaults`.

A property that is not a JSON object, or names a mode or access we do not know, is an error: the item is
quarantined rather than given a conference with guessed settings (a "public" guess could expose a private meeting).
Pure functions only: no provider library is imported here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from tccal.config.schema import ConferenceDefaults, Config
from trueconf.calendar.v1 import common_pb2

#: Property set GUID of the TrueConfMeeting extended property (PublicStrings), published in README.md.
MARKER_PROPERTY_SET_ID = "7f3a2a5e-44b4-4bd4-9f5e-2b8c7c8e0a11"
MARKER_PROPERTY_NAME = "TrueConfMeeting"
#: The same property as Microsoft Graph names it (singleValueExtendedProperties id: "String {GUID} Name <name>").
MARKER_GRAPH_PROPERTY_ID = f"String {{{MARKER_PROPERTY_SET_ID}}} Name {MARKER_PROPERTY_NAME}"
KEYWORD = "@trueconf"

MODES: dict[str, common_pb2.ConferenceMode.ValueType] = {
    "s|l auto": common_pb2.CONFERENCE_MODE_SMART_MEETING,
    "smart_meeting": common_pb2.CONFERENCE_MODE_SMART_MEETING,
    "s|l": common_pb2.CONFERENCE_MODE_MODERATED,
    "moderated": common_pb2.CONFERENCE_MODE_MODERATED,
    "pxp": common_pb2.CONFERENCE_MODE_ALL_ON_SCREEN,
    "all_on_screen": common_pb2.CONFERENCE_MODE_ALL_ON_SCREEN,
    "oxp": common_pb2.CONFERENCE_MODE_VIDEO_LECTURE,
    "video_lecture": common_pb2.CONFERENCE_MODE_VIDEO_LECTURE,
}
ACCESS: dict[str, common_pb2.ConferenceAccess.ValueType] = {
    "private": common_pb2.CONFERENCE_ACCESS_PRIVATE,
    "public": common_pb2.CONFERENCE_ACCESS_PUBLIC,
}
_KEYWORD_RE = re.compile(r"(?<![\w@])@trueconf(?![\w.-]*\w)", re.IGNORECASE)
_LINK_RE = re.compile(r"https://([A-Za-z0-9.-]+)(?::\d+)?/c/([A-Za-z0-9_-]+)", re.IGNORECASE)


class MarkerError(ValueError):
    """The TrueConfMeeting property is present but unusable."""


@dataclass(frozen=True)
class JoinLink:
    host: str
    conference_id: str

    @property
    def url(self) -> str:
        return f"https://{self.host}/c/{self.conference_id}"


def find_join_link(hosts: frozenset[str], *texts: str | None) -> JoinLink | None:
    """The first join link to a whitelisted server host in `texts`."""
    for text in texts:
        if not text:
            continue
        for match in _LINK_RE.finditer(text):
            host = match.group(1).lower()
            if host in hosts:
                return JoinLink(host, match.group(2))
    return None


def has_keyword(*texts: str | None) -> bool:
    return any(text and _KEYWORD_RE.search(text) for text in texts)


def _bool(data: dict[str, Any], keys: tuple[str, ...], default: bool) -> bool:
    for key in keys:
        if key in data:
            value = data[key]
            if not isinstance(value, bool):
                raise MarkerError(f"{MARKER_PROPERTY_NAME}.{key} must be true or false, got {value!r}")
            return value
    return default


def _int(data: dict[str, Any], keys: tuple[str, ...], default: int) -> int:
    for key in keys:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MarkerError(f"{MARKER_PROPERTY_NAME}.{key} must be a whole number >= 0, got {value!r}")
            return value
    return default


def parse_property(value: str, defaults: ConferenceDefaults) -> common_pb2.ConferenceSpec:
    """The ConferenceSpec of a TrueConfMeeting property value; keys it leaves out take `conferenceDefaults`."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise MarkerError(
            f"{MARKER_PROPERTY_NAME} is not valid JSON ({exc.msg} at {exc.pos}): {value[:80]!r}"
        ) from None
    if not isinstance(data, dict):
        raise MarkerError(f"{MARKER_PROPERTY_NAME} must be a JSON object, got {type(data).__name__}")
    mode_text = data.get("mode", defaults.mode)
    if not isinstance(mode_text, str) or mode_text.strip().lower() not in MODES:
        raise MarkerError(
            f"{MARKER_PROPERTY_NAME}.mode {mode_text!r} is unknown (expected one of 'S|L Auto', 'S|L', 'PxP', 'OxP')"
        )
    access_text = data.get("access", defaults.access)
    if not isinstance(access_text, str) or access_text.strip().lower() not in ACCESS:
        raise MarkerError(f"{MARKER_PROPERTY_NAME}.access {access_text!r} is unknown (expected 'private' or 'public')")
    pin = data.get("pin", "")
    if pin is None:
        pin = ""
    if isinstance(pin, int) and not isinstance(pin, bool):
        pin = str(pin)
    if not isinstance(pin, str):
        raise MarkerError(f"{MARKER_PROPERTY_NAME}.pin must be a string, got {pin!r}")
    return common_pb2.ConferenceSpec(
        source=common_pb2.CONFERENCE_SOURCE_EXTENDED_PROPERTY,
        mode=MODES[mode_text.strip().lower()],
        access=ACCESS[access_text.strip().lower()],
        max_participants=_int(data, ("maxParticipants", "max_participants"), defaults.max_participants),
        max_podiums=_int(data, ("podiums", "maxPodiums", "max_podiums"), defaults.max_podiums),
        pin=pin,
        waiting_room_enabled=_bool(data, ("waitingRoom", "waiting_room"), defaults.waiting_room_enabled),
        recording_enabled=_bool(data, ("recording", "recordingEnabled"), defaults.recording_enabled),
        mute_mic_on_join=_bool(data, ("muteMic", "mute_mic"), defaults.mute_mic_on_join),
        mute_camera_on_join=_bool(data, ("muteCamera", "mute_camera"), defaults.mute_camera_on_join),
    )


def keyword_spec(defaults: ConferenceDefaults) -> common_pb2.ConferenceSpec:
    return common_pb2.ConferenceSpec(
        source=common_pb2.CONFERENCE_SOURCE_KEYWORD,
        mode=MODES[defaults.mode.lower()],
        access=ACCESS[defaults.access],
        max_participants=defaults.max_participants,
        max_podiums=defaults.max_podiums,
        waiting_room_enabled=defaults.waiting_room_enabled,
        recording_enabled=defaults.recording_enabled,
        mute_mic_on_join=defaults.mute_mic_on_join,
        mute_camera_on_join=defaults.mute_camera_on_join,
    )


@dataclass(frozen=True)
class MarkerParser:
    hosts: frozenset[str]
    defaults: ConferenceDefaults

    def detect(
        self, property_value: str | None, subject: str | None, location: str | None, body: str | None
    ) -> common_pb2.ConferenceSpec | None:
        """The conference the meeting asks for, or None. A join link always names the existing conference."""
        link = find_join_link(self.hosts, location, body)
        spec: common_pb2.ConferenceSpec | None = None
        if property_value is not None and property_value.strip():
            spec = parse_property(property_value, self.defaults)
        elif link is not None:
            spec = common_pb2.ConferenceSpec(source=common_pb2.CONFERENCE_SOURCE_JOIN_LINK)
        elif has_keyword(location, subject):
            spec = keyword_spec(self.defaults)
        if spec is not None and link is not None:
            spec.existing_conference_id = link.conference_id
            spec.join_link_host = link.host
        return spec


def tcs_hosts(config: Config) -> frozenset[str]:
    """Host names of the whitelisted TrueConf Servers (ids and REST hosts): join links to these are recognised."""
    hosts = {server_id.split("#", 1)[0].lower() for server_id in config.product_whitelist.tcs}
    for server in config.tcs.servers:
        hosts.add(server.id.split("#", 1)[0].lower())
        rest_host = urlparse(server.rest_url).hostname
        if rest_host:
            hosts.add(rest_host.lower())
    return frozenset(hosts)

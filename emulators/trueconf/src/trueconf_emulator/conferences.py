"""Conferences and users of the REST API v4, with TrueConf's validation rules.

Shapes follow TrueConf Server API v4 (`/api/v4`): responses wrap one object in an envelope
(`{"conference": {...}}`, `{"invitation": {...}}`, `{"user": {...}}`), errors are
`{"error": {"code", "message", "trace_id", "errors": [{"reason", "message", "location", "location_type"}]}}`.
"""

from __future__ import annotations

import copy
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .config import EMAIL_RE, MODES, ModeLimit, User

ACCESS_VALUES = ("private", "public")
SCHEDULE_TYPES = ("once", "week", "none")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
CONFERENCE_ID_RE = re.compile(r"^[A-Za-z0-9_]{1,128}$")
PIN_RE = re.compile(r"^[0-9]{4,16}$")
TIME_RE = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
MIN_DURATION = 60
MAX_DURATION = 86_399
MAX_START_TIME = 4_102_444_800  # 2100-01-01
BOOLEAN_FIELDS = (
    "waiting_room_enabled",
    "recording_enabled",
    "on_join_mute_mic",
    "on_join_mute_camera",
    "auto_termination_enabled",
    "broadcast_enabled",
)
OBJECT_FIELDS = ("rights", "sai", "registration")
CREATE_FIELDS = frozenset(
    {
        "id",
        "topic",
        "description",
        "owner",
        "mode",
        "access",
        "schedule",
        "invitations",
        "max_participants",
        "max_podiums",
        "pin",
        "tags",
        "auto_invite",
        "external_id",
        *BOOLEAN_FIELDS,
        *OBJECT_FIELDS,
    }
)
NOT_PATCHABLE = {
    "id": "the conference id cannot be changed",
    "invitations": "invitations are changed with /conferences/{id}/invitations",
    "external_id": "external_id is set once at creation",
}
PATCH_FIELDS = CREATE_FIELDS - set(NOT_PATCHABLE)


class ApiError(Exception):
    """An error answered in TrueConf API v4's error format."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        location: str | None = None,
        location_type: str = "body",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.location = location
        self.location_type = location_type

    def body(self) -> dict[str, Any]:
        item: dict[str, Any] = {"reason": self.reason, "message": self.message}
        if self.location is not None:
            item["location"] = self.location
            item["location_type"] = self.location_type
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "trace_id": str(secrets.randbelow(9_000_000_000) + 1_000_000_000),
                "errors": [item],
            }
        }


def bad(location: str, message: str, reason: str = "invalidValue") -> ApiError:
    return ApiError(400, f"{location}: {message}", reason, location)


class Directory:
    """TrueConf Server's user directory."""

    def __init__(self, users: list[User], server_host: str) -> None:
        self._server_host = server_host
        self._users: list[User] = []
        # Indexes: every pushed event is checked against the directory, which holds thousands in the benchmarks.
        self._by_id: dict[str, User] = {}
        self._by_email: dict[str, User] = {}
        for user in users:
            self.add(user)

    def add(self, user: User) -> None:
        if self.by_id(user.id) is not None:
            raise ValueError(f"user id {user.id!r} already exists")
        if self.by_email(user.email) is not None:
            raise ValueError(f"user e-mail {user.email!r} already exists")
        self._users.append(user)
        self._by_id[user.id] = user
        self._by_email[user.email.lower()] = user

    def all(self) -> list[User]:
        return list(self._users)

    def emails(self) -> list[str]:
        return [user.email for user in self._users]

    def by_id(self, user_id: str) -> User | None:
        return self._by_id.get(user_id)

    def by_email(self, email: str) -> User | None:
        return self._by_email.get(email.lower())

    def uid(self, user: User) -> str:
        return f"{user.id}@{self._server_host}"

    def resolve(self, reference: str) -> User | None:
        """A user by id or by TrueConf ID (`id@server-host`); e-mail addresses are not user references."""
        user = self.by_id(reference)
        if user is not None:
            return user
        if "@" in reference:
            login, host = reference.rsplit("@", 1)
            if host.lower() == self._server_host.lower():
                return self.by_id(login)
        return None

    def view(self, user: User) -> dict[str, Any]:
        return {
            "id": user.id,
            "uid": self.uid(user),
            "login_name": user.login_name,
            "email": user.email,
            "display_name": user.display_name,
            "first_name": user.first_name,
            "last_name": user.last_name,
            "is_active": True,
            "status": 0,
        }


@dataclass
class Invitation:
    id: str
    display_name: str
    is_moderator: bool = False
    user_id: str | None = None  # set when the invitee is a user of this server

    def key(self) -> str:
        return self.user_id if self.user_id is not None else self.id.lower()

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "display_name": self.display_name, "is_moderator": self.is_moderator}


@dataclass
class Conference:
    id: str
    topic: str
    owner: str
    mode: str
    access: str = "private"
    description: str = ""
    schedule: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    invitations: list[Invitation] = field(default_factory=list)
    max_participants: int = 0
    max_podiums: int = 0
    pin: str | None = None
    waiting_room_enabled: bool = False
    recording_enabled: bool = False
    on_join_mute_mic: bool = False
    on_join_mute_camera: bool = False
    auto_termination_enabled: bool = False
    broadcast_enabled: bool = False
    tags: list[str] = field(default_factory=list)
    auto_invite: int = 0
    rights: dict[str, Any] | None = None
    sai: dict[str, Any] | None = None
    registration: dict[str, Any] | None = None
    external_id: str | None = None
    state: str = "stopped"
    session_id: str | None = None
    created_at: int = field(default_factory=lambda: int(time.time()))
    updated_at: int = field(default_factory=lambda: int(time.time()))
    runs: int = 0
    #: Unix time the running session started (None while stopped).
    session_started_at: int | None = None

    def view(self, server_host: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "topic": self.topic,
            "description": self.description,
            "owner": self.owner,
            "mode": self.mode,
            "access": self.access,
            "state": self.state,
            "schedule": copy.deepcopy(self.schedule),
            "invitations": [invitation.view() for invitation in self.invitations],
            "max_participants": self.max_participants,
            "max_podiums": self.max_podiums,
            "pin": self.pin,
            "pin_enabled": self.pin is not None,
            "waiting_room_enabled": self.waiting_room_enabled,
            "recording_enabled": self.recording_enabled,
            "on_join_mute_mic": self.on_join_mute_mic,
            "on_join_mute_camera": self.on_join_mute_camera,
            "auto_termination_enabled": self.auto_termination_enabled,
            "broadcast_enabled": self.broadcast_enabled,
            "tags": list(self.tags),
            "auto_invite": self.auto_invite,
            "rights": copy.deepcopy(self.rights),
            "sai": copy.deepcopy(self.sai),
            "registration": copy.deepcopy(self.registration),
            "external_id": self.external_id,
            "url": join_url(server_host, self.id),
            "session_id": self.session_id,
            # Strings, as TrueConf Server answers them: trueconf-server-mcp's ConferenceOutput types created_at
            # as `str` (a number would fail its validation); schedule.start_time stays unix seconds.
            "created_at": timestamp_text(self.created_at),
            "updated_at": timestamp_text(self.updated_at),
        }


def timestamp_text(seconds: int) -> str:
    """A timestamp in a response: ISO 8601 UTC with a `Z` (what trueconf-eraser's parse_timestamp reads)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def join_url(server_host: str, conference_id: str) -> str:
    return f"https://{server_host}/c/{conference_id}"


def new_conference_id(taken: set[str]) -> str:
    while True:
        candidate = str(secrets.randbelow(900_000_000_000) + 100_000_000_000)
        if candidate not in taken:
            return candidate


# ------------------------------------------------------------------------------ field checks
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(value: Any, location: str, *, minimum: int, maximum: int) -> str:
    if not isinstance(value, str):
        raise bad(location, f"expected a string, got {_json_type(value)} {value!r}", "invalidType")
    if not minimum <= len(value) <= maximum:
        raise bad(location, f"length {len(value)} is outside {minimum}..{maximum}")
    return value


def _integer(value: Any, location: str, *, minimum: int, maximum: int) -> int:
    if not _is_int(value):
        raise bad(location, f"expected an integer, got {_json_type(value)} {value!r}", "invalidType")
    if not minimum <= value <= maximum:
        raise bad(location, f"{value} is outside {minimum}..{maximum}")
    return int(value)


def _boolean(value: Any, location: str) -> bool:
    if not isinstance(value, bool):
        raise bad(location, f"expected true or false, got {_json_type(value)} {value!r}", "invalidType")
    return value


def _choice(value: Any, location: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise bad(location, f"{value!r} is not one of {list(choices)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _object(value: Any, location: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad(location, f"expected an object, got {_json_type(value)}", "invalidType")
    return copy.deepcopy(value)


def _unknown(body: dict[str, Any], allowed: frozenset[str] | set[str], prefix: str = "") -> None:
    for key in body:
        if key not in allowed:
            raise bad(f"{prefix}{key}", f"unknown field; allowed fields are {sorted(allowed)}", "unknownField")


def validate_schedule(raw: Any, location: str = "schedule") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise bad(location, f"expected an object, got {_json_type(raw)}", "invalidType")
    if "type" not in raw:
        raise bad(f"{location}.type", "required field is missing", "required")
    kind = _choice(raw["type"], f"{location}.type", SCHEDULE_TYPES)
    if kind == "none":
        _unknown(raw, {"type"}, f"{location}.")
        return {"type": "none"}
    allowed = {"type", "start_time", "duration", "time", "special_time_offset"}
    if kind == "week":
        allowed.add("days")
    _unknown(raw, allowed, f"{location}.")
    # TrueConf Server demands the full field set per type (trueconf-server-mcp, schedule_utils.py: "once -
    # start_time, time, special_time_offset, duration; week - plus non-empty days").
    for required in sorted(allowed - {"type"}):
        if required not in raw:
            raise bad(f"{location}.{required}", f"required for schedule type {kind!r}", "required")
    start_time = _integer(raw["start_time"], f"{location}.start_time", minimum=1, maximum=MAX_START_TIME)
    duration = _integer(raw["duration"], f"{location}.duration", minimum=MIN_DURATION, maximum=MAX_DURATION)
    offset = _integer(raw["special_time_offset"], f"{location}.special_time_offset", minimum=-720, maximum=840)
    derived_time = datetime.fromtimestamp(start_time, UTC).strftime("%H:%M")
    value = _string(raw["time"], f"{location}.time", minimum=5, maximum=5)
    if not TIME_RE.match(value):
        raise bad(f"{location}.time", f"{value!r} is not HH:MM")
    if value != derived_time:
        raise bad(
            f"{location}.time",
            f"{value!r} (UTC) disagrees with start_time {start_time}, which is {derived_time} UTC",
        )
    # `time` is not stored: the server answers start_time (UTC) and special_time_offset only (schedule_utils.py,
    # _recover_local_time: "The server response keeps start_time (UTC) and special_time_offset but no time").
    schedule: dict[str, Any] = {
        "type": kind,
        "start_time": start_time,
        "duration": duration,
        "special_time_offset": offset,
    }
    if kind == "week":
        days = raw["days"]
        if not isinstance(days, list) or not days:
            raise bad(f"{location}.days", "expected a non-empty array of weekday names")
        seen: set[str] = set()
        for index, day in enumerate(days):
            name = _choice(day, f"{location}.days[{index}]", WEEKDAYS)
            if name in seen:
                raise bad(f"{location}.days[{index}]", f"{name!r} is listed twice", "duplicate")
            seen.add(name)
        schedule["days"] = list(days)
    return schedule


def validate_invitation(
    raw: Any,
    location: str,
    access: str,
    directory: Directory,
    *,
    allowed: frozenset[str] = frozenset({"id", "display_name", "is_moderator"}),
) -> Invitation:
    prefix = f"{location}." if location else ""
    if not isinstance(raw, dict):
        raise bad(location or "body", f"expected an object with id, got {_json_type(raw)}", "invalidType")
    _unknown(raw, allowed, prefix)
    if "id" not in raw:
        raise bad(f"{prefix}id", "required field is missing", "required")
    reference = _string(raw["id"], f"{prefix}id", minimum=1, maximum=254)
    user = directory.resolve(reference)
    if user is None:
        if not EMAIL_RE.match(reference):
            raise bad(f"{prefix}id", f"no user {reference!r} on this server", "userNotFound")
        if access != "public":
            raise bad(
                f"{prefix}id",
                f"{reference!r} is not a user of this server; guests (e-mail) can be invited to public "
                "conferences only",
                "guestsNotAllowed",
            )
    display_name = reference if user is None else user.display_name
    if "display_name" in raw:
        display_name = _string(raw["display_name"], f"{prefix}display_name", minimum=1, maximum=256)
    is_moderator = False
    if "is_moderator" in raw and "is_moderator" in allowed:
        is_moderator = _boolean(raw["is_moderator"], f"{prefix}is_moderator")
    return Invitation(
        id=reference,
        display_name=display_name,
        is_moderator=is_moderator,
        user_id=None if user is None else user.id,
    )


def _limits(
    mode: str,
    participants: int | None,
    podiums: int | None,
    limits: dict[str, ModeLimit],
    previous: Conference | None,
) -> tuple[int, int]:
    limit = limits[mode]
    if participants is None:
        if previous is not None and previous.max_participants <= limit.max_participants:
            participants = previous.max_participants
        else:
            participants = limit.max_participants
    elif participants > limit.max_participants:
        raise bad(
            "max_participants",
            f"{participants} exceeds the limit of {limit.max_participants} for mode {mode!r}",
        )
    if mode == "PxP":
        if podiums is not None and podiums != participants:
            raise bad(
                "max_podiums",
                f"in mode 'PxP' every participant is a speaker: max_podiums must equal max_participants "
                f"({participants}), got {podiums}",
            )
        return participants, participants
    if mode == "OxP":
        if podiums is not None and podiums != 1:
            raise bad(
                "max_podiums", f"in mode 'OxP' there is exactly one speaker: max_podiums must be 1, got {podiums}"
            )
        return participants, 1
    ceiling = min(participants, limit.max_podiums)
    if podiums is None:
        if previous is not None and previous.mode in ("S|L", "S|L Auto") and previous.max_podiums <= ceiling:
            podiums = previous.max_podiums
        else:
            podiums = ceiling
    elif podiums > ceiling:
        raise bad(
            "max_podiums",
            f"{podiums} exceeds {ceiling} (the smaller of max_participants and the limit of "
            f"{limit.max_podiums} for mode {mode!r})",
        )
    return participants, podiums


def _apply_common(conference: Conference, body: dict[str, Any], directory: Directory) -> None:
    """Fields shared by create and patch (everything but id, invitations, external_id, limits)."""
    if "topic" in body:
        conference.topic = _string(body["topic"], "topic", minimum=1, maximum=240)
    if "description" in body:
        conference.description = _string(body["description"], "description", minimum=0, maximum=4096)
    if "owner" in body:
        reference = _string(body["owner"], "owner", minimum=1, maximum=64)
        user = directory.resolve(reference)
        if user is None:
            raise bad("owner", f"no user {reference!r} on this server", "userNotFound")
        conference.owner = user.id
    if "mode" in body:
        conference.mode = _choice(body["mode"], "mode", MODES)
    if "access" in body:
        conference.access = _choice(body["access"], "access", ACCESS_VALUES)
    if "schedule" in body:
        conference.schedule = validate_schedule(body["schedule"])
    if "pin" in body:
        pin = body["pin"]
        if pin is None or pin == "":
            conference.pin = None
        else:
            value = _string(pin, "pin", minimum=4, maximum=16)
            if not PIN_RE.match(value):
                raise bad("pin", f"{value!r} is not 4 to 16 digits")
            conference.pin = value
    for name in BOOLEAN_FIELDS:
        if name in body:
            setattr(conference, name, _boolean(body[name], name))
    if "tags" in body:
        tags = body["tags"]
        if not isinstance(tags, list) or len(tags) > 20:
            raise bad("tags", "expected an array of at most 20 strings")
        conference.tags = [_string(tag, f"tags[{index}]", minimum=1, maximum=64) for index, tag in enumerate(tags)]
    if "auto_invite" in body:
        conference.auto_invite = _integer(body["auto_invite"], "auto_invite", minimum=0, maximum=2)
    for name in OBJECT_FIELDS:
        if name in body:
            setattr(conference, name, _object(body[name], name))


def _optional_int(body: dict[str, Any], name: str, maximum: int) -> int | None:
    if name not in body:
        return None
    return _integer(body[name], name, minimum=1, maximum=maximum)


def validate_create(body: Any, directory: Directory, limits: dict[str, ModeLimit], taken_ids: set[str]) -> Conference:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", "invalidBody", "body")
    _unknown(body, CREATE_FIELDS)
    for required in ("topic", "owner", "mode"):
        if required not in body:
            raise bad(required, "required field is missing", "required")
    conference_id: str | None = None
    if "id" in body:
        conference_id = _string(body["id"], "id", minimum=1, maximum=128)
        if not CONFERENCE_ID_RE.match(conference_id):
            raise bad("id", f"{conference_id!r} may hold only Latin letters, digits and underscores")
    conference = Conference(id=conference_id or "", topic="", owner="", mode="PxP")
    _apply_common(conference, body, directory)
    participants = _optional_int(body, "max_participants", 100_000)
    podiums = _optional_int(body, "max_podiums", 100_000)
    conference.max_participants, conference.max_podiums = _limits(conference.mode, participants, podiums, limits, None)
    if "external_id" in body:
        conference.external_id = _string(body["external_id"], "external_id", minimum=1, maximum=256)
    if "invitations" in body:
        raw_invitations = body["invitations"]
        if not isinstance(raw_invitations, list):
            raise bad("invitations", f"expected an array, got {_json_type(raw_invitations)}", "invalidType")
        if len(raw_invitations) > conference.max_participants:
            raise bad(
                "invitations",
                f"{len(raw_invitations)} invitations exceed max_participants {conference.max_participants}",
            )
        keys: set[str] = set()
        for index, raw in enumerate(raw_invitations):
            invitation = validate_invitation(raw, f"invitations[{index}]", conference.access, directory)
            if invitation.key() in keys:
                raise bad(f"invitations[{index}].id", f"{invitation.id!r} is invited twice", "duplicate")
            keys.add(invitation.key())
            conference.invitations.append(invitation)
    if conference_id is None:
        conference.id = new_conference_id(taken_ids)
    elif conference_id in taken_ids:
        # A taken id is a unique-value violation: 400 uniqueValueAlreadyInUse, as TrueConf Server answers it.
        raise ApiError(400, f"id: conference {conference_id!r} already exists", "uniqueValueAlreadyInUse", "id")
    return conference


def validate_patch(body: Any, current: Conference, directory: Directory, limits: dict[str, ModeLimit]) -> Conference:
    """A new Conference with the patch applied; `current` is left untouched."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", "invalidBody", "body")
    for key in body:
        if key in NOT_PATCHABLE:
            raise bad(key, NOT_PATCHABLE[key], "notPatchable")
    _unknown(body, PATCH_FIELDS)
    if current.state == "running":
        for key in body:
            if key != "description":
                raise bad(
                    key,
                    "the conference is running: only description can be edited during a conference",
                    "conferenceIsRunning",
                )
    updated = copy.deepcopy(current)
    _apply_common(updated, body, directory)
    participants = _optional_int(body, "max_participants", 100_000)
    podiums = _optional_int(body, "max_podiums", 100_000)
    updated.max_participants, updated.max_podiums = _limits(updated.mode, participants, podiums, limits, current)
    if updated.access != "public":
        for index, invitation in enumerate(updated.invitations):
            if invitation.user_id is None:
                raise bad(
                    "access",
                    f"cannot make the conference {updated.access!r}: invitations[{index}] {invitation.id!r} is a "
                    "guest; remove guest invitations first",
                    "guestsInvited",
                )
    if len(updated.invitations) > updated.max_participants:
        raise bad(
            "max_participants",
            f"{updated.max_participants} is below the {len(updated.invitations)} invitations",
        )
    updated.updated_at = int(time.time())
    return updated

"""The event object of the bridge protocol (§5.1) built from a sync-engine `Occurrence`, push sequence numbers,
and snapshot chunks.

Sequence numbers (§4). The sync-engine numbers every calendar command per user (`CalendarUpsert.seq`, …) and
`SyncService.ListEvents` tells the user's latest number `S` at the moment it read the list. A snapshot built
from that list supersedes every push up to `S`, yet it needs a `seq` of its own that is above everything TCS
has applied and below the next command's. So the wire `seq` is scaled: a command with engine number `n` is
pushed with `n × SEQ_SCALE`, and the k-th snapshot taken at `S` gets `S × SEQ_SCALE + k` (k ≥ 1, remembered
per server and user in the gateway's state, so it keeps growing across reconnects and restarts).
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from tccal.cache_window import CacheWindow
from tcs_gateway.bridge.framing import encoded_size, format_instant
from trueconf.calendar.v1 import calendar_pb2, common_pb2

SEQ_SCALE = 1_000_000
MAX_SEQ = 9_007_199_254_740_991
MAX_ENGINE_SEQ = MAX_SEQ // SEQ_SCALE - 1
MAX_BODY = 65_536
MAX_TEXT = 1024
MAX_NAME = 256
MAX_ATTENDEES = 2000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_ZONE = re.compile(r"^(UTC|[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)+)$")
_CONFERENCE_ID = re.compile(r"^[A-Za-z0-9_]{1,128}$")
_JOIN_URL = re.compile(r"^https://[^/\s?#]+/c/([A-Za-z0-9_]{1,128})$")

_RESPONSES = {
    common_pb2.RESPONSE_TYPE_ACCEPT: "accepted",
    common_pb2.RESPONSE_TYPE_TENTATIVE: "tentative",
    common_pb2.RESPONSE_TYPE_DECLINE: "declined",
    common_pb2.RESPONSE_TYPE_ORGANIZER: "organizer",
}
_ROLES = {
    common_pb2.ATTENDEE_ROLE_OPTIONAL: "optional",
    common_pb2.ATTENDEE_ROLE_RESOURCE: "resource",
}


class EventError(ValueError):
    """The occurrence cannot be shown (the message names the field and value)."""


def push_seq(engine_seq: int) -> int:
    if not 1 <= engine_seq <= MAX_ENGINE_SEQ:
        raise EventError(f"seq {engine_seq} is outside 1..{MAX_ENGINE_SEQ}")
    return engine_seq * SEQ_SCALE


def list_seq(engine_seq: int, last_snapshot_seq: int) -> int:
    """`seq` of a getCalendarList reply built from a list read at `engine_seq`."""
    return max(min(engine_seq, MAX_ENGINE_SEQ) * SEQ_SCALE, last_snapshot_seq)


def engine_seq_held(since_seq: int | None, last_snapshot_seq: int) -> int:
    """The engine seq a TCS holding a user's list at wire seq `since_seq` (getCalendarList `sinceSeq`) is current
    at, for ListEvents' `since_seq`: 0 (it must get the list) without `since_seq`, or when the gateway sent the
    user a snapshot TCS has not applied yet (its seq is above `since_seq`)."""
    if not since_seq or last_snapshot_seq > since_seq:
        return 0
    return since_seq // SEQ_SCALE


def push_seq_floor(engine_seq: int) -> int:
    """The wire seq from which on an engine history starting at `engine_seq` answers changes (at least 1)."""
    return max(1, min(engine_seq, MAX_ENGINE_SEQ) * SEQ_SCALE)


def engine_seq_of(since_seq: int) -> int:
    """The engine seq a TCS holding a user's window at wire seq `since_seq` holds it as of (a push's seq is its engine
    seq scaled, a snapshot's the engine seq it was read at scaled plus k): the base of an incremental list."""
    return min(since_seq // SEQ_SCALE, MAX_ENGINE_SEQ)


def snapshot_seq(engine_seq: int, last_snapshot_seq: int) -> int:
    """A fresh snapshot `seq` for a list read at `engine_seq`, above the previous snapshot's `last_snapshot_seq`."""
    floor = min(engine_seq, MAX_ENGINE_SEQ) * SEQ_SCALE
    candidate = max(floor, last_snapshot_seq) + 1
    ceiling = floor + SEQ_SCALE - 1
    if last_snapshot_seq < ceiling:
        return min(candidate, ceiling)
    # Either SEQ_SCALE - 1 snapshots were taken at this engine seq (then TCS ignores this one as a duplicate,
    # which is harmless: nothing changed since), or the engine's numbering went backwards.
    return min(candidate, MAX_SEQ)


def _text(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit]


#: Timestamp's valid range (google/protobuf/timestamp.proto): 0001-01-01T00:00:00Z … 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def _instant(stamp: Timestamp, fallback: datetime | None = None) -> datetime:
    seconds = stamp.seconds
    nanos = stamp.nanos
    if seconds == 0 and nanos == 0 and fallback is not None:
        return fallback
    return _moment(seconds, nanos)


def _moment(seconds: int, nanos: int) -> datetime:
    if _MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos <= 999_999_999:
        # What Timestamp.ToDatetime computes (microseconds rounded toward zero), without its Python-level checks
        # and time-zone conversion, which took a tenth of building a large calendar.
        moment = datetime.fromtimestamp(seconds, UTC)  # whole seconds: exact
        return moment.replace(microsecond=nanos // 1000) if nanos else moment
    # Out of range: protobuf's own error names the value.
    return Timestamp(seconds=seconds, nanos=nanos).ToDatetime(tzinfo=UTC)


@lru_cache(maxsize=65_536)  # a calendar's meetings start and end at the same few times of day, week after week
def _stamp_text(seconds: int, nanos: int) -> str:
    return format_instant(_moment(seconds, nanos))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    """Microseconds since the epoch (exact) of an aware datetime."""
    return (moment - _EPOCH) // _MICROSECOND


def _times(occurrence: calendar_pb2.Occurrence) -> tuple[str, str, str, int, int]:
    """The occurrence's `start`, `end` (not before its start) and `updatedAt` as the protocol writes them, and its
    start and end as those texts say them, in microseconds since the epoch; an unset start is now, an unset end its
    start, an unset updatedAt now. Each Timestamp is read once: a sub-message's Python wrapper costs as much as
    formatting it."""
    start, end, updated = occurrence.start, occurrence.end, occurrence.updated_at
    start_seconds, start_nanos = start.seconds, start.nanos
    end_seconds, end_nanos = end.seconds, end.nanos
    updated_seconds, updated_nanos = updated.seconds, updated.nanos
    if not (start_seconds or start_nanos) or not (end_seconds or end_nanos) or not (updated_seconds or updated_nanos):
        now = datetime.now(UTC)
        updated_text = _stamp_text(updated_seconds, updated_nanos) if updated_seconds or updated_nanos else None
        start_at = _instant(start, now)
        end_at = max(_instant(end, start_at), start_at)
        return (
            format_instant(start_at),
            format_instant(end_at),
            format_instant(now) if updated_text is None else updated_text,
            _micros(start_at),
            _micros(end_at),
        )
    updated_text = _stamp_text(updated_seconds, updated_nanos)
    start_text = _stamp_text(start_seconds, start_nanos)
    end_text = _stamp_text(end_seconds, end_nanos)
    start_micros = start_seconds * 1_000_000 + start_nanos // 1000  # the microseconds _moment keeps
    if (end_seconds, end_nanos) < (start_seconds, start_nanos):
        return start_text, start_text, updated_text, start_micros, start_micros
    return start_text, end_text, updated_text, start_micros, end_seconds * 1_000_000 + end_nanos // 1000


@lru_cache(maxsize=1024)
def time_zone(name: str) -> str:
    if name == "UTC" or not name:
        return "UTC"
    if not _ZONE.match(name) or len(name) > 64:
        return "UTC"
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return "UTC"
    return name


@lru_cache(maxsize=4096)  # the same organizers and attendees recur in every event of a calendar
def _email(value: str) -> str | None:
    email = value.strip().lower()
    if not email or len(email) > 254 or not _EMAIL.match(email):
        return None
    return email


def _name(value: str) -> str | None:
    return _text(value, MAX_NAME) if value else None


def conference_of(link: common_pb2.ConferenceLink, server_host: str) -> dict[str, str] | None:
    """The event's `conference`: the engine's join link when well-formed, else one built for `server_host`."""
    if not link.id or not _CONFERENCE_ID.match(link.id):
        return None
    match = _JOIN_URL.match(link.url)
    if match is not None and match.group(1) == link.id and len(link.url) <= 512:
        return {"id": link.id, "url": link.url}
    return {"id": link.id, "url": f"https://{server_host}/c/{link.id}"}


def build_event(
    occurrence: calendar_pb2.Occurrence, user: str, seq: int, *, server_host: str, cancelled: bool | None = None
) -> dict[str, Any]:
    """The protocol's event object for `user`'s calendar (every field present, private events masked)."""
    return _occurrence_event(_meeting_event(occurrence, user.lower(), server_host), occurrence, seq, cancelled)[0]


class EventBuilder:
    """build_event for the many occurrences of one user's list in a window: what every occurrence of a meeting
    shares - texts, organizer, attendees, the user's answer, conference (all but ids, times, `cancelled` and `seq`)
    - is built once per distinct content (`meeting_key`) and copied for each occurrence."""

    def __init__(self, user: str, server_host: str, window: CacheWindow) -> None:
        self.user = user.lower()
        self.server_host = server_host
        self._window_start = _micros(window.start)
        self._window_end = _micros(window.end)
        self._meetings: dict[bytes, dict[str, Any]] = {}

    def build(self, occurrence: calendar_pb2.Occurrence, seq: int) -> dict[str, Any] | None:
        """What `build_event(occurrence, user, seq, server_host=server_host)` returns when that event `overlaps`
        the window, else None. Its nested organizer, attendees and conference are shared with other events of this
        builder: they are not to be changed in place."""
        key = meeting_key(occurrence)
        meeting = self._meetings.get(key)
        if meeting is None:
            meeting = self._meetings[key] = _meeting_event(occurrence, self.user, self.server_host)
        event, start, end = _occurrence_event(meeting, occurrence, seq, None)
        if start == end:
            return event if self._window_start <= start < self._window_end else None
        return event if start < self._window_end and end > self._window_start else None


#: The fields of an Occurrence that are the occurrence's own: `_occurrence_event` fills them in for each one (and
#: `original_start` is shown by none). Every other field is its meeting's part, built by `_meeting_event`.
OCCURRENCE_OWN_FIELDS: Final = ("id", "meeting_id", "uid", "start", "end", "cancelled", "original_start", "updated_at")


def meeting_key(occurrence: calendar_pb2.Occurrence) -> bytes:
    """The occurrence without its own fields (OCCURRENCE_OWN_FIELDS), serialized: occurrences with equal keys are
    equal in every other field, those `_meeting_event` reads, so they get equal meeting parts - a field added to
    Occurrence is in the key unless it is declared the occurrence's own. Copying, clearing and serializing run in
    protobuf's C code: reading the fields one by one in Python took a quarter of a 20,000-event list's build, and
    grew with the attendees (two message wrappers each; bench/README.md section 6)."""
    part = calendar_pb2.Occurrence()
    part.CopyFrom(occurrence)
    for name in OCCURRENCE_OWN_FIELDS:
        part.ClearField(name)
    return part.SerializeToString(deterministic=True)


def _occurrence_event(
    meeting: dict[str, Any], occurrence: calendar_pb2.Occurrence, seq: int, cancelled: bool | None
) -> tuple[dict[str, Any], int, int]:
    """The event of `occurrence` from its meeting's part (a copy with the occurrence's own fields filled in), and its
    start and end in microseconds since the epoch."""
    occurrence_id = occurrence.id
    if not occurrence_id:
        raise EventError("occurrence.id is empty")
    start, end, updated, start_micros, end_micros = _times(occurrence)
    meeting_id = occurrence.meeting_id
    event = meeting.copy()  # keeps the fields' order: `None` placeholders are replaced in place
    event["id"] = occurrence_id[:512]
    event["meetingId"] = (meeting_id or occurrence_id)[:512]
    event["uid"] = (occurrence.uid or meeting_id or occurrence_id)[:1024]
    event["start"] = start
    event["end"] = end
    event["cancelled"] = bool(occurrence.cancelled) if cancelled is None else cancelled
    event["updatedAt"] = updated
    event["seq"] = seq
    return event, start_micros, end_micros


def _meeting_event(occurrence: calendar_pb2.Occurrence, user: str, server_host: str) -> dict[str, Any]:
    """The event's fields that depend only on what `meeting_key` holds (`user` lower-cased), in the protocol's
    order; the occurrence's own fields are `None` until `_occurrence_event` fills them in."""
    private = bool(occurrence.private)
    organizer_email = _email(occurrence.organizer.email)
    organizer_name = _name(occurrence.organizer.name)
    attendees: list[dict[str, Any]] = []
    seen: set[str] = set()
    if organizer_email is None:
        # Exchange did not say who organizes it: the event still shows, organized by "someone unknown".
        organizer_email = "unknown-organizer@invalid"
    attendees.append({"email": organizer_email, "name": organizer_name, "role": "required", "response": "organizer"})
    seen.add(organizer_email)
    for attendee in occurrence.attendees:
        email = _email(attendee.person.email)
        if email is None or email in seen:
            continue
        seen.add(email)
        response = _RESPONSES.get(attendee.response, "none")
        if response == "organizer":
            response = "none"
        attendees.append(
            {
                "email": email,
                "name": _name(attendee.person.name),
                "role": _ROLES.get(attendee.role, "required"),
                "response": response,
            }
        )
        if len(attendees) >= MAX_ATTENDEES:
            break
    if user == organizer_email:
        my_response = "organizer"
    else:
        my_response = _RESPONSES.get(occurrence.my_response, "")
        if my_response == "organizer":
            my_response = "none"
        mine: dict[str, Any] | None = None
        for attendee_entry in attendees:
            if attendee_entry["email"] == user:
                mine = attendee_entry
                break
        if not my_response:
            my_response = mine["response"] if mine is not None else "none"
        elif mine is not None:
            mine["response"] = my_response
    return {
        "id": None,
        "meetingId": None,
        "uid": None,
        "subject": None if private else _text(occurrence.subject, MAX_TEXT),
        "body": None if private else _text(occurrence.body, MAX_BODY),
        "location": None if private else _text(occurrence.location, MAX_TEXT),
        "start": None,
        "end": None,
        "allDay": bool(occurrence.all_day),
        "timeZone": time_zone(occurrence.time_zone),
        "cancelled": None,
        "private": private,
        "organizer": {"email": organizer_email, "name": organizer_name},
        "attendees": [] if private else attendees,
        "myResponse": my_response,
        "recurring": bool(occurrence.recurring),
        "conference": None if private else conference_of(occurrence.conference, server_host),
        "updatedAt": None,
        "seq": None,
    }


#: JSON bytes a character of a string can take at most (a control character is written `\u00XX`).
_MAX_CHAR_BYTES = 6
#: JSON bytes of an event besides its strings' characters (keys, quotes, instants, flags, numbers), generously.
_EVENT_FRAME_BYTES = 2048
#: JSON bytes of an attendee besides its e-mail and name.
_ATTENDEE_FRAME_BYTES = 96


_TEXT_FIELDS = ("id", "meetingId", "uid", "subject", "body", "location", "timeZone", "myResponse")


def size_bound(event: dict[str, Any]) -> int:
    """An upper bound of the event's JSON size, counted without encoding it."""
    chars = 0
    for name in _TEXT_FIELDS:
        chars += len(event[name] or "")
    for attendee in event["attendees"]:
        chars += len(attendee["email"]) + len(attendee["name"] or "")
    chars += len(event["organizer"]["email"]) + len(event["organizer"]["name"] or "")
    conference = event["conference"]
    if conference is not None:
        chars += len(conference["id"]) + len(conference["url"])
    return _EVENT_FRAME_BYTES + _MAX_CHAR_BYTES * chars + _ATTENDEE_FRAME_BYTES * len(event["attendees"])


def fit_event(event: dict[str, Any], budget: int, user: str) -> dict[str, Any]:
    """Shrink an event that would not fit in `budget` bytes: fewer attendees (the organizer and the user stay),
    then a shorter body. Most events are far below the budget: the bound says so without encoding them."""
    if size_bound(event) <= budget or encoded_size(event) <= budget:
        return event
    slim = dict(event)
    keep = [a for a in event["attendees"] if a["response"] == "organizer" or a["email"] == user]
    slim["attendees"] = keep
    if encoded_size(slim) <= budget:
        return slim
    body = slim.get("body")
    while isinstance(body, str) and body and encoded_size(slim) > budget:
        body = body[: len(body) // 2]
        slim["body"] = body
    return slim


def overlaps(event: dict[str, Any], window_from: datetime, window_to: datetime) -> bool:
    start = datetime.fromisoformat(event["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(event["end"].replace("Z", "+00:00"))
    if start == end:
        return window_from <= start < window_to
    return start < window_to and end > window_from


_Event = TypeVar("_Event")


def chunk_events(events: Sequence[_Event], sizes: Sequence[int], budget: int) -> list[list[_Event]]:
    """Split events into chunks whose JSON array stays within `budget` bytes, `sizes` being the events' JSON
    bytes, in their order (an empty list is one empty chunk)."""
    chunks: list[list[_Event]] = [[]]
    size = 2
    for event, event_size in zip(events, sizes, strict=True):
        length = event_size + 1
        if chunks[-1] and size + length > budget:
            chunks.append([])
            size = 2
        chunks[-1].append(event)
        size += length
    return chunks

"""The calendars a TrueConf Server holds, kept exactly as the gateway delivered them.

Rules (docs/bridge-protocol.md §4): per user a `lastSeq`; a push whose seq is not above it changes
nothing; snapshots and getCalendarList replies replace the events overlapping their window.
"""

from __future__ import annotations

import copy
import zoneinfo
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from .schema import Problem

_SEEN_SEQ_MEMORY = 10_000


def parse_instant(value: str) -> datetime:
    """Parse an ISO 8601 UTC instant of the protocol (the schema already checked its shape)."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return parsed.astimezone(UTC)


def format_instant(value: datetime) -> str:
    value = value.astimezone(UTC)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def overlaps(start: datetime, end: datetime, window_from: datetime, window_to: datetime) -> bool:
    if start == end:
        return window_from <= start < window_to
    return start < window_to and end > window_from


def _instant(value: str, path: str) -> datetime | Problem:
    try:
        return parse_instant(value)
    except ValueError as exc:
        return Problem(path, f"{path}: {value!r} is not a valid instant ({exc})")


def check_window(window_from: str, window_to: str, prefix: str = "") -> Problem | tuple[datetime, datetime]:
    start = _instant(window_from, f"{prefix}from")
    if isinstance(start, Problem):
        return start
    end = _instant(window_to, f"{prefix}to")
    if isinstance(end, Problem):
        return end
    if not start < end:
        return Problem(f"{prefix}to", f"{prefix}to {window_to} is not after {prefix}from {window_from}")
    return start, end


def check_event(event: dict[str, Any], user: str, path: str) -> Problem | None:
    """Rules of §5.1 that the schema cannot express."""
    start = _instant(event["start"], f"{path}.start")
    if isinstance(start, Problem):
        return start
    end = _instant(event["end"], f"{path}.end")
    if isinstance(end, Problem):
        return end
    if end < start:
        return Problem(f"{path}.end", f"{path}.end {event['end']} is before {path}.start {event['start']}")
    updated = _instant(event["updatedAt"], f"{path}.updatedAt")
    if isinstance(updated, Problem):
        return updated
    zone = event["timeZone"]
    if zone != "UTC":
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            return Problem(f"{path}.timeZone", f"{path}.timeZone {zone!r} is not an IANA time zone")
    conference = event.get("conference")
    if conference is not None:
        link_id = urlsplit(conference["url"]).path.rsplit("/", 1)[-1]
        if link_id != conference["id"]:
            return Problem(
                f"{path}.conference.url",
                f"{path}.conference.url {conference['url']!r} does not name conference {conference['id']!r}",
            )
    organizer_email = event["organizer"]["email"].lower()
    seen: set[str] = set()
    for index, attendee in enumerate(event["attendees"]):
        email = attendee["email"].lower()
        where = f"{path}.attendees[{index}]"
        if email in seen:
            return Problem(f"{where}.email", f"{where}.email {email!r} is listed twice")
        seen.add(email)
        if attendee["response"] == "organizer" and email != organizer_email:
            return Problem(
                f"{where}.response",
                f"{where}.response is 'organizer' but {email!r} is not the organizer {organizer_email!r}",
            )
        if email == organizer_email and attendee["response"] != "organizer":
            return Problem(
                f"{where}.response",
                f"{where}.response of the organizer {email!r} must be 'organizer', got {attendee['response']!r}",
            )
        if email == user and attendee["response"] != event["myResponse"]:
            return Problem(
                f"{path}.myResponse",
                f"{path}.myResponse {event['myResponse']!r} differs from the user's own answer "
                f"{attendee['response']!r} in {where}",
            )
    if user == organizer_email and event["myResponse"] != "organizer":
        return Problem(
            f"{path}.myResponse",
            f"{path}.myResponse must be 'organizer' for the organizer {user!r}, got {event['myResponse']!r}",
        )
    if event["myResponse"] == "organizer" and user != organizer_email:
        return Problem(
            f"{path}.myResponse",
            f"{path}.myResponse is 'organizer' but {user!r} is not the organizer {organizer_email!r}",
        )
    return None


def check_event_list(
    events: list[dict[str, Any]], user: str, window: tuple[datetime, datetime], path: str
) -> Problem | None:
    ids: set[str] = set()
    for index, event in enumerate(events):
        where = f"{path}[{index}]"
        problem = check_event(event, user, where)
        if problem is not None:
            return problem
        if event["id"] in ids:
            return Problem(f"{where}.id", f"{where}.id {event['id']!r} appears twice")
        ids.add(event["id"])
        if not overlaps(parse_instant(event["start"]), parse_instant(event["end"]), *window):
            return Problem(
                f"{where}.start",
                f"{where} ({event['start']} – {event['end']}) does not overlap the window "
                f"[{format_instant(window[0])}, {format_instant(window[1])})",
            )
    return None


@dataclass
class PendingSnapshot:
    seq: int
    window_from: str
    window_to: str
    chunk_count: int
    chunks: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class UserCalendar:
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_seq: int = 0
    seen: deque[int] = field(default_factory=lambda: deque(maxlen=_SEEN_SEQ_MEMORY))
    pending_snapshot: PendingSnapshot | None = None
    #: Windows (from, to as sent) whose getCalendarList was applied: held completely as of last_seq since.
    listed_windows: set[tuple[str, str]] = field(default_factory=set)

    def replace_window(self, window: tuple[datetime, datetime], events: list[dict[str, Any]]) -> None:
        keep = {
            event_id: event
            for event_id, event in self.events.items()
            if not overlaps(parse_instant(event["start"]), parse_instant(event["end"]), *window)
        }
        for event in events:
            keep[event["id"]] = copy.deepcopy(event)
        self.events = keep


@dataclass(frozen=True)
class PushOutcome:
    applied: bool
    duplicate: bool
    stale: bool
    last_seq: int
    snapshot_pending: bool = False


class CalendarStore:
    def __init__(self) -> None:
        self._users: dict[str, UserCalendar] = {}

    def user(self, email: str) -> UserCalendar:
        key = email.lower()
        calendar = self._users.get(key)
        if calendar is None:
            calendar = UserCalendar()
            self._users[key] = calendar
        return calendar

    def known_users(self) -> list[str]:
        return sorted(self._users)

    def last_seq(self, email: str) -> int:
        calendar = self._users.get(email.lower())
        return calendar.last_seq if calendar else 0

    def apply_push(self, method: str, payload: dict[str, Any]) -> PushOutcome:
        """Apply a validated push. The caller has checked schema and semantic rules."""
        calendar = self.user(payload["user"])
        seq: int = payload["seq"]
        if seq <= calendar.last_seq:
            duplicate = seq in calendar.seen
            return PushOutcome(applied=False, duplicate=duplicate, stale=not duplicate, last_seq=calendar.last_seq)
        if method == "calendar.snapshot":
            return self._apply_snapshot_chunk(calendar, payload)
        if method in ("calendar.upsert", "calendar.cancel"):
            event = copy.deepcopy(payload["event"])
            calendar.events[event["id"]] = event
        elif method == "calendar.delete":
            calendar.events.pop(payload["id"], None)
        else:
            raise ValueError(f"{method!r} is not a push method")
        self._advance(calendar, seq)
        return PushOutcome(applied=True, duplicate=False, stale=False, last_seq=calendar.last_seq)

    def _apply_snapshot_chunk(self, calendar: UserCalendar, payload: dict[str, Any]) -> PushOutcome:
        seq: int = payload["seq"]
        pending = calendar.pending_snapshot
        if pending is None or pending.seq != seq:
            if pending is not None and pending.seq > seq:
                # An older snapshot than the one being assembled: stale.
                return PushOutcome(applied=False, duplicate=False, stale=True, last_seq=calendar.last_seq)
            pending = PendingSnapshot(
                seq=seq,
                window_from=payload["from"],
                window_to=payload["to"],
                chunk_count=payload["chunkCount"],
            )
            calendar.pending_snapshot = pending
        index: int = payload["chunkIndex"]
        if index in pending.chunks:
            return PushOutcome(
                applied=False, duplicate=True, stale=False, last_seq=calendar.last_seq, snapshot_pending=True
            )
        pending.chunks[index] = copy.deepcopy(payload["events"])
        if len(pending.chunks) < pending.chunk_count:
            return PushOutcome(
                applied=False, duplicate=False, stale=False, last_seq=calendar.last_seq, snapshot_pending=True
            )
        events = [event for i in sorted(pending.chunks) for event in pending.chunks[i]]
        window = (parse_instant(pending.window_from), parse_instant(pending.window_to))
        calendar.replace_window(window, events)
        calendar.pending_snapshot = None
        self._advance(calendar, seq)
        return PushOutcome(applied=True, duplicate=False, stale=False, last_seq=calendar.last_seq)

    def check_snapshot_chunk(self, payload: dict[str, Any]) -> Problem | None:
        """Consistency of a chunk with the snapshot being assembled (same seq, window, count)."""
        calendar = self._users.get(payload["user"].lower())
        if payload["chunkIndex"] >= payload["chunkCount"]:
            return Problem(
                "chunkIndex", f"chunkIndex {payload['chunkIndex']} is not below chunkCount {payload['chunkCount']}"
            )
        if calendar is None or calendar.pending_snapshot is None:
            return None
        pending = calendar.pending_snapshot
        if pending.seq != payload["seq"]:
            return None
        for name, expected in (
            ("from", pending.window_from),
            ("to", pending.window_to),
            ("chunkCount", pending.chunk_count),
        ):
            if payload[name] != expected:
                return Problem(
                    name, f"{name} {payload[name]!r} differs from {expected!r} of earlier chunks of seq {pending.seq}"
                )
        earlier_ids = {event["id"] for chunk in pending.chunks.values() for event in chunk}
        for index, event in enumerate(payload["events"]):
            if event["id"] in earlier_ids and payload["chunkIndex"] not in pending.chunks:
                return Problem(
                    f"events[{index}].id", f"events[{index}].id {event['id']!r} already came in an earlier chunk"
                )
        return None

    def discard_pending_snapshots(self) -> int:
        dropped = 0
        for calendar in self._users.values():
            if calendar.pending_snapshot is not None:
                calendar.pending_snapshot = None
                dropped += 1
        return dropped

    def holds_window(self, user: str, window_from: str, window_to: str) -> int:
        """`sinceSeq` for a getCalendarList of this window: the user's lastSeq when a list of the same window was
        applied (TCS holds it completely as of lastSeq, §6.2), else 0."""
        calendar = self._users.get(user.lower())
        if calendar is None or (window_from, window_to) not in calendar.listed_windows:
            return 0
        return calendar.last_seq

    def apply_list(
        self,
        user: str,
        window: tuple[datetime, datetime],
        seq: int,
        events: list[dict[str, Any]],
        window_text: tuple[str, str] | None = None,
    ) -> bool:
        """Apply a getCalendarList reply; False (nothing changed) when it is stale."""
        calendar = self.user(user)
        if seq < calendar.last_seq:
            return False
        if window_text is not None:
            calendar.listed_windows.add(window_text)
        calendar.replace_window(window, events)
        if seq > calendar.last_seq:
            calendar.last_seq = seq
        return True

    def apply_changes(
        self,
        user: str,
        window: tuple[datetime, datetime],
        window_text: tuple[str, str],
        since_seq: int,
        seq: int,
        removed: list[str],
        events: list[dict[str, Any]],
    ) -> Literal["applied", "stale", "unknown_base"]:
        """Apply an incremental getCalendarList answer (docs/bridge-protocol.md §6.2 "Changes since a sequence"):
        only onto the window this TCS holds completely as of `since_seq` or later (else `unknown_base`, nothing
        changes: applied to anything else the calendar would no longer be what the connector shows); `stale` when a
        push overtook it (§4). Removed ids go from the window, events are stored."""
        calendar = self.user(user)
        if window_text not in calendar.listed_windows or calendar.last_seq < since_seq:
            return "unknown_base"
        if seq < calendar.last_seq:
            return "stale"
        for event_id in removed:
            held = calendar.events.get(event_id)
            if held is not None and overlaps(parse_instant(held["start"]), parse_instant(held["end"]), *window):
                del calendar.events[event_id]
        for event in events:
            calendar.events[event["id"]] = copy.deepcopy(event)
        calendar.last_seq = max(calendar.last_seq, seq)
        return "applied"

    def forget_window(self, user: str, window_text: tuple[str, str]) -> None:
        """This TCS no longer counts on holding the window (its next list of it asks for the whole list)."""
        calendar = self._users.get(user.lower())
        if calendar is not None:
            calendar.listed_windows.discard(window_text)

    @staticmethod
    def _advance(calendar: UserCalendar, seq: int) -> None:
        calendar.last_seq = seq
        calendar.seen.append(seq)

    def view(self, email: str, prefix: str = "") -> list[dict[str, Any]]:
        """The inspection shape of docs/architecture.md §8 (plus extra fields), sorted by start; only subjects
        with `prefix`."""
        calendar = self._users.get(email.lower())
        if calendar is None:
            return []
        rows = [_event_view(e) for e in calendar.events.values() if (e["subject"] or "").startswith(prefix)]
        rows.sort(key=lambda row: (parse_instant(row["start"]), row["id"]))
        return rows

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            email: {"events": len(calendar.events), "last_seq": calendar.last_seq}
            for email, calendar in sorted(self._users.items())
        }

    def clear(self) -> None:
        self._users.clear()


def _utc_text(value: str) -> str:
    return format_instant(parse_instant(value))


def _event_view(event: dict[str, Any]) -> dict[str, Any]:
    conference = event.get("conference")
    return {
        "id": event["id"],
        "subject": event["subject"],
        "start": _utc_text(event["start"]),
        "end": _utc_text(event["end"]),
        "all_day": event["allDay"],
        "cancelled": event["cancelled"],
        "organizer": event["organizer"]["email"].lower(),
        "organizer_name": event["organizer"]["name"],
        "attendees": [
            {
                "email": attendee["email"].lower(),
                "name": attendee["name"],
                "role": attendee["role"],
                "response": attendee["response"],
            }
            for attendee in event["attendees"]
        ],
        "conference": None if conference is None else {"id": conference["id"], "url": conference["url"]},
        "private": event["private"],
        "my_response": event["myResponse"],
        "recurring": event["recurring"],
        "meeting_id": event["meetingId"],
        "uid": event["uid"],
        "location": event["location"],
        "body": event["body"],
        "time_zone": event["timeZone"],
        "updated_at": _utc_text(event["updatedAt"]),
        "seq": event["seq"],
    }

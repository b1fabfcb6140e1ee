"""A user's calendar from the sync-engine (SyncService.ListEvents) as a `calendar.snapshot` or a getCalendarList
answer.

ListEvents answers the user's occurrences in `[from, to)` and `seq`, the user's latest push number when the list
was read: a snapshot built from it supersedes every push up to that number (bridge/events.py explains how
the wire `seq` is drawn from it).
"""

from __future__ import annotations

from typing import Any

from tccal.cache_window import CacheWindow
from tcs_gateway.bridge.events import build_event, chunk_events, fit_event, overlaps
from tcs_gateway.bridge.framing import encoded_size, format_instant
from trueconf.calendar.v1 import calendar_pb2

#: Room left in a frame for the envelope and the snapshot's own fields.
_ENVELOPE_ROOM = 2048


def events_for(
    occurrences: list[calendar_pb2.Occurrence],
    user: str,
    seq: int,
    window: CacheWindow,
    *,
    server_host: str,
    budget: int,
) -> list[dict[str, Any]]:
    """The user's events inside the window, each id once, sorted by start, each stamped with `seq`."""
    found: dict[str, dict[str, Any]] = {}
    for occurrence in occurrences:
        event = fit_event(build_event(occurrence, user, seq, server_host=server_host), budget, user)
        if overlaps(event, window.start, window.end):
            found[event["id"]] = event
    return sorted(found.values(), key=lambda e: (e["start"], e["id"]))


def snapshot_payloads(
    user: str,
    seq: int,
    window: CacheWindow,
    events: list[dict[str, Any]],
    max_frame_bytes: int,
) -> list[dict[str, Any]]:
    """The `calendar.snapshot` payloads (chunks) of one snapshot."""
    budget = max_frame_bytes - _ENVELOPE_ROOM - encoded_size(user)
    chunks = chunk_events(events, budget)
    return [
        {
            "user": user,
            "seq": seq,
            "from": format_instant(window.start),
            "to": format_instant(window.end),
            "chunkIndex": index,
            "chunkCount": len(chunks),
            "events": chunk,
        }
        for index, chunk in enumerate(chunks)
    ]


def event_budget(max_frame_bytes: int) -> int:
    return max_frame_bytes - _ENVELOPE_ROOM

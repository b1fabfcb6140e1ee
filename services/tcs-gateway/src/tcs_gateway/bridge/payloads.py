"""A user's calendar from the sync-engine (SyncService.ListEvents) as a `calendar.snapshot` or a getCalendarList
answer.

ListEvents answers the user's occurrences in `[from, to)` and `seq`, the user's latest push number when the list
was read: a snapshot built from it supersedes every push up to that number (bridge/events.py explains how
the wire `seq` is drawn from it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tccal.cache_window import CacheWindow
from tcs_gateway.bridge.events import EventBuilder, chunk_events, fit_event
from tcs_gateway.bridge.framing import encode_bytes, encoded_size, format_instant, preencoded
from trueconf.calendar.v1 import calendar_pb2

#: Room left in a frame for the envelope and the snapshot's own fields.
_ENVELOPE_ROOM = 2048


def _window_events(
    occurrences: list[calendar_pb2.Occurrence], user: str, seq: int, window: CacheWindow, server_host: str
) -> list[dict[str, Any]]:
    """The user's events inside the window (`overlaps`), each id once (the last), sorted by start and id, each
    stamped with `seq`; not yet fitted to a budget."""
    builder = EventBuilder(user, server_host, window)
    found: dict[str, dict[str, Any]] = {}
    for occurrence in occurrences:
        event = builder.build(occurrence, seq)
        if event is not None:
            found[event["id"]] = event
    return sorted(found.values(), key=lambda event: (event["start"], event["id"]))


def events_for(
    occurrences: list[calendar_pb2.Occurrence],
    user: str,
    seq: int,
    window: CacheWindow,
    *,
    server_host: str,
    budget: int,
) -> list[dict[str, Any]]:
    """The user's events inside the window (`overlaps`), each id once (the last), sorted by start and id, each
    stamped with `seq` and fitted to `budget` (`fit_event`)."""
    return [fit_event(event, budget, user) for event in _window_events(occurrences, user, seq, window, server_host)]


def encoded_events_for(
    occurrences: list[calendar_pb2.Occurrence],
    user: str,
    seq: int,
    window: CacheWindow,
    *,
    server_host: str,
    budget: int,
) -> list[bytes]:
    """`events_for`'s events, in its order, each as its JSON (UTF-8, byte for byte what `framing.encode` writes),
    encoded once: that encoding tells whether the event fits `budget`, and only one that does not is fitted and
    encoded again (a getCalendarList's pages and a snapshot's frames are written around these texts:
    list_pages.py, `encoded_snapshot_payloads`)."""
    texts = []
    for event in _window_events(occurrences, user, seq, window, server_host):
        text = encode_bytes(event)
        if len(text) > budget:
            text = encode_bytes(fit_event(event, budget, user))
        texts.append(text)
    return texts


def snapshot_payloads(
    user: str,
    seq: int,
    window: CacheWindow,
    events: list[dict[str, Any]],
    max_frame_bytes: int,
) -> list[dict[str, Any]]:
    """The `calendar.snapshot` payloads (chunks) of one snapshot of `events` (`events_for`): each event is encoded
    to measure it and again in its frame (`encoded_snapshot_payloads` writes the same frames encoding each once)."""
    return _snapshot_payloads(user, seq, window, events, [encoded_size(event) for event in events], max_frame_bytes)


def encoded_snapshot_payloads(
    user: str,
    seq: int,
    window: CacheWindow,
    texts: list[bytes],
    max_frame_bytes: int,
) -> list[dict[str, Any]]:
    """`snapshot_payloads` of the events `texts` hold as their JSON (`encoded_events_for`): each text's length
    is its size in a chunk and the text goes into its frame as it is (`framing.preencoded`), so the frames are
    byte for byte those of `snapshot_payloads` of the same events, with each event encoded once."""
    events = [preencoded(text) for text in texts]
    return _snapshot_payloads(user, seq, window, events, [len(text) for text in texts], max_frame_bytes)


def _snapshot_payloads(
    user: str,
    seq: int,
    window: CacheWindow,
    events: Sequence[Any],
    sizes: Sequence[int],
    max_frame_bytes: int,
) -> list[dict[str, Any]]:
    budget = max_frame_bytes - _ENVELOPE_ROOM - encoded_size(user)
    chunks = chunk_events(events, sizes, budget)
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

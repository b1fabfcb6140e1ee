"""Paged getCalendarList answers (docs/bridge-protocol.md §6.2 "Pages"): a list is read and built once, split into
pages that each fit in `maxFrameBytes`, and kept for the connection while TCS asks for its further pages.

A page holds whole events (one is never split: each event alone already fits a frame) and every event is in
exactly one page, pages in the list's order (by start). Each event comes encoded to JSON once
(payloads.encoded_events_for, with `framing.encode_bytes`: byte for byte what `framing.encode` writes): a
page's frame is written around those texts, so its size is known exactly before it is sent.
All pages of a list carry the `seq` the list was read at.
A list is forgotten when its last page has been asked, after `KEEP_SECONDS` without a request for it, or when
more than `MAX_KEPT` lists of the connection are waiting (the oldest goes first); then TCS starts over at page 0.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from tcs_gateway.bridge.framing import encode_bytes, encoded_size

#: How long a list waits for its next page request (the reply timeout is 30 s: a TCS that paged on in time asks
#: well within it).
KEEP_SECONDS = 60.0
#: Lists of one connection kept at once (each holds one user's built window).
MAX_KEPT = 64
#: Room in a page's frame for the envelope and the reply's own fields (`errorCode`, `seq`, `listId`, `page`,
#: `pageCount`, the id); `user`, `from` and `to` are counted as they are.
_PAGE_ENVELOPE_ROOM = 512
#: Further room in an incremental answer's page: `incremental`, `sinceSeq` and the `removed` key.
_CHANGES_ROOM = 96


@dataclass
class BuiltList:
    list_id: str
    user: str
    window_from: str
    window_to: str
    seq: int
    #: Per page, its events as JSON (UTF-8).
    pages: list[list[bytes]]
    touched: float
    #: TCS's `sinceSeq` was current: one empty page, `unchanged`.
    unchanged: bool = False
    #: An incremental answer (§6.2 "Changes since a sequence"): per page, its share of the removed ids as JSON;
    #: None for a whole list.
    removed: list[list[bytes]] | None = None
    #: Fields every page of an answer to a request with `incremental` carries (`incremental`, `sinceSeq`,
    #: `wholeBecause`).
    changes: dict[str, Any] = field(default_factory=dict)


def split_pages(
    events: list[bytes], user: str, window_from: str, window_to: str, max_frame_bytes: int
) -> list[list[bytes]]:
    """`events` (each as its JSON) as pages whose reply frames stay within `max_frame_bytes` (no events: one empty
    page)."""
    fixed = _PAGE_ENVELOPE_ROOM + encoded_size(user) + encoded_size(window_from) + encoded_size(window_to)
    budget = max_frame_bytes - fixed
    pages: list[list[bytes]] = [[]]
    size = 2
    for text in events:
        length = len(text) + 1
        if pages[-1] and size + length > budget:
            pages.append([])
            size = 2
        pages[-1].append(text)
        size += length
    return pages


def split_changes(
    removed: list[str],
    events: list[bytes],
    user: str,
    window_from: str,
    window_to: str,
    max_frame_bytes: int,
) -> tuple[list[list[bytes]], list[list[bytes]]]:
    """An incremental answer's removed ids and events (each event as its JSON), encoded, as pages (removed ids
    first, then events) whose reply frames stay within `max_frame_bytes`: per page its removed ids and its events
    (nothing: one empty page)."""
    fixed = (
        _PAGE_ENVELOPE_ROOM + _CHANGES_ROOM + encoded_size(user) + encoded_size(window_from) + encoded_size(window_to)
    )
    budget = max_frame_bytes - fixed
    removed_pages: list[list[bytes]] = [[]]
    event_pages: list[list[bytes]] = [[]]
    size = 4  # the two arrays' brackets
    for index, text in enumerate([encode_bytes(i) for i in removed] + events):
        length = len(text) + 1
        if (removed_pages[-1] or event_pages[-1]) and size + length > budget:
            removed_pages.append([])
            event_pages.append([])
            size = 4
        (removed_pages if index < len(removed) else event_pages)[-1].append(text)
        size += length
    return removed_pages, event_pages


def page_frame(frame_id: int, answer: dict[str, Any], events: list[bytes], removed: list[bytes] | None = None) -> bytes:
    """The reply frame (UTF-8) of `answer` (a getCalendarList success payload without events) with `events` last,
    and before them `removed` (the ids of an incremental answer) when given."""
    head = encode_bytes({"type": 2, "id": frame_id, "payload": answer})  # ends with the payload's and the frame's "}}"
    parts = [head[:-2]]
    if removed is not None:
        parts += [b',"removed":[', b",".join(removed), b"]"]
    parts += [b',"events":[', b",".join(events), b"]}}"]
    return b"".join(parts)


class ListPages:
    """The built lists of one connection that TCS is paging through."""

    def __init__(self) -> None:
        self._lists: OrderedDict[str, BuiltList] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lists)

    def keep(
        self,
        user: str,
        window_from: str,
        window_to: str,
        seq: int,
        pages: list[list[bytes]],
        *,
        unchanged: bool = False,
        removed: list[list[bytes]] | None = None,
        changes: dict[str, Any] | None = None,
    ) -> str:
        """Keep a built list for its further pages; its new listId."""
        self._expire()
        list_id = secrets.token_urlsafe(12)
        self._lists[list_id] = BuiltList(
            list_id, user, window_from, window_to, seq, pages, time.monotonic(), unchanged, removed, changes or {}
        )
        while len(self._lists) > MAX_KEPT:
            self._lists.popitem(last=False)
        return list_id

    def find(self, list_id: str) -> BuiltList | None:
        self._expire()
        built = self._lists.get(list_id)
        if built is not None:
            built.touched = time.monotonic()
            self._lists.move_to_end(list_id)
        return built

    def served(self, built: BuiltList, page: int) -> None:
        """Page `page` went out: after the last one the list is forgotten."""
        if page == len(built.pages) - 1:
            self._lists.pop(built.list_id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for list_id in [key for key, built in self._lists.items() if now - built.touched > KEEP_SECONDS]:
            del self._lists[list_id]

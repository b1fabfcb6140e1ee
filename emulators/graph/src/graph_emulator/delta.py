"""calendarView delta rounds and their opaque state tokens.

https://learn.microsoft.com/en-us/graph/delta-query-events and https://learn.microsoft.com/en-us/graph/api/event-delta:
the first request carries startDateTime/endDateTime; each page answers `@odata.nextLink` ($skiptoken) or, at the end
of a round, `@odata.deltaLink` ($deltatoken); the tokens encode the window and are opaque; `Prefer:
odata.maxpagesize` caps a page; $select, $filter, $orderby, $search and $expand are not supported. A following round
from the deltaLink returns the instances created or changed since, and `@removed` (reason "deleted") for those
deleted or moved out of the window.
https://learn.microsoft.com/en-us/graph/delta-query-overview#synchronization-reset: a token the service no longer
knows answers 410 Gone (code syncStateNotFound) and the client starts over; for Outlook entities the lifetime is not
fixed — older tokens are dropped as the token cache fills — so the emulator drops a mailbox's oldest tokens past
`delta.cache_size` and any token after `delta.token_lifetime_s`, and a test can expire them at will.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime

from .config import DeltaConfig
from .errors import GraphError
from .store import Instance


@dataclass
class DeltaRound:
    """A round in progress: items still to page out, and the snapshot its deltaLink will carry."""

    mailbox_id: str
    lo: datetime
    hi: datetime
    pending: list[tuple[str, bool]]  # (instance id, removed)
    snapshot: dict[str, str]  # instance id → changeKey at the round's start


@dataclass
class DeltaState:
    mailbox_id: str
    lo: datetime
    hi: datetime
    snapshot: dict[str, str]


@dataclass
class _Entry:
    value: DeltaRound | DeltaState
    created: float = field(default_factory=time.monotonic)


def sync_state_not_found() -> GraphError:
    return GraphError(
        410,
        "syncStateNotFound",
        "The sync state generation is not found. The delta token is expired and data must be synchronized again.",
    )


class DeltaTokens:
    def __init__(self, config: DeltaConfig) -> None:
        self.config = config
        self.entries: dict[str, _Entry] = {}
        self.issued = 0

    def _put(self, value: DeltaRound | DeltaState) -> str:
        token = secrets.token_urlsafe(24)
        self.entries[token] = _Entry(value)
        self.issued += 1
        mine = [t for t, e in self.entries.items() if e.value.mailbox_id == value.mailbox_id]
        for stale in mine[: max(0, len(mine) - self.config.cache_size)]:
            del self.entries[stale]
        return token

    def _get(self, token: str, mailbox_id: str) -> DeltaRound | DeltaState:
        entry = self.entries.get(token)
        if entry is not None and time.monotonic() - entry.created > self.config.token_lifetime_s:
            del self.entries[token]
            entry = None
        if entry is None or entry.value.mailbox_id != mailbox_id:
            raise sync_state_not_found()
        return entry.value

    def start_round(
        self, mailbox_id: str, lo: datetime, hi: datetime, current: list[Instance], previous: dict[str, str] | None
    ) -> DeltaRound:
        snapshot = {inst.id: inst.change_key for inst in current}
        if previous is None:
            pending = [(inst.id, False) for inst in current]
        else:
            pending = [(inst.id, False) for inst in current if previous.get(inst.id) != inst.change_key]
            pending += [(gone, True) for gone in previous if gone not in snapshot]
        return DeltaRound(mailbox_id, lo, hi, pending, snapshot)

    def round_for_skiptoken(self, token: str, mailbox_id: str) -> DeltaRound:
        value = self._get(token, mailbox_id)
        if not isinstance(value, DeltaRound):
            raise sync_state_not_found()
        return value

    def state_for_deltatoken(self, token: str, mailbox_id: str) -> DeltaState:
        value = self._get(token, mailbox_id)
        if not isinstance(value, DeltaState):
            raise sync_state_not_found()
        return value

    def next_page(self, page_round: DeltaRound, size: int) -> tuple[list[tuple[str, bool]], str, bool]:
        """(items of this page, token, is it a deltatoken)."""
        page, rest = page_round.pending[:size], page_round.pending[size:]
        if rest:
            return (
                page,
                self._put(DeltaRound(page_round.mailbox_id, page_round.lo, page_round.hi, rest, page_round.snapshot)),
                False,
            )
        return (
            page,
            self._put(DeltaState(page_round.mailbox_id, page_round.lo, page_round.hi, page_round.snapshot)),
            True,
        )

    def expire(self, mailbox_id: str | None = None) -> int:
        doomed = [t for t, e in self.entries.items() if mailbox_id is None or e.value.mailbox_id == mailbox_id]
        for token in doomed:
            del self.entries[token]
        return len(doomed)

    def count(self, mailbox_id: str) -> int:
        return sum(1 for e in self.entries.values() if e.value.mailbox_id == mailbox_id)

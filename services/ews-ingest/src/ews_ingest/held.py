"""Control requests (`resync`, `ondemand`) about a mailbox that no replica owned at the moment they came.

Every replica receives every control request (a core NATS subscription), and only the owner of the mailbox's shard
answers (ownership.py). A request arriving while the shard has no owner was received by all and answered by none:
tcs-gateway takes a received request as delivered (it resends only while nobody subscribes), sync-engine's resync
is a plain publish - so the request was lost. Two moments at runtime have no owner:

* the owner's lease renewal runs late (the event loop or NATS slow for longer than `lease_seconds -
  lease_margin_seconds`): `owns()` says no from that deadline until its next renewal (or re-acquisition) succeeds;
* the owner was killed: its lease lives on at the NATS server until the TTL drops it, and another replica takes
  it at its next round.

Each replica therefore holds a request it does not answer for `hold_seconds` (a lease and two renewal rounds: the
longest a shard waits for a new owner after a kill) and answers it as soon as it owns the mailbox - after every
lease round and whenever shards are gained. A request whose mailbox stays with another live owner is dropped when
its time is up (that owner answered it). A held request may be answered twice when its mailbox's shard moves to this
replica within `hold_seconds` after the owner answered it: both answers are harmless (an on-demand mailbox already
added only gets a sync triggered; a resync reads the mailbox once more).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)
#: At most this many requests are held at once (the oldest is dropped first, with a warning).
HELD_LIMIT = 10_000


@dataclass(frozen=True)
class HeldRequest:
    kind: str  # "resync" or "ondemand", for the logs
    mailbox: str
    until: float  # time.monotonic() after which it is dropped
    answer: Callable[[], Awaitable[None]]


class HeldRequests:
    def __init__(self, owns: Callable[[str], bool], hold_seconds: float, limit: int = HELD_LIMIT) -> None:
        self._owns = owns
        self.hold_seconds = hold_seconds
        self.limit = limit
        self._held: list[HeldRequest] = []
        #: Requests answered after being held (a late renewal or a takeover would have lost them).
        self.answered_late = 0

    def __len__(self) -> int:
        return len(self._held)

    def mailboxes(self) -> list[str]:
        return [request.mailbox for request in self._held]

    def hold(self, kind: str, mailbox: str, answer: Callable[[], Awaitable[None]]) -> None:
        if len(self._held) >= self.limit:
            dropped = self._held.pop(0)
            log.warning(
                "too many control requests held: the oldest is dropped",
                extra={"kind": dropped.kind, "mailbox": dropped.mailbox, "limit": self.limit},
            )
        self._held.append(HeldRequest(kind, mailbox, time.monotonic() + self.hold_seconds, answer))

    def due(self) -> list[HeldRequest]:
        """The held requests whose mailbox this replica owns now (taken out to be answered); expired ones go."""
        now = time.monotonic()
        ready: list[HeldRequest] = []
        kept: list[HeldRequest] = []
        for request in self._held:
            if self._owns(request.mailbox):
                ready.append(request)
            elif now < request.until:
                kept.append(request)
        self._held = kept
        if ready:
            self.answered_late += len(ready)
            log.info(
                "control requests received while no replica owned their mailboxes are answered now",
                extra={"requests": ", ".join(f"{r.kind} {r.mailbox}" for r in ready)},
            )
        return ready

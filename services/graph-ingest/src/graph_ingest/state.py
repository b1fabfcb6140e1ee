"""graph-ingest's durable state in its own JetStream KV bucket GRAPH_INGEST_STATE (values are JSON).

| key | value |
|---|---|
| `v1.mailbox.<provider>.<mailbox>` | checkpoint: the delta or next link to resume from, sequences, an open re-read |
| `v1.seats` | the last AllocateSeats answer: `{granted, refused: {mailbox: reason}, at, lease_seconds}` |
| `v1.ondemand.<mailbox>` | an unlisted mailbox asked for (a claimed domain): `{mailbox, provider, requested_at}` |

Keys and JSON values are those of ews-ingest (tccal.ingest.kv_state). Sequences are never reused
(tccal.ingest.sequences): before a change would get a sequence above the stored ceiling, the ceiling is raised and
saved first; after a crash the next sequence starts above the old ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from tccal.bus import Bus
from tccal.ingest.kv_state import CheckpointKV, key_token, mailbox_key, now_text
from tccal.ingest.sequences import SequencedCheckpoint
from tccal.subjects import GRAPH_STATE_BUCKET

__all__ = ["Checkpoint", "StateStore", "key_token", "mailbox_key", "now_text"]


@dataclass
class Checkpoint(SequencedCheckpoint):
    #: `@odata.deltaLink` of the last complete round, or `@odata.nextLink` of the last published page of a round
    #: under way; empty: no round yet.
    link: str = ""
    #: The first complete round (initial load or baseline) reached its deltaLink.
    initial_done: bool = False
    #: `link` is a nextLink (a round is under way) rather than a deltaLink.
    mid_round: bool = False
    changes_published: int = 0
    last_sync: str | None = None
    #: The cache window ("start/end" dates) the delta token was made for.
    window: str = ""
    #: Token of a whole-mailbox re-read whose MAILBOX_RESYNC_BEGIN went out and whose END has not: the next round
    #: starts the re-read again (a fresh delta), so an END always follows.
    reread: str = ""


class StateStore(CheckpointKV[Checkpoint]):
    """Typed access to GRAPH_INGEST_STATE (created at first use, one value per key)."""

    def __init__(self, bus: Bus, replicas: int = 1) -> None:
        super().__init__(self._open, Checkpoint)
        self.bus = bus
        self.replicas = replicas

    async def _open(self) -> KeyValue:
        try:
            return await self.bus.js.key_value(GRAPH_STATE_BUCKET)
        except (NotFoundError, BadRequestError):
            return await self.bus.js.create_key_value(bucket=GRAPH_STATE_BUCKET, history=1, replicas=self.replicas)

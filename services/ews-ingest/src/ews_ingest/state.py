"""ews-ingest's durable state in the JetStream KV bucket INGEST_STATE (values are JSON).

| key | value |
|---|---|
| `v1.mailbox.<provider>.<mailbox>` | checkpoint: SyncState, first pass done, last sequence and ceiling, counters |
| `v1.quarantine.<mailbox>` | items that could not be normalized: `{item_id: {change_key, reason, at}}` |
| `v1.ondemand.<mailbox>` | a mailbox TrueConf asked for: `{provider, requested_at}` |
| `v1.seats` | the last AllocateSeats answer: `{granted, refused: {mailbox: reason}, at, lease_seconds}` |
| `v1.lease-shards` | replica ownership's shard count `{shards}` (ews_ingest.ownership) |

Keys and JSON values: tccal.ingest.kv_state; sequences: tccal.ingest.sequences.

Sequences are never reused: before a change would get a sequence above the stored ceiling, the ceiling is raised
and saved first; after a crash the next sequence starts above the old ceiling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nats.js.kv import KeyValue

from tccal.bus import Bus
from tccal.ingest.kv_state import CheckpointKV, key_token, mailbox_key, now_text
from tccal.ingest.sequences import SequencedCheckpoint

__all__ = ["Checkpoint", "Quarantined", "StateStore", "key_token", "mailbox_key", "now_text"]


@dataclass
class Checkpoint(SequencedCheckpoint):
    #: SyncFolderItems SyncState after the last page whose changes were all published and acked.
    sync_state: str | None = None
    #: The first full pass (initial load or baseline) reached IncludesLastItemInRange.
    initial_done: bool = False
    changes_published: int = 0
    last_sync: str | None = None
    #: Token of a whole-mailbox re-read (MAILBOX_RESYNC_BEGIN published) that has not published its END yet - cut
    #: short by a stop, a crash or an error. The next sync starts the re-read again, so an END always follows.
    reread: str = ""


@dataclass
class Quarantined:
    change_key: str
    reason: str
    at: str = field(default_factory=now_text)


class StateStore(CheckpointKV[Checkpoint]):
    """Typed access to INGEST_STATE."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(self._open, Checkpoint)
        self.bus = bus

    async def _open(self) -> KeyValue:
        return await self.bus.key_value()

    async def load_quarantine(self, mailbox: str) -> dict[str, Quarantined]:
        data = await self._get(f"v1.quarantine.{key_token(mailbox)}") or {}
        return {k: Quarantined(**v) for k, v in data.items() if isinstance(v, dict)}

    async def save_quarantine(self, mailbox: str, items: dict[str, Quarantined]) -> None:
        key = f"v1.quarantine.{key_token(mailbox)}"
        if items:
            await self._put(key, {k: asdict(v) for k, v in items.items()})
        else:
            await self._delete(key)

"""ews-ingest's durable state in the JetStream KV bucket INGEST_STATE (values are JSON).

| key | value |
|---|---|
| `v1.mailbox.<provider>.<mailbox>` | checkpoint: SyncState, first pass done, last sequence and ceiling, counters |
| `v1.quarantine.<mailbox>` | items that could not be normalized: `{item_id: {change_key, reason, at}}` |
| `v1.ondemand.<mailbox>` | a mailbox TrueConf asked for: `{provider, requested_at}` |
| `v1.seats` | the last AllocateSeats answer: `{granted, refused: {mailbox: reason}, at}` |
| `v1.lease-shards` | replica ownership's shard count `{shards}` (ews_ingest.ownership) |

Tokens are the lower-cased text with every character outside `[a-z0-9_-]` written as `=XX` (UTF-8 bytes in hex),
so `anna@example.com` is `anna=40example=2ecom`.

Sequences are never reused: before a change would get a sequence above the stored ceiling, the ceiling is raised
and saved first; after a crash the next sequence starts above the old ceiling.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from tccal.bus import Bus

SEQUENCE_BLOCK = 1000
_KEEP = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


def key_token(text: str) -> str:
    out: list[str] = []
    for ch in text.lower():
        if ch in _KEEP:
            out.append(ch)
        else:
            out.extend(f"={byte:02x}" for byte in ch.encode("utf-8"))
    return "".join(out) or "=00"


def mailbox_key(provider: str, mailbox: str) -> str:
    return f"v1.mailbox.{key_token(provider)}.{key_token(mailbox)}"


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Checkpoint:
    provider: str
    mailbox: str
    #: SyncFolderItems SyncState after the last page whose changes were all published and acked.
    sync_state: str | None = None
    #: The first full pass (initial load or baseline) reached IncludesLastItemInRange.
    initial_done: bool = False
    last_sequence: int = 0
    sequence_ceiling: int = 0
    changes_published: int = 0
    last_sync: str | None = None
    #: Token of a whole-mailbox re-read (MAILBOX_RESYNC_BEGIN published) that has not published its END yet - cut
    #: short by a stop, a crash or an error. The next sync starts the re-read again, so an END always follows.
    reread: str = ""

    def reserve(self, count: int) -> bool:
        """Make room for `count` more sequences; True when the ceiling moved (save before publishing)."""
        if self.last_sequence + count <= self.sequence_ceiling:
            return False
        self.sequence_ceiling = max(self.sequence_ceiling, self.last_sequence) + max(count, SEQUENCE_BLOCK)
        return True

    def next_sequence(self) -> int:
        if self.last_sequence + 1 > self.sequence_ceiling:
            raise RuntimeError(f"sequence ceiling {self.sequence_ceiling} of {self.mailbox} not reserved")
        self.last_sequence += 1
        return self.last_sequence

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        known = {f for f in cls.__dataclass_fields__}
        checkpoint = cls(**{k: v for k, v in data.items() if k in known})
        # A crash may have used sequences up to the ceiling without saving them: never reuse one.
        checkpoint.last_sequence = max(checkpoint.last_sequence, checkpoint.sequence_ceiling)
        return checkpoint


@dataclass
class Quarantined:
    change_key: str
    reason: str
    at: str = field(default_factory=now_text)


class StateStore:
    """Typed access to INGEST_STATE."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.bus.key_value()
        return self._kv

    async def _get(self, key: str) -> dict[str, Any] | None:
        kv = await self.kv()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.value == b"":
            return None
        value = json.loads(entry.value)
        return value if isinstance(value, dict) else None

    async def _put(self, key: str, value: dict[str, Any]) -> None:
        kv = await self.kv()
        await kv.put(key, json.dumps(value, separators=(",", ":"), sort_keys=True).encode())

    async def _delete(self, key: str) -> None:
        kv = await self.kv()
        try:
            await kv.delete(key)
        except KeyNotFoundError:
            return

    async def load_checkpoint(self, provider: str, mailbox: str) -> Checkpoint:
        data = await self._get(mailbox_key(provider, mailbox))
        if data is None:
            return Checkpoint(provider=provider, mailbox=mailbox)
        checkpoint = Checkpoint.from_json(data)
        checkpoint.provider, checkpoint.mailbox = provider, mailbox
        return checkpoint

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        await self._put(mailbox_key(checkpoint.provider, checkpoint.mailbox), asdict(checkpoint))

    async def load_quarantine(self, mailbox: str) -> dict[str, Quarantined]:
        data = await self._get(f"v1.quarantine.{key_token(mailbox)}") or {}
        return {k: Quarantined(**v) for k, v in data.items() if isinstance(v, dict)}

    async def save_quarantine(self, mailbox: str, items: dict[str, Quarantined]) -> None:
        key = f"v1.quarantine.{key_token(mailbox)}"
        if items:
            await self._put(key, {k: asdict(v) for k, v in items.items()})
        else:
            await self._delete(key)

    async def load_on_demand(self) -> dict[str, str]:
        """On-demand mailboxes (mailbox → provider name) asked for earlier."""
        kv = await self.kv()
        watcher: Any = await kv.watch("v1.ondemand.>", ignore_deletes=True)  # nats-py leaves it untyped
        out: dict[str, str] = {}
        try:
            while True:
                entry = await watcher.updates(timeout=5)
                if entry is None:  # the end of the stored values
                    break
                data = json.loads(entry.value) if entry.value else None
                if (
                    isinstance(data, dict)
                    and isinstance(data.get("mailbox"), str)
                    and isinstance(data.get("provider"), str)
                ):
                    out[data["mailbox"]] = data["provider"]
        finally:
            await watcher.stop()
        return out

    async def save_on_demand(self, mailbox: str, provider: str) -> None:
        await self._put(
            f"v1.ondemand.{key_token(mailbox)}", {"mailbox": mailbox, "provider": provider, "requested_at": now_text()}
        )

    async def load_seats(self) -> dict[str, Any] | None:
        return await self._get("v1.seats")

    async def save_seats(self, granted: list[str], refused: dict[str, str], lease_seconds: float = 3600.0) -> None:
        await self._put(
            "v1.seats",
            {"granted": sorted(granted), "refused": refused, "at": now_text(), "lease_seconds": lease_seconds},
        )

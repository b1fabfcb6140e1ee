"""graph-ingest's durable state in its own JetStream KV bucket GRAPH_INGEST_STATE (values are JSON).

| key | value |
|---|---|
| `v1.mailbox.<provider>.<mailbox>` | checkpoint: the delta or next link to resume from, sequences, an open re-read |
| `v1.seats` | the last AllocateSeats answer: `{granted, refused: {mailbox: reason}, at}` |

Tokens are the lower-cased text with every character outside `[a-z0-9_-]` written as `=XX` (UTF-8 hex).
Sequences are never reused: before a change would get a sequence above the stored ceiling, the ceiling is raised and
saved first; after a crash the next sequence starts above the old ceiling (as ews-ingest does).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from tccal.bus import Bus
from tccal.subjects import GRAPH_STATE_BUCKET

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


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Checkpoint:
    provider: str
    mailbox: str
    #: `@odata.deltaLink` of the last complete round, or `@odata.nextLink` of the last published page of a round
    #: under way; empty: no round yet.
    link: str = ""
    #: The first complete round (initial load or baseline) reached its deltaLink.
    initial_done: bool = False
    #: `link` is a nextLink (a round is under way) rather than a deltaLink.
    mid_round: bool = False
    last_sequence: int = 0
    sequence_ceiling: int = 0
    changes_published: int = 0
    last_sync: str | None = None
    #: The cache window ("start/end" dates) the delta token was made for.
    window: str = ""
    #: Token of a whole-mailbox re-read whose MAILBOX_RESYNC_BEGIN went out and whose END has not: the next round
    #: starts the re-read again (a fresh delta), so an END always follows.
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
        known = set(cls.__dataclass_fields__)
        checkpoint = cls(**{k: v for k, v in data.items() if k in known})
        checkpoint.last_sequence = max(checkpoint.last_sequence, checkpoint.sequence_ceiling)
        return checkpoint


class StateStore:
    """Typed access to GRAPH_INGEST_STATE (created at first use, one value per key)."""

    def __init__(self, bus: Bus, replicas: int = 1) -> None:
        self.bus = bus
        self.replicas = replicas
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.bus.js.key_value(GRAPH_STATE_BUCKET)
            except (NotFoundError, BadRequestError):
                self._kv = await self.bus.js.create_key_value(
                    bucket=GRAPH_STATE_BUCKET, history=1, replicas=self.replicas
                )
        return self._kv

    async def _get(self, key: str) -> dict[str, Any] | None:
        kv = await self.kv()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        value = json.loads(entry.value)
        return value if isinstance(value, dict) else None

    async def _put(self, key: str, value: dict[str, Any]) -> None:
        kv = await self.kv()
        await kv.put(key, json.dumps(value, separators=(",", ":"), sort_keys=True).encode())

    async def load_checkpoint(self, provider: str, mailbox: str) -> Checkpoint:
        data = await self._get(f"v1.mailbox.{key_token(provider)}.{key_token(mailbox)}")
        if data is None:
            return Checkpoint(provider=provider, mailbox=mailbox)
        checkpoint = Checkpoint.from_json(data)
        checkpoint.provider, checkpoint.mailbox = provider, mailbox
        return checkpoint

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        key = f"v1.mailbox.{key_token(checkpoint.provider)}.{key_token(checkpoint.mailbox)}"
        await self._put(key, asdict(checkpoint))

    async def load_seats(self) -> dict[str, Any] | None:
        return await self._get("v1.seats")

    async def save_seats(self, granted: list[str], refused: dict[str, str]) -> None:
        await self._put("v1.seats", {"granted": sorted(granted), "refused": refused, "at": now_text()})

"""An ingest service's JetStream KV state: key tokens and one JSON object per key.

Tokens are the lower-cased text with every character outside `[a-z0-9_-]` written as `=XX` (UTF-8 bytes in hex),
so `anna@example.com` is `anna=40example=2ecom`. Both ingest services keep a checkpoint per mailbox under
`v1.mailbox.<provider>.<mailbox>`, the last AllocateSeats answer under `v1.seats`
(`{granted, refused: {mailbox: reason}, at, lease_seconds}`) and the mailboxes TrueConf asked for on demand under
`v1.ondemand.<mailbox>` (`{mailbox, provider, requested_at}`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from tccal.ingest.sequences import SequencedCheckpoint

_KEEP = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
SEATS_KEY = "v1.seats"
C = TypeVar("C", bound=SequencedCheckpoint)


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


class JsonKV:
    """One JSON object per key of a KV bucket that `open_bucket` opens (once, at first use)."""

    def __init__(self, open_bucket: Callable[[], Awaitable[KeyValue]]) -> None:
        self._open_bucket = open_bucket
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._open_bucket()
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

    async def _delete(self, key: str) -> None:
        kv = await self.kv()
        try:
            await kv.delete(key)
        except KeyNotFoundError:
            return

    async def load_seats(self) -> dict[str, Any] | None:
        return await self._get(SEATS_KEY)

    async def save_seats(self, granted: list[str], refused: dict[str, str], lease_seconds: float = 3600.0) -> None:
        await self._put(
            SEATS_KEY,
            {"granted": sorted(granted), "refused": refused, "at": now_text(), "lease_seconds": lease_seconds},
        )


class CheckpointKV(JsonKV, Generic[C]):
    """JsonKV with one checkpoint per mailbox (`v1.mailbox.<provider>.<mailbox>`) of the service's type."""

    def __init__(self, open_bucket: Callable[[], Awaitable[KeyValue]], checkpoint_type: type[C]) -> None:
        super().__init__(open_bucket)
        self._checkpoint_type = checkpoint_type

    async def load_checkpoint(self, provider: str, mailbox: str) -> C:
        data = await self._get(mailbox_key(provider, mailbox))
        if data is None:
            return self._checkpoint_type(provider=provider, mailbox=mailbox)
        checkpoint = self._checkpoint_type.from_json(data)
        checkpoint.provider, checkpoint.mailbox = provider, mailbox
        return checkpoint

    async def save_checkpoint(self, checkpoint: C) -> None:
        await self._put(mailbox_key(checkpoint.provider, checkpoint.mailbox), asdict(checkpoint))

    # ---------------------------------------------------------------- on-demand mailboxes (`v1.ondemand.<mailbox>`)
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

    async def forget_on_demand(self, mailbox: str) -> None:
        await self._delete(f"v1.ondemand.{key_token(mailbox)}")

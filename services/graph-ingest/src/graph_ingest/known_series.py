"""The series masters graph-ingest published per mailbox, kept in its KV bucket (key `v1.series.<provider>.<mailbox>`).

A deleted series reaches calendarView/delta only as `@removed` instances, which carry nothing but their own ids, so
the master graph-ingest published would stay in the engine and keep expanding. Whenever a delta page removes
anything, the mailbox's known masters are read again (batched) and those Graph no longer has (404) are published as
deleted (delta.py). The set survives restarts, so a series deleted while graph-ingest was down is found too.
"""

from __future__ import annotations

import json

from nats.js.errors import KeyNotFoundError

from graph_ingest.state import StateStore, key_token


class KnownSeries:
    def __init__(self, store: StateStore, provider: str, mailbox: str) -> None:
        self.store = store
        self.key = f"v1.series.{key_token(provider)}.{key_token(mailbox)}"
        self.masters: set[str] = set()
        self._loaded = False
        self._saved: set[str] = set()

    async def load(self) -> set[str]:
        if not self._loaded:
            kv = await self.store.kv()
            try:
                entry = await kv.get(self.key)
            except KeyNotFoundError:
                entry = None
            if entry is not None and entry.value:
                data = json.loads(entry.value)
                if isinstance(data, dict) and isinstance(data.get("masters"), list):
                    self.masters = {str(m) for m in data["masters"]}
            self._saved = set(self.masters)
            self._loaded = True
        return self.masters

    async def save(self) -> None:
        if self.masters == self._saved:
            return
        kv = await self.store.kv()
        await kv.put(self.key, json.dumps({"masters": sorted(self.masters)}, separators=(",", ":")).encode())
        self._saved = set(self.masters)

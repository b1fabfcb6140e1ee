"""What the gateway remembers across restarts, per TrueConf Server and user, in the JetStream KV bucket
`TCS_GATEWAY`: whether TCS asked for the user's calendar (getCalendarList), so the user keeps getting snapshots
after a restart, and the last snapshot `seq` drawn for the user (snapshot seqs must keep growing).

Key `u.<hex(server id)>.<hex(user)>`, value JSON `{"asked": bool, "snapshotSeq": int}`. Writes are coalesced
and flushed in the background; `flush()` writes everything now (used at shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


@dataclass
class UserState:
    asked: bool = False
    snapshot_seq: int = 0


def _key(server_id: str, user: str) -> str:
    return f"u.{server_id.lower().encode().hex()}.{user.lower().encode().hex()}"


def _parse_key(key: str) -> tuple[str, str] | None:
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "u":
        return None
    try:
        return bytes.fromhex(parts[1]).decode(), bytes.fromhex(parts[2]).decode()
    except ValueError:
        return None


class StateStore:
    def __init__(self, bucket: str = "TCS_GATEWAY", *, replicas: int = 1, flush_interval: float = 0.25) -> None:
        self.bucket = bucket
        self.replicas = replicas
        self.flush_interval = flush_interval
        self._kv: KeyValue | None = None
        self._state: dict[str, dict[str, UserState]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def open(self, js: JetStreamContext) -> None:
        try:
            self._kv = await js.key_value(self.bucket)
        except (NotFoundError, BadRequestError):
            self._kv = await js.create_key_value(bucket=self.bucket, history=1, replicas=self.replicas)
        await self._load()
        self.loaded.set()
        self._task = asyncio.get_running_loop().create_task(self._flusher(), name="tcs-gateway-state")

    async def _load(self) -> None:
        assert self._kv is not None
        read = await self._read(">")
        for (server, user), state in read.items():
            self._state.setdefault(server, {})[user] = state
        log.info(
            "gateway state loaded",
            extra={"servers": len(self._state), "users": sum(len(v) for v in self._state.values())},
        )

    async def refresh(self, server_id: str) -> None:
        """Read `server_id`'s entries again and keep the larger of what is here and what is stored: another
        replica served the server meanwhile (its session moved here) and may have sent later snapshots or been
        asked for more users."""
        if self._kv is None:
            return
        read = await self._read(f"{server_id.lower().encode().hex()}.>")
        for (server, user), stored in read.items():
            entry = self._entry(server, user)
            entry.asked = entry.asked or stored.asked
            entry.snapshot_seq = max(entry.snapshot_seq, stored.snapshot_seq)

    async def _read(self, keys: str) -> dict[tuple[str, str], UserState]:
        """The stored entries under `u.<keys>` (a server-side filtered watch), by (server, user) in lower case."""
        assert self._kv is not None
        found: dict[tuple[str, str], UserState] = {}
        watcher = await self._kv.watch(f"u.{keys}", ignore_deletes=True)
        try:
            while True:
                entry = await watcher.updates(timeout=10.0)  # type: ignore[no-untyped-call]
                if entry is None:
                    break
                parsed = _parse_key(entry.key)
                if parsed is None or entry.value is None:
                    continue
                try:
                    data = json.loads(entry.value)
                    state = UserState(asked=bool(data.get("asked")), snapshot_seq=int(data.get("snapshotSeq", 0)))
                except (ValueError, TypeError, AttributeError):
                    log.warning("unreadable gateway state entry ignored", extra={"key": entry.key})
                    continue
                server, user = parsed
                found[(server.lower(), user.lower())] = state
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        return found

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except Exception:  # already logged; the next start reloads what was saved
            return

    # ------------------------------------------------------------------ reading
    def asked_users(self, server_id: str) -> list[str]:
        return sorted(user for user, state in self._state.get(server_id.lower(), {}).items() if state.asked)

    def was_asked(self, server_id: str, user: str) -> bool:
        """Whether `server_id` has asked for `user` before (a list of it succeeded)."""
        state = self._state.get(server_id.lower(), {}).get(user.lower())
        return state is not None and state.asked

    def snapshot_seq(self, server_id: str, user: str) -> int:
        state = self._state.get(server_id.lower(), {}).get(user.lower())
        return 0 if state is None else state.snapshot_seq

    # ------------------------------------------------------------------ writing
    def _entry(self, server_id: str, user: str) -> UserState:
        return self._state.setdefault(server_id.lower(), {}).setdefault(user.lower(), UserState())

    def mark_asked(self, server_id: str, user: str) -> bool:
        """Remember that `server_id` asked for `user`; True when this is new."""
        entry = self._entry(server_id, user)
        if entry.asked:
            return False
        entry.asked = True
        self._mark(server_id, user)
        return True

    def set_snapshot_seq(self, server_id: str, user: str, seq: int) -> None:
        entry = self._entry(server_id, user)
        if seq > entry.snapshot_seq:
            entry.snapshot_seq = seq
            self._mark(server_id, user)

    def _mark(self, server_id: str, user: str) -> None:
        self._dirty.add((server_id.lower(), user.lower()))
        self._wake.set()

    async def flush(self) -> None:
        if self._kv is None:
            return
        while self._dirty:
            server, user = self._dirty.pop()
            entry = self._entry(server, user)
            value = json.dumps({"asked": entry.asked, "snapshotSeq": entry.snapshot_seq}).encode()
            try:
                await self._kv.put(_key(server, user), value)
            except BaseException as exc:  # NATS trouble or cancelled: keep it dirty, save it later
                self._dirty.add((server, user))
                if isinstance(exc, Exception):
                    log.warning("gateway state not saved yet", extra={"error": repr(exc)})
                raise

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # logged in flush; retry after a pause
                await asyncio.sleep(1.0)
                self._wake.set()
                continue
            await asyncio.sleep(self.flush_interval)

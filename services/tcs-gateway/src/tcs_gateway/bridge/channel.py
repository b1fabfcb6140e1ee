"""The frames of one bridge connection: sending, requests waiting for their reply, replies matched to them.

Every request the gateway sends (pushes, snapshot chunks, ping) gets the next frame id and stays outstanding
until TCS replies to it (its `on_reply` runs) or the connection ends (its `on_lost` runs, and a push in it is
handed back to be resent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tcs_gateway.bridge.framing import FrameValidator, encode, reply_frame, request_frame
from tcs_gateway.bridge.queue import PendingPush

#: One logger for every line about a connection, whichever part of the session writes it.
log = logging.getLogger("tcs_gateway.bridge.session")


class ConnectionClosedError(Exception):
    pass


@dataclass
class Outstanding:
    method: str
    sent_at: float
    on_reply: Callable[[dict[str, Any]], None]
    on_lost: Callable[[], None] | None = None
    item: PendingPush | None = None


class Channel:
    def __init__(self, ws: web.WebSocketResponse, peer: str, validator: FrameValidator) -> None:
        self.ws = ws
        self.peer = peer
        self.validator = validator
        #: The close code once closing started (by either side).
        self.close_code: int | None = None
        #: Until the peer authenticated, what it sends wrong is logged at DEBUG only (one unauthenticated peer
        #: must not be able to write a log line per frame; docs/bridge-protocol.md §11).
        self.authenticated = False
        self._next_id = 0
        self._outstanding: dict[int, Outstanding] = {}
        self._send_lock = asyncio.Lock()

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    # ------------------------------------------------------------------ sending
    async def send(self, frame: dict[str, Any]) -> None:
        await self.send_text(encode(frame))

    async def send_text(self, text: str) -> None:
        """Send a frame already encoded (a getCalendarList page built of events encoded once)."""
        if self.ws.closed:
            raise ConnectionClosedError("connection closed")
        async with self._send_lock:
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                raise ConnectionClosedError(str(exc)) from exc

    async def reply(self, frame_id: int, payload: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosedError):
            await self.send(reply_frame(frame_id, payload))

    async def request(
        self,
        method: str,
        payload: dict[str, Any],
        on_reply: Callable[[dict[str, Any]], None],
        *,
        on_lost: Callable[[], None] | None = None,
        item: PendingPush | None = None,
    ) -> int:
        if self.closing:
            raise ConnectionClosedError("connection closing")
        self._next_id += 1
        frame_id = self._next_id
        self._outstanding[frame_id] = Outstanding(method, time.monotonic(), on_reply, on_lost, item)
        try:
            await self.send(request_frame(frame_id, method, payload))
        except ConnectionClosedError:
            self._outstanding.pop(frame_id, None)
            raise
        return frame_id

    # ------------------------------------------------------------------ replies
    def on_reply(self, frame: dict[str, Any]) -> None:
        bare = set(frame) == {"type", "id"}
        if bare:
            # A bare acknowledgement, {"type": 2, "id": N}: what TrueConf's own chatbot client library shows the
            # server answering; read as success (docs/bridge-protocol.md §2, "Bare acknowledgement").
            frame = {**frame, "payload": {"errorCode": 0}}
        problem = self.validator.problem(frame, "replyFrame", relative_to_payload=False)
        raw_id = frame.get("id")
        entry = self._outstanding.get(raw_id) if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
        payload = frame.get("payload")
        if problem is not None and (entry is None or not isinstance(payload, dict)):
            log.log(
                logging.WARNING if self.authenticated else logging.DEBUG,
                "malformed reply ignored",
                extra={"peer": self.peer, "problem": problem.message},
            )
            return
        if entry is None:
            log.debug("reply to no open request ignored", extra={"peer": self.peer, "id": raw_id})
            return
        assert isinstance(raw_id, int) and isinstance(payload, dict)
        del self._outstanding[raw_id]
        if problem is None and not bare and self.validator.has(f"{entry.method}.reply"):
            detail = self.validator.problem(frame, f"{entry.method}.reply")
            if detail is not None:
                log.warning(
                    "reply does not follow the protocol",
                    extra={"peer": self.peer, "method": entry.method, "problem": detail.message},
                )
        entry.on_reply(payload)

    def overdue(self, now: float, timeout: float) -> Outstanding | None:
        """An outstanding request older than `timeout` seconds, if any."""
        timed_out = [o for o in self._outstanding.values() if now - o.sent_at > timeout]
        return timed_out[0] if timed_out else None

    def abandon(self) -> list[PendingPush]:
        """The connection is gone: every outstanding request is lost; the pushes among them are returned."""
        unacknowledged: list[PendingPush] = []
        for entry in self._outstanding.values():
            if entry.item is not None:
                unacknowledged.append(entry.item)
            if entry.on_lost is not None:
                entry.on_lost()
        self._outstanding.clear()
        return unacknowledged


def retry_delay(payload: dict[str, Any], attempts: int) -> float:
    """How long to wait before trying again after an OVERLOADED/INTERNAL_ERROR reply (`retryAfterMs` wins)."""
    retry = payload.get("retryAfterMs")
    if isinstance(retry, int) and not isinstance(retry, bool) and retry >= 0:
        return min(retry / 1000.0, 3600.0)
    return float(min(60.0, 2 ** max(0, attempts - 1)))

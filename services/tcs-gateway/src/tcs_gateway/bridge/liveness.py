"""Liveness of one connection (docs/bridge-protocol.md §9): `auth` within authTimeout, some frame at least every
2 × pingInterval, every reply within replyTimeout, else the connection is closed; the gateway pings a quiet
authenticated connection and answers TCS's pings."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tcs_gateway.bridge.channel import ConnectionClosedError
from tcs_gateway.bridge.framing import CloseCode, ErrorCode, error_payload, format_instant

if TYPE_CHECKING:
    from tcs_gateway.bridge.session import Session


class Liveness:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._ping_outstanding = False
        self._last_ping = 0.0

    async def answer_ping(self, frame: dict[str, Any]) -> None:
        channel = self.session.channel
        problem = channel.validator.problem(frame, "ping.request")
        if problem is not None:
            await channel.reply(
                frame["id"], error_payload(ErrorCode.INVALID_PAYLOAD, problem.message, field=problem.field)
            )
            return
        await channel.reply(frame["id"], {"errorCode": 0, "ts": format_instant(datetime.now(UTC))})

    async def watchdog(self) -> None:
        session = self.session
        settings = session.settings
        tick = max(0.05, min(1.0, settings.auth_timeout / 4, settings.ping_interval / 4, settings.reply_timeout / 4))
        while not session.closing:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if not session.authenticated and now - session.opened_at > settings.auth_timeout:
                await session.close(CloseCode.AUTH_TIMEOUT, f"no successful auth within {settings.auth_timeout:g} s")
                return
            silence = now - session.last_rx
            if silence > 2 * settings.ping_interval:
                await session.close(CloseCode.TIMEOUT, f"no frame for {silence:.0f} s")
                return
            timed_out = session.channel.overdue(now, settings.reply_timeout)
            if timed_out is not None:
                await session.close(
                    CloseCode.TIMEOUT, f"no reply to {timed_out.method} within {settings.reply_timeout:g} s"
                )
                return
            if (
                session.authenticated
                and silence >= settings.ping_interval
                and not self._ping_outstanding
                and now - self._last_ping >= settings.ping_interval
            ):
                self._ping_outstanding = True
                self._last_ping = now
                try:
                    await session.channel.request(
                        "ping", {"ts": format_instant(datetime.now(UTC))}, self._on_pong, on_lost=self._on_pong_lost
                    )
                except ConnectionClosedError:
                    self._ping_outstanding = False

    def _on_pong(self, payload: dict[str, Any]) -> None:
        self._ping_outstanding = False

    def _on_pong_lost(self) -> None:
        self._ping_outstanding = False

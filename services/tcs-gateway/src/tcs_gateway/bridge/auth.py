"""`auth` (docs/bridge-protocol.md §3): protocol version, then whitelist, then secret — in that order, each
refusal answered and the connection closed with its code — then the hello reply, and delivery starts.

Before any of that: a claimed server id backed off at this address after failed auths (guard.py, §11) is refused
at once — OVERLOADED with `retryAfterMs`, close 1013 "Try Again Later" (IANA WebSocket close code registry, RFC 6455
§11.7) — without its secret being looked at. A refused server id or secret counts as a failed auth of the pair
(address, claimed id); refusals are logged by the guard, at most one line per address per interval, not one per
attempt."""

from __future__ import annotations

import asyncio
import hmac
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tccal.cache_window import cache_window
from tcs_gateway.bridge.channel import log
from tcs_gateway.bridge.framing import CloseCode, ErrorCode, error_payload, format_instant
from tcs_gateway.bridge.guard import BACKED_OFF, BAD_SECRET, NOT_WHITELISTED
from tcs_gateway.settings import DEFAULT_MAX_IN_FLIGHT, MAX_IN_FLIGHT_CAP, PROTOCOL_VERSION, SUPPORTED_VERSIONS

#: How long an auth waits for the server's stored state to be read again.
REFRESH_TIMEOUT_S = 2.0

if TYPE_CHECKING:
    from tcs_gateway.bridge.session import Session


class Authenticator:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.settings = session.settings

    async def handle(self, frame: dict[str, Any]) -> None:
        session = self.session
        channel = session.channel
        frame_id: int = frame["id"]
        if session.authenticated:
            await channel.reply(
                frame_id,
                error_payload(
                    ErrorCode.ALREADY_AUTHENTICATED,
                    f"this connection is already authenticated as {session.server_id()}",
                ),
            )
            return
        problem = channel.validator.problem(frame, "auth.request")
        if problem is not None:
            await channel.reply(
                frame_id, error_payload(ErrorCode.INVALID_PAYLOAD, problem.message, field=problem.field)
            )
            return
        payload: dict[str, Any] = frame["payload"]
        server_id: str = payload["serverId"]
        version: int = payload["protocolVersion"]
        guard = session.context.guard
        backed_off = guard.backed_off(session.address, server_id) if guard is not None else 0.0
        if guard is not None and backed_off > 0:
            guard.note(session.address, BACKED_OFF, backed_off=backed_off)
            await channel.reply(
                frame_id,
                error_payload(
                    ErrorCode.OVERLOADED,
                    "too many failed auths for this server id from this address",
                    retry_after_ms=max(1, round(backed_off * 1000)),
                ),
            )
            await session.close(CloseCode.TRY_AGAIN_LATER, "too many failed auths for this server id")
            return
        if version not in SUPPORTED_VERSIONS:
            await self._refuse(
                frame_id,
                error_payload(
                    ErrorCode.UNSUPPORTED_PROTOCOL_VERSION,
                    f"protocolVersion {version} is not supported",
                    supported_versions=SUPPORTED_VERSIONS,
                ),
                CloseCode.UNSUPPORTED_VERSION,
                server_id,
            )
            return
        if not self.settings.is_whitelisted(server_id):
            await self._refuse(
                frame_id,
                error_payload(
                    ErrorCode.SERVER_NOT_WHITELISTED, f"server id {server_id} is not listed in productWhitelist.tcs"
                ),
                CloseCode.NOT_WHITELISTED,
                server_id,
            )
            return
        state = session.context.servers.get(server_id.lower())
        expected = state.server.secret if state is not None else ""
        presented = str(payload["secret"])
        matches = hmac.compare_digest(presented.encode("utf-8"), (expected or "\x00" * 16).encode("utf-8"))
        if state is None or not expected or not matches:
            description = (
                f"secret for {server_id} does not match"
                if state is not None
                else f"no secret is configured for {server_id} (tcs.servers)"
            )
            await self._refuse(
                frame_id, error_payload(ErrorCode.BAD_SECRET, description), CloseCode.AUTH_FAILED, server_id
            )
            return
        announced = payload.get("maxInFlight", DEFAULT_MAX_IN_FLIGHT)
        session.max_in_flight = max(1, min(int(announced), MAX_IN_FLIGHT_CAP))
        session.slots = asyncio.Semaphore(session.max_in_flight)
        # Revision 1.3: a TCS that asks every user's list itself (sinceSeq for what it holds) gets no snapshots now.
        session.catch_up_by_lists = payload.get("catchUp") == "lists"
        session.authenticated = True
        channel.authenticated = True
        session.server = state
        if guard is not None:
            guard.auth_succeeded(session.address, server_id)
        if session.on_authenticated is not None:
            session.on_authenticated()
        await self._refresh_state(state.id)
        await state.attach(session)
        window = cache_window(
            datetime.now(UTC), self.settings.window_backward_months, self.settings.window_forward_months
        )
        await channel.reply(
            frame_id,
            {
                "errorCode": 0,
                "protocolVersion": PROTOCOL_VERSION,
                "sessionId": session.session_id,
                "gatewayId": self.settings.gateway_id,
                "limits": {
                    "maxFrameBytes": self.settings.max_frame_bytes,
                    "maxInFlight": session.max_in_flight,
                    "pingIntervalSec": max(1, round(self.settings.ping_interval)),
                    "replyTimeoutSec": max(1, round(self.settings.reply_timeout)),
                },
                "window": {"from": format_instant(window.start), "to": format_instant(window.end)},
            },
        )
        log.info(
            "TrueConf Server authenticated",
            extra={
                "server": state.id,
                "peer": session.peer,
                "session": session.session_id,
                "server_version": str(payload.get("serverVersion", "")),
                "max_in_flight": session.max_in_flight,
                "catch_up": "lists" if session.catch_up_by_lists else "snapshots",
            },
        )
        session.start_delivery()

    async def _refresh_state(self, server_id: str) -> None:
        """Before snapshots are built: the server's stored per-user state, read again (its session may have been on
        another replica since this one started). Bounded: NATS trouble leaves what was read at start."""
        try:
            await asyncio.wait_for(self.session.context.store.refresh(server_id), REFRESH_TIMEOUT_S)
        except Exception as exc:
            log.warning("gateway state not re-read at auth", extra={"server": server_id, "error": repr(exc)})

    async def _refuse(self, frame_id: int, payload: dict[str, Any], code: CloseCode, server_id: str) -> None:
        session = self.session
        guard = session.context.guard
        if guard is not None and code in (CloseCode.NOT_WHITELISTED, CloseCode.AUTH_FAILED):
            reason = NOT_WHITELISTED if code == CloseCode.NOT_WHITELISTED else BAD_SECRET
            guard.auth_failed(session.address, server_id, reason)
        else:
            log.warning(
                "TrueConf Server refused",
                extra={
                    "peer": session.peer,
                    "server": server_id,
                    "error": payload["errorDescription"],
                    "code": int(code),
                },
            )
        known = session.context.servers.get(server_id.lower())
        if known is not None:
            known.record_error(f"auth from {session.peer} refused: {payload['errorDescription']}")
        await session.channel.reply(frame_id, payload)
        await session.close(code, str(payload.get("errorName", "refused")))

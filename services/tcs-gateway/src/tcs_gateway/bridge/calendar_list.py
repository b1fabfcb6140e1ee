"""getCalendarList (docs/bridge-protocol.md §6): a user's events in a window TCS names (at most 400 days), read
from SyncService, in one reply frame; the user is served from then on (snapshots after every reconnect)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tccal.cache_window import CacheWindow
from tcs_gateway.bridge.channel import log
from tcs_gateway.bridge.events import list_seq
from tcs_gateway.bridge.framing import ErrorCode, encode, error_payload, parse_instant, reply_frame
from tcs_gateway.bridge.payloads import event_budget, events_for
from tcs_gateway.bridge.ports import SyncUnavailableError

if TYPE_CHECKING:
    from tcs_gateway.bridge.session import Session

MAX_WINDOW = timedelta(days=400)
LIST_CONCURRENCY = 8


class CalendarLists:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.settings = session.settings
        self._lists = asyncio.Semaphore(LIST_CONCURRENCY)

    async def handle(self, frame: dict[str, Any]) -> None:
        try:
            await self._answer(frame)
        except Exception as exc:  # answer rather than leave TCS waiting for the reply timeout
            log.exception("getCalendarList failed", extra={"peer": self.session.peer})
            await self.session.channel.reply(
                frame["id"],
                error_payload(ErrorCode.INTERNAL_ERROR, f"getCalendarList failed: {exc!r}", retry_after_ms=1000),
            )

    async def _answer(self, frame: dict[str, Any]) -> None:
        session = self.session
        channel = session.channel
        context = session.context
        frame_id: int = frame["id"]
        problem = channel.validator.problem(frame, "getCalendarList.request")
        if problem is not None:
            await channel.reply(
                frame_id, error_payload(ErrorCode.INVALID_PAYLOAD, problem.message, field=problem.field)
            )
            return
        payload: dict[str, Any] = frame["payload"]
        window_from = parse_instant(payload["from"])
        window_to = parse_instant(payload["to"])
        if not window_from < window_to:
            await channel.reply(
                frame_id,
                error_payload(
                    ErrorCode.INVALID_PAYLOAD, f"to {payload['to']} is not after from {payload['from']}", field="to"
                ),
            )
            return
        if window_to - window_from > MAX_WINDOW:
            await channel.reply(
                frame_id,
                error_payload(
                    ErrorCode.INVALID_PAYLOAD,
                    f"window {payload['from']} – {payload['to']} is longer than 400 days",
                    field="to",
                ),
            )
            return
        server = session.server
        assert server is not None
        user = str(payload["user"]).lower()
        async with self._lists:
            try:
                listed = await context.source.list_events(user, window_from, window_to)
            except SyncUnavailableError as exc:
                server.record_error(f"getCalendarList {user}: {exc}")
                log.warning("failed to getCalendarList", extra={"server": server.id, "user": user, "error": str(exc)})
                await channel.reply(frame_id, error_payload(ErrorCode.INTERNAL_ERROR, str(exc), retry_after_ms=1000))
                return
        seq = list_seq(listed.seq, context.store.snapshot_seq(server.id, user))
        events = events_for(
            listed.occurrences,
            user,
            seq,
            CacheWindow(window_from, window_to),
            server_host=server.server.host,
            budget=event_budget(self.settings.max_frame_bytes),
        )
        answer = {
            "errorCode": 0,
            "user": payload["user"],
            "from": payload["from"],
            "to": payload["to"],
            "seq": seq,
            "events": events,
        }
        if len(encode(reply_frame(frame_id, answer)).encode("utf-8")) > self.settings.max_frame_bytes:
            await channel.reply(
                frame_id,
                error_payload(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"{len(events)} events of {user} do not fit in {self.settings.max_frame_bytes} bytes; "
                    "ask for a narrower window",
                ),
            )
            return
        await channel.reply(frame_id, answer)
        if context.store.mark_asked(server.id, user):
            log.info("TrueConf Server asked for a new user's calendar", extra={"server": server.id, "user": user})
        if context.on_list is not None:
            await context.on_list(server, user, listed.seq)

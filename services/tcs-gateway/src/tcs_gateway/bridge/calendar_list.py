"""getCalendarList (docs/bridge-protocol.md §6.2): a user's events in a window TCS names (at most 400 days), read
from SyncService; the user is served from then on (snapshots after every reconnect).

A request with `page` is answered in pages (list_pages.py): page 0 reads and builds the list once, later pages
come from that build, so no frame exceeds `maxFrameBytes` however large the calendar. A request without `page`
(protocol revision 1.0) gets the whole list in one frame, or FRAME_TOO_LARGE when it does not fit.

A request with `sinceSeq` and `incremental` (revision 1.2) is answered with only what changed since `sinceSeq` -
the changed events in the window and the ids removed from it - when the sync-engine still knows every change since
(SyncService.ListEvents `incremental`), else with the whole list and why (`wholeBecause`).

Lists of different users are built concurrently, at most LIST_CONCURRENCY at once per connection."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tccal.cache_window import CacheWindow
from tcs_gateway.bridge.channel import ConnectionClosedError, log
from tcs_gateway.bridge.events import engine_seq_held, engine_seq_of, list_seq, push_seq_floor
from tcs_gateway.bridge.framing import ErrorCode, encode, error_payload, parse_instant, preencoded, reply_frame
from tcs_gateway.bridge.list_pages import (
    KEEP_SECONDS,
    BuiltList,
    ListPages,
    page_frame,
    split_changes,
    split_pages,
)
from tcs_gateway.bridge.payloads import encoded_events_for, event_budget
from tcs_gateway.bridge.ports import SyncUnavailableError, UserList

if TYPE_CHECKING:
    from tcs_gateway.bridge.session import Session

MAX_WINDOW = timedelta(days=400)
LIST_CONCURRENCY = 8


#: The fields of an answer to a request with `incremental` (besides `removed`, which pages share out).
CHANGES_FIELDS = ("incremental", "sinceSeq", "wholeBecause", "historyFrom")


def changes_fields(since_seq: int, listed: UserList) -> dict[str, Any]:
    """`incremental` and the base (`sinceSeq`) of an answer of only the changes, or why the whole list is given
    (§6.2 "Changes since a sequence"): the sync-engine's history of removals no longer reaches back to `since_seq`
    (`historyFrom`: the lowest sinceSeq it would answer with changes now)."""
    if listed.incremental:
        return {"incremental": True, "sinceSeq": since_seq}
    return {"incremental": False, "wholeBecause": "history", "historyFrom": push_seq_floor(listed.history_from)}


class CalendarLists:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.settings = session.settings
        self._lists = asyncio.Semaphore(LIST_CONCURRENCY)
        self.pages = ListPages()

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
        page: int | None = payload.get("page")
        list_id: str | None = payload.get("listId")
        if list_id is not None:
            await self._next_page(frame_id, payload, list_id, page or 0)
            return
        server = session.server
        assert server is not None
        user = str(payload["user"]).lower()
        last_snapshot = context.store.snapshot_seq(server.id, user)
        since: int | None = payload.get("sinceSeq")
        wants_changes = bool(payload.get("incremental")) and since is not None
        # Changes since sinceSeq apply to what TCS holds whether or not it has applied a snapshot sent since (that
        # snapshot and this answer are each applied or found stale by the §4 rules); `unchanged` needs it applied.
        held = engine_seq_of(since) if wants_changes and since else engine_seq_held(since, last_snapshot)
        async with self._lists:
            try:
                listed = await context.source.list_events(
                    user, window_from, window_to, since_seq=held, incremental=wants_changes
                )
                if wants_changes and held == 0:
                    # TCS holds the window as of engine seq 0, before the user's first push (a snapshot of nothing):
                    # what changed since is the whole list, and nothing when there is still no push.
                    listed = UserList(
                        listed.occurrences, listed.seq, unchanged=listed.seq == 0, incremental=listed.seq > 0
                    )
            except SyncUnavailableError as exc:
                server.record_error(f"getCalendarList {user}: {exc}")
                log.warning("failed to getCalendarList", extra={"server": server.id, "user": user, "error": str(exc)})
                await channel.reply(frame_id, error_payload(ErrorCode.INTERNAL_ERROR, str(exc), retry_after_ms=1000))
                if context.on_list is not None and not context.store.was_asked(server.id, user):
                    # Never listed for this TrueConf Server: asked for on demand now, not only once a list succeeds.
                    # Starting its sync needs ews-ingest, not SyncService, and TCS retries a failed list only for a
                    # while: at a first start with the sync-engine still coming up, it gave up on some users and
                    # never asked for them again (until it reconnects), so they were never synced.
                    await context.on_list(server, user, 0)
                return
            if listed.unchanged and wants_changes and since is not None and last_snapshot > since:
                # nothing changed since, but TCS has a snapshot to apply: an answer of no changes at its seq
                listed = UserList([], listed.seq, incremental=True)
            # A snapshot begun meanwhile has a higher seq: a full list takes it (else TCS would find the list stale);
            # an unchanged answer keeps the seq TCS's sinceSeq was checked against.
            seq = list_seq(
                listed.seq, last_snapshot if listed.unchanged else context.store.snapshot_seq(server.id, user)
            )
            events = (
                []
                if listed.unchanged
                else encoded_events_for(
                    listed.occurrences,
                    user,
                    seq,
                    CacheWindow(window_from, window_to),
                    server_host=server.server.host,
                    budget=event_budget(self.settings.max_frame_bytes),
                )
            )
        answer = {
            "errorCode": 0,
            "user": payload["user"],
            "from": payload["from"],
            "to": payload["to"],
            "seq": seq,
            "events": [],  # written per page (page_frame), or in the one frame below
        }
        if listed.unchanged:
            answer["unchanged"] = True
        elif wants_changes:
            answer.update(changes_fields(payload["sinceSeq"], listed))
            if listed.incremental:
                answer["removed"] = listed.removed
        if page is not None:
            removed_pages: list[list[bytes]] | None = None
            if listed.incremental and not listed.unchanged:
                removed_pages, pages = split_changes(
                    listed.removed,
                    events,
                    payload["user"],
                    payload["from"],
                    payload["to"],
                    self.settings.max_frame_bytes,
                )
                del answer["removed"]  # each page carries its share
            else:
                pages = split_pages(
                    events, payload["user"], payload["from"], payload["to"], self.settings.max_frame_bytes
                )
            new_id = self.pages.keep(
                user,
                payload["from"],
                payload["to"],
                seq,
                pages,
                unchanged=listed.unchanged,
                removed=removed_pages,
                changes={key: value for key, value in answer.items() if key in CHANGES_FIELDS},
            )
            built = self.pages.find(new_id)
            assert built is not None  # page > 0 comes with listId (the schema requires it)
            await self._send_page(frame_id, payload, built, 0)
        else:
            answer["events"] = [preencoded(text) for text in events]
            whole = encode(reply_frame(frame_id, answer))
            if len(whole.encode("utf-8")) > self.settings.max_frame_bytes:
                await channel.reply(
                    frame_id,
                    error_payload(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"{len(events)} events of {user} do not fit in {self.settings.max_frame_bytes} bytes; "
                        "ask for a narrower window, or in pages (page 0)",
                    ),
                )
                return
            with contextlib.suppress(ConnectionClosedError):
                await channel.send_text(whole)
        if context.store.mark_asked(server.id, user):
            log.info("TrueConf Server asked for a new user's calendar", extra={"server": server.id, "user": user})
        if context.on_list is not None:
            await context.on_list(server, user, listed.seq)

    async def _next_page(self, frame_id: int, payload: dict[str, Any], list_id: str, page: int) -> None:
        """A further page of a list built for an earlier request (`listId`)."""
        built = self.pages.find(list_id)
        if built is None:
            await self.session.channel.reply(
                frame_id,
                error_payload(
                    ErrorCode.INVALID_PAYLOAD,
                    f"listId {list_id!r} is unknown or expired (a list is kept {KEEP_SECONDS:g} s after its last "
                    "request, until its last page); ask page 0 without listId",
                    field="listId",
                ),
            )
            return
        for name, held in (("user", built.user), ("from", built.window_from), ("to", built.window_to)):
            asked = str(payload[name]).lower() if name == "user" else payload[name]
            if asked != held:
                await self.session.channel.reply(
                    frame_id,
                    error_payload(
                        ErrorCode.INVALID_PAYLOAD,
                        f"{name} {payload[name]!r} differs from {held!r} of list {list_id!r}",
                        field=name,
                    ),
                )
                return
        if page >= len(built.pages):
            await self.session.channel.reply(frame_id, self._page_out_of_range(built, page))
            return
        await self._send_page(frame_id, payload, built, page)

    @staticmethod
    def _page_out_of_range(built: BuiltList, page: int) -> dict[str, Any]:
        return error_payload(
            ErrorCode.INVALID_PAYLOAD,
            f"page {page} is beyond list {built.list_id!r}, which has {len(built.pages)} pages (0 … "
            f"{len(built.pages) - 1})",
            field="page",
        )

    async def _send_page(self, frame_id: int, payload: dict[str, Any], built: BuiltList, page: int) -> None:
        answer = {
            "errorCode": 0,
            "user": payload["user"],
            "from": payload["from"],
            "to": payload["to"],
            "seq": built.seq,
            "listId": built.list_id,
            "page": page,
            "pageCount": len(built.pages),
        }
        if built.unchanged:
            answer["unchanged"] = True
        answer.update(built.changes)
        removed = built.removed[page] if built.removed is not None else None
        text = page_frame(frame_id, answer, built.pages[page], removed)
        size = len(text)
        if size > self.settings.max_frame_bytes:  # split_pages leaves room; this guards the limit itself
            await self.session.channel.reply(
                frame_id,
                error_payload(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"page {page} of {built.user} would be {size} bytes, over {self.settings.max_frame_bytes}",
                ),
            )
            return
        with contextlib.suppress(ConnectionClosedError):
            await self.session.channel.send_text(text.decode("utf-8"))
        self.pages.served(built, page)

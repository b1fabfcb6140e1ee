"""Snapshots of one connection: after `auth` every served user's (unless TCS asked with `catchUp: "lists"`,
revision 1.3), later any user's whose pushes cannot go out in order (docs/bridge-protocol.md §4).

While a user's snapshot is being built (from the moment SyncService is asked until its frames are written)
the user is blocked: no push of that user is sent. A written snapshot covers the pushes up to the engine seq
it was read at; they stay queued until it is acknowledged (then they are done) or refused (then a new
snapshot, or they go out after all). A push that waits like this may be given up when the queue is full
(ServerState.relieve): its user is then owed a snapshot, sent again after every failure (with backoff) and at every
connection until one that covers it is acknowledged. A user whose calendar SyncService cannot list stays blocked
and is listed again after a backoff; the worker goes on with the other users meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from tccal import telemetry
from tccal.cache_window import cache_window
from tccal.retry import backoff_delay
from tcs_gateway.bridge.channel import ConnectionClosedError, log, retry_delay
from tcs_gateway.bridge.events import snapshot_seq
from tcs_gateway.bridge.framing import ErrorCode
from tcs_gateway.bridge.payloads import encoded_events_for, encoded_snapshot_payloads, event_budget
from tcs_gateway.bridge.ports import SyncUnavailableError
from tcs_gateway.bridge.pushes import PUSHES
from tcs_gateway.bridge.queue import PendingPush

if TYPE_CHECKING:
    from tcs_gateway.bridge.servers import ServerState
    from tcs_gateway.bridge.session import Session

_tracer = telemetry.tracer("tcs_gateway.bridge")


@dataclass
class _SnapshotTracker:
    user: str
    engine_seq: int
    seq: int
    chunks: int
    span: trace.Span
    acked: int = 0
    failed: bool = False


class SnapshotSender:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.settings = session.settings
        self._blocked: set[str] = set()
        #: Engine seq per user that a snapshot written on this connection covers (its ack is awaited).
        self._sent_cover: dict[str, int] = {}
        self._pending: set[str] = set()
        #: Failed snapshots per user since the last acknowledged one (the backoff before the next).
        self._failures: dict[str, int] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        #: Set once every served user's snapshot is requested; pushes start after that.
        self.catchup_ready = asyncio.Event()

    def _server(self) -> ServerState:
        server = self.session.server
        assert server is not None
        return server

    def request(self, user: str) -> None:
        """Send `user` a fresh snapshot; the user's pushes wait until its frames are written."""
        session = self.session
        if session.closing or not session.authenticated or user in self._pending:
            return
        self._pending.add(user)
        self._blocked.add(user)
        self._queue.put_nowait(user)

    def _retry_later(self, user: str, delay: float) -> None:
        """A snapshot of `user` failed or fell short: another in `delay` seconds. A snapshot of the user still being
        built then is left to finish (its own outcome is looked at again); a connection that ended by then leaves it
        to the next one's catch-up."""
        asyncio.get_running_loop().call_later(delay, self.request, user)

    def _failed(self, user: str) -> int:
        self._failures[user] = self._failures.get(user, 0) + 1
        return self._failures[user]

    def is_blocked(self, user: str) -> bool:
        return user in self._blocked

    def holds_back(self, item: PendingPush) -> bool:
        """Whether `item` can only wait for a snapshot of its user: one being built, or one written that covers it."""
        return item.user in self._blocked or item.engine_seq <= self._sent_cover.get(item.user, 0)

    def covered_by_sent_snapshot(self, user: str) -> int:
        return self._sent_cover.get(user, 0)

    async def catch_up(self) -> None:
        await self.session.context.store.loaded.wait()
        server = self._server()
        if self.session.catch_up_by_lists:
            # TCS asks getCalendarList for every user itself, with sinceSeq for the windows it holds
            # (docs/bridge-protocol.md §3 step 3, revision 1.3): rebuilding and resending each whole calendar would
            # repeat what it holds; a user with changes gets them in that list's answer. Snapshots still owed (their
            # pushes were superseded unsent) are sent all the same.
            for user in sorted(server.owed):
                self.request(user)
            self.catchup_ready.set()
            log.info("no catch-up snapshots: TrueConf Server asks for the lists", extra={"server": server.id})
            return
        users = sorted(set(server.served_users()) | set(server.owed))
        for user in users:
            self.request(user)
        self.catchup_ready.set()
        log.info("sending snapshots", extra={"server": server.id, "users": len(users)})

    async def worker(self) -> None:
        server = self._server()
        while not self.session.closing:
            user = await self._queue.get()
            deferred = False
            try:
                deferred = not await self._snapshot(user)
            except ConnectionClosedError:
                return
            except Exception as exc:  # one user's snapshot must not stop the others
                log.exception("snapshot failed", extra={"server": server.id, "user": user})
                server.record_error(f"snapshot of {user} failed: {exc!r}")
                if user in server.owed:
                    self._retry_later(user, backoff_delay(self._failed(user), base=1.0, cap=300.0))
            finally:
                if not deferred:
                    self._pending.discard(user)
                    self._blocked.discard(user)
                    server.queue.changed.set()

    async def _snapshot(self, user: str) -> bool:
        """Build and write `user`'s snapshot; False when SyncService could not list the calendar: the user stays
        blocked and is listed again after a backoff (0.5 s doubling to 30 s), while the worker goes on with the
        other users (a calendar that cannot be listed must not hold back theirs)."""
        session = self.session
        server = self._server()
        if session.closing:
            raise ConnectionClosedError("connection closing")
        window = cache_window(
            datetime.now(UTC), self.settings.window_backward_months, self.settings.window_forward_months
        )
        try:
            listed = await session.context.source.list_events(user, window.start, window.end)
        except SyncUnavailableError as exc:
            server.record_error(f"snapshot of {user}: {exc}")
            log.warning("failed to getCalendarList", extra={"server": server.id, "user": user, "error": str(exc)})
            delay = backoff_delay(self._failed(user), base=0.5, cap=30.0)
            asyncio.get_running_loop().call_later(delay, self._queue.put_nowait, user)
            return False
        store = session.context.store
        seq = snapshot_seq(listed.seq, store.snapshot_seq(server.id, user))
        store.set_snapshot_seq(server.id, user, seq)
        events = encoded_events_for(
            listed.occurrences,
            user,
            seq,
            window,
            server_host=server.server.host,
            budget=event_budget(self.settings.max_frame_bytes),
        )
        payloads = encoded_snapshot_payloads(user, seq, window, events, self.settings.max_frame_bytes)
        span = _tracer.start_span(
            "bridge snapshot",
            kind=trace.SpanKind.PRODUCER,
            attributes={"tcs.server": server.id, "tcs.user": user, "tcs.seq": seq, "tcs.events": len(events)},
        )
        tracker = _SnapshotTracker(user, listed.seq, seq, len(payloads), span)
        for payload in payloads:
            await session.slots.acquire()
            try:
                await session.channel.request(
                    "calendar.snapshot",
                    payload,
                    functools.partial(self._reply, tracker),
                    on_lost=functools.partial(self._lost, tracker),
                )
            except BaseException:
                session.slots.release()
                raise
            PUSHES.add(1, {"method": "calendar.snapshot", "outcome": "sent"})
        if not tracker.failed and listed.seq > self._sent_cover.get(user, 0):
            # Pushes up to listed.seq need not go out: the snapshot just written holds them. They stay queued
            # until it is acknowledged (then they are done) or refused (then a new snapshot, or they go out).
            self._sent_cover[user] = listed.seq
        return True

    def _lost(self, tracker: _SnapshotTracker) -> None:
        self.session.slots.release()
        if not tracker.failed:
            tracker.failed = True
            tracker.span.set_status(trace.Status(trace.StatusCode.ERROR, "connection lost"))
            tracker.span.end()

    def _reply(self, tracker: _SnapshotTracker, payload: dict[str, Any]) -> None:
        self.session.slots.release()
        server = self._server()
        if tracker.failed:
            return
        code = payload.get("errorCode")
        if code == 0:
            tracker.acked += 1
            if tracker.acked == tracker.chunks:
                superseded = server.supersede(tracker.user, tracker.engine_seq)
                tracker.span.set_attribute("tcs.superseded_pushes", superseded)
                tracker.span.end()
                if tracker.user in server.owed:
                    # Read before the last pushes it owes were given up: a later snapshot holds them.
                    self._retry_later(tracker.user, backoff_delay(self._failed(tracker.user), base=1.0, cap=300.0))
                else:
                    self._failures.pop(tracker.user, None)
            return
        tracker.failed = True
        description = str(payload.get("errorDescription", ""))
        tracker.span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code} {description}"))
        tracker.span.end()
        failures = self._failed(tracker.user)
        if code in (ErrorCode.OVERLOADED, ErrorCode.INTERNAL_ERROR):
            self._retry_later(tracker.user, retry_delay(payload, failures))
            return
        if self._sent_cover.get(tracker.user, 0) <= tracker.engine_seq:
            self._sent_cover.pop(tracker.user, None)  # the queued pushes go out after all
            server.queue.changed.set()
        if tracker.user in server.owed:
            # Pushes given up for a snapshot cannot go out after all: only a snapshot brings their changes.
            self._retry_later(tracker.user, backoff_delay(failures, base=1.0, cap=300.0))
        server.record_error(f"snapshot of {tracker.user} refused: {code} {description}")
        log.error(
            "TrueConf Server refused a snapshot",
            extra={"server": server.id, "user": tracker.user, "code": code, "error": description},
        )

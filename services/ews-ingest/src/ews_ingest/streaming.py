"""Streaming notifications: hints that a mailbox changed.

Per credential, mailboxes with a seat are grouped by what autodiscover says of them - GroupingInformation and
ExternalEwsUrl, Microsoft's recipe ("Maintain affinity between a group of subscriptions and the Mailbox server in
Exchange": a subscription lives on one mailbox server, so only mailboxes of one group may share a connection) - at
most `stream_group_size` (200) per group, and each group gets one GetStreamingEvents connection (ConnectionTimeout
`stream_minutes`, 30) on one of the credential's stream slots. Where autodiscover does not answer, mailboxes are
grouped by credential alone. A group whose subscriptions are lost (a mailbox moved to another server) asks
autodiscover again and moves members whose group changed. Every Subscribe of a group carries
`X-AnchorMailbox: <the group's first mailbox>` and `X-PreferServerAffinity: true`; Exchange answers with an
`X-BackEndOverrideCookie` that later Subscribe and GetStreamingEvents requests of the group send back. Both are
hints: a wrong guess costs a proxy hop, never correctness.

A notification only triggers a sync of its mailbox - SyncFolderItems decides what changed. After any gap the group's
mailboxes are caught up with a sync: the stream ended without Exchange's ConnectionStatus "Closed" (dropped by the
server or the network), it failed, a subscription was lost (ErrorSubscriptionNotFound / expired: subscribed again
first) or Exchange says events were missed. The planned end of a connection at its ConnectionTimeout (the 30-minute
renewal, announced with "Closed") needs no catch-up: the subscriptions live on and Exchange keeps their events for the
next connection, which is opened at once. Mailboxes for which no stream slot is left are polled (`poll_seconds`);
those located together are placed together, fullest groups first (`fullest_first`), so that the order autodiscover
answers in does not decide how many mailboxes stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from exchangelib.errors import (
    ErrorExpiredSubscription,
    ErrorInvalidSubscription,
    ErrorSubscriptionNotFound,
)
from exchangelib.services import GetStreamingEvents, SubscribeToStreaming

from ews_ingest.exchange.errors import describe
from ews_ingest.exchange.pool import CredentialPool
from ews_ingest.scheduler import MailboxEntry, Scheduler
from tccal.retry import backoff_delay

log = logging.getLogger(__name__)
EVENT_TYPES = ("CreatedEvent", "DeletedEvent", "ModifiedEvent", "MovedEvent", "CopiedEvent")
LOST_SUBSCRIPTION = (ErrorSubscriptionNotFound, ErrorExpiredSubscription, ErrorInvalidSubscription)
MISSED_EVENTS = "ErrorMissedNotificationEvents"
RETRY_SUBSCRIBE_SECONDS = 60.0


@dataclass
class Affinity:
    anchor: str
    cookie: str | None = None


class _AffinityMixin:
    affinity: Affinity

    def _extra_headers(self) -> dict[str, str]:
        headers: dict[str, str] = super()._extra_headers()  # type: ignore[misc]
        headers["X-AnchorMailbox"] = self.affinity.anchor
        headers["X-PreferServerAffinity"] = "True"
        if self.affinity.cookie:
            headers["X-BackEndOverrideCookie"] = self.affinity.cookie
        else:
            headers.pop("X-BackEndOverrideCookie", None)
        return headers

    def _handle_response_cookies(self, session: Any) -> None:
        """Keep the group's cookie with the group, and out of the HTTP session: sessions are shared by every group
        of a credential, and a cookie left in the session's jar would route another group's requests to this
        group's server (where its subscriptions are not)."""
        for cookie in list(session.cookies):
            if cookie.name == "X-BackEndOverrideCookie":
                self.affinity.cookie = cookie.value
                session.cookies.clear(cookie.domain, cookie.path, cookie.name)


class GroupSubscribe(_AffinityMixin, SubscribeToStreaming):  # type: ignore[misc]  # exchangelib is untyped
    def __init__(self, *args: Any, affinity: Affinity, **kwargs: Any) -> None:
        self.affinity = affinity
        super().__init__(*args, **kwargs)


class GroupStreamingEvents(_AffinityMixin, GetStreamingEvents):  # type: ignore[misc]
    def __init__(self, *args: Any, affinity: Affinity, **kwargs: Any) -> None:
        self.affinity = affinity
        super().__init__(*args, **kwargs)


@dataclass
class StreamStats:
    connections: int = 0
    reconnects: int = 0
    #: Connections that ended at their ConnectionTimeout with ConnectionStatus "Closed" (no catch-up needed).
    renewals: int = 0
    subscriptions: int = 0
    resubscribes: int = 0
    notifications: int = 0
    catch_ups: int = 0


@dataclass
class Group:
    pool: CredentialPool
    number: int
    #: "GroupingInformation|ExternalEwsUrl" of every member ("" when autodiscover did not say).
    key: str = ""
    members: list[str] = field(default_factory=list)
    subscriptions: dict[str, str] = field(default_factory=dict)  # mailbox -> subscription id
    failed: dict[str, str] = field(default_factory=dict)  # mailbox -> why its Subscribe failed
    affinity: Affinity | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    service: Any = None
    task: asyncio.Task[None] | None = None
    stopping: bool = False

    @property
    def label(self) -> str:
        grouping = self.key.split("|", 1)[0]
        return f"{self.pool.name}#{self.number}" + (f"@{grouping}" if grouping else "")


def fullest_first(located: list[tuple[MailboxEntry, str]], group_size: int) -> list[tuple[MailboxEntry, str]]:
    """Mailboxes with their group key, in the order that streams the most of them when stream slots run out:
    each key's mailboxes cut into groups of `group_size` (in the order they came), the fullest groups first.
    Placed in autodiscover's answer order instead, three mailboxes of one server could take two slots (2 + 1)
    and leave the two of another server to polling."""
    by_key: dict[str, list[tuple[MailboxEntry, str]]] = {}
    for entry, key in located:
        by_key.setdefault(key, []).append((entry, key))
    chunks = [members[i : i + group_size] for members in by_key.values() for i in range(0, len(members), group_size)]
    chunks.sort(key=len, reverse=True)
    return [placed for chunk in chunks for placed in chunk]


class StreamManager:
    def __init__(self, scheduler: Scheduler, *, group_size: int, minutes: int) -> None:
        self.scheduler = scheduler
        self.group_size = group_size
        self.minutes = minutes
        self.groups: dict[int, list[Group]] = {}  # id(pool) -> groups
        self.stats = StreamStats()
        self._numbers = 0
        self._stop: asyncio.Event | None = None
        self.overflow: dict[int, list[str]] = {}  # id(pool) -> polled mailboxes waiting for room on a stream
        self._background: set[asyncio.Task[None]] = set()
        self._locating: dict[str, int] = {}  # mailbox -> id(pool): autodiscover is being asked for its group
        self._located: dict[int, list[tuple[MailboxEntry, str]]] = {}  # id(pool) -> answered, to be placed together
        scheduler.on_activate.append(self.add)
        scheduler.on_deactivate.append(self.remove)
        scheduler.after_sync.append(self._after_sync)

    # ------------------------------------------------------------------ membership
    def add(self, entry: MailboxEntry) -> None:
        groups = self.groups.setdefault(id(entry.pool), [])
        if any(entry.mailbox in g.members for g in groups) or entry.mailbox in self._locating:
            return
        entry.streamed = False  # until its subscription exists
        key = entry.pool.cached_grouping(entry.mailbox)
        if key is None:
            self._locating[entry.mailbox] = id(entry.pool)
            self._spawn(self._locate_then_add(entry))
            return
        self._place(entry, key)

    async def _locate_then_add(self, entry: MailboxEntry) -> None:
        try:
            key = await entry.pool.grouping(entry.mailbox)
        except Exception as exc:  # EndpointResolver.grouping answers "" itself; a closed pool lands here
            log.info("streaming group unknown", extra={"mailbox": entry.mailbox, "error": describe(exc)})
            key = ""
        if entry.mailbox not in self._locating:
            return  # removed (no seat any more) while autodiscover answered
        del self._locating[entry.mailbox]
        self._located.setdefault(id(entry.pool), []).append((entry, key))
        self._place_located(id(entry.pool))

    def _place_located(self, pool: int) -> None:
        """Place the pool's located mailboxes once no answer of its autodiscover is awaited any more: placed as the
        answers come, their order would decide who streams (fullest_first)."""
        if pool in self._locating.values() or pool not in self._located:
            return
        located = self._located.pop(pool)
        groups = self.groups.setdefault(pool, [])
        for waiting, waiting_key in fullest_first(located, self.group_size):
            placed = any(waiting.mailbox in g.members for g in groups) or waiting.mailbox in self._locating
            if not placed and self.scheduler.entries.get(waiting.mailbox) is waiting and self.scheduler.active(waiting):
                self._place(waiting, waiting_key)

    def _place(self, entry: MailboxEntry, key: str) -> None:
        groups = self.groups.setdefault(id(entry.pool), [])
        group = next((g for g in groups if g.key == key and len(g.members) < self.group_size), None)
        if group is None:
            if len(groups) >= entry.pool.stream_slots:
                entry.streamed = False
                waiting = self.overflow.setdefault(id(entry.pool), [])
                if entry.mailbox not in waiting:
                    waiting.append(entry.mailbox)
                log.warning(
                    "no streaming connection left for mailbox: polling it",
                    extra={"mailbox": entry.mailbox, "credential": entry.pool.name},
                )
                return
            self._numbers += 1
            group = Group(pool=entry.pool, number=self._numbers, key=key)
            groups.append(group)
            if self._stop is not None:
                self._start(group)
        group.members.append(entry.mailbox)
        entry.streamed = False  # until its subscription exists
        group.changed.set()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def remove(self, entry: MailboxEntry) -> None:
        if self._locating.pop(entry.mailbox, None) is not None:
            self._place_located(id(entry.pool))  # the answers it held back
        waiting = self.overflow.get(id(entry.pool), [])
        if entry.mailbox in waiting:
            waiting.remove(entry.mailbox)
        freed = False
        for group in self.groups.get(id(entry.pool), []):
            if entry.mailbox in group.members:
                group.members.remove(entry.mailbox)
                group.failed.pop(entry.mailbox, None)
                subscription = group.subscriptions.pop(entry.mailbox, None)
                if subscription is not None:
                    self._spawn(self._unsubscribe(group.pool, entry.mailbox, subscription))
                if group.affinity is not None and group.affinity.anchor == entry.mailbox:
                    group.affinity = None
                group.changed.set()
                freed = True
        entry.streamed = False
        if freed and waiting:  # room on a stream: the longest-polled mailbox takes it
            promoted = self.scheduler.entries.get(waiting.pop(0))
            if promoted is not None and self.scheduler.active(promoted):
                self.add(promoted)

    async def _after_sync(self, entry: MailboxEntry, result: object) -> None:
        self.retry_failed(entry)

    async def _unsubscribe(self, pool: CredentialPool, mailbox: str, subscription: str) -> None:
        try:
            await pool.call(mailbox, "Unsubscribe", lambda account: account.calendar.unsubscribe(subscription))
        except Exception as exc:  # it expires on its own after 30 minutes
            log.info("unsubscribe failed", extra={"mailbox": mailbox, "error": describe(exc)})

    # ------------------------------------------------------------------ running
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        for groups in self.groups.values():
            for group in groups:
                self._start(group)
        await stop.wait()
        every = [g for groups in self.groups.values() for g in groups]
        for group in every:
            group.stopping = True
            group.changed.set()
            self._close_stream(group)
        tasks = [g.task for g in every if g.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    def _start(self, group: Group) -> None:
        group.task = asyncio.get_running_loop().create_task(self._run_group(group), name=f"ews-stream-{group.label}")

    async def _run_group(self, group: Group) -> None:
        stop = self._stop
        assert stop is not None
        failures = 0
        gap = False  # the previous connection ended on its own or failed: members may have missed events
        while not stop.is_set() and not group.stopping:
            group.changed.clear()
            if not group.members:
                await self._idle(group, None)
                continue
            try:
                fresh = await self._subscribe(group)
                if gap:
                    self._catch_up(group, [m for m in group.members if m in group.subscriptions], "reconnect")
                else:
                    self._catch_up(group, [m for m, at in fresh.items() if self._stale(m, at)], "subscribed")
                gap = False
                if not group.subscriptions:
                    await self._idle(group, RETRY_SUBSCRIBE_SECONDS)
                    continue
                outcome = await self._stream(group)
                failures = 0
            except LOST_SUBSCRIPTION as exc:
                log.warning(
                    "streaming subscriptions lost, subscribing again",
                    extra={"group": group.label, "error": describe(exc)},
                )
                group.subscriptions.clear()
                self.stats.resubscribes += 1
                gap = True
                await self._relocate(group)
                continue
            except Exception as exc:
                if group.stopping or stop.is_set():
                    return
                failures += 1
                gap = True
                delay = random.uniform(0.5, 1.0) * backoff_delay(failures, base=0.5, cap=30.0)
                if MISSED_EVENTS in describe(exc):
                    group.subscriptions.clear()
                log.warning(
                    "streaming connection failed, reconnecting",
                    extra={"group": group.label, "error": describe(exc), "delay_s": round(delay, 2)},
                )
                self.stats.reconnects += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            if outcome in ("renewed", "closed"):
                # Reconnect at once. Renewed (ConnectionTimeout reached, "Closed" announced): nothing was missed.
                # Ended without "Closed" (the server or the network cut it): catch up to be safe.
                self.stats.reconnects += 1
                self.stats.renewals += outcome == "renewed"
                gap = outcome == "closed"
            # else: closed on purpose to take in new members; those already streaming missed nothing

    async def _relocate(self, group: Group) -> None:
        """Subscriptions lost: a member may have moved to another mailbox server. Ask autodiscover again and move
        every member whose group changed (its subscription would never be found on this group's server)."""
        for mailbox in list(group.members):
            group.pool.forget(mailbox)
            try:
                key = await group.pool.grouping(mailbox)
            except Exception:  # the pool is closing
                return
            entry = self.scheduler.entries.get(mailbox)
            if key == group.key or entry is None or mailbox not in group.members:
                continue
            log.info(
                "mailbox moved to another streaming group",
                extra={"mailbox": mailbox, "from": group.label, "to": key.split("|", 1)[0] or "(none)"},
            )
            group.members.remove(mailbox)
            group.failed.pop(mailbox, None)
            if group.affinity is not None and group.affinity.anchor == mailbox:
                group.affinity = None
            self._place(entry, key)
            self.scheduler.trigger(mailbox, "catch-up")

    async def _idle(self, group: Group, seconds: float | None) -> None:
        """Wait until the group changes (or `seconds` pass, to retry failed subscriptions) or ews-ingest stops."""
        stop = self._stop
        assert stop is not None
        changed = asyncio.ensure_future(group.changed.wait())
        stopped = asyncio.ensure_future(stop.wait())
        waiting: set[asyncio.Future[Any]] = {changed, stopped}
        try:
            await asyncio.wait(waiting, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            stopped.cancel()

    def retry_failed(self, entry: MailboxEntry) -> None:
        """A mailbox whose subscription failed synced fine now: give its group another try."""
        for group in self.groups.get(id(entry.pool), []):
            if entry.mailbox in group.failed:
                group.changed.set()

    def _stale(self, mailbox: str, subscribed_at: float) -> bool:
        """Whether changes made before the subscription could be unseen: a sync began before it existed (a sync
        that starts afterwards, e.g. one still queued, sees them anyway)."""
        entry = self.scheduler.entries.get(mailbox)
        return entry is not None and 0.0 < entry.sync_started < subscribed_at

    def _catch_up(self, group: Group, mailboxes: list[str], why: str) -> None:
        for mailbox in list(mailboxes):
            if self.scheduler.trigger(mailbox, "catch-up"):
                self.stats.catch_ups += 1
        if mailboxes:
            log.info(
                "catching up after stream gap", extra={"group": group.label, "why": why, "mailboxes": len(mailboxes)}
            )

    async def _subscribe(self, group: Group) -> dict[str, float]:
        """Subscribe every member without a subscription; returns the newly subscribed, with when.

        A mailbox that cannot be subscribed (throttled, gone, no rights) is left out - polled instead - and tried
        again after it synced fine; it never keeps the rest of its group off the stream.
        """
        fresh: dict[str, float] = {}  # mailbox -> when its subscription existed (monotonic)
        for mailbox in list(group.members):
            if mailbox in group.subscriptions:
                continue
            if group.affinity is None or group.affinity.anchor not in group.subscriptions:
                group.affinity = Affinity(anchor=mailbox)  # the anchor must be a subscribed member
            affinity = group.affinity

            def subscribe(account: Any, affinity: Affinity = affinity) -> str:
                service = GroupSubscribe(account=account, affinity=affinity)
                (subscription,) = list(service.call(folders=[account.calendar], event_types=EVENT_TYPES))
                if isinstance(subscription, Exception):
                    raise subscription
                return str(subscription)

            try:
                subscription = await group.pool.call(mailbox, "Subscribe", subscribe)
            except Exception as exc:
                group.failed[mailbox] = describe(exc)
                self._set_streamed(mailbox, False)
                log.warning(
                    "streaming subscription failed: polling the mailbox",
                    extra={"mailbox": mailbox, "group": group.label, "error": describe(exc)},
                )
                continue
            if mailbox in group.members:
                group.subscriptions[mailbox] = subscription
                group.failed.pop(mailbox, None)
                self._set_streamed(mailbox, True)
                fresh[mailbox] = time.monotonic()
                self.stats.subscriptions += 1
        # the anchor left the group (seat revoked, another replica owns it now): a subscribed member anchors it
        if group.affinity is None or group.affinity.anchor not in group.subscriptions:
            subscribed = [m for m in group.members if m in group.subscriptions]
            group.affinity = Affinity(anchor=subscribed[0]) if subscribed else None
        return fresh

    def _set_streamed(self, mailbox: str, streamed: bool) -> None:
        entry = self.scheduler.entries.get(mailbox)
        if entry is not None:
            entry.streamed = streamed

    async def _stream(self, group: Group) -> str:
        """One GetStreamingEvents connection until it closes, fails, or the group changes. Returns why it ended:
        "renewed" (Exchange announced ConnectionStatus Closed: the ConnectionTimeout was reached), "closed" (the
        response ended without it) or "changed" (closed by us to take in new members)."""
        stop = self._stop
        assert stop is not None and group.affinity is not None
        if group.changed.is_set():  # members came (autodiscover answered) while subscribing: take them in first
            return "changed"
        loop = asyncio.get_running_loop()
        by_subscription = {sid: mailbox for mailbox, sid in group.subscriptions.items()}
        ids = list(by_subscription)
        affinity = group.affinity
        anchor = affinity.anchor
        ended = threading.Event()
        status: list[str | None] = [None]
        self.stats.connections += 1

        def notify(mailbox: str, noticed: float) -> None:
            self.stats.notifications += 1
            self.scheduler.trigger(mailbox, "notification", noticed_at=noticed)

        def run() -> None:
            account = group.pool.account(anchor)
            service = GroupStreamingEvents(account=account, affinity=affinity)
            group.service = service
            try:
                if ended.is_set():
                    return
                for notification in service.call(subscription_ids=ids, connection_timeout=self.minutes):
                    # Handed on even when the connection is being closed (the group changed): Exchange counts what
                    # it wrote as delivered, and a member that stays in the group would not hear of it again.
                    mailbox = by_subscription.get(notification.subscription_id)
                    events = [e for e in notification.events if type(e).__name__ != "StatusEvent"]
                    if mailbox is not None and events:
                        loop.call_soon_threadsafe(notify, mailbox, time.monotonic())
                    if ended.is_set():
                        break
                status[0] = service.connection_status
            finally:
                group.service = None

        future = group.pool.run_stream(run)
        changed = asyncio.ensure_future(group.changed.wait())
        stopped = asyncio.ensure_future(stop.wait())
        waiting: set[asyncio.Future[Any]] = {future, changed, stopped}
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            stopped.cancel()
        if future in done:
            future.result()  # raises what the stream raised
            return "renewed" if status[0] == GroupStreamingEvents.CLOSED else "closed"
        ended.set()
        # The thread may still be sending its request (no response to shut yet): close until it has ended.
        while not future.done():
            self._close_stream(group)
            await asyncio.wait({future}, timeout=0.1)
        with contextlib.suppress(Exception):
            future.result()
        return "changed"

    def _close_stream(self, group: Group) -> None:
        """Abort a running GetStreamingEvents from outside its thread (shutdown, membership change).

        Closing the response object does not wake a thread blocked reading the socket; shutting the socket down
        does (the read returns at once and exchangelib's generator ends with an error we ignore).
        """
        service = group.service
        response = getattr(service, "_streaming_response", None) if service is not None else None
        if response is None:
            return
        raw = getattr(response, "raw", None)
        candidates = [getattr(getattr(raw, "_connection", None), "sock", None)]
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        candidates.append(getattr(getattr(fp, "raw", None), "_sock", None))
        for sock in candidates:
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                break
        with contextlib.suppress(Exception):
            response.close()


def streaming_counts(manager: StreamManager) -> dict[str, int]:
    return {
        "groups": sum(len(g) for g in manager.groups.values()),
        "streamed": sum(len(x.members) for g in manager.groups.values() for x in g),
    }


__all__ = ["StreamManager", "streaming_counts"]

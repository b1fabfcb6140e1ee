"""ews-ingest assembled: credential pools, scheduler, streaming, seats, replica ownership, control subjects, readiness.

`__main__` builds one IngestRuntime inside a tccal ServiceApp; tests build it directly around a Bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from typing import Any

import aiohttp
from exchangelib.errors import (
    AutoDiscoverFailed,
    ErrorAccessDenied,
    ErrorImpersonateUserDenied,
    ErrorNonExistentMailbox,
)
from exchangelib.protocol import BaseProtocol
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ews_ingest.bus import ChangePublisher, ControlError, parse_control
from ews_ingest.conference_marker import MarkerParser, register_marker_property
from ews_ingest.exchange.errors import describe
from ews_ingest.exchange.pool import CredentialPool, any_recent_success
from ews_ingest.held import HeldRequests
from ews_ingest.ownership import Ownership, replica_id
from ews_ingest.scheduler import Scheduler, UnknownMailboxError
from ews_ingest.seats import SeatKeeper
from ews_ingest.settings import IngestSettings, ProviderSettings
from ews_ingest.state import StateStore
from ews_ingest.streaming import StreamManager
from ews_ingest.writeback import JoinLinkWriter
from tccal.bus import Bus
from tccal.subjects import ONDEMAND_SUBJECTS, RESYNC_SUBJECTS, SEATS_SUBJECT

log = logging.getLogger(__name__)
#: exchangelib's User-Agent; each replica adds its name (Exchange's logs, and the emulator, tell replicas apart).
EXCHANGELIB_AGENT = BaseProtocol.USERAGENT
NOT_HERE = (ErrorNonExistentMailbox, ErrorImpersonateUserDenied, ErrorAccessDenied, AutoDiscoverFailed)


class IngestRuntime:
    def __init__(self, settings: IngestSettings, bus: Bus) -> None:
        register_marker_property()
        self.settings = settings
        self.bus = bus
        tuning = settings.tuning
        self.pools: dict[str, list[CredentialPool]] = {
            p.name: [CredentialPool(p, c, tuning, index=i) for i, c in enumerate(p.credentials)]
            for p in settings.providers
        }
        self.store = StateStore(bus)
        self.publisher = ChangePublisher(bus)
        self.marker = MarkerParser(settings.tcs_hosts, settings.conference_defaults)
        self.scheduler = Scheduler(settings, self.pools, self.store, self.publisher, self.marker)
        self.streams = StreamManager(self.scheduler, group_size=tuning.stream_group_size, minutes=tuning.stream_minutes)
        self.seats = SeatKeeper(
            self.scheduler,
            self.store,
            settings.licensing_address,
            caller=settings.licensing_caller,
            providers=len(settings.providers),
            refresh_seconds=tuning.seat_refresh_seconds,
        )
        replica = replica_id()
        BaseProtocol.USERAGENT = f"{EXCHANGELIB_AGENT} tc-calendar-ews-ingest/{replica}"
        self.ownership = Ownership(
            bus,
            self.store,
            tuning,
            replica=replica,
            mailboxes=lambda: list(self.scheduler.entries),
            gained=self._gained,
            lost=self._lost,
            settle=self._settle,
            after_round=self._answer_held,
        )
        self.scheduler.owns = self.ownership.owns
        # a lease and two renewal rounds: the longest a shard waits for its next owner after its owner was killed
        self.held = HeldRequests(self._answers, tuning.lease_seconds + 2 * tuning.lease_renew_seconds)
        self.writer: JoinLinkWriter | None = None
        if settings.write_back_join_link:
            self.writer = JoinLinkWriter(self.scheduler, bus)
            self.scheduler.observers.append(self.writer.observe)
        for provider in settings.providers:
            for user in provider.users:
                known = self.scheduler.entries.get(user)
                if known is not None and known.provider != provider.name:
                    log.warning(
                        "mailbox listed by two providers: the first one serves it",
                        extra={"mailbox": user, "provider": known.provider, "ignored": provider.name},
                    )
                    continue
                self.scheduler.add(user, provider.name, configured=True)
        self._subscriptions: list[Subscription] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._probe: tuple[float, str | None] | None = None
        self.started = asyncio.Event()

    # ------------------------------------------------------------------ life
    async def run(self, stop: asyncio.Event) -> None:
        if not await self._connect(stop):
            await self.close()
            return
        for mailbox, provider in (await self.remembered_on_demand()).items():
            if provider in self.pools and mailbox not in self.scheduler.entries:
                self.scheduler.add(mailbox, provider, configured=False)
        ownership = asyncio.create_task(self.ownership.run(stop), name="ews-ownership")
        # Control requests are answered by the owner of the mailbox's shard only (_answers): subscribed once the
        # first lease round is done, so a request at start-up finds no responder and is sent again (tcs-gateway
        # does so with back-off) instead of being received, ignored for want of a lease, and lost.
        await _first_of(self.ownership.ready, stop)
        nc = self.bus.nc
        self._subscriptions = [
            await nc.subscribe(RESYNC_SUBJECTS, cb=self._on_resync),
            await nc.subscribe(ONDEMAND_SUBJECTS, cb=self._on_demand_message),
            await nc.subscribe(SEATS_SUBJECT, cb=self._on_seats),
        ]
        await nc.flush(timeout=5)
        if not self.settings.providers:
            log.warning("no calendarProviders configured: ews-ingest has nothing to sync")
        tasks = [
            ownership,
            asyncio.create_task(self.scheduler.run(stop), name="ews-scheduler"),
            asyncio.create_task(self.streams.run(stop), name="ews-streams"),
            asyncio.create_task(self.seats.run(stop), name="ews-seats"),
        ]
        if self.writer is not None:
            tasks.append(asyncio.create_task(self._guarded(self.writer.run, stop), name="ews-writeback"))
        self.started.set()
        try:
            await stop.wait()
        finally:
            for subscription in self._subscriptions:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("ews-ingest task ended with an error", extra={"error": describe(result)})
            for task in list(self._background):
                task.cancel()
            with contextlib.suppress(Exception):
                await self.ownership.release_all()
            await self.close()

    async def _connect(self, stop: asyncio.Event) -> bool:
        if self.bus.connected:
            return True
        connecting = asyncio.ensure_future(self.bus.connect())
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if connecting not in done:
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            return False
        connecting.result()
        return True

    async def _guarded(self, run: Any, stop: asyncio.Event) -> None:
        """Keep a consumer running: a crash is logged and it starts again after a pause."""
        while not stop.is_set():
            try:
                await run(stop)
            except Exception as exc:
                log.error("background consumer failed; restarting", extra={"error": describe(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for group in self.pools.values() for p in group), return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ ownership
    def _gained(self, mailboxes: list[str]) -> None:
        """Shards came to this replica: stream and catch up their mailboxes (from their checkpoints), and learn the
        on-demand mailboxes another replica added meanwhile."""
        for mailbox in mailboxes:
            entry = self.scheduler.entries.get(mailbox)
            if entry is not None:
                self.scheduler.activate(entry, "catch-up")
        self._spawn(self._learn_on_demand())
        self._answer_held()

    def _lost(self, mailboxes: list[str]) -> None:
        for mailbox in mailboxes:
            entry = self.scheduler.entries.get(mailbox)
            if entry is not None:
                self.scheduler.deactivate(entry)

    async def _settle(self, mailboxes: list[str]) -> None:
        """Wait for the syncs still running on these mailboxes (none starts any more) before a hand-over."""
        for mailbox in mailboxes:
            entry = self.scheduler.entries.get(mailbox)
            if entry is not None and entry.lock.locked():
                async with entry.lock:
                    pass

    async def _learn_on_demand(self) -> None:
        added = False
        with contextlib.suppress(Exception):
            for mailbox, provider in (await self.remembered_on_demand()).items():
                if provider in self.pools and mailbox not in self.scheduler.entries:
                    self.scheduler.add(mailbox, provider, configured=False)
                    added = True
        if added:
            self.seats.poke()

    async def remembered_on_demand(self) -> dict[str, str]:
        """The on-demand mailboxes remembered in KV (mailbox -> provider), without those the config now gives to a
        Graph provider (listed in its `users` or in its `domains`): graph-ingest serves them, so their records are
        deleted and the drop logged."""
        remembered = await self.store.load_on_demand()
        for mailbox in [m for m in remembered if self.settings.graph_serves(m)]:
            provider = remembered.pop(mailbox)
            await self.store.forget_on_demand(mailbox)
            log.warning(
                "on-demand mailbox dropped: the config gives it to a Graph provider, graph-ingest syncs it",
                extra={
                    "mailbox": mailbox,
                    "provider": provider,
                    "graph_provider": self.settings.routing.graph_provider(mailbox),
                },
            )
        return remembered

    def _answers(self, mailbox: str) -> bool:
        """Whether this replica answers a control request about `mailbox` now: only its owner does (one answer)."""
        return self.ownership.owns(mailbox.strip().lower())

    def _leaves_to_graph(self, mailbox: str) -> bool:
        """A mailbox the config gives to a Graph provider (listed in its `users` or in its `domains`): graph-ingest
        answers its control requests, never ews-ingest."""
        return self.settings.graph_serves(mailbox.strip().lower())

    def _answer_or_hold(self, kind: str, mailbox: str, answer: Any) -> None:
        """Answer now as the mailbox's owner; else hold the request until this replica owns the mailbox or the hold
        ends (held.py: received while the owner's renewal ran late, or while a killed owner's lease lived on, it
        would otherwise be answered by nobody)."""
        if self._answers(mailbox):
            self._spawn(answer())
        else:
            self.held.hold(kind, mailbox, answer)

    def _answer_held(self) -> None:
        for request in self.held.due():
            self._spawn(request.answer())

    # ------------------------------------------------------------------ control subjects
    async def _on_resync(self, msg: Msg) -> None:
        try:
            request = parse_control(msg.subject, msg.data)
        except ControlError as exc:
            log.warning("resync request ignored", extra={"subject": msg.subject, "error": str(exc)})
            await self._reply(msg, "", False, str(exc))
            return
        if self._leaves_to_graph(request.mailbox):
            return
        self._answer_or_hold("resync", request.mailbox, lambda: self._resync(msg, request.mailbox, request.since))

    async def _resync(self, msg: Msg, mailbox: str, since: Any) -> None:
        try:
            published = await self.scheduler.resync(mailbox, since)
        except UnknownMailboxError:
            await self._reply(msg, mailbox, False, f"{mailbox} is not synced by ews-ingest")
            log.warning("resync of an unknown mailbox ignored", extra={"mailbox": mailbox})
            return
        except Exception as exc:
            await self._reply(msg, mailbox, False, describe(exc))
            log.warning("resync failed", extra={"mailbox": mailbox, "error": describe(exc)})
            return
        await self._reply(msg, mailbox, True, f"published {published}")

    async def _on_demand_message(self, msg: Msg) -> None:
        try:
            request = parse_control(msg.subject, msg.data)
        except ControlError as exc:
            log.warning("on-demand request ignored", extra={"subject": msg.subject, "error": str(exc)})
            await self._reply(msg, "", False, str(exc))
            return
        if self._leaves_to_graph(request.mailbox):
            return

        async def handle() -> None:
            accepted, detail = await self.on_demand(request.mailbox, request.provider)
            await self._reply(msg, request.mailbox, accepted, detail)

        self._answer_or_hold("ondemand", request.mailbox, handle)

    async def _on_seats(self, msg: Msg) -> None:
        self.seats.poke()

    async def _reply(self, msg: Msg, mailbox: str, accepted: bool, detail: str) -> None:
        if not msg.reply:
            return
        with contextlib.suppress(Exception):
            payload = json.dumps({"mailbox": mailbox, "accepted": accepted, "detail": detail}).encode()
            await self.bus.nc.publish(msg.reply, payload)

    # ------------------------------------------------------------------ on demand
    def _provider_order(self, mailbox: str, hint: str | None) -> list[ProviderSettings]:
        providers = list(self.settings.providers)
        if hint:
            wanted = hint.strip().lower()
            chosen = [p for p in providers if wanted in (p.name, p.host.lower())]
            if chosen:
                return chosen
        domain = mailbox.rpartition("@")[2]
        same = [p for p in providers if any(u.rpartition("@")[2] == domain for u in p.users)]
        return same + [p for p in providers if p not in same]

    async def on_demand(self, mailbox: str, provider: str | None = None) -> tuple[bool, str]:
        """Sync a mailbox TrueConf asked for, if a provider has it and licensing grants a seat."""
        mailbox = mailbox.strip().lower()
        entry = self.scheduler.entries.get(mailbox)
        if entry is None:
            problems: list[str] = []
            for candidate in self._provider_order(mailbox, provider):
                pool = min(self.pools[candidate.name], key=lambda p: p.stats.calls)
                try:
                    await pool.call(mailbox, "GetFolder", lambda account: account.calendar.id)
                except NOT_HERE as exc:
                    pool.forget(mailbox)
                    problems.append(f"{candidate.name}: {describe(exc)}")
                    continue
                except Exception as exc:
                    log.warning("on-demand mailbox not reachable", extra={"mailbox": mailbox, "error": describe(exc)})
                    return False, f"{candidate.name}: {describe(exc)}"
                entry = self.scheduler.add(mailbox, candidate.name, configured=False)
                await self.store.save_on_demand(mailbox, candidate.name)
                log.info("on-demand mailbox added", extra={"mailbox": mailbox, "provider": candidate.name})
                break
            if entry is None:
                detail = "; ".join(problems) or "no calendar provider configured"
                log.warning("on-demand mailbox not found", extra={"mailbox": mailbox, "detail": detail})
                return False, f"no provider serves {mailbox}: {detail}"
        if entry.seat:
            self.scheduler.trigger(mailbox, "on-demand")
            return True, "syncing"
        await self.seats.refresh()
        if entry.seat:
            return True, "seat granted"
        return False, entry.last_error or "licensing granted no seat"

    # ------------------------------------------------------------------ readiness
    async def exchange_ready(self) -> None:
        """Ready when at least one provider answers (a recent successful EWS call, or an HTTP probe)."""
        if not self.settings.providers:
            return
        every = [p for group in self.pools.values() for p in group]
        if any_recent_success(every, within=60.0):
            return
        now = time.monotonic()
        if self._probe is not None and now - self._probe[0] < self.settings.tuning.probe_cache_seconds:
            problem = self._probe[1]
        else:
            problem = await self._probe_providers()
            self._probe = (time.monotonic(), problem)
        if problem is not None:
            raise ConnectionError(problem)

    async def _probe_providers(self) -> str | None:
        async def probe(provider: ProviderSettings) -> str | None:
            url = provider.autodiscover_url or provider.ews_url
            context: ssl.SSLContext | bool = bool(provider.verify_tls)
            try:
                timeout = aiohttp.ClientTimeout(total=1.5)
                async with (
                    aiohttp.ClientSession(timeout=timeout) as session,
                    session.get(url, ssl=context, allow_redirects=False) as response,
                ):
                    if response.status >= 500:
                        return f"{provider.name}: HTTP {response.status}"
                    return None
            except Exception as exc:
                return f"{provider.name}: {type(exc).__name__}: {exc}"

        results = await asyncio.gather(*(probe(p) for p in self.settings.providers))
        if any(r is None for r in results):
            return None
        return "no calendar provider reachable: " + "; ".join(r for r in results if r)


async def _first_of(*events: asyncio.Event) -> None:
    """Wait until one of `events` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()

"""graph-ingest assembled: one Graph client per provider entry, seats, and a delta-polling loop per mailbox.

Every seated mailbox asks calendarView/delta for changes every `poll_seconds` (Tuning). A provider with a
notificationUrl also keeps change-notification subscriptions (subscriptions.py) and a receiver (notifications.py): a
notification starts the mailbox's round at once and polling slows to `notified_poll_seconds`. `__main__` builds one
GraphRuntime inside a tccal ServiceApp; tests build it directly around a Bus.

Control subjects (as ews-ingest serves them, tccal.subjects): graph-ingest subscribes to
`calendar.v1.control.resync.<mailbox>` and `calendar.v1.control.ondemand.<mailbox>` of its own configured mailboxes
only (exact subjects, no wildcard), so a request about a mailbox of ews-ingest never reaches it, and ews-ingest stays
silent for the Graph mailboxes (ews_ingest.runtime._answers): one answer per request. A resync is the whole-mailbox
re-read of a 410 (delta.py), run by the mailbox's own loop (never two rounds at once); calendarView/delta has no
"modified since" filter, so `since` is read and the re-read is whole (a superset of what changed since). An
on-demand request checks the seat (asking licensing again when the mailbox holds none) and starts a round at once.
A request with a reply subject gets ews-ingest's answer `{"mailbox", "accepted", "detail"}`.

On-demand mailboxes (as ews-ingest finds EWS ones): when a provider has `domains`, graph-ingest hears
`calendar.v1.control.ondemand.*` (instead of the exact on-demand subjects) and also answers a request about an
address no entry lists whose domain a Graph entry of this config claims (tccal.config.schema.MailboxRouting;
ews-ingest stays silent for those). It asks Graph whether the tenant has that mailbox
(`GET /users/{address}/events?$select=id&$top=1`: 404 `ErrorInvalidUser` or `MailboxNotEnabledForRESTAPI` = not in
this tenant), remembers it in KV (`v1.ondemand.<mailbox>`), asks licensing for its seat (as not configured) and
syncs it like a listed one; its resync subject is subscribed from then on. A restart loads the remembered ones
again, unless the config no longer gives them to the same provider (then the record is deleted and the drop logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from graph_ingest import metrics
from graph_ingest.delta import MailboxDelta, RoundResult
from graph_ingest.graph import GraphClient, GraphError
from graph_ingest.notifications import NotificationReceiver
from graph_ingest.seats import SeatKeeper
from graph_ingest.settings import GraphProviderSettings, GraphSettings
from graph_ingest.state import Checkpoint, StateStore
from graph_ingest.subscriptions import SubscriptionKeeper
from graph_ingest.token import GraphAuthError
from graph_ingest.writeback import GraphJoinLinkWriter
from tccal.bus import Bus
from tccal.cache_window import cache_window
from tccal.clock import Clock, SystemClock
from tccal.conference_marker import MarkerParser
from tccal.ingest.control import ControlError, parse_control
from tccal.retry import backoff_delay
from tccal.subjects import ONDEMAND_SUBJECTS, ondemand_subject, resync_subject

log = logging.getLogger(__name__)


@dataclass
class MailboxStatus:
    mailbox: str
    provider: str
    rounds: int = 0
    #: A round is under way or asked for (a trigger not yet taken up).
    busy: bool = False
    failures: int = 0
    last_error: str = ""
    checkpoint: Checkpoint | None = None
    totals: RoundResult = field(default_factory=RoundResult)
    #: Resync requests waiting for the mailbox's next round, which is then a whole re-read: each gets its result.
    resync_waiters: list[asyncio.Future[RoundResult]] = field(default_factory=list)


class GraphRuntime:
    def __init__(self, settings: GraphSettings, bus: Bus, clock: Clock | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.clock = clock or SystemClock()
        self.store = StateStore(bus)
        self.marker = MarkerParser(settings.tcs_hosts, settings.conference_defaults)
        self.clients = {p.name: GraphClient(p, settings.tuning) for p in settings.providers}
        self.mailboxes: dict[str, MailboxStatus] = {}
        #: The mailboxes of each provider (the subscription keepers hold these lists; on-demand ones are appended).
        self._by_provider: dict[str, list[str]] = {p.name: [] for p in settings.providers}
        for provider in settings.providers:
            for user in provider.users:
                known = self.mailboxes.get(user)
                if known is not None:
                    log.warning(
                        "mailbox listed by two Graph providers: the first one serves it",
                        extra={"mailbox": user, "provider": known.provider, "ignored": provider.name},
                    )
                    continue
                self.mailboxes[user] = MailboxStatus(user, provider.name)
                self._by_provider[provider.name].append(user)
        self.seats = SeatKeeper(
            list(self.mailboxes),
            self.store,
            settings.licensing_address,
            providers=settings.total_providers,
            refresh_seconds=settings.tuning.seat_refresh_seconds,
            caller=settings.licensing_caller,
        )
        self.writer: GraphJoinLinkWriter | None = None
        #: mailbox -> provider of every synced mailbox (the writer reads it; on-demand ones are added).
        self._providers = {m: status.provider for m, status in self.mailboxes.items()}
        if settings.write_back_join_link:
            self.writer = GraphJoinLinkWriter(bus, self.clients, self._providers, lambda m: m in self.seats.granted)
        self.started = asyncio.Event()
        self._subscriptions: list[Subscription] = []
        self._background: set[asyncio.Task[Any]] = set()
        #: Control subject -> the configured mailbox it is about (only those are subscribed to).
        self._control_subjects: dict[str, str] = {}
        self._wake: dict[str, asyncio.Event] = {m: asyncio.Event() for m in self.mailboxes}
        #: Loops of mailboxes added on demand while running (stopped with the others).
        self._loops: list[asyncio.Task[None]] = []
        self._stop: asyncio.Event | None = None
        #: One discovery at a time per address (TrueConf may ask twice at once).
        self._discovering: dict[str, asyncio.Lock] = {}
        #: Change notifications, per provider (also for one without notificationUrl: it deletes what is left).
        self.keepers = {
            p.name: SubscriptionKeeper(
                p,
                self.clients[p.name],
                self.store,
                settings.tuning,
                self.seats,
                self._by_provider[p.name],
                self.trigger,
            )
            for p in settings.providers
        }
        self.receivers = [
            NotificationReceiver(
                self.keepers[p.name], p.notification_listen, settings.tuning.notification_max_body_bytes
            )
            for p in settings.providers
            if p.notification_url is not None and p.notification_listen is not None
        ]

    def subscriptions_active(self) -> dict[str, int]:
        """Subscriptions kept now, per provider (graph_ingest_subscriptions_active)."""
        return {name: len(keeper.records) for name, keeper in self.keepers.items()}

    def provider(self, name: str) -> GraphProviderSettings:
        return self.clients[name].provider

    # ------------------------------------------------------------------ life
    async def run(self, stop: asyncio.Event) -> None:
        if not self.bus.connected:
            await self.bus.connect()
        if not self.settings.providers:
            log.warning('no calendarProviders entry has "type": "graph": graph-ingest has nothing to sync')
        self._stop = stop
        for mailbox, provider in (await self.remembered_on_demand()).items():
            self._add(mailbox, provider)
        for receiver in self.receivers:
            await receiver.start()
        tasks = [asyncio.create_task(self.seats.run(stop, self.bus), name="graph-seats")]
        tasks += [asyncio.create_task(k.run(stop), name=f"graph-subscriptions-{n}") for n, k in self.keepers.items()]
        if self.writer is not None:
            tasks.append(asyncio.create_task(self.writer.keep_running(stop), name="graph-writeback"))
        tasks += [
            asyncio.create_task(self._mailbox_loop(status, stop), name=f"graph-{status.mailbox}")
            for status in self.mailboxes.values()
        ]
        await self._subscribe_control()
        self.started.set()
        try:
            await stop.wait()
        finally:
            for subscription in self._subscriptions:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
            for background in list(self._background):
                background.cancel()
            results = await asyncio.gather(*tasks, *self._loops, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("graph-ingest task ended with an error", extra={"error": repr(result)})
            await asyncio.gather(*(r.stop() for r in self.receivers), return_exceptions=True)
            await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)

    def poll_seconds(self, status: MailboxStatus) -> float:
        """The polling interval: longer when change notifications start rounds as changes happen."""
        notified = self.provider(status.provider).notification_url is not None
        return self.settings.tuning.notified_poll_seconds if notified else self.settings.tuning.poll_seconds

    def trigger(self, mailbox: str) -> None:
        """Ask the mailbox for changes now instead of at its next poll."""
        self._wake[mailbox].set()
        self.mailboxes[mailbox].busy = True

    async def _mailbox_loop(self, status: MailboxStatus, stop: asyncio.Event) -> None:
        tuning = self.settings.tuning
        while not stop.is_set():
            seats_changed = self.seats.changed
            if status.mailbox not in self.seats.granted:
                waiting, status.resync_waiters = status.resync_waiters, []
                _fail(waiting, ConnectionRefusedError(f"{status.mailbox} holds no seat: not synced"))
                await _first(stop, seats_changed, timeout=tuning.poll_seconds)
                continue
            pause = self.poll_seconds(status)
            status.busy = True
            outcome = {"provider": status.provider, "outcome": "ok"}
            waiters, status.resync_waiters = status.resync_waiters, []
            try:
                result = await self.sync_once(status, stop, resync=bool(waiters))
                status.failures, status.last_error = 0, ""
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(result)
            except GraphAuthError as exc:
                _fail(waiters, exc)
                outcome["outcome"] = "auth_error"
                status.failures += 1
                status.last_error = str(exc)
                log.error(
                    "Graph refused the provider's credentials", extra={"mailbox": status.mailbox, "error": str(exc)}
                )
                pause = tuning.error_backoff_cap_seconds
            except Exception as exc:
                _fail(waiters, exc)
                outcome["outcome"] = "error"
                status.failures += 1
                status.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("mailbox delta round failed", extra={"mailbox": status.mailbox, "error": status.last_error})
                pause = min(
                    pause,
                    backoff_delay(
                        status.failures, base=tuning.error_backoff_base_seconds, cap=tuning.error_backoff_cap_seconds
                    ),
                )
            metrics.delta_rounds.add(1, outcome)
            wake = self._wake[status.mailbox]
            status.busy = wake.is_set()
            await _first(stop, wake, timeout=pause)
            wake.clear()

    async def sync_once(
        self, status: MailboxStatus, stop: asyncio.Event | None = None, *, resync: bool = False
    ) -> RoundResult:
        """One delta round of the mailbox (its checkpoint loaded from KV the first time); `resync`: a whole
        re-read inside a MAILBOX_RESYNC frame instead."""
        if status.checkpoint is None:
            status.checkpoint = await self.store.load_checkpoint(status.provider, status.mailbox)
        settings = self.settings
        window = cache_window(self.clock.now(), settings.backward_months, settings.forward_months)
        delta = MailboxDelta(
            provider=status.provider,
            mailbox=status.mailbox,
            client=self.clients[status.provider],
            store=self.store,
            bus=self.bus,
            marker=self.marker,
            checkpoint=status.checkpoint,
            window=window,
            page_size=settings.tuning.page_size,
            auto_sync=settings.auto_sync,
            stop=stop,
            observer=self.writer.observe if self.writer is not None else None,
        )
        try:
            result = await (delta.resync() if resync else delta.run())
        finally:
            status.rounds += 1
            _add(status.totals, delta.result)
        log.info(
            "mailbox delta round done",
            extra={
                "mailbox": status.mailbox,
                "published": delta.result.published,
                "deleted": delta.result.deleted,
                "pages": delta.result.pages,
            },
        )
        return result

    # ------------------------------------------------------------------ control subjects
    async def _subscribe_control(self) -> None:
        """Exact subjects of the configured mailboxes: those of ews-ingest's mailboxes never reach here. With
        `domains`, every on-demand subject too (answered only for addresses the config gives to this service)."""
        nc = self.bus.nc
        for mailbox in list(self.mailboxes):
            await self._subscribe_mailbox(mailbox)
        if self._hears_every_demand:
            self._subscriptions.append(await nc.subscribe(ONDEMAND_SUBJECTS, cb=self._on_any_demand))
        await nc.flush(timeout=5)

    @property
    def _hears_every_demand(self) -> bool:
        """A provider claims domains: every on-demand subject is heard on the wildcard (one subscription, so a
        request about a synced mailbox is delivered once and answered once)."""
        return any(p.domains for p in self.settings.providers)

    async def _subscribe_mailbox(self, mailbox: str) -> None:
        nc = self.bus.nc
        self._control_subjects[resync_subject(mailbox)] = mailbox
        self._control_subjects[ondemand_subject(mailbox)] = mailbox
        self._subscriptions.append(await nc.subscribe(resync_subject(mailbox), cb=self._on_resync))
        if not self._hears_every_demand:
            self._subscriptions.append(await nc.subscribe(ondemand_subject(mailbox), cb=self._on_demand_message))

    async def _on_resync(self, msg: Msg) -> None:
        self._answer_in_background(msg, "resync", self.resync)

    async def _on_demand_message(self, msg: Msg) -> None:
        self._answer_in_background(msg, "on-demand", self.on_demand)

    def _answer_in_background(self, msg: Msg, what: str, handler: Any) -> None:
        mailbox = self._control_subjects[msg.subject]
        try:
            request = parse_control(msg.subject, msg.data)
        except ControlError as exc:
            log.warning(f"{what} request ignored", extra={"subject": msg.subject, "error": str(exc)})
            self._spawn(self._reply(msg, mailbox, False, str(exc)))
            return
        log.info(f"{what} request", extra={"mailbox": mailbox, "since": str(request.since or "")})

        async def answer() -> None:
            accepted, detail = await handler(mailbox)
            await self._reply(msg, mailbox, accepted, detail)

        self._spawn(answer())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reply(self, msg: Msg, mailbox: str, accepted: bool, detail: str) -> None:
        if not msg.reply:
            return
        with contextlib.suppress(Exception):
            payload = json.dumps({"mailbox": mailbox, "accepted": accepted, "detail": detail}).encode()
            await self.bus.nc.publish(msg.reply, payload)

    async def resync(self, mailbox: str) -> tuple[bool, str]:
        """Read a seated mailbox again whole (its next round, started now); the answer once it is done."""
        status = self.mailboxes[mailbox]
        if mailbox not in self.seats.granted:
            return False, f"{mailbox} holds no seat: {self.seats.refused.get(mailbox) or 'not synced'}"
        done: asyncio.Future[RoundResult] = asyncio.get_running_loop().create_future()
        status.resync_waiters.append(done)
        self.trigger(mailbox)
        try:
            result = await done
        except Exception as exc:
            log.warning("resync failed", extra={"mailbox": mailbox, "error": f"{type(exc).__name__}: {exc}"})
            return False, f"{type(exc).__name__}: {exc}"
        log.info("mailbox resynced", extra={"mailbox": mailbox, "published": result.published})
        return True, f"published {result.published}"

    # ------------------------------------------------------------------ on-demand mailboxes
    async def remembered_on_demand(self) -> dict[str, str]:
        """The on-demand mailboxes remembered in KV that the config still gives to the same Graph provider of this
        service; the records of the others are deleted (logged), those now listed in `users` kept quietly."""
        kept: dict[str, str] = {}
        for mailbox, provider in (await self.store.load_on_demand()).items():
            if mailbox in self.mailboxes:
                await self.store.forget_on_demand(mailbox)  # listed in `users` now: a configured mailbox
                continue
            serving = self.settings.routing.graph_provider(mailbox)
            if serving == provider and provider in self.clients:
                kept[mailbox] = provider
                continue
            await self.store.forget_on_demand(mailbox)
            log.warning(
                "on-demand mailbox dropped: the config no longer gives it to this Graph provider",
                extra={"mailbox": mailbox, "provider": provider, "now": serving or "ews"},
            )
        return kept

    def _add(self, mailbox: str, provider: str) -> MailboxStatus:
        """A mailbox no entry lists, from now on synced like a listed one (seat asked for as not configured)."""
        status = self.mailboxes[mailbox] = MailboxStatus(mailbox, provider)
        self._wake[mailbox] = asyncio.Event()
        self._by_provider[provider].append(mailbox)
        self._providers[mailbox] = provider
        self.seats.on_demand.append(mailbox)
        return status

    async def _on_any_demand(self, msg: Msg) -> None:
        """An on-demand request on the wildcard: answered for a mailbox synced here, and for an unlisted address a
        Graph entry of this service claims by its domain; ews-ingest answers the rest."""
        if msg.subject in self._control_subjects:
            await self._on_demand_message(msg)
            return
        try:
            request = parse_control(msg.subject, msg.data)
        except ControlError:
            return  # ews-ingest answers a malformed request
        mailbox = request.mailbox
        provider = self.settings.routing.graph_provider(mailbox)
        if mailbox in self.mailboxes or provider is None or provider not in self.clients:
            return
        log.info("on-demand request for an unlisted mailbox", extra={"mailbox": mailbox, "provider": provider})

        async def answer() -> None:
            accepted, detail = await self.discover(mailbox, provider)
            await self._reply(msg, mailbox, accepted, detail)

        self._spawn(answer())

    async def discover(self, mailbox: str, provider: str) -> tuple[bool, str]:
        """TrueConf asked for an unlisted address of a claimed domain: if the tenant has the mailbox, sync it."""
        lock = self._discovering.setdefault(mailbox, asyncio.Lock())
        async with lock:
            if mailbox not in self.mailboxes:
                client = self.clients[provider]
                probe = client.url(f"/users/{quote(mailbox)}/events?$select=id&$top=1")
                try:
                    await client.get(mailbox, probe)
                except GraphError as exc:
                    found = "not in the tenant" if exc.status == 404 else "not reachable"
                    log.warning(f"on-demand mailbox {found}", extra={"mailbox": mailbox, "error": str(exc)})
                    return False, f"{provider}: {mailbox} is {found}: {exc}"
                except Exception as exc:
                    log.warning("on-demand mailbox not reachable", extra={"mailbox": mailbox, "error": repr(exc)})
                    return False, f"{provider}: {type(exc).__name__}: {exc}"
                await self.store.save_on_demand(mailbox, provider)
                status = self._add(mailbox, provider)
                await self._subscribe_mailbox(mailbox)
                if self._stop is not None:
                    loop = asyncio.create_task(self._mailbox_loop(status, self._stop), name=f"graph-{mailbox}")
                    self._loops.append(loop)
                log.info("on-demand mailbox added", extra={"mailbox": mailbox, "provider": provider})
        return await self.on_demand(mailbox)

    async def on_demand(self, mailbox: str) -> tuple[bool, str]:
        """TrueConf asked for the mailbox: sync it now if it holds a seat (licensing asked again if not)."""
        if mailbox in self.seats.granted:
            self.trigger(mailbox)
            return True, "syncing"
        await self.seats.refresh()
        if mailbox in self.seats.granted:
            return True, "seat granted"
        return False, self.seats.refused.get(mailbox) or "licensing granted no seat"

    # ------------------------------------------------------------------ readiness
    async def graph_ready(self) -> None:
        """Ready when at least one provider gets an app-only token (or none is configured)."""
        if not self.clients:
            return
        problems: list[str] = []
        for client in self.clients.values():
            try:
                await client.tokens.token()
                return
            except Exception as exc:
                problems.append(str(exc))
        raise ConnectionError("no Graph provider gives a token: " + "; ".join(problems))


def _fail(waiters: list[asyncio.Future[RoundResult]], error: BaseException) -> None:
    """Fail the resync requests waiting on the mailbox (its round failed, or it holds no seat)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(error)


def _add(total: RoundResult, one: RoundResult) -> None:
    total.published += one.published
    total.duplicates += one.duplicates
    total.deleted += one.deleted
    total.skipped += one.skipped
    total.pages += one.pages
    total.snapshots += one.snapshots
    total.token_resets += one.token_resets


async def _first(stop: asyncio.Event, other: asyncio.Event, *, timeout: float) -> None:
    """Wait until `stop` or `other` is set, or `timeout` seconds passed."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(other.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter

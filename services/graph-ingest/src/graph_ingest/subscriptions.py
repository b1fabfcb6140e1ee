"""Change-notification subscriptions of one Graph provider: one per seated mailbox on `/users/{id}/events`.

A notification only says "this mailbox changed": it starts a delta round of the mailbox at once (delta stays the
source of the data); polling goes on at the longer `notified_poll_seconds` as a safety net.

* Create: POST /subscriptions {changeType "created,updated,deleted", notificationUrl, lifecycleNotificationUrl (the
  same URL; the receiver tells them apart by `lifecycleEvent`), resource `/users/{mailbox}/events`,
  expirationDateTime, clientState} - https://learn.microsoft.com/en-us/graph/api/subscription-post-subscriptions.
  Graph validates the URL first (the receiver answers the validationToken). A delta round follows each creation:
  changes made before the subscription existed reach no notification.
* clientState: 32 random bytes per subscription (secrets.token_urlsafe), kept in KV, compared in constant time,
  never logged.
* Renew: PATCH /subscriptions/{id} {expirationDateTime} `subscription_renew_margin_seconds` before it expires
  (Outlook events: at most 10,080 minutes, https://learn.microsoft.com/en-us/graph/api/resources/subscription
  #subscription-lifetime); 404 (expired or removed) → created again.
* Lifecycle (https://learn.microsoft.com/en-us/graph/change-notifications-lifecycle-events):
  `reauthorizationRequired` → POST /subscriptions/{id}/reauthorize (404 → created again), `subscriptionRemoved` →
  created again and a delta round, `missed` → a delta round now.
* A mailbox that loses its seat (licensing refuses it, or its lease ends unanswered) has its subscription deleted
  (DELETE /subscriptions/{id}); one whose seat is not known yet (a restart before its first seat answer) keeps it.
  A provider whose notificationUrl was removed from config deletes the subscriptions it still has in KV at start.
  On a clean shutdown subscriptions are kept: the restarted service finds them in KV and keeps using them (its
  first delta round catches what was posted while it was down), instead of making Graph validate new ones at every
  restart.

KV GRAPH_INGEST_STATE key `v1.subscription.<provider>.<mailbox>`: `{id, expiration, clientState, notificationUrl}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import json
import logging
import secrets
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from nats.js.errors import KeyNotFoundError

from graph_ingest.graph import GraphClient, GraphError, ThrottledError
from graph_ingest.seats import SeatKeeper
from graph_ingest.settings import GraphProviderSettings, Tuning
from graph_ingest.state import StateStore, key_token
from tccal.retry import backoff_delay, retry_async

log = logging.getLogger(__name__)
CHANGE_TYPES = "created,updated,deleted"
#: Longest sleep of the keeper loop when nothing is due (seat changes and lifecycle events wake it earlier).
IDLE_SECONDS = 300.0


def _utc(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _graph_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class SubscriptionRecord:
    mailbox: str
    id: str
    expiration: str
    clientState: str  # noqa: N815 - the KV JSON key, as Graph spells it
    notificationUrl: str  # noqa: N815

    @property
    def expires(self) -> dt.datetime:
        return _utc(self.expiration)


@dataclass
class SubscriptionStats:
    created: int = 0
    renewed: int = 0
    reauthorized: int = 0
    deleted: int = 0
    failures: int = 0
    #: Change notifications acted on (a delta round asked for).
    notifications: int = 0
    lifecycle: dict[str, int] = field(default_factory=dict)
    #: Notifications ignored: clientState did not match, or the subscription is not one of ours.
    forged: int = 0
    unknown: int = 0


class SubscriptionStore:
    """The provider's subscription records in GRAPH_INGEST_STATE."""

    def __init__(self, store: StateStore, provider: str) -> None:
        self.store = store
        self.provider = provider

    def key(self, mailbox: str) -> str:
        return f"v1.subscription.{key_token(self.provider)}.{key_token(mailbox)}"

    async def load(self, mailbox: str) -> SubscriptionRecord | None:
        kv = await self.store.kv()
        try:
            entry = await kv.get(self.key(mailbox))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        data = json.loads(entry.value)
        known = set(SubscriptionRecord.__dataclass_fields__)
        return SubscriptionRecord(**{k: str(v) for k, v in data.items() if k in known})

    async def save(self, record: SubscriptionRecord) -> None:
        kv = await self.store.kv()
        await kv.put(self.key(record.mailbox), json.dumps(asdict(record), sort_keys=True).encode())

    async def remove(self, mailbox: str) -> None:
        kv = await self.store.kv()
        with contextlib.suppress(KeyNotFoundError):
            await kv.delete(self.key(mailbox))


class SubscriptionApi:
    """POST/PATCH/DELETE on /subscriptions with the provider's app-only token; 429/503 retried after Retry-After."""

    def __init__(self, client: GraphClient) -> None:
        self.client = client
        self._session: aiohttp.ClientSession | None = None
        self._ssl = ssl.create_default_context(cafile=client.provider.ca_file)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.client.url(path)

        async def once() -> dict[str, Any]:
            if self._session is None:
                timeout = aiohttp.ClientTimeout(total=self.client.tuning.http_timeout_seconds)
                self._session = aiohttp.ClientSession(timeout=timeout)
            headers = {"Authorization": f"Bearer {await self.client.tokens.token()}", "Accept": "application/json"}
            async with self._session.request(method, url, json=body, headers=headers, ssl=self._ssl) as response:
                self.client.note_response(method, response.status)
                text = await response.text()
                if response.status < 300:
                    data = json.loads(text) if text else {}
                    return data if isinstance(data, dict) else {}
                code, message = _error_of(text)
                if response.status in (429, 503):
                    wait = _seconds(response.headers.get("Retry-After"))
                    raise ThrottledError(response.status, code, message, url, wait)
                if response.status == 401:
                    self.client.tokens.invalidate()
                raise GraphError(response.status, code, message, url)

        def wait_of(error: BaseException) -> float | None:
            if isinstance(error, ThrottledError):
                wait = min(error.retry_after, self.client.tuning.max_retry_after_seconds)
                self.client.note_wait(wait)
                return wait
            return None

        return await retry_async(
            once,
            retry_on=(ThrottledError, aiohttp.ClientConnectionError, TimeoutError),
            attempts=self.client.tuning.attempts,
            base=0.5,
            cap=30.0,
            retry_after=wait_of,
        )


def _seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value or "1"))
    except ValueError:
        return 1.0


def _error_of(text: str) -> tuple[str, str]:
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return "unknown", text[:200]
    if isinstance(error, dict):
        return str(error.get("code", "unknown")), str(error.get("message", ""))
    return "unknown", text[:200]


class SubscriptionKeeper:
    """Keeps one subscription per seated mailbox of a provider and judges what the receiver gets."""

    def __init__(
        self,
        provider: GraphProviderSettings,
        client: GraphClient,
        store: StateStore,
        tuning: Tuning,
        seats: SeatKeeper,
        mailboxes: list[str],
        trigger: Callable[[str], None],
    ) -> None:
        self.provider = provider
        self.tuning = tuning
        self.seats = seats
        self.mailboxes = mailboxes
        self.trigger = trigger
        self.api = SubscriptionApi(client)
        self.records_store = SubscriptionStore(store, provider.name)
        self.records: dict[str, SubscriptionRecord] = {}
        self.stats = SubscriptionStats()
        #: Set once the stored subscriptions are loaded (before that every notification is "unknown").
        self.loaded = asyncio.Event()
        self._by_id: dict[str, SubscriptionRecord] = {}
        self._reauthorize: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, dt.datetime] = {}
        self._kick = asyncio.Event()

    # ------------------------------------------------------------------ life
    async def run(self, stop: asyncio.Event) -> None:
        try:
            for mailbox in self.mailboxes:
                record = await self.records_store.load(mailbox)
                if record is not None:
                    self._keep(record)
            self.loaded.set()
            if self.provider.notification_url is None:
                await self._forget_all()
                return
            while not stop.is_set():
                seats_changed = self.seats.changed
                self._kick.clear()
                await self.reconcile()
                await _first(stop, self._kick, seats_changed, timeout=self._next_due())
        finally:
            await self.api.close()

    def _margin(self) -> dt.timedelta:
        """How long before expiry a subscription is renewed: the configured margin, at most half the lifetime (a
        margin above the lifetime would renew on every pass)."""
        lifetime = self.tuning.subscription_minutes * 60.0
        return dt.timedelta(seconds=min(self.tuning.subscription_renew_margin_seconds, lifetime / 2))

    def _next_due(self) -> float:
        now = dt.datetime.now(dt.UTC)
        due: list[dt.datetime] = []
        for mailbox in self.mailboxes:
            retry_at = self._retry_at.get(mailbox)
            record = self.records.get(mailbox)
            if retry_at is not None:  # a failed mailbox waits for its back-off, not for its (past) renewal time
                due.append(retry_at)
            elif record is not None:
                due.append(record.expires - self._margin())
        if not due:
            return IDLE_SECONDS
        return min(IDLE_SECONDS, max(0.05, (min(due) - now).total_seconds()))

    def _keep(self, record: SubscriptionRecord) -> None:
        old = self.records.get(record.mailbox)
        if old is not None:
            self._by_id.pop(old.id, None)
        self.records[record.mailbox] = record
        self._by_id[record.id] = record

    def _drop(self, mailbox: str) -> SubscriptionRecord | None:
        record = self.records.pop(mailbox, None)
        if record is not None:
            self._by_id.pop(record.id, None)
        return record

    # ------------------------------------------------------------------ reconcile
    async def reconcile(self) -> None:
        """Create, renew, reauthorize or delete what is due; a failure is retried with back-off."""
        now = dt.datetime.now(dt.UTC)
        for mailbox in self.mailboxes:
            retry_at = self._retry_at.get(mailbox)
            if retry_at is not None and retry_at > now:
                continue
            try:
                await self._reconcile_one(mailbox, now)
            except Exception as exc:
                failures = self._failures.get(mailbox, 0) + 1
                self._failures[mailbox] = failures
                self.stats.failures += 1
                delay = backoff_delay(failures, base=2.0, cap=self.tuning.error_backoff_cap_seconds)
                self._retry_at[mailbox] = now + dt.timedelta(seconds=delay)
                log.warning(
                    "subscription upkeep failed",
                    extra={"mailbox": mailbox, "provider": self.provider.name, "error": f"{type(exc).__name__}: {exc}"},
                )
            else:
                self._failures.pop(mailbox, None)
                self._retry_at.pop(mailbox, None)

    async def _reconcile_one(self, mailbox: str, now: dt.datetime) -> None:
        record = self.records.get(mailbox)
        if mailbox not in self.seats.granted:
            # Only a refusal (or a lease that ended, which counts as one) takes the subscription: before the first
            # seat answer of this run (licensing not asked yet, no stored answer restored yet) the mailbox is
            # neither granted nor refused, and the subscription a restart found in KV is kept for when it is.
            if record is not None and mailbox in self.seats.refused:
                await self._delete(record, "the mailbox has no seat")
            return
        if record is not None and record.notificationUrl != self.provider.notification_url:
            await self._delete(record, "notificationUrl changed")
            record = None
        if record is not None and mailbox in self._reauthorize:
            record = await self._reauthorize_one(record)
        if record is None or record.expires <= now:
            await self._create(mailbox)
            return
        if record.expires - now <= self._margin():
            await self._renew(record)

    def _expiration(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(minutes=self.tuning.subscription_minutes)

    async def _create(self, mailbox: str) -> None:
        url = self.provider.notification_url
        assert url is not None
        client_state = secrets.token_urlsafe(32)
        answer = await self.api.call(
            "POST",
            "/subscriptions",
            {
                "changeType": CHANGE_TYPES,
                "notificationUrl": url,
                "lifecycleNotificationUrl": url,
                "resource": f"/users/{quote(mailbox, safe='@')}/events",
                "expirationDateTime": _graph_time(self._expiration()),
                "clientState": client_state,
            },
        )
        record = SubscriptionRecord(mailbox, str(answer["id"]), str(answer["expirationDateTime"]), client_state, url)
        await self.records_store.save(record)
        self._keep(record)
        self._reauthorize.discard(mailbox)
        self.stats.created += 1
        log.info(
            "subscription created",
            extra={"mailbox": mailbox, "subscription": record.id, "expires": record.expiration},
        )
        self.trigger(mailbox)  # what changed before the subscription existed reaches no notification

    async def _renew(self, record: SubscriptionRecord) -> None:
        try:
            answer = await self.api.call(
                "PATCH",
                f"/subscriptions/{quote(record.id)}",
                {"expirationDateTime": _graph_time(self._expiration())},
            )
        except GraphError as exc:
            if exc.status != 404:
                raise
            log.warning("subscription gone at renewal: created again", extra={"mailbox": record.mailbox})
            self._drop(record.mailbox)
            await self._create(record.mailbox)
            return
        record.expiration = str(answer.get("expirationDateTime") or _graph_time(self._expiration()))
        await self.records_store.save(record)
        self.stats.renewed += 1
        log.info("subscription renewed", extra={"mailbox": record.mailbox, "expires": record.expiration})

    async def _reauthorize_one(self, record: SubscriptionRecord) -> SubscriptionRecord | None:
        try:
            await self.api.call("POST", f"/subscriptions/{quote(record.id)}/reauthorize")
        except GraphError as exc:
            if exc.status != 404:
                raise
            self._drop(record.mailbox)
            self._reauthorize.discard(record.mailbox)
            return None
        self._reauthorize.discard(record.mailbox)
        self.stats.reauthorized += 1
        log.info("subscription reauthorized", extra={"mailbox": record.mailbox})
        return record

    async def _delete(self, record: SubscriptionRecord, why: str) -> None:
        try:
            await self.api.call("DELETE", f"/subscriptions/{quote(record.id)}")
        except GraphError as exc:
            if exc.status != 404:
                raise
        self._drop(record.mailbox)
        await self.records_store.remove(record.mailbox)
        self.stats.deleted += 1
        log.info("subscription deleted", extra={"mailbox": record.mailbox, "reason": why})

    async def _forget_all(self) -> None:
        """No notificationUrl (any more): delete what an earlier run subscribed."""
        for record in list(self.records.values()):
            try:
                await self._delete(record, "notificationUrl is not configured")
            except Exception as exc:
                log.warning(
                    "could not delete a subscription of an earlier run (it expires by itself)",
                    extra={"mailbox": record.mailbox, "error": f"{type(exc).__name__}: {exc}"},
                )
                self._drop(record.mailbox)
                await self.records_store.remove(record.mailbox)

    # ------------------------------------------------------------------ notifications
    def accept(self, item: dict[str, Any]) -> str:
        """Judge one notification of a POST body; returns what was done ("change", a lifecycle event, "forged",
        "unknown"). Cheap and synchronous: the receiver answers 202 right after."""
        sub_id = str(item.get("subscriptionId") or "")
        record = self._by_id.get(sub_id)
        if record is None:
            self.stats.unknown += 1
            log.warning("notification of an unknown subscription ignored", extra={"subscription": sub_id})
            return "unknown"
        given = item.get("clientState")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), record.clientState.encode()):
            self.stats.forged += 1
            log.warning(
                "notification with a wrong clientState ignored",
                extra={"subscription": sub_id, "mailbox": record.mailbox},
            )
            return "forged"
        event = item.get("lifecycleEvent")
        if event is None:
            self.stats.notifications += 1
            self.trigger(record.mailbox)
            return "change"
        event = str(event)
        self.stats.lifecycle[event] = self.stats.lifecycle.get(event, 0) + 1
        log.info("lifecycle notification", extra={"mailbox": record.mailbox, "event": event})
        if event == "missed":
            self.trigger(record.mailbox)
        elif event == "subscriptionRemoved":
            self._drop(record.mailbox)
            self._kick.set()
        elif event == "reauthorizationRequired":
            self._reauthorize.add(record.mailbox)
            self._kick.set()
        else:
            log.warning("unknown lifecycle event ignored", extra={"mailbox": record.mailbox, "event": event})
        return event


async def _first(stop: asyncio.Event, *others: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, *others)]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter

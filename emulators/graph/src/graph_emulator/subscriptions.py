"""Change notification subscriptions on users' events, delivered by webhook.

- Create: https://learn.microsoft.com/en-us/graph/api/subscription-post-subscriptions — changeType (created, updated,
  deleted), notificationUrl (https), resource (users/{id}/events), expirationDateTime, clientState (≤128 chars),
  lifecycleNotificationUrl; the endpoint is validated first.
- Validation: https://learn.microsoft.com/en-us/graph/change-notifications-delivery-webhooks#notificationurl-validation
  — POST {notificationUrl}?validationToken=... (text/plain); the endpoint answers 200 with the token as text/plain
  within 10 seconds, else the subscription is not created (400). The lifecycleNotificationUrl is validated the same way.
- Lifetime: https://learn.microsoft.com/en-us/graph/api/resources/subscription#subscription-lifetime — Outlook events:
  at most 10,080 minutes (under 7 days); renewal: https://learn.microsoft.com/en-us/graph/api/subscription-update.
- Notifications: https://learn.microsoft.com/en-us/graph/change-notifications-delivery-webhooks#receive-notifications
  — POST {"value": [{subscriptionId, subscriptionExpirationDateTime, changeType, resource, resourceData, clientState,
  tenantId}]}; the endpoint answers 2xx within 3 seconds; failed deliveries are retried with back-off.
- Lifecycle notifications: https://learn.microsoft.com/en-us/graph/change-notifications-lifecycle-events —
  reauthorizationRequired, missed, subscriptionRemoved posted to lifecycleNotificationUrl with lifecycleEvent;
  POST /subscriptions/{id}/reauthorize (https://learn.microsoft.com/en-us/graph/api/subscription-reauthorize).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from yarl import URL

from .config import SubscriptionConfig
from .errors import GraphError, bad_request, not_found
from .store import Mailbox, Store
from .timefmt import format_utc, parse_instant

log = logging.getLogger(__name__)

MAX_EVENT_SUBSCRIPTION = timedelta(minutes=10080)
CHANGE_TYPES = ("created", "updated", "deleted")
LIFECYCLE_EVENTS = ("reauthorizationRequired", "missed", "subscriptionRemoved")
_RESOURCE = re.compile(r"^/?users/([^/]+)/(?:calendar/)?events$", re.IGNORECASE)
DELIVERY_TIMEOUT_S = 3.0


@dataclass
class Subscription:
    id: str
    tenant_id: str
    client_id: str
    mailbox_id: str
    resource: str
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expiration: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.client_id,
            "changeType": ",".join(self.change_types),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": format_utc(self.expiration),
            "creatorId": self.client_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


@dataclass
class Delivery:
    subscription_id: str
    url: str
    payload: dict[str, Any]
    lifecycle: bool = False
    status: int | None = None
    attempts: int = 0
    error: str | None = None


@dataclass
class Subscriptions:
    config: SubscriptionConfig
    store: Store
    items: dict[str, Subscription] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        context = ssl.create_default_context(cafile=self.config.ca_file) if self.config.ca_file else None
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context) if context else None)
        self.store.listeners.append(self._on_change)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Subscriptions.start() was not awaited"
        return self._session

    # ----------------------------------------------------------------- checks
    def _check_url(self, url: Any, name: str) -> str:
        if not isinstance(url, str):
            raise bad_request(f"{name} is required and must be a URL, got {url!r}", "ValidationError")
        parsed = URL(url)
        allowed = ("https", "http") if self.config.allow_http else ("https",)
        if parsed.scheme not in allowed or not parsed.host:
            raise bad_request(f"The {name} '{url}' must be an absolute https URL.", "ValidationError")
        return url

    @staticmethod
    def _check_expiration(value: Any, now: datetime) -> datetime:
        if not isinstance(value, str):
            raise bad_request(f"expirationDateTime is required, got {value!r}", "ValidationError")
        expiration = parse_instant(value, "expirationDateTime")
        if expiration <= now:
            raise bad_request(f"Subscription expiration {value} is in the past.", "ExtensionError")
        if expiration - now > MAX_EVENT_SUBSCRIPTION:
            raise bad_request("Subscription expiration can only be 10080 minutes in the future.", "ExtensionError")
        return expiration

    async def _validate_endpoint(self, url: str) -> None:
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        target = URL(url).update_query(validationToken=token)
        failure = (
            "Subscription validation request failed. Notification endpoint must respond with 200 OK to "
            "validation request."
        )
        try:
            async with self.session.post(
                target,
                data=b"",
                headers={"Content-Type": "text/plain; charset=utf-8"},
                timeout=aiohttp.ClientTimeout(total=self.config.validation_timeout_s),
            ) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise bad_request(f"{failure} It answered {resp.status}.", "ValidationError")
                if text != token:
                    raise bad_request(
                        "Subscription validation request failed. Response must exactly match "
                        "validationToken query parameter.",
                        "ValidationError",
                    )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = "no answer within the timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise bad_request(f"{failure} ({reason})", "ValidationError") from exc

    # ----------------------------------------------------------------- API
    async def create(self, tenant_id: str, client_id: str, body: Any, now: datetime) -> Subscription:
        if not isinstance(body, dict):
            raise bad_request("The request body must be a subscription object.")
        change_types = tuple(c.strip() for c in str(body.get("changeType", "")).split(",") if c.strip())
        if not change_types or any(c not in CHANGE_TYPES for c in change_types):
            raise bad_request(
                f"changeType must be a comma-separated list of {CHANGE_TYPES}, got {body.get('changeType')!r}",
                "ValidationError",
            )
        resource = str(body.get("resource", ""))
        match = _RESOURCE.match(resource)
        if match is None:
            raise bad_request(
                f"Resource '{resource}' is not supported; subscribe to users/{{id}}/events.", "InvalidRequest"
            )
        mailbox = self.store.mailbox(match.group(1), tenant_id)
        client_state = body.get("clientState")
        if client_state is not None and (not isinstance(client_state, str) or len(client_state) > 128):
            raise bad_request("clientState must be a string of at most 128 characters.", "ValidationError")
        url = self._check_url(body.get("notificationUrl"), "notificationUrl")
        lifecycle = body.get("lifecycleNotificationUrl")
        lifecycle_url = self._check_url(lifecycle, "lifecycleNotificationUrl") if lifecycle is not None else None
        expiration = self._check_expiration(body.get("expirationDateTime"), now)
        await self._validate_endpoint(url)
        if lifecycle_url is not None and lifecycle_url != url:
            await self._validate_endpoint(lifecycle_url)
        sub = Subscription(
            str(uuid.uuid4()),
            tenant_id,
            client_id,
            mailbox.id,
            resource,
            change_types,
            url,
            lifecycle_url,
            client_state,
            expiration,
        )
        self.items[sub.id] = sub
        return sub

    def get(self, sub_id: str, client_id: str) -> Subscription:
        sub = self.items.get(sub_id)
        if sub is not None and sub.expiration <= datetime.now(UTC):
            # An expired subscription is deleted by the service.
            del self.items[sub_id]
            sub = None
        if sub is None or sub.client_id != client_id:
            raise not_found(f"The object was not found. Subscription '{sub_id}'.", "ResourceNotFound")
        return sub

    def renew(self, sub_id: str, client_id: str, body: Any, now: datetime) -> Subscription:
        sub = self.get(sub_id, client_id)
        if not isinstance(body, dict) or set(body) - {"expirationDateTime", "@odata.type"}:
            raise bad_request("Only expirationDateTime can be updated on a subscription.", "ValidationError")
        sub.expiration = self._check_expiration(body.get("expirationDateTime"), now)
        return sub

    def delete(self, sub_id: str, client_id: str) -> None:
        self.items.pop(self.get(sub_id, client_id).id)

    def listing(self, client_id: str) -> list[Subscription]:
        return [s for s in self.items.values() if s.client_id == client_id]

    # ----------------------------------------------------------------- delivery
    def _on_change(self, mailbox: Mailbox, item_id: str, change: str) -> None:
        now = datetime.now(UTC)
        for sub in list(self.items.values()):
            if sub.expiration <= now:
                del self.items[sub.id]
                continue
            if sub.mailbox_id != mailbox.id or change not in sub.change_types:
                continue
            path = f"Users/{mailbox.id}/Events/{item_id}"
            resource_data: dict[str, str] = {"@odata.type": "#Microsoft.Graph.Event", "@odata.id": path, "id": item_id}
            event = mailbox.events.get(item_id)
            if event is not None:
                resource_data["@odata.etag"] = f'W/"{event.change_key}"'
            notification = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": format_utc(sub.expiration),
                "changeType": change,
                "resource": path,
                "clientState": sub.client_state,
                "tenantId": sub.tenant_id,
                "resourceData": resource_data,
            }
            self._post(sub, sub.notification_url, {"value": [notification]})

    def _post(self, sub: Subscription, url: str, payload: dict[str, Any], lifecycle: bool = False) -> None:
        delivery = Delivery(sub.id, url, payload, lifecycle)
        self.deliveries.append(delivery)
        task = asyncio.get_running_loop().create_task(self._deliver(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery: Delivery) -> None:
        for delay in (0.0, *self.config.retry_delays_s):
            await asyncio.sleep(delay)
            delivery.attempts += 1
            try:
                async with self.session.post(
                    delivery.url, json=delivery.payload, timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_S)
                ) as resp:
                    delivery.status = resp.status
                    if 200 <= resp.status < 300:
                        delivery.error = None
                        return
                    delivery.error = f"HTTP {resp.status}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                delivery.error = f"{type(exc).__name__}: {exc}"
        log.warning("notification to %s dropped after %d attempts: %s", delivery.url, delivery.attempts, delivery.error)
        sub = self.items.get(delivery.subscription_id)
        if not delivery.lifecycle and sub is not None and sub.lifecycle_url is not None:
            self._post(sub, sub.lifecycle_url, self._lifecycle_payload(sub, "missed"), lifecycle=True)

    def lifecycle(self, sub_id: str, event: str) -> Subscription:
        """Send a lifecycle notification (a test's control); subscriptionRemoved also removes the subscription."""
        sub = self.items.get(sub_id)
        if sub is None:
            raise not_found(f"no subscription {sub_id}", "ResourceNotFound")
        if event not in LIFECYCLE_EVENTS:
            raise bad_request(f"lifecycle event must be one of {LIFECYCLE_EVENTS}, got {event!r}")
        if sub.lifecycle_url is None:
            raise GraphError(409, "Conflict", f"subscription {sub_id} has no lifecycleNotificationUrl")
        if event == "subscriptionRemoved":
            del self.items[sub.id]
        self._post(sub, sub.lifecycle_url, self._lifecycle_payload(sub, event), lifecycle=True)
        return sub

    @staticmethod
    def _lifecycle_payload(sub: Subscription, event: str) -> dict[str, Any]:
        return {
            "value": [
                {
                    "subscriptionId": sub.id,
                    "subscriptionExpirationDateTime": format_utc(sub.expiration),
                    "tenantId": sub.tenant_id,
                    "clientState": sub.client_state,
                    "lifecycleEvent": event,
                }
            ]
        }

"""The change-notification receiver of one Graph provider: the aiohttp endpoint behind its public notificationUrl.

https://learn.microsoft.com/en-us/graph/change-notifications-delivery-webhooks

* Validation: a request with `?validationToken=…` is answered 200 `text/plain` with the token (decoded), at once
  (Graph waits 10 seconds) - before a subscription is created and again for the lifecycle URL.
* Notifications: POST `{"value": [...]}`; every item is judged by the SubscriptionKeeper (subscription ours,
  clientState equal, lifecycleEvent) and the answer is 202 right after (Graph wants an answer within 3 seconds;
  the delta round runs in the mailbox's own loop). Bodies above `notification_max_body_bytes` get 413, bodies that
  are not a JSON object with a `value` list get 400.
* HTTPS itself when notificationListen has certFile/keyFile, plain HTTP behind a TLS-terminating proxy otherwise.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiohttp import web

from graph_ingest import metrics
from graph_ingest.subscriptions import SubscriptionKeeper
from tccal.config.schema import NotificationListen

log = logging.getLogger(__name__)
#: A validation token is a short text; anything longer is not Graph's.
MAX_VALIDATION_TOKEN = 1024


class NotificationReceiver:
    def __init__(self, keeper: SubscriptionKeeper, listen: NotificationListen, max_body_bytes: int) -> None:
        self.keeper = keeper
        self.listen = listen
        self.max_body_bytes = max_body_bytes
        self.validations = 0
        self.rejected = 0
        self._runner: web.AppRunner | None = None

    def _refused(self) -> None:
        self.rejected += 1
        metrics.notifications.add(1, {"provider": self.keeper.provider.name, "verdict": "malformed"})

    async def start(self) -> None:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context: ssl.SSLContext | None = None
        if self.listen.cert_file and self.listen.key_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.listen.cert_file, self.listen.key_file)
        site = web.TCPSite(runner, self.listen.host, self.listen.port, ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                f"calendarProviders ({self.keeper.provider.name}).notificationListen "
                f"{self.listen.host}:{self.listen.port}: {exc.strerror or exc}"
            ) from exc
        self._runner = runner
        log.info(
            "change-notification receiver listening",
            extra={
                "provider": self.keeper.provider.name,
                "listen": f"{self.listen.host}:{self.listen.port}",
                "https": context is not None,
            },
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:
            if len(token) > MAX_VALIDATION_TOKEN:
                self._refused()
                return web.Response(status=400, text="validationToken too long", content_type="text/plain")
            self.validations += 1
            return web.Response(status=200, text=token, content_type="text/plain")
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        try:
            payload: Any = await request.json()
        except web.HTTPRequestEntityTooLarge:
            self._refused()
            log.warning("notification body above the size limit refused", extra={"limit": self.max_body_bytes})
            return web.Response(status=413)
        except ValueError:
            self._refused()
            return web.Response(status=400, text="not JSON", content_type="text/plain")
        items = payload.get("value") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            self._refused()
            return web.Response(status=400, text='expected {"value": [...]}', content_type="text/plain")
        for item in items:
            verdict = metrics.verdict_of(self.keeper.accept(item)) if isinstance(item, dict) else "malformed"
            metrics.notifications.add(1, {"provider": self.keeper.provider.name, "verdict": verdict})
        return web.Response(status=202)

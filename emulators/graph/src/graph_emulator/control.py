"""Inspection and control API for tests (/_emulator/...): not part of Microsoft Graph.

GET  /_emulator/state                              tenants, apps, mailboxes, counts
POST /_emulator/tenants                            {"id", "apps": [...], "users": [...]}: add a tenant
POST /_emulator/tenants/{tenant}/users             {"userPrincipalName", "displayName", "id"?}: add a mailbox
POST /_emulator/tenants/{tenant}/apps              {"client_id", "client_secret", "permissions"}: add an app
GET  /_emulator/mailboxes/{user}                   events (stored items), requests per app, delta tokens
POST /_emulator/mailboxes/{user}/hold | /release   hold the mailbox's Graph requests in flight / let them go
PUT  /_emulator/mailboxes/{user}/events/{id}/attendees/{address}  {"response"}: an attendee's answer
POST /_emulator/delta/expire                       {"user"?}: forget delta/skip tokens (→ 410 syncStateNotFound)
POST /_emulator/tokens/expire                      expire every issued access token (→ 401)
GET  /_emulator/requests                           requests answered: on the wire (token, graph, batch), per operation
GET  /_emulator/subscriptions                      subscriptions and notification deliveries
POST /_emulator/subscriptions/{id}/lifecycle       {"event": reauthorizationRequired|missed|subscriptionRemoved}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .config import ConfigError, TenantConfig, parse_app, parse_tenant, parse_user
from .errors import GraphError
from .store import Mailbox
from .timefmt import format_utc

if TYPE_CHECKING:
    from .server import GraphEmulator


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


class ControlApi:
    def __init__(self, emulator: GraphEmulator) -> None:
        self.emu = emulator

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_emulator/state", self.state),
            web.post("/_emulator/tenants", self.add_tenant),
            web.post("/_emulator/tenants/{tenant}/users", self.add_user),
            web.post("/_emulator/tenants/{tenant}/apps", self.add_app),
            web.get("/_emulator/mailboxes/{user}", self.mailbox),
            web.post("/_emulator/mailboxes/{user}/hold", self.hold),
            web.post("/_emulator/mailboxes/{user}/release", self.release),
            web.put("/_emulator/mailboxes/{user}/events/{event}/attendees/{address}", self.attendee_response),
            web.post("/_emulator/delta/expire", self.expire_delta),
            web.post("/_emulator/tokens/expire", self.expire_tokens),
            web.get("/_emulator/requests", self.requests),
            web.get("/_emulator/subscriptions", self.subscriptions),
            web.post("/_emulator/subscriptions/{id}/lifecycle", self.lifecycle),
        ]

    async def _body(self, request: web.Request) -> Any:
        if not request.can_read_body:
            return {}
        try:
            return await request.json()
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"body is not JSON: {exc}") from exc

    def _mailbox(self, key: str) -> Mailbox:
        box = self.emu.store.mailbox_or_none(key)
        if box is None:
            raise web.HTTPNotFound(text=f"no mailbox {key!r}")
        return box

    async def state(self, request: web.Request) -> web.Response:
        return _json(
            {
                "tenants": [
                    {
                        "id": t.id,
                        "apps": [{"client_id": a.client_id, "permissions": sorted(a.permissions)} for a in t.apps],
                    }
                    for t in self.emu.tenants.values()
                ],
                "mailboxes": [
                    {
                        "id": m.id,
                        "tenant": m.tenant_id,
                        "userPrincipalName": m.user_principal_name,
                        "events": len(m.events),
                    }
                    for m in self.emu.store.mailboxes.values()
                ],
                "tokens_issued": self.emu.issuer.issued,
                "delta_tokens": len(self.emu.delta.entries),
                "subscriptions": len(self.emu.subscriptions.items),
            }
        )

    async def add_tenant(self, request: web.Request) -> web.Response:
        try:
            tenant = parse_tenant(await self._body(request), "tenant")
        except ConfigError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        if tenant.id in self.emu.tenants:
            raise web.HTTPConflict(text=f"tenant {tenant.id} exists")
        self.emu.add_tenant(tenant)
        return _json({"id": tenant.id}, 201)

    def _tenant(self, request: web.Request) -> TenantConfig:
        tenant = self.emu.tenants.get(request.match_info["tenant"])
        if tenant is None:
            raise web.HTTPNotFound(text=f"no tenant {request.match_info['tenant']!r}")
        return tenant

    async def add_user(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        try:
            user = parse_user(await self._body(request), "user")
            self.emu.add_user(tenant, user)
        except (ConfigError, ValueError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return _json({"id": user.id, "userPrincipalName": user.user_principal_name}, 201)

    async def add_app(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        try:
            app = parse_app(await self._body(request), "app")
        except ConfigError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        tenant.apps = [a for a in tenant.apps if a.client_id != app.client_id] + [app]
        return _json({"client_id": app.client_id, "permissions": sorted(app.permissions)}, 201)

    async def mailbox(self, request: web.Request) -> web.Response:
        box = self._mailbox(request.match_info["user"])
        return _json(
            {
                "id": box.id,
                "userPrincipalName": box.user_principal_name,
                "events": [
                    {
                        "id": e.id,
                        "type": e.type,
                        "subject": e.props.get("subject"),
                        "iCalUId": e.ical_uid,
                        "isOrganizer": e.is_organizer,
                        "isCancelled": e.is_cancelled,
                        "exceptions": len(e.exceptions),
                        "cancelledOccurrences": len(e.cancelled),
                    }
                    for e in box.events.values()
                ],
                "requests": self.emu.throttle.snapshot(box.id),
                "delta_tokens": self.emu.delta.count(box.id),
            }
        )

    async def hold(self, request: web.Request) -> web.Response:
        self.emu.throttle.hold(self._mailbox(request.match_info["user"]).id)
        return _json({"held": True})

    async def release(self, request: web.Request) -> web.Response:
        self.emu.throttle.release(self._mailbox(request.match_info["user"]).id)
        return _json({"held": False})

    async def attendee_response(self, request: web.Request) -> web.Response:
        box = self._mailbox(request.match_info["user"])
        body = await self._body(request)
        item = box.events.get(request.match_info["event"])
        if item is None:
            raise web.HTTPNotFound(text=f"no event {request.match_info['event']!r} in {box.user_principal_name}")
        try:
            self.emu.store.set_attendee_response(
                box, item, request.match_info["address"], str(body.get("response")), self.emu.now()
            )
        except GraphError as exc:
            raise web.HTTPBadRequest(text=exc.message) from exc
        return _json({"changeKey": item.change_key})

    async def expire_delta(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        user = body.get("user") if isinstance(body, dict) else None
        mailbox_id = self._mailbox(user).id if user else None
        return _json({"expired": self.emu.delta.expire(mailbox_id)})

    async def expire_tokens(self, request: web.Request) -> web.Response:
        return _json({"expired": self.emu.issuer.expire_all()})

    async def requests(self, request: web.Request) -> web.Response:
        return _json(self.emu.counter.snapshot())

    async def subscriptions(self, request: web.Request) -> web.Response:
        subs = self.emu.subscriptions
        return _json(
            {
                "subscriptions": [
                    {**s.as_json(), "mailbox": s.mailbox_id, "expires": format_utc(s.expiration)}
                    for s in subs.items.values()
                ],
                "deliveries": [
                    {
                        "subscriptionId": d.subscription_id,
                        "url": d.url,
                        "status": d.status,
                        "attempts": d.attempts,
                        "error": d.error,
                        "payload": d.payload,
                    }
                    for d in subs.deliveries
                ],
            }
        )

    async def lifecycle(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            sub = self.emu.subscriptions.lifecycle(request.match_info["id"], str(body.get("event")))
        except GraphError as exc:
            return exc.response()
        return _json({"subscriptionId": sub.id})

"""Microsoft Graph v1.0 calendar requests, dispatched from a plain request record (HTTP or a $batch item).

- Users: https://learn.microsoft.com/en-us/graph/api/user-get (by id or userPrincipalName).
- Events: list https://learn.microsoft.com/en-us/graph/api/user-list-events, create
  https://learn.microsoft.com/en-us/graph/api/user-post-events (201), get
  https://learn.microsoft.com/en-us/graph/api/event-get, update https://learn.microsoft.com/en-us/graph/api/event-update
  (PATCH an occurrence → it becomes an exception), delete https://learn.microsoft.com/en-us/graph/api/event-delete
  (204; deleting an occurrence cancels it), instances https://learn.microsoft.com/en-us/graph/api/event-list-instances,
  accept / tentativelyAccept / decline (202): https://learn.microsoft.com/en-us/graph/api/event-accept,
  cancel (202): https://learn.microsoft.com/en-us/graph/api/event-cancel.
- calendarView: https://learn.microsoft.com/en-us/graph/api/user-list-calendarview (startDateTime and endDateTime
  required; occurrences and exceptions expanded; no series masters).
- calendarView delta: see delta.py.
- Paging: https://learn.microsoft.com/en-us/graph/paging (`@odata.nextLink`, $top/$skip, default page of 10 events).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from multidict import MultiDict, MultiMapping

from . import auth
from .auth import IssuedToken
from .delta import DeltaRound, DeltaTokens
from .errors import GraphError, bad_request
from .render import ExtendedExpansion, parse_select, render
from .store import Instance, Mailbox, Store
from .subscriptions import Subscriptions
from .timefmt import UnknownTimeZoneError, parse_instant, parse_prefer, zone

DEFAULT_PAGE = 10


@dataclass
class GraphRequest:
    method: str
    path: str  # below /v1.0, starting with "/"
    query: MultiMapping[str]
    headers: Mapping[str, str]
    prefer: dict[str, str]
    body: Any
    token: IssuedToken
    base_url: str  # https://host:port/v1.0


@dataclass
class GraphResponse:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[GraphRequest, Mailbox | None, re.Match[str]], Awaitable[GraphResponse]]


def _now() -> datetime:
    return datetime.now(UTC)


class GraphApi:
    def __init__(self, store: Store, delta: DeltaTokens, subscriptions: Subscriptions, default_delta_page: int) -> None:
        self.store = store
        self.delta = delta
        self.subscriptions = subscriptions
        self.default_delta_page = default_delta_page
        user = r"^/users/(?P<user>[^/]+)"
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(user + r"/calendarView/delta(?:\(\))?$", re.I), self.calendar_view_delta),
            ("GET", re.compile(user + r"/calendarView$", re.I), self.calendar_view),
            ("GET", re.compile(user + r"/(?:calendar/)?events$", re.I), self.list_events),
            ("POST", re.compile(user + r"/(?:calendar/)?events$", re.I), self.create_event),
            ("GET", re.compile(user + r"/(?:calendar/)?events/(?P<event>[^/]+)/instances$", re.I), self.instances),
            ("GET", re.compile(user + r"/(?:calendar/)?events/(?P<event>[^/]+)$", re.I), self.get_event),
            ("PATCH", re.compile(user + r"/(?:calendar/)?events/(?P<event>[^/]+)$", re.I), self.update_event),
            ("DELETE", re.compile(user + r"/(?:calendar/)?events/(?P<event>[^/]+)$", re.I), self.delete_event),
            (
                "POST",
                re.compile(
                    user + r"/(?:calendar/)?events/(?P<event>[^/]+)/(?P<answer>accept|decline|"
                    r"tentativelyAccept)$",
                    re.I,
                ),
                self.respond,
            ),
            ("POST", re.compile(user + r"/(?:calendar/)?events/(?P<event>[^/]+)/cancel$", re.I), self.cancel),
            ("GET", re.compile(user + r"$", re.I), self.get_user),
            ("POST", re.compile(r"^/subscriptions$", re.I), self.create_subscription),
            ("GET", re.compile(r"^/subscriptions$", re.I), self.list_subscriptions),
            ("GET", re.compile(r"^/subscriptions/(?P<sub>[^/]+)$", re.I), self.get_subscription),
            ("PATCH", re.compile(r"^/subscriptions/(?P<sub>[^/]+)$", re.I), self.renew_subscription),
            ("DELETE", re.compile(r"^/subscriptions/(?P<sub>[^/]+)$", re.I), self.delete_subscription),
            ("POST", re.compile(r"^/subscriptions/(?P<sub>[^/]+)/reauthorize$", re.I), self.reauthorize),
        ]

    def route(self, method: str, path: str) -> tuple[Handler, re.Match[str]]:
        if re.match(r"^/me(/|$)", path, re.I):
            # App-only tokens have no signed-in user (https://learn.microsoft.com/en-us/graph/auth-v2-service).
            raise bad_request("/me request is only valid with delegated authentication flow.")
        allowed = False
        for verb, pattern, handler in self.routes:
            match = pattern.match(path)
            if match is None:
                continue
            if verb == method:
                return handler, match
            allowed = True
        if allowed:
            raise GraphError(405, "Request_BadRequest", f"The HTTP method '{method}' is not allowed on '{path}'.")
        raise bad_request(f"Resource not found for the segment '{path.strip('/').split('/')[-1]}'.", "BadRequest")

    def mailbox_for(self, request: GraphRequest, match: re.Match[str]) -> Mailbox | None:
        user = match.groupdict().get("user")
        return self.store.mailbox(user, request.token.tenant_id) if user else None

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _zone(request: GraphRequest) -> tuple[str, dict[str, str]]:
        name = request.prefer.get("outlook.timezone")
        if not name:
            return "UTC", {}
        try:
            zone(name)
        except UnknownTimeZoneError as exc:
            raise GraphError(
                400,
                "TimeZoneNotSupportedException",
                f"A valid TimeZone value must be specified. The following TimeZone value is not supported: '{name}'.",
            ) from exc
        return name, {"Preference-Applied": f'outlook.timezone="{name}"'}

    @staticmethod
    def _json_body(request: GraphRequest) -> dict[str, Any]:
        if not isinstance(request.body, dict):
            raise bad_request("Empty Payload. JSON content expected.", "ErrorInvalidRequest")
        return request.body

    @staticmethod
    def _window(request: GraphRequest) -> tuple[datetime, datetime]:
        start, end = request.query.get("startDateTime"), request.query.get("endDateTime")
        if not start or not end:
            raise bad_request(
                "This request requires a time window specified by the query string parameters "
                "StartDateTime and EndDateTime.",
                "ErrorInvalidParameter",
            )
        lo, hi = parse_instant(start, "startDateTime"), parse_instant(end, "endDateTime")
        if hi <= lo:
            raise bad_request(f"endDateTime {end} must be after startDateTime {start}.", "ErrorInvalidParameter")
        return lo, hi

    @staticmethod
    def _int_param(request: GraphRequest, name: str, default: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        if not raw.isdigit():
            raise bad_request(f"Invalid value '{raw}' for query option {name}.", "BadRequest")
        return int(raw)

    def _page(self, request: GraphRequest, instances: list[Instance], headers: dict[str, str]) -> GraphResponse:
        zone_name, tz_headers = self._zone(request)
        select = parse_select(request.query.get("$select"))
        expansion = ExtendedExpansion(request.query.get("$expand"))
        size = self._page_size(request, DEFAULT_PAGE, headers)
        top = self._int_param(request, "$top", size)
        skip = self._int_param(request, "$skip", 0)
        page = instances[skip : skip + top]
        body: dict[str, Any] = {"value": [render(inst, zone_name, select, expansion) for inst in page]}
        if skip + top < len(instances):
            params = [(k, v) for k, v in request.query.items() if k not in {"$skip", "$top"}]
            params += [("$top", str(top)), ("$skip", str(skip + top))]
            body["@odata.nextLink"] = f"{request.base_url}{request.path}?{urlencode(params, quote_via=quote)}"
        return GraphResponse(200, body, {**headers, **tz_headers})

    @staticmethod
    def _page_size(request: GraphRequest, default: int, headers: dict[str, str]) -> int:
        raw = request.prefer.get("odata.maxpagesize")
        if raw is None:
            return default
        if not raw.isdigit() or int(raw) < 1:
            raise bad_request(f"odata.maxpagesize must be a positive integer, got {raw!r}.")
        headers["Preference-Applied"] = f"odata.maxpagesize={int(raw)}"
        return int(raw)

    # ----------------------------------------------------------------- users
    async def get_user(self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]) -> GraphResponse:
        assert mailbox is not None
        return GraphResponse(
            200,
            {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
                "id": mailbox.id,
                "userPrincipalName": mailbox.user_principal_name,
                "displayName": mailbox.display_name,
                "mail": mailbox.user_principal_name,
            },
        )

    # ----------------------------------------------------------------- events
    async def list_events(self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]) -> GraphResponse:
        auth.require(request.token, auth.READ_PERMISSIONS)
        assert mailbox is not None
        if "$filter" in request.query or "$orderby" in request.query or "$search" in request.query:
            raise bad_request(
                "The emulator supports $select, $expand, $top and $skip on events, not $filter, $orderby or $search.",
                "ErrorInvalidUrlQuery",
            )
        items = sorted(mailbox.events.values(), key=lambda e: (e.created, e.id))
        instances = [Instance(e.id, e.type, e, e.start, e.end, e.change_key) for e in items]
        return self._page(request, instances, {})

    async def create_event(self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]) -> GraphResponse:
        auth.require(request.token, auth.WRITE_PERMISSIONS)
        assert mailbox is not None
        event = self.store.create(mailbox, self._json_body(request), _now())
        zone_name, headers = self._zone(request)
        inst = self.store.resolve(mailbox, event.id)
        body = render(inst, zone_name)
        body["@odata.context"] = (
            f"https://graph.microsoft.com/v1.0/$metadata#users('{quote(mailbox.id)}')/events/$entity"
        )
        headers["Location"] = f"{request.base_url}/users/{mailbox.id}/events/{event.id}"
        return GraphResponse(201, body, headers)

    async def get_event(self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]) -> GraphResponse:
        auth.require(request.token, auth.READ_PERMISSIONS)
        assert mailbox is not None
        inst = self.store.resolve(mailbox, match["event"])
        zone_name, headers = self._zone(request)
        body = render(
            inst, zone_name, parse_select(request.query.get("$select")), ExtendedExpansion(request.query.get("$expand"))
        )
        return GraphResponse(200, body, headers)

    async def update_event(self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]) -> GraphResponse:
        auth.require(request.token, auth.WRITE_PERMISSIONS)
        assert mailbox is not None
        _check_if_match(request, self.store.resolve(mailbox, match["event"]))
        inst = self.store.update(mailbox, match["event"], self._json_body(request), _now())
        zone_name, headers = self._zone(request)
        return GraphResponse(200, render(inst, zone_name), headers)

    async def delete_event(self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]) -> GraphResponse:
        auth.require(request.token, auth.WRITE_PERMISSIONS)
        assert mailbox is not None
        self.store.delete(mailbox, match["event"], _now())
        return GraphResponse(204)

    async def cancel(self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]) -> GraphResponse:
        auth.require(request.token, auth.WRITE_PERMISSIONS)
        assert mailbox is not None
        inst = self.store.resolve(mailbox, match["event"])
        owner = inst.master or inst.item
        if not owner.is_organizer:
            raise bad_request(
                "Your request can't be completed. You need to be an organizer to cancel a meeting.", "ErrorAccessDenied"
            )
        self.store.delete(mailbox, match["event"], _now())
        return GraphResponse(202)

    async def respond(self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]) -> GraphResponse:
        auth.require(request.token, auth.WRITE_PERMISSIONS)
        assert mailbox is not None
        answer = {"accept": "accepted", "decline": "declined", "tentativelyaccept": "tentativelyAccepted"}
        self.store.respond(mailbox, match["event"], answer[match["answer"].lower()], _now())
        return GraphResponse(202)

    async def instances(self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]) -> GraphResponse:
        auth.require(request.token, auth.READ_PERMISSIONS)
        assert mailbox is not None
        lo, hi = self._window(request)
        master = self.store.resolve(mailbox, match["event"]).item
        found = [
            inst for inst in self.store.view(mailbox, lo, hi) if inst.master is not None and inst.master.id == master.id
        ]
        return self._page(request, found, {})

    async def calendar_view(
        self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]
    ) -> GraphResponse:
        auth.require(request.token, auth.READ_PERMISSIONS)
        assert mailbox is not None
        lo, hi = self._window(request)
        return self._page(request, self.store.view(mailbox, lo, hi), {})

    async def calendar_view_delta(
        self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]
    ) -> GraphResponse:
        auth.require(request.token, auth.READ_PERMISSIONS)
        assert mailbox is not None
        for unsupported in ("$select", "$filter", "$orderby", "$search", "$expand", "$top"):
            if unsupported in request.query:
                raise bad_request(
                    f"The query parameter '{unsupported}' is not supported with calendarView delta.",
                    "ErrorInvalidUrlQuery",
                )
        skiptoken, deltatoken = request.query.get("$skiptoken"), request.query.get("$deltatoken")
        page_round: DeltaRound
        if skiptoken is not None:
            page_round = self.delta.round_for_skiptoken(skiptoken, mailbox.id)
        elif deltatoken is not None:
            state = self.delta.state_for_deltatoken(deltatoken, mailbox.id)
            page_round = self.delta.start_round(
                mailbox.id, state.lo, state.hi, self.store.view(mailbox, state.lo, state.hi), state.snapshot
            )
        else:
            lo, hi = self._window(request)
            page_round = self.delta.start_round(mailbox.id, lo, hi, self.store.view(mailbox, lo, hi), None)
        headers: dict[str, str] = {}
        size = self._page_size(request, self.default_delta_page, headers)
        zone_name, tz_headers = self._zone(request)
        page, token, final = self.delta.next_page(page_round, size)
        current = {inst.id: inst for inst in self.store.view(mailbox, page_round.lo, page_round.hi)}
        values: list[dict[str, Any]] = []
        for instance_id, removed in page:
            inst = current.get(instance_id)
            if removed or inst is None:
                values.append(
                    {"@odata.type": "#microsoft.graph.event", "id": instance_id, "@removed": {"reason": "deleted"}}
                )
            else:
                values.append({"@odata.type": "#microsoft.graph.event", **render(inst, zone_name)})
        link = f"{request.base_url}/users/{quote(match['user'])}/calendarView/delta?" + urlencode(
            {"$deltatoken" if final else "$skiptoken": token}, quote_via=quote
        )
        body = {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(event)",
            "@odata.deltaLink" if final else "@odata.nextLink": link,
            "value": values,
        }
        return GraphResponse(200, body, {**headers, **tz_headers})

    # ----------------------------------------------------------------- subscriptions
    async def create_subscription(
        self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]
    ) -> GraphResponse:
        auth.require(request.token, auth.READ_PERMISSIONS)
        sub = await self.subscriptions.create(request.token.tenant_id, request.token.client_id, request.body, _now())
        return GraphResponse(201, sub.as_json())

    async def list_subscriptions(
        self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]
    ) -> GraphResponse:
        subs = self.subscriptions.listing(request.token.client_id)
        return GraphResponse(200, {"value": [s.as_json() for s in subs]})

    async def get_subscription(
        self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]
    ) -> GraphResponse:
        return GraphResponse(200, self.subscriptions.get(match["sub"], request.token.client_id).as_json())

    async def renew_subscription(
        self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]
    ) -> GraphResponse:
        sub = self.subscriptions.renew(match["sub"], request.token.client_id, request.body, _now())
        return GraphResponse(200, sub.as_json())

    async def delete_subscription(
        self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]
    ) -> GraphResponse:
        self.subscriptions.delete(match["sub"], request.token.client_id)
        return GraphResponse(204)

    async def reauthorize(self, request: GraphRequest, mailbox: Mailbox | None, match: re.Match[str]) -> GraphResponse:
        auth.require(request.token, auth.READ_PERMISSIONS)
        self.subscriptions.get(match["sub"], request.token.client_id)
        return GraphResponse(200)


def query_of(items: list[tuple[str, str]]) -> MultiDict[str]:
    return MultiDict(items)


def prefer_of(values: list[str]) -> dict[str, str]:
    return parse_prefer(values)


def _check_if_match(request: GraphRequest, inst: Instance) -> None:
    """A PATCH with `If-Match` changes the event only while its `@odata.etag` is that value (or `*`); otherwise 412
    Precondition Failed and nothing changes (https://learn.microsoft.com/en-us/graph/errors: 412 "A precondition
    provided in the request (such as an if-match header) does not match the resource's current state"; the etag is
    the event's change key, https://learn.microsoft.com/en-us/graph/api/resources/event)."""
    wanted = next((v for k, v in request.headers.items() if k.lower() == "if-match"), None)
    if wanted is None or wanted.strip() == "*":
        return
    current = f'W/"{inst.change_key}"'
    if wanted.strip() not in {current, current.removeprefix("W/")}:
        raise GraphError(
            412,
            "ErrorIrresolvableConflict",
            "The send or update operation could not be performed because the change key passed in the request "
            "does not match the current change key for the item.",
        )

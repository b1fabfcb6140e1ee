"""aiohttp application: EWS endpoint, SOAP autodiscover, admin/inspection API."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from lxml import etree

from .auth import Authenticator
from .budget import TimeBudget
from .calendar import Calendar
from .calxml import ItemError
from .config import SCHEMA_VERSION, SERVER_VERSIONS, EmulatorConfig
from .faults import Faults
from .model import Account, Event, Mailbox, Store, Subscription
from .ops import (
    OPERATIONS,
    Context,
    SoapFaultError,
    add_message,
    missed_events,
    response_root,
    subscription_for,
    write_notification,
)
from .owners import OwnerWatch
from .schema import SchemaValidator, schema_dir
from .seeding import seed
from .timezones import UnknownTimeZoneError, zone_for
from .transport import Transport
from .xmlutil import (
    NS_A,
    NS_E,
    NS_M,
    NS_S,
    NS_T,
    NS_WSA,
    PARSER,
    Element,
    children,
    el,
    local,
    m,
    ns_of,
    s,
    sub,
    t,
    text_of,
    to_bytes,
)

log = logging.getLogger("exchange_emulator")

EWS_PATH = "/EWS/Exchange.asmx"
AUTODISCOVER_PATH = "/autodiscover/autodiscover.svc"
XML_CONTENT_TYPE = "text/xml; charset=utf-8"


#: RequestServerVersion values of the ExchangeVersionType enumeration in the served types.xsd.
REQUEST_VERSIONS = frozenset(
    {
        "Exchange2007",
        "Exchange2007_SP1",
        "Exchange2009",
        "Exchange2010",
        "Exchange2010_SP1",
        "Exchange2010_SP2",
        "Exchange2012",
        "Exchange2013",
        "Exchange2013_SP1",
        "Exchange2015",
        "Exchange2016",
        "V2015_10_05",
        "V2016_01_06",
        "V2016_04_13",
        "V2016_07_13",
        "V2016_10_10",
        "V2017_01_07",
        "V2017_04_14",
        "V2017_07_11",
    }
)


@dataclass
class Settings:
    strict: bool = True
    minute_seconds: float = 60.0
    heartbeat_seconds: float = 30.0
    max_events_per_notification: int = 50


@dataclass
class Violation:
    direction: str
    operation: str
    errors: list[str]
    at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())


@dataclass(eq=False)
class StreamHandle:
    request: web.Request
    mailboxes: set[str]
    subscription_ids: list[str]
    account: str


class Emulator:
    def __init__(self, config: EmulatorConfig, settings: Settings | None = None, store: Store | None = None) -> None:
        """`store`: a world kept from an earlier run (persistence.py); the config's accounts, mailboxes and
        delegates are added to it where missing, and it is not seeded again."""
        self.config = config
        self.settings = settings or Settings()
        restored = store is not None
        self.store = store if store is not None else Store(domain=config.domain, servers=config.mailbox_servers)
        self.store.max_queued_events = config.max_queued_events
        delivery = config.meeting_delivery
        self.transport = Transport(delivery.delay_ms, delivery.jitter_ms)
        self.cal = Calendar(self.store, self.transport)
        self._transport_task: asyncio.Task[None] | None = None
        self.faults = Faults()
        self.validator = SchemaValidator() if self.settings.strict else None
        self.violations: list[Violation] = []
        self.op_counts: collections.Counter[str] = collections.Counter()
        self.mailbox_counts: collections.Counter[str] = collections.Counter()
        self.streams: set[StreamHandle] = set()
        #: Streaming connections and sync runs per mailbox at once (GET /_emulator/owners).
        self.owners = OwnerWatch()
        #: Throttling: calls in progress and open streaming connections, by charged principal.
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.open_streams: collections.Counter[str] = collections.Counter()
        self.budgets: dict[str, TimeBudget] = {}
        #: Calls refused by a throttling budget, by response code.
        self.throttled: collections.Counter[str] = collections.Counter()
        self.base_url = ""
        for acc in config.service_accounts:
            self.store.add_account(acc.username, acc.password, acc.impersonation, acc.mailbox)
        for mbx in config.mailboxes:
            self.store.add_mailbox(mbx.email, mbx.display_name)
            if mbx.password:
                self.store.add_account(mbx.email, mbx.password, False, mbx.email)
        for dlg in config.delegates:
            self.store.add_delegate(dlg.owner, dlg.delegate, dlg.rights)
        self.auth = Authenticator(self.store)
        if config.seed and not restored:
            seed(self.store, self.cal.seeding(), config.seed)

    # ------------------------------------------------------------------------------------------ app
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(EWS_PATH, self.handle_ews)
        app.router.add_post(EWS_PATH.lower(), self.handle_ews)
        app.router.add_get(EWS_PATH, self.handle_wsdl)
        app.router.add_get("/EWS/Services.wsdl", self.handle_wsdl)
        app.router.add_get("/EWS/messages.xsd", self.handle_xsd)
        app.router.add_get("/EWS/types.xsd", self.handle_xsd)
        app.router.add_post(AUTODISCOVER_PATH, self.handle_autodiscover)
        app.router.add_post("/Autodiscover/Autodiscover.svc", self.handle_autodiscover)
        from .admin import add_admin_routes

        add_admin_routes(app, self)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self._transport_task = asyncio.get_running_loop().create_task(self.transport.run())

    async def _on_shutdown(self, app: web.Application) -> None:
        if self._transport_task is not None:
            self._transport_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._transport_task
        self.transport.flush()  # what was sent is delivered: transport queues survive on Exchange
        for handle in list(self.streams):
            transport = handle.request.transport
            if transport is not None:
                transport.close()
        self.auth.close()

    @property
    def ews_url(self) -> str:
        return self.base_url + EWS_PATH

    @property
    def autodiscover_url(self) -> str:
        return self.base_url + AUTODISCOVER_PATH

    # --------------------------------------------------------------------------------------- envelope
    def envelope(self, body_child: Element | None) -> Element:
        env = el(s("Envelope"), nsmap={"s": NS_S})
        header = sub(env, s("Header"))
        major, minor, build, rev = SERVER_VERSIONS[self.config.version]
        info = etree.SubElement(header, t("ServerVersionInfo"), nsmap={"h": NS_T})
        info.set("MajorVersion", str(major))
        info.set("MinorVersion", str(minor))
        info.set("MajorBuildNumber", str(build))
        info.set("MinorBuildNumber", str(rev))
        info.set("Version", SCHEMA_VERSION)
        body = sub(env, s("Body"))
        if body_child is not None:
            body.append(body_child)
        return env

    def fault(self, code: str, text: str, values: dict[str, str] | None = None, status: int = 500) -> web.Response:
        fault = el(s("Fault"), nsmap={"s": NS_S})
        fc = etree.SubElement(fault, "faultcode", nsmap={"a": NS_T})
        fc.text = f"a:{code}"
        fs = sub(fault, "faultstring", text)
        fs.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
        detail = sub(fault, "detail")
        rc = etree.SubElement(detail, f"{{{NS_E}}}ResponseCode", nsmap={"e": NS_E})
        rc.text = code
        msg = etree.SubElement(detail, f"{{{NS_E}}}Message", nsmap={"e": NS_E})
        msg.text = text
        if values:
            xml = etree.SubElement(detail, t("MessageXml"), nsmap={"t": NS_T})
            for name, value in values.items():
                if name in ("LineNumber", "LinePosition", "Violation"):
                    sub(xml, t(name), value)
                else:
                    sub(xml, t("Value"), value, Name=name)
        return web.Response(
            status=status, body=to_bytes(self.envelope(fault)), content_type="text/xml", charset="utf-8"
        )

    def record_violation(self, direction: str, operation: str, errors: list[str]) -> None:
        self.violations.append(Violation(direction, operation, errors))
        log.error("schema violation in %s %s: %s", operation, direction, "; ".join(errors))

    def validate(self, direction: str, operation: str, elem: Element) -> list[str]:
        if self.validator is None:
            return []
        errors = self.validator.errors(elem)
        if errors:
            self.record_violation(direction, operation, errors)
        return errors

    # ----------------------------------------------------------------------------------- handlers
    async def handle_wsdl(self, request: web.Request) -> web.StreamResponse:
        # IIS guards the whole /EWS virtual directory (anonymous access is off; Windows and Basic auth on):
        # the WSDL and schemas too. Clients such as ews-javascript-api start their NTLM handshake with a GET.
        auth = self.auth.authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        return web.FileResponse(schema_dir() / "Services.wsdl")

    async def handle_xsd(self, request: web.Request) -> web.StreamResponse:
        auth = self.auth.authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        name = request.path.rsplit("/", 1)[-1]
        return web.FileResponse(schema_dir() / name)

    def _parse(self, body: bytes) -> tuple[Element | None, Element]:
        root = etree.fromstring(body, PARSER)
        if root.tag != s("Envelope"):
            raise ValueError(f"root element is {local(root.tag)!r}, expected a SOAP 1.1 Envelope")
        header = root.find(s("Header"))
        soap_body = root.find(s("Body"))
        if soap_body is None or not len(children(soap_body)):
            raise ValueError("SOAP Body is missing or empty")
        return header, children(soap_body)[0]

    async def handle_ews(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        auth = self.auth.authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        account: Account = auth
        try:
            header, op_el = self._parse(raw)
        except (etree.XMLSyntaxError, ValueError) as exc:
            self.op_counts["<invalid>"] += 1
            return self.fault(
                "ErrorSchemaValidation",
                f"The request failed schema validation: {exc}",
                {"Violation": str(exc)},
            )
        op = local(op_el.tag)
        self.op_counts[op] += 1
        if ns_of(op_el.tag) != NS_M:
            return self.fault(
                "ErrorInvalidRequest", f"The request element {local(op_el.tag)!r} is not in the EWS messages namespace."
            )
        errors = self.validate("request", op, op_el)
        if errors:
            return self.fault(
                "ErrorSchemaValidation",
                "The request failed schema validation: " + errors[0],
                {"LineNumber": "0", "LinePosition": "0", "Violation": errors[0]},
            )
        try:
            ctx = self._context(account, header)
            ctx.server = self._route(request, ctx)
        except SoapFaultError as sf:
            return self.fault(sf.code, sf.text, sf.values)
        anchor = ctx.acting.email if ctx.acting else request.headers.get("X-AnchorMailbox", "")
        if anchor:
            self.mailbox_counts[anchor.lower()] += 1
        principal = ctx.acting.email if ctx.acting is not None else account.key
        limits = self.config.throttling
        budget = self._budget(principal)
        back_off = budget.back_off_ms()
        if back_off:
            self.throttled["ErrorServerBusy"] += 1
            return self.fault(
                "ErrorServerBusy",
                "The server cannot service this request right now. Try again later.",
                {"BackOffMilliseconds": str(back_off)},
            )
        if op == "GetStreamingEvents":
            # A hanging connection is charged as one call: its waiting is not server time.
            if self.open_streams[principal] >= limits.hanging_connection_limit:
                return self._over_budget("HangingConnectionLimit", limits.hanging_connection_limit)
            budget.spend(limits.call_cost_ms)
            self.open_streams[principal] += 1
            try:
                return await self._answer(request, ctx, op, op_el, anchor)
            finally:
                self.open_streams[principal] -= 1
        if self.in_flight[principal] >= limits.max_concurrency:
            return self._over_budget("MaxConcurrency", limits.max_concurrency)
        self.in_flight[principal] += 1
        started = time.monotonic()
        try:
            return await self._answer(request, ctx, op, op_el, anchor)
        finally:
            self.in_flight[principal] -= 1
            budget.spend((time.monotonic() - started) * 1000.0 + limits.call_cost_ms)

    def _budget(self, principal: str) -> TimeBudget:
        budget = self.budgets.get(principal)
        if budget is None:
            limits = self.config.throttling
            budget = TimeBudget(limits.max_burst_ms, limits.recharge_rate_ms, limits.cutoff_balance_ms)
            self.budgets[principal] = budget
        return budget

    def _over_budget(self, policy: str, limit: int) -> web.Response:
        """A throttling budget is spent ("EWS throttling in Exchange"): concurrent calls (EWSMaxConcurrency, 27)
        and open streaming connections (HangingConnectionLimit) are charged to the impersonated mailbox, or to the
        account that logged on when it acts for itself."""
        self.throttled["ErrorExceededConnectionCount"] += 1
        return self.fault(
            "ErrorExceededConnectionCount",
            "You have exceeded the available concurrent connections for your account. Try again once your other "
            "requests have completed.",
            {"Policy": policy, "MaxConcurrencyLimit": str(limit)},
        )

    async def _answer(
        self, request: web.Request, ctx: Context, op: str, op_el: Element, anchor: str
    ) -> web.StreamResponse:
        # fault injection
        rule = self.faults.pick("latency", op, anchor)
        if rule is not None:
            await asyncio.sleep(rule.latency_ms / 1000.0)
        if self.faults.pick("http_503", op, anchor) is not None:
            return web.Response(
                status=503,
                text="<h1>Service Unavailable</h1>",
                content_type="text/html",
                headers={"Retry-After": "1"},
            )
        rule = self.faults.pick("server_busy", op, anchor)
        if rule is not None:
            return self.fault(
                "ErrorServerBusy",
                "The server cannot service this request right now. Try again later.",
                {"BackOffMilliseconds": str(rule.back_off_ms)},
            )
        if self.faults.pick("malformed_xml", op, anchor) is not None:
            # HTTP 200 with a body cut off mid-element (a proxy or a failing backend truncating the answer)
            cut = (
                f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{NS_S}"><s:Body>'
                f'<m:{op}Response xmlns:m="{NS_M}"><m:ResponseMessages><m:{op}Resp'
            )
            return web.Response(body=cut.encode(), content_type="text/xml", charset="utf-8")
        if self.faults.pick("schema_invalid", op, anchor) is not None:
            # well-formed XML that violates messages.xsd: the response element without ResponseMessages
            bogus = el(m(f"{op}Response"), nsmap={"m": NS_M, "t": NS_T})
            sub(bogus, m("Unexpected"), "schema-invalid answer injected by /_emulator/faults")
            return web.Response(body=to_bytes(self.envelope(bogus)), content_type="text/xml", charset="utf-8")
        if op == "GetStreamingEvents":
            return await self.stream_events(request, ctx, op_el)
        handler = OPERATIONS.get(op)
        if handler is None:
            return self.fault(
                "ErrorInvalidOperation" if op in KNOWN_UNSERVED else "ErrorInvalidRequest",
                f"The operation {op} is not served by this server.",
            )
        try:
            response = handler(ctx, op_el)
        except SoapFaultError as sf:
            return self.fault(sf.code, sf.text, sf.values)
        except ItemError as err:
            return self.fault(err.code, err.text)
        for email in ctx.mailboxes_touched:
            if email != anchor:
                self.mailbox_counts[email] += 1
        if op == "SyncFolderItems" and anchor:
            last = any((e.text or "") == "true" for e in response.iter(m("IncludesLastItemInRange")))
            self.owners.sync_page(anchor.lower(), request.headers.get("User-Agent", ""), last=last)
        self.validate("response", op, response)
        resp = web.Response(body=to_bytes(self.envelope(response)), content_type="text/xml", charset="utf-8")
        self._affinity(request, resp, ctx.server)
        return resp

    def _route(self, request: web.Request, ctx: Context) -> int:
        """The mailbox server a request reaches, as Exchange's front end routes it ("Maintain affinity between a
        group of subscriptions and the Mailbox server in Exchange"): the server an X-BackEndOverrideCookie names,
        else the X-AnchorMailbox's server (an anchor that is no mailbox is refused), else the mailbox acted for."""
        # exchangelib sends the cookie back as a header of that name, browsers and the EWS Managed API as a cookie.
        cookie = request.headers.get("X-BackEndOverrideCookie") or request.cookies.get("X-BackEndOverrideCookie", "")
        server = self.store.server_index(cookie.split("~", 1)[0]) if cookie else None
        if server is not None:
            return server
        anchor = request.headers.get("X-AnchorMailbox", "").strip()
        if anchor:
            mbx = self.store.mailbox(anchor)
            if mbx is None:
                raise SoapFaultError(
                    "ErrorNonExistentMailbox",
                    f"The SMTP address in X-AnchorMailbox has no mailbox associated with it: {anchor}",
                )
            return mbx.server
        return ctx.acting.server if ctx.acting is not None else 0

    def _affinity(self, request: web.Request, response: web.StreamResponse, server: int) -> None:
        """Exchange answers X-PreferServerAffinity with a cookie naming the backend that served the request; a
        client that sends it back reaches that server again, wherever its anchor mailbox is."""
        if request.headers.get("X-PreferServerAffinity", "").lower() == "true":
            name = self.store.server_name(server)
            response.set_cookie(
                "X-BackEndOverrideCookie", f"{name}~{SERVER_VERSIONS[self.config.version][2]}", httponly=True, path="/"
            )

    def _context(self, account: Account, header: Element | None) -> Context:
        api_version = "Exchange2007_SP1"
        acting: Mailbox | None = self.store.mailbox(account.mailbox) if account.mailbox else None
        tz: dt.tzinfo | None = None
        if header is not None:
            rsv = header.find(t("RequestServerVersion"))
            if rsv is not None:
                api_version = rsv.get("Version", api_version)
                if api_version not in REQUEST_VERSIONS:
                    # What Exchange answers a version it does not know (clients such as exchangelib then try the
                    # next one): ErrorInvalidServerVersion ("ResponseCode", EWS reference,
                    # https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/responsecode).
                    raise SoapFaultError("ErrorInvalidServerVersion", "The specified server version is invalid.")
            imp = header.find(t("ExchangeImpersonation"))
            if imp is not None:
                sid_el = imp.find(t("ConnectingSID"))
                if sid_el is None:
                    raise SoapFaultError("ErrorInvalidRequest", "ExchangeImpersonation needs ConnectingSID")
                if not account.impersonation:
                    raise SoapFaultError(
                        "ErrorImpersonateUserDenied",
                        "The account does not have permission to impersonate the requested user.",
                    )
                smtp = text_of(sid_el, t("PrimarySmtpAddress")) or text_of(sid_el, t("SmtpAddress"))
                mbx = self.store.resolve_mailbox(
                    smtp=smtp, sid=text_of(sid_el, t("SID")), upn=text_of(sid_el, t("PrincipalName"))
                )
                if mbx is None:
                    ident = smtp or text_of(sid_el, t("SID")) or text_of(sid_el, t("PrincipalName")) or ""
                    raise SoapFaultError(
                        "ErrorNonExistentMailbox",
                        f"The SMTP address has no mailbox associated with it. ({ident})",
                    )
                acting = mbx
            tzc = header.find(t("TimeZoneContext"))
            if tzc is not None:
                tzd = tzc.find(t("TimeZoneDefinition"))
                if tzd is not None and tzd.get("Id"):
                    try:
                        tz = zone_for(tzd.get("Id", ""))
                    except UnknownTimeZoneError as exc:
                        raise SoapFaultError("ErrorTimeZone", str(exc)) from exc
        return Context(
            self.store,
            self.cal,
            account,
            acting,
            tz,
            api_version,
            self.settings.minute_seconds,
            max_stream_events=self.settings.max_events_per_notification,
            max_subscriptions=self.config.throttling.max_subscriptions,
        )

    # -------------------------------------------------------------------------------- streaming
    def _stream_doc(self, ctx: Context, build: Any) -> bytes:
        root, msgs = response_root("GetStreamingEvents")
        build(msgs)
        self.validate("response", "GetStreamingEvents", root)
        return to_bytes(self.envelope(root))

    async def stream_events(self, request: web.Request, ctx: Context, op_el: Element) -> web.StreamResponse:
        ids_el = op_el.find(m("SubscriptionIds"))
        ids = [(e.text or "").strip() for e in children(ids_el)] if ids_el is not None else []
        timeout_min = int(text_of(op_el, m("ConnectionTimeout")) or "0")
        subs: list[Subscription] = []
        bad: list[tuple[str, ItemError]] = []
        if not 1 <= timeout_min <= 30:
            return self.fault("ErrorInvalidRequest", f"ConnectionTimeout must be 1..30 minutes, got {timeout_min}")
        for sub_id in ids:
            try:
                subs.append(subscription_for(ctx, sub_id, "streaming"))
            except ItemError as err:
                bad.append((sub_id, err))
        if bad:
            first_err = bad[0][1]

            def error_msgs(msgs: Element) -> None:
                msg = add_message(msgs, "GetStreamingEvents", first_err)
                errs = sub(msg, m("ErrorSubscriptionIds"))
                for sub_id, _ in bad:
                    sub(errs, t("SubscriptionId"), sub_id)

            return web.Response(body=self._stream_doc(ctx, error_msgs), content_type="text/xml", charset="utf-8")
        response = web.StreamResponse(status=200, headers={"Content-Type": XML_CONTENT_TYPE})
        self._affinity(request, response, ctx.server)
        response.enable_chunked_encoding()
        await response.prepare(request)
        waiter = asyncio.Event()
        handle = StreamHandle(request, {x.mailbox.email for x in subs}, ids, ctx.account.key)
        self.streams.add(handle)
        client = request.headers.get("User-Agent", "")
        self.owners.stream_opened(handle.mailboxes, client)
        for subscription in subs:
            subscription.waiters.add(waiter)
            subscription.last_used = time.monotonic()
        deadline = time.monotonic() + timeout_min * self.settings.minute_seconds
        heartbeat = self.settings.heartbeat_seconds

        def status_msgs(status: str) -> Any:
            def build(msgs: Element) -> None:
                msg = add_message(msgs, "GetStreamingEvents")
                sub(msg, m("ConnectionStatus"), status)

            return build

        try:
            await response.write(self._stream_doc(ctx, status_msgs("OK")))
            while True:
                missed = [x for x in subs if x.missed and not x.expired]
                if missed:
                    await response.write(self._stream_doc(ctx, functools.partial(_missed_msgs, missed)))
                    break
                expired = [x for x in subs if x.expired]
                if expired:
                    await response.write(self._stream_doc(ctx, functools.partial(_expired_msgs, expired)))
                    break
                pending = [x for x in subs if x.events]
                if pending and self._drop_fault(handle):
                    break
                if pending:
                    batches: list[tuple[Subscription, list[Event]]] = []
                    for x in pending:
                        events = [
                            x.events.popleft()
                            for _ in range(min(len(x.events), self.settings.max_events_per_notification))
                        ]
                        batches.append((x, events))

                    await response.write(self._stream_doc(ctx, functools.partial(_event_msgs, batches)))
                    for x in subs:
                        x.last_used = time.monotonic()
                    continue
                now = time.monotonic()
                if now >= deadline:
                    await response.write(self._stream_doc(ctx, status_msgs("Closed")))
                    break
                waiter.clear()
                woken = await _wait_while_connected(request, waiter, min(heartbeat, deadline - now))
                if woken is None:  # the client is gone (its socket closed): nothing to write to
                    break
                if not woken:
                    if self._drop_fault(handle):
                        break
                    if time.monotonic() < deadline:
                        await response.write(self._stream_doc(ctx, status_msgs("OK")))
            if not request.transport or not request.transport.is_closing():
                await response.write_eof()
        finally:
            self.owners.stream_closed(handle.mailboxes, client)
            self.streams.discard(handle)
            for subscription in subs:
                subscription.waiters.discard(waiter)
                subscription.last_used = time.monotonic()
        return response

    def _drop_fault(self, handle: StreamHandle) -> bool:
        """A 'drop_streams' fault rule firing for this connection aborts it (no Closed status, like a network cut)."""
        for mailbox in sorted(handle.mailboxes) or [""]:
            if self.faults.pick("drop_streams", "GetStreamingEvents", mailbox) is not None:
                transport = handle.request.transport
                if transport is not None:
                    transport.abort()
                return True
        return False

    def drop_streams(self, mailbox: str | None = None) -> int:
        dropped = 0
        for handle in list(self.streams):
            if mailbox is not None and mailbox.lower() not in handle.mailboxes:
                continue
            transport = handle.request.transport
            if transport is not None:
                transport.abort()
                dropped += 1
            self.streams.discard(handle)
        return dropped

    # ------------------------------------------------------------------------------- autodiscover
    async def handle_autodiscover(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        auth = self.auth.authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        self.op_counts["GetUserSettings"] += 1
        try:
            root = etree.fromstring(raw, PARSER)
        except etree.XMLSyntaxError as exc:
            return web.Response(status=400, text=f"invalid XML: {exc}")
        body = root.find(s("Body"))
        req = body.find(f"{{{NS_A}}}GetUserSettingsRequestMessage") if body is not None else None
        if req is None:
            return web.Response(status=400, text="only GetUserSettingsRequestMessage is served")
        users = [text_of(u, f"{{{NS_A}}}Mailbox") or "" for u in req.iter(f"{{{NS_A}}}User")]
        settings = [x.text or "" for x in req.iter(f"{{{NS_A}}}Setting")]
        return web.Response(body=self._user_settings(users, settings), content_type="text/xml", charset="utf-8")

    def _user_settings(self, users: list[str], settings: list[str]) -> bytes:
        a = NS_A

        def q(name: str) -> str:
            return f"{{{a}}}{name}"

        major, minor, build, rev = SERVER_VERSIONS[self.config.version]
        env = el(s("Envelope"), nsmap={"s": NS_S, "a": NS_A, "i": "http://www.w3.org/2001/XMLSchema-instance"})
        header = sub(env, s("Header"))
        sub(header, q("ServerVersionInfo"))
        info = header[0]
        sub(info, q("MajorVersion"), str(major))
        sub(info, q("MinorVersion"), str(minor))
        sub(info, q("MajorBuildNumber"), str(build))
        sub(info, q("MinorBuildNumber"), str(rev))
        sub(info, q("Version"), "Exchange2015")
        action = etree.SubElement(header, f"{{{NS_WSA}}}Action", nsmap={"wsa": NS_WSA})
        action.text = "http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/GetUserSettingsResponse"
        body = sub(env, s("Body"))
        msg = sub(body, q("GetUserSettingsResponseMessage"))
        resp = sub(msg, q("Response"))
        sub(resp, q("ErrorCode"), "NoError")
        sub(resp, q("ErrorMessage"), "")
        responses = sub(resp, q("UserResponses"))
        for user in users:
            ur = sub(responses, q("UserResponse"))
            mbx = self.store.mailbox(user)
            if mbx is None:
                sub(ur, q("ErrorCode"), "InvalidUser")
                sub(ur, q("ErrorMessage"), f"Invalid user: '{user}'")
                sub(ur, q("RedirectTarget")).set("{http://www.w3.org/2001/XMLSchema-instance}nil", "true")
                sub(ur, q("UserSettingErrors"))
                sub(ur, q("UserSettings"))
                continue
            values = self._settings_for(mbx)
            sub(ur, q("ErrorCode"), "NoError")
            sub(ur, q("ErrorMessage"), "No error.")
            sub(ur, q("RedirectTarget")).set("{http://www.w3.org/2001/XMLSchema-instance}nil", "true")
            errors = sub(ur, q("UserSettingErrors"))
            out = sub(ur, q("UserSettings"))
            for name in settings:
                if name in values:
                    us = sub(out, q("UserSetting"))
                    us.set("{http://www.w3.org/2001/XMLSchema-instance}type", "a:StringSetting")
                    sub(us, q("Name"), name)
                    sub(us, q("Value"), values[name])
                else:
                    err = sub(errors, q("UserSettingError"))
                    sub(err, q("ErrorCode"), "SettingIsNotAvailable")
                    sub(err, q("ErrorMessage"), f"User setting '{name}' is not available. ")
                    sub(err, q("SettingName"), name)
        return to_bytes(env)

    def _settings_for(self, mbx: Mailbox) -> dict[str, str]:
        major, minor, build, rev = SERVER_VERSIONS[self.config.version]
        host = self.base_url.split("://", 1)[-1].split(":")[0]
        server = f"{mbx.guid}@{mbx.email.split('@', 1)[1]}"
        return {
            "UserDisplayName": mbx.display_name,
            "UserDN": f"/o=First Organization/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/"
            f"cn={mbx.local_part}",
            "UserDeploymentId": "00000000-0000-0000-0000-000000000000",
            "InternalMailboxServer": server,
            "MailboxDN": f"/o=First Organization/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Configuration/"
            f"cn=Servers/cn={host}/cn=Microsoft Private MDB",
            "ActiveDirectoryServer": host,
            "CasVersion": f"{major}.{minor:02d}.{build:04d}.{rev:03d}",
            "EwsSupportedSchemas": "Exchange2007, Exchange2007_SP1, Exchange2010, Exchange2010_SP1, "
            "Exchange2010_SP2, Exchange2013, Exchange2013_SP1, Exchange2015, Exchange2016",
            "InternalEwsUrl": self.ews_url,
            "ExternalEwsUrl": self.ews_url,
            # Mailboxes with the same GroupingInformation and ExternalEwsUrl may share a subscription group
            # (at most 200): here every mailbox server is a group of its own.
            "GroupingInformation": self.store.server_name(mbx.server),
            "ExternalEwsVersion": f"{major}.{minor:02d}.{build:04d}.{rev:03d}",
            "AutoDiscoverSMTPAddress": mbx.email,
            "InternalWebClientUrls": self.base_url + "/owa/",
            "ExternalWebClientUrls": self.base_url + "/owa/",
            "InternalEcpUrl": self.base_url + "/ecp/",
            "ExternalEcpUrl": self.base_url + "/ecp/",
            "InternalOABUrl": self.base_url + "/OAB/",
            "ExternalOABUrl": self.base_url + "/OAB/",
            "MapiHttpEnabled": "True",
        }


def _expired_msgs(expired: list[Subscription], msgs: Element) -> None:
    gone = ItemError("ErrorSubscriptionNotFound", "The specified subscription was not found.")
    msg = add_message(msgs, "GetStreamingEvents", gone)
    errs = sub(msg, m("ErrorSubscriptionIds"))
    for x in expired:
        sub(errs, t("SubscriptionId"), x.id)
    sub(msg, m("ConnectionStatus"), "Closed")


def _missed_msgs(missed: list[Subscription], msgs: Element) -> None:
    msg = add_message(msgs, "GetStreamingEvents", missed_events(missed[0]))
    errs = sub(msg, m("ErrorSubscriptionIds"))
    for x in missed:
        missed_events(x)
        sub(errs, t("SubscriptionId"), x.id)
    sub(msg, m("ConnectionStatus"), "Closed")


def _event_msgs(batches: list[tuple[Subscription, list[Event]]], msgs: Element) -> None:
    msg = add_message(msgs, "GetStreamingEvents")
    notes = sub(msg, m("Notifications"))
    for x, events in batches:
        write_notification(notes, x, events, None, None, t("Notification"))
    sub(msg, m("ConnectionStatus"), "OK")


KNOWN_UNSERVED = {
    "GetServerTimeZones",
    "ResolveNames",
    "ExpandDL",
    "GetUserAvailability",
    "SendItem",
    "MoveItem",
    "CopyItem",
    "UpdateFolder",
    "EmptyFolder",
    "GetAttachment",
    "CreateAttachment",
    "DeleteAttachment",
    "GetDelegate",
    "AddDelegate",
    "RemoveDelegate",
    "UpdateDelegate",
    "GetUserOofSettings",
    "SetUserOofSettings",
    "GetRoomLists",
    "GetRooms",
    "FindPeople",
    "ExportItems",
    "UploadItems",
    "MarkAsJunk",
    "ArchiveItem",
    "GetMailTips",
    "GetSearchableMailboxes",
    "GetInboxRules",
    "UpdateInboxRules",
    "GetPersona",
    "SendNotification",
    "GetUserConfiguration",
    "CreateUserConfiguration",
    "DeleteUserConfiguration",
    "UpdateUserConfiguration",
}


def dumps(data: Any) -> str:
    return json.dumps(data, indent=1, default=str)


async def _wait_while_connected(request: web.Request, waiter: asyncio.Event, seconds: float) -> bool | None:
    """Wait up to `seconds` for `waiter`: True when it was set, False when the time passed, None as soon as the
    client's socket closed (checked every 0.2 s: a closed stream stops counting at once, not at the next heartbeat)."""
    end = time.monotonic() + seconds
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return None
        left = end - time.monotonic()
        if left <= 0:
            return False
        try:
            await asyncio.wait_for(waiter.wait(), timeout=min(0.2, left))
            return True
        except TimeoutError:
            continue

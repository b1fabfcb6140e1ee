"""Admin and inspection HTTP API under /_emulator/ (JSON). Binds with the EWS server; no authentication."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from lxml import etree

from .calxml import ItemError, ParseContext, apply_field, normalize_times
from .config import ConfigError, Throttling
from .model import CalendarItem, Mailbox
from .owners import OwnerWatch
from .seeding import seed
from .xmlutil import PARSER, children, fmt_dt, t

if TYPE_CHECKING:
    from .server import Emulator

PREFIX = "/_emulator"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status, content_type="application/json")


def _error(message: str, status: int = 400) -> web.Response:
    return _json({"error": message}, status)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except json.JSONDecodeError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"body is not JSON: {exc}"}), content_type="application/json"
        ) from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body must be a JSON object"}), content_type="application/json"
        )
    return data


def item_json(item: CalendarItem) -> dict[str, Any]:
    out: dict[str, Any] = {
        "item_id": item.item_id,
        "change_key": item.change_key,
        "uid": item.uid,
        "type": item.item_type,
        "subject": item.subject,
        "start": fmt_dt(item.start),
        "end": fmt_dt(item.end),
        "time_zone": item.start_tz,
        "all_day": item.is_all_day,
        "location": item.location,
        "organizer": item.organizer_email,
        "is_meeting": item.is_meeting,
        "is_cancelled": item.is_cancelled,
        "my_response": item.my_response,
        "sequence": item.sequence,
        "attendees": [{"email": a.email, "role": role, "response": a.response} for role, a in item.attendees()],
        "sensitivity": item.sensitivity,
        "last_modified": fmt_dt(item.modified),
    }
    if item.recurrence is not None:
        rec = item.recurrence
        out["recurrence"] = {
            "pattern": rec.pattern,
            "range": rec.range_kind,
            "interval": rec.interval,
            "start_date": rec.start_date.isoformat(),
            "end_date": rec.end_date.isoformat() if rec.end_date else None,
            "number": rec.number,
            "days_of_week": rec.days_of_week,
        }
        out["modified_occurrences"] = [
            {
                "original_start": fmt_dt(k),
                "item_id": v.item_id,
                "start": fmt_dt(v.start),
                "end": fmt_dt(v.end),
                "subject": v.subject,
            }
            for k, v in sorted(item.exceptions.items())
        ]
        out["deleted_occurrences"] = [fmt_dt(k) for k in sorted(item.deleted)]
    if item.ext:
        out["extended_properties"] = [{"uri": v.attrs, "values": v.values} for v in item.ext.values()]
    return out


def mailbox_json(emu: Emulator, mbx: Mailbox) -> dict[str, Any]:
    return {
        "email": mbx.email,
        "display_name": mbx.display_name,
        "sid": mbx.sid,
        "items": len(mbx.items),
        "subscriptions": len(mbx.subscriptions),
        "server": emu.store.server_name(mbx.server),
        "delegates": dict(mbx.delegates),
        "requests": emu.mailbox_counts.get(mbx.email, 0),
    }


def raw_item(emu: Emulator, mbx: Mailbox, xml: str) -> CalendarItem:
    node = etree.fromstring(xml.encode(), PARSER)
    if node.tag != t("CalendarItem"):
        raise ValueError("calendar_item must be a t:CalendarItem element in the EWS types namespace")
    now = dt.datetime.now(dt.UTC)
    item = CalendarItem(no=emu.store.next_item_no(), mailbox=mbx, uid="", start=now, end=now)
    ctx = ParseContext(emu.store, None, validate=False)
    for child in children(node):
        apply_field(item, child, ctx)
    normalize_times(item, validate=False)
    return item


def add_admin_routes(app: web.Application, emu: Emulator) -> None:
    r = app.router

    async def info(request: web.Request) -> web.Response:
        return _json(
            {
                "ews_url": emu.ews_url,
                "autodiscover_url": emu.autodiscover_url,
                "version": emu.config.version,
                "strict": emu.settings.strict,
                "mailboxes": len(emu.store.mailboxes),
                "items": sum(len(x.items) for x in emu.store.mailboxes.values()),
                "subscriptions": len(emu.store.subscriptions),
                "open_streams": len(emu.streams),
                "violations": len(emu.violations),
                "meeting_messages": {
                    "in_transit": emu.transport.in_transit,
                    "delivered": emu.transport.delivered,
                    "out_of_date": emu.transport.out_of_date,
                },
            }
        )

    async def list_mailboxes(request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "0") or 0)
        boxes = list(emu.store.mailboxes.values())
        if limit:
            boxes = boxes[:limit]
        return _json([mailbox_json(emu, b) for b in boxes])

    async def add_mailbox(request: web.Request) -> web.Response:
        data = await _body(request)
        email = data.get("email")
        if not isinstance(email, str) or "@" not in email:
            return _error(f"'email' must be an SMTP address, got {email!r}")
        mbx = emu.store.add_mailbox(email, data.get("display_name"))
        if data.get("password"):
            emu.store.add_account(email, str(data["password"]), False, email)
            emu.auth.write_user_file()
        return _json(mailbox_json(emu, mbx), 201)

    async def get_mailbox(request: web.Request) -> web.Response:
        mbx = emu.store.mailbox(request.match_info["email"])
        if mbx is None:
            return _error(f"no mailbox {request.match_info['email']!r}", 404)
        return _json(mailbox_json(emu, mbx))

    async def mailbox_items(request: web.Request) -> web.Response:
        mbx = emu.store.mailbox(request.match_info["email"])
        if mbx is None:
            return _error(f"no mailbox {request.match_info['email']!r}", 404)
        return _json([item_json(i) for i in sorted(mbx.items_in("calendar"), key=lambda i: (i.start, i.no))])

    async def add_account(request: web.Request) -> web.Response:
        data = await _body(request)
        try:
            acc = emu.store.add_account(
                str(data.get("username", "")),
                str(data.get("password", "")),
                bool(data.get("impersonation", False)),
                data.get("mailbox"),
            )
            emu.auth.write_user_file()
        except ValueError as exc:
            return _error(str(exc))
        return _json({"username": acc.username, "impersonation": acc.impersonation, "mailbox": acc.mailbox}, 201)

    async def list_accounts(request: web.Request) -> web.Response:
        return _json(
            [
                {"username": a.username, "impersonation": a.impersonation, "mailbox": a.mailbox}
                for a in emu.store.accounts.values()
            ]
        )

    async def add_delegate(request: web.Request) -> web.Response:
        data = await _body(request)
        try:
            emu.store.add_delegate(
                str(data.get("owner", "")), str(data.get("delegate", "")), str(data.get("rights", "Editor"))
            )
        except ValueError as exc:
            return _error(str(exc))
        return _json(
            {
                "owner": data.get("owner"),
                "delegate": data.get("delegate"),
                "rights": data.get("rights", "Editor"),
            },
            201,
        )

    async def do_seed(request: web.Request) -> web.Response:
        data = await _body(request)
        started = time.monotonic()
        try:
            result = seed(emu.store, emu.cal.seeding(), data)
        except (ValueError, TypeError) as exc:
            return _error(str(exc))
        result["seconds"] = round(time.monotonic() - started, 3)
        return _json(result, 201)

    async def put_raw_item(request: web.Request) -> web.Response:
        """Store a CalendarItem given as EWS XML without CreateItem's checks (absurd recurrences stay as written):
        what a broken or third-party server could hand out. Body: {calendar_item: "<t:CalendarItem ...>",
        send_meeting_invitations?}."""
        mbx = emu.store.mailbox(request.match_info["email"])
        if mbx is None:
            return _error("unknown mailbox", 404)
        data = await _body(request)
        try:
            item = raw_item(emu, mbx, str(data.get("calendar_item", "")))
            emu.cal.create(mbx, item, str(data.get("send_meeting_invitations", "SendToAllAndSaveCopy")), mbx.email)
        except (ItemError, ValueError, etree.XMLSyntaxError) as exc:
            return _error(f"{type(exc).__name__}: {exc}")
        return _json(item_json(item), 201)

    async def requests_(request: web.Request) -> web.Response:
        return _json(
            {
                "operations": dict(emu.op_counts),
                "mailboxes": dict(emu.mailbox_counts),
                "total": sum(emu.op_counts.values()),
            }
        )

    async def violations(request: web.Request) -> web.Response:
        return _json(
            [
                {"direction": v.direction, "operation": v.operation, "errors": v.errors, "at": v.at}
                for v in emu.violations
            ]
        )

    async def subscriptions(request: web.Request) -> web.Response:
        return _json(
            [
                {
                    "id": x.id,
                    "mailbox": x.mailbox.email,
                    "kind": x.kind,
                    "expired": x.expired,
                    "pending_events": len(x.events),
                    "folders": sorted(x.folders) if x.folders else None,
                    "streaming_connections": len(x.waiters),
                    "server": emu.store.server_name(x.server),
                }
                for x in emu.store.subscriptions.values()
            ]
        )

    async def expire_subscriptions(request: web.Request) -> web.Response:
        data = await _body(request)
        ids = data.get("subscription_ids")
        mailbox = data.get("mailbox")
        expired = []
        for x in list(emu.store.subscriptions.values()):
            if ids is not None and x.id not in ids:
                continue
            if mailbox is not None and x.mailbox.email != str(mailbox).lower():
                continue
            x.expired = True
            x.wake()
            expired.append(x.id)
        return _json({"expired": expired})

    async def move_mailbox(request: web.Request) -> web.Response:
        """Move a mailbox to another mailbox server (New-MoveRequest to a database there)."""
        mbx = emu.store.mailbox(request.match_info["email"])
        if mbx is None:
            return _error(f"no mailbox {request.match_info['email']!r}", 404)
        data = await _body(request)
        target = emu.store.server_index(str(data.get("server", "")))
        if target is None:
            names = [emu.store.server_name(i) for i in range(emu.store.servers)]
            return _error(f"'server' must name a mailbox server ({', '.join(names)}), got {data.get('server')!r}")
        ended = emu.store.move_mailbox(mbx, target)
        return _json({**mailbox_json(emu, mbx), "subscriptions_ended": ended})

    async def miss_events(request: web.Request) -> web.Response:
        """Drop the queued events of subscriptions as an overflowing queue does: their next GetEvents or
        GetStreamingEvents answers ErrorMissedNotificationEvents (open streams get it at once)."""
        data = await _body(request)
        ids = data.get("subscription_ids")
        mailbox = data.get("mailbox")
        missed = []
        for x in list(emu.store.subscriptions.values()):
            if x.expired or (ids is not None and x.id not in ids):
                continue
            if mailbox is not None and x.mailbox.email != str(mailbox).lower():
                continue
            x.events.clear()
            x.missed = True
            x.wake()
            missed.append(x.id)
        return _json({"missed": missed})

    async def get_throttling(request: web.Request) -> web.Response:
        limits = emu.config.throttling
        return _json({**dataclasses.asdict(limits), "refused": dict(emu.throttled)})

    async def set_throttling(request: web.Request) -> web.Response:
        """Change the throttling policy (Set-ThrottlingPolicy): the given keys replace theirs; budgets start full."""
        data = await _body(request)
        try:
            limits = Throttling.from_json({**dataclasses.asdict(emu.config.throttling), **data})
        except ConfigError as exc:
            return _error(str(exc))
        emu.config.throttling = limits
        emu.budgets.clear()
        return _json(dataclasses.asdict(limits))

    async def owners(request: web.Request) -> web.Response:
        """Streaming connections and sync runs per mailbox at once (owners.py): two at once = two owners."""
        return _json(emu.owners.report())

    async def reset(request: web.Request) -> web.Response:
        emu.owners = OwnerWatch(emu.owners.idle_seconds)
        emu.op_counts.clear()
        emu.mailbox_counts.clear()
        emu.violations.clear()
        emu.throttled.clear()
        return _json({"reset": True})

    async def list_faults(request: web.Request) -> web.Response:
        return _json(emu.faults.list())

    async def add_fault(request: web.Request) -> web.Response:
        data = await _body(request)
        now = data.pop("now", data.get("kind") == "drop_streams")
        if data.get("kind") == "drop_streams" and now:
            return _json({"dropped": emu.drop_streams(data.get("mailbox"))})
        try:
            rule = emu.faults.add(data)
        except (ValueError, TypeError) as exc:
            return _error(str(exc))
        return _json(rule.to_json(), 201)

    async def clear_faults(request: web.Request) -> web.Response:
        emu.faults.clear()
        return _json({"cleared": True})

    async def delete_fault(request: web.Request) -> web.Response:
        try:
            rule_id = int(request.match_info["fault_id"])
        except ValueError:
            return _error(f"fault id must be an integer, got {request.match_info['fault_id']!r}")
        if not emu.faults.remove(rule_id):
            return _error(f"no fault {rule_id}", 404)
        return _json({"deleted": rule_id})

    async def drop_streams(request: web.Request) -> web.Response:
        data = await _body(request)
        return _json({"dropped": emu.drop_streams(data.get("mailbox"))})

    r.add_get(PREFIX, info)
    r.add_get(PREFIX + "/", info)
    r.add_get(PREFIX + "/mailboxes", list_mailboxes)
    r.add_post(PREFIX + "/mailboxes", add_mailbox)
    r.add_get(PREFIX + "/mailboxes/{email}", get_mailbox)
    r.add_get(PREFIX + "/mailboxes/{email}/items", mailbox_items)
    r.add_post(PREFIX + "/mailboxes/{email}/items", put_raw_item)
    r.add_post(PREFIX + "/mailboxes/{email}/move", move_mailbox)
    r.add_get(PREFIX + "/accounts", list_accounts)
    r.add_post(PREFIX + "/accounts", add_account)
    r.add_post(PREFIX + "/delegates", add_delegate)
    r.add_post(PREFIX + "/seed", do_seed)
    r.add_get(PREFIX + "/requests", requests_)
    r.add_get(PREFIX + "/violations", violations)
    r.add_get(PREFIX + "/subscriptions", subscriptions)
    r.add_post(PREFIX + "/subscriptions/expire", expire_subscriptions)
    r.add_post(PREFIX + "/subscriptions/miss", miss_events)
    r.add_get(PREFIX + "/throttling", get_throttling)
    r.add_post(PREFIX + "/throttling", set_throttling)
    r.add_post(PREFIX + "/reset", reset)
    r.add_get(PREFIX + "/owners", owners)
    r.add_get(PREFIX + "/faults", list_faults)
    r.add_post(PREFIX + "/faults", add_fault)
    r.add_delete(PREFIX + "/faults", clear_faults)
    r.add_delete(PREFIX + "/faults/{fault_id}", delete_fault)
    r.add_post(PREFIX + "/streams/drop", drop_streams)

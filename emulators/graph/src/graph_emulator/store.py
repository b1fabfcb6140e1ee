"""Mailboxes and their events: single instances, series masters, occurrences (computed) and exceptions.

Event resource: https://learn.microsoft.com/en-us/graph/api/resources/event — `type` is singleInstance, occurrence,
exception or seriesMaster; occurrences and exceptions carry `seriesMasterId` and `originalStart`; `changeKey` and
`@odata.etag` change on every update; `iCalUId` is shared by all copies of a meeting. Attendee copies: an invitation
to a user of the same tenant lands in that user's calendar (isOrganizer false) and their response
(https://learn.microsoft.com/en-us/graph/api/event-accept) updates the organizer's attendee status.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from . import recurrence as rec
from .errors import bad_request, not_found
from .timefmt import parse_date_time_zone

# Properties a client may set on POST/PATCH (the writable properties of the event resource).
WRITABLE = frozenset(
    {
        "subject",
        "body",
        "start",
        "end",
        "location",
        "locations",
        "attendees",
        "isAllDay",
        "recurrence",
        "showAs",
        "sensitivity",
        "importance",
        "categories",
        "isOnlineMeeting",
        "onlineMeetingProvider",
        "isReminderOn",
        "reminderMinutesBeforeStart",
        "responseRequested",
        "allowNewTimeProposals",
        "hideAttendees",
        "transactionId",
        "singleValueExtendedProperties",
        "onlineMeetingUrl",
        "originalStartTimeZone",
        "originalEndTimeZone",
    }
)
ENUMS = {
    "showAs": ("free", "tentative", "busy", "oof", "workingElsewhere", "unknown"),
    "sensitivity": ("normal", "personal", "private", "confidential"),
    "importance": ("low", "normal", "high"),
}
ATTENDEE_TYPES = ("required", "optional", "resource")
RESPONSES = ("none", "organizer", "tentativelyAccepted", "accepted", "declined", "notResponded")


def new_id(prefix: str = "AAMkAG") -> str:
    return prefix + base64.urlsafe_b64encode(uuid.uuid4().bytes + secrets.token_bytes(8)).decode().rstrip("=")


def new_change_key() -> str:
    return base64.b64encode(secrets.token_bytes(12)).decode()


def occurrence_id(master_id: str, original_start: datetime) -> str:
    raw = f"{master_id}|{original_start.astimezone(UTC):%Y%m%dT%H%M%SZ}".encode()
    return "AAMkOC" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_occurrence_id(event_id: str) -> tuple[str, datetime] | None:
    if not event_id.startswith("AAMkOC"):
        return None
    body = event_id[6:]
    try:
        master, stamp = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().split("|")
        return master, datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass
class Mailbox:
    id: str
    tenant_id: str
    user_principal_name: str
    display_name: str
    events: dict[str, StoredEvent] = field(default_factory=dict)

    @property
    def address(self) -> dict[str, str]:
        return {"name": self.display_name, "address": self.user_principal_name}


@dataclass
class StoredEvent:
    """A stored item: a single instance, a series master, or an exception of a master (in `master.exceptions`)."""

    id: str
    mailbox_id: str
    props: dict[str, Any]
    start: datetime
    end: datetime
    start_zone: str
    end_zone: str
    organizer: dict[str, str]
    is_organizer: bool
    ical_uid: str
    created: datetime
    modified: datetime
    change_key: str
    recurrence: dict[str, Any] | None = None
    extended: dict[str, str] = field(default_factory=dict)
    response: dict[str, str] = field(default_factory=lambda: {"response": "organizer", "time": "0001-01-01T00:00:00Z"})
    is_cancelled: bool = False
    exceptions: dict[datetime, StoredEvent] = field(default_factory=dict)
    cancelled: set[datetime] = field(default_factory=set)
    master_id: str | None = None
    original_start: datetime | None = None

    @property
    def type(self) -> str:
        if self.master_id is not None:
            return "exception"
        return "seriesMaster" if self.recurrence else "singleInstance"

    def touch(self, now: datetime) -> None:
        self.modified = now
        self.change_key = new_change_key()


@dataclass(frozen=True)
class Instance:
    """One item as calendarView sees it: a single instance, an occurrence or an exception (or a master on GET)."""

    id: str
    type: str
    item: StoredEvent  # the stored item whose properties it shows (the master for an occurrence)
    start: datetime
    end: datetime
    change_key: str
    master: StoredEvent | None = None
    original_start: datetime | None = None


ChangeListener = Callable[[Mailbox, str, str], None]  # (mailbox, stored item id, "created"|"updated"|"deleted")


def _validate_props(body: dict[str, Any]) -> None:
    for key, value in body.items():
        if key.startswith("@odata."):
            continue
        if key not in WRITABLE:
            raise bad_request(
                f"The property '{key}' does not exist on type 'microsoft.graph.event'. Make sure to only use property "
                "names that are defined by the type or mark the type as open type."
            )
        if key in ENUMS and value not in ENUMS[key]:
            raise bad_request(f"Cannot convert the literal '{value}' to the expected type 'microsoft.graph.{key}'.")
        if key == "attendees":
            _validate_attendees(value)
    ext = body.get("singleValueExtendedProperties")
    if ext is not None and (
        not isinstance(ext, list)
        or not all(
            isinstance(p, dict) and isinstance(p.get("id"), str) and isinstance(p.get("value"), str) for p in ext
        )
    ):
        raise bad_request(f"singleValueExtendedProperties must be a list of {{id, value}} strings, got {ext!r}")


def _validate_attendees(value: Any) -> None:
    if not isinstance(value, list):
        raise bad_request(f"attendees must be a list, got {value!r}")
    for attendee in value:
        address = attendee.get("emailAddress") if isinstance(attendee, dict) else None
        if (
            not isinstance(address, dict)
            or not isinstance(address.get("address"), str)
            or "@" not in address["address"]
        ):
            raise bad_request(f"attendee needs emailAddress.address, got {attendee!r}")
        if attendee.get("type", "required") not in ATTENDEE_TYPES:
            raise bad_request(f"attendee type must be one of {ATTENDEE_TYPES}, got {attendee.get('type')!r}")


def _normal_attendees(value: list[dict[str, Any]], previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    known = {a["emailAddress"]["address"].lower(): a.get("status") for a in previous}
    result = []
    for attendee in value:
        address = attendee["emailAddress"]
        status = known.get(address["address"].lower()) or {"response": "none", "time": "0001-01-01T00:00:00Z"}
        result.append(
            {
                "type": attendee.get("type", "required"),
                "status": status,
                "emailAddress": {"name": address.get("name") or address["address"], "address": address["address"]},
            }
        )
    return result


class Store:
    def __init__(self) -> None:
        self.mailboxes: dict[str, Mailbox] = {}
        self.listeners: list[ChangeListener] = []

    # ----------------------------------------------------------------- mailboxes
    def add_mailbox(self, mailbox: Mailbox) -> Mailbox:
        existing = self.mailbox_or_none(mailbox.user_principal_name) or self.mailboxes.get(mailbox.id)
        if existing is not None:
            raise ValueError(f"mailbox {mailbox.user_principal_name} ({mailbox.id}) already exists")
        self.mailboxes[mailbox.id] = mailbox
        return mailbox

    def mailbox_or_none(self, key: str) -> Mailbox | None:
        found = self.mailboxes.get(key)
        if found is not None:
            return found
        lowered = key.lower()
        return next((m for m in self.mailboxes.values() if m.user_principal_name.lower() == lowered), None)

    def mailbox(self, key: str, tenant_id: str) -> Mailbox:
        """A user of the tenant by id or userPrincipalName (else 404 ErrorInvalidUser, as Exchange Online answers)."""
        found = self.mailbox_or_none(key)
        if found is None or found.tenant_id != tenant_id:
            raise not_found(f"The requested user '{key}' is invalid.", "ErrorInvalidUser")
        return found

    def _notify(self, mailbox: Mailbox, item_id: str, change: str) -> None:
        for listener in self.listeners:
            listener(mailbox, item_id, change)

    # ----------------------------------------------------------------- lookup
    def resolve(self, mailbox: Mailbox, event_id: str) -> Instance:
        item = mailbox.events.get(event_id)
        if item is not None:
            return Instance(item.id, item.type, item, item.start, item.end, item.change_key)
        parsed = parse_occurrence_id(event_id)
        master = mailbox.events.get(parsed[0]) if parsed else None
        if parsed is None or master is None or master.recurrence is None:
            raise not_found("The specified object was not found in the store.")
        original = parsed[1]
        if original in master.cancelled:
            raise not_found("The specified object was not found in the store.")
        if original in master.exceptions:
            exc = master.exceptions[original]
            return Instance(exc.id, "exception", exc, exc.start, exc.end, exc.change_key, master, original)
        duration = master.end - master.start
        if original not in set(
            rec.starts_between(
                master.recurrence, master.start, master.start_zone, duration, original, original + timedelta(seconds=1)
            )
        ):
            raise not_found("The specified object was not found in the store.")
        return Instance(
            event_id, "occurrence", master, original, original + duration, master.change_key, master, original
        )

    def view(self, mailbox: Mailbox, lo: datetime, hi: datetime) -> list[Instance]:
        """calendarView: single instances, occurrences and exceptions overlapping [lo, hi), by start
        (https://learn.microsoft.com/en-us/graph/api/user-list-calendarview)."""
        found: list[Instance] = []
        for item in mailbox.events.values():
            if item.recurrence is None:
                if item.start < hi and item.end > lo:
                    found.append(Instance(item.id, "singleInstance", item, item.start, item.end, item.change_key))
                continue
            duration = item.end - item.start
            for start in rec.starts_between(
                item.recurrence, item.start, item.start_zone, duration, lo - timedelta(days=2), hi + timedelta(days=2)
            ):
                if start in item.cancelled:
                    continue
                exc = item.exceptions.get(start)
                if exc is not None:
                    if exc.start < hi and exc.end > lo:
                        found.append(
                            Instance(exc.id, "exception", exc, exc.start, exc.end, exc.change_key, item, start)
                        )
                elif start < hi and start + duration > lo:
                    found.append(
                        Instance(
                            occurrence_id(item.id, start),
                            "occurrence",
                            item,
                            start,
                            start + duration,
                            item.change_key,
                            item,
                            start,
                        )
                    )
        found.sort(key=lambda inst: (inst.start, inst.id))
        return found

    # ----------------------------------------------------------------- writes
    def create(self, mailbox: Mailbox, body: dict[str, Any], now: datetime) -> StoredEvent:
        _validate_props(body)
        if "start" not in body or "end" not in body:
            raise bad_request("An event needs start and end (dateTimeTimeZone).", "ErrorInvalidRequest")
        start, start_zone = parse_date_time_zone(body["start"], "start")
        end, end_zone = parse_date_time_zone(body["end"], "end")
        if end < start:
            raise bad_request("The end of the event is before its start.", "ErrorInvalidRequest")
        props = {
            k: v
            for k, v in body.items()
            if k not in {"start", "end", "recurrence", "singleValueExtendedProperties"} and not k.startswith("@odata.")
        }
        props["attendees"] = _normal_attendees(body.get("attendees") or [], [])
        event = StoredEvent(
            id=new_id(),
            mailbox_id=mailbox.id,
            props=props,
            start=start,
            end=end,
            start_zone=start_zone,
            end_zone=end_zone,
            organizer=dict(mailbox.address),
            is_organizer=True,
            ical_uid="040000008200E00074C5B7101A82E008" + uuid.uuid4().hex.upper(),
            created=now,
            modified=now,
            change_key=new_change_key(),
            recurrence=rec.validate(body["recurrence"]) if body.get("recurrence") is not None else None,
            extended={p["id"]: p["value"] for p in body.get("singleValueExtendedProperties") or []},
        )
        mailbox.events[event.id] = event
        self._notify(mailbox, event.id, "created")
        self._deliver(mailbox, event, now)
        return event

    def update(self, mailbox: Mailbox, event_id: str, body: dict[str, Any], now: datetime) -> Instance:
        _validate_props(body)
        inst = self.resolve(mailbox, event_id)
        # Everything is checked before anything changes: a refused PATCH leaves the event as it was.
        if inst.master is not None and "recurrence" in body:
            raise bad_request("An occurrence or exception of a series cannot have its own recurrence.")
        owner = inst.master if inst.master is not None else inst.item
        start, start_zone = (
            parse_date_time_zone(body["start"], "start") if "start" in body else (inst.start, inst.item.start_zone)
        )
        end, end_zone = parse_date_time_zone(body["end"], "end") if "end" in body else (inst.end, inst.item.end_zone)
        if end < start:
            raise bad_request("The end of the event is before its start.", "ErrorInvalidRequest")
        recurrence = body.get("recurrence")
        if recurrence is not None:
            rec.validate(recurrence)
        if inst.type == "occurrence":
            assert inst.master is not None and inst.original_start is not None
            target = StoredEvent(
                id=inst.id,
                mailbox_id=mailbox.id,
                props={},
                start=inst.start,
                end=inst.end,
                start_zone=inst.master.start_zone,
                end_zone=inst.master.end_zone,
                organizer=inst.master.organizer,
                is_organizer=inst.master.is_organizer,
                ical_uid=inst.master.ical_uid,
                created=now,
                modified=now,
                change_key=new_change_key(),
                master_id=inst.master.id,
                original_start=inst.original_start,
            )
            inst.master.exceptions[inst.original_start] = target
        else:
            target = inst.item
        target.start_zone, target.end_zone = start_zone, end_zone
        reshaped = start != target.start or end != target.end or "recurrence" in body
        target.start, target.end = start, end
        if "recurrence" in body:
            target.recurrence = recurrence
        if reshaped and target.master_id is None:
            # A changed series time or pattern drops its exceptions and deleted occurrences, as Outlook does.
            target.exceptions.clear()
            target.cancelled.clear()
        for key, value in body.items():
            if key in {"start", "end", "recurrence"} or key.startswith("@odata."):
                continue
            if key == "singleValueExtendedProperties":
                target.extended.update({p["id"]: p["value"] for p in value})
            elif key == "attendees":
                # An exception's attendees start from the series' (their answers included).
                previous = target.props.get("attendees") or owner.props.get("attendees") or []
                target.props["attendees"] = _normal_attendees(value, previous)
            else:
                target.props[key] = value
        target.touch(now)
        stored_id = target.master_id or target.id
        self._notify(mailbox, stored_id, "updated")
        owner = mailbox.events[stored_id]
        self._deliver(mailbox, owner, now)
        return self.resolve(mailbox, target.id)

    def delete(self, mailbox: Mailbox, event_id: str, now: datetime) -> None:
        inst = self.resolve(mailbox, event_id)
        if inst.master is not None and inst.original_start is not None:
            inst.master.exceptions.pop(inst.original_start, None)
            inst.master.cancelled.add(inst.original_start)
            inst.master.touch(now)
            self._notify(mailbox, inst.master.id, "updated")
            self._deliver(mailbox, inst.master, now)
            return
        item = mailbox.events.pop(inst.item.id)
        self._notify(mailbox, item.id, "deleted")
        if item.is_organizer:
            item.is_cancelled = True
            self._deliver(mailbox, item, now)

    def respond(self, mailbox: Mailbox, event_id: str, response: str, now: datetime) -> None:
        """accept / tentativelyAccept / decline on an attendee's copy: its responseStatus and the organizer's
        attendee status change (https://learn.microsoft.com/en-us/graph/api/event-accept)."""
        inst = self.resolve(mailbox, event_id)
        item = inst.master if inst.master is not None else inst.item
        if item.is_organizer:
            raise bad_request(
                "Your request can't be completed. You can't respond to a meeting you organized.", "ErrorInvalidRequest"
            )
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        item.response = {"response": response, "time": stamp}
        item.touch(now)
        self._notify(mailbox, item.id, "updated")
        if response == "declined":
            mailbox.events.pop(item.id, None)
            self._notify(mailbox, item.id, "deleted")
        organizer = self.mailbox_or_none(item.organizer["address"])
        if organizer is None:
            return
        for original in organizer.events.values():
            if original.ical_uid == item.ical_uid and original.is_organizer:
                self.set_attendee_response(organizer, original, mailbox.user_principal_name, response, now)

    def set_attendee_response(
        self, mailbox: Mailbox, item: StoredEvent, address: str, response: str, now: datetime
    ) -> None:
        if response not in RESPONSES:
            raise bad_request(f"response must be one of {RESPONSES}, got {response!r}")
        for attendee in item.props.get("attendees") or []:
            if attendee["emailAddress"]["address"].lower() == address.lower():
                attendee["status"] = {"response": response, "time": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
                item.touch(now)
                self._notify(mailbox, item.id, "updated")
                return
        raise not_found(f"{address} is not an attendee of event {item.id}")

    # ----------------------------------------------------------------- attendee copies
    def _deliver(self, organizer: Mailbox, item: StoredEvent, now: datetime) -> None:
        """Keep the copies of an organizer's meeting in the calendars of attendees of the same tenant."""
        if not item.is_organizer:
            return
        wanted = {a["emailAddress"]["address"].lower() for a in item.props.get("attendees") or []}
        for box in self.mailboxes.values():
            if box.id == organizer.id or box.tenant_id != organizer.tenant_id:
                continue
            copy = next((e for e in box.events.values() if e.ical_uid == item.ical_uid), None)
            invited = box.user_principal_name.lower() in wanted and not item.is_cancelled
            if copy is None and invited:
                copy = StoredEvent(
                    id=new_id(),
                    mailbox_id=box.id,
                    props={},
                    start=item.start,
                    end=item.end,
                    start_zone=item.start_zone,
                    end_zone=item.end_zone,
                    organizer=dict(item.organizer),
                    is_organizer=False,
                    ical_uid=item.ical_uid,
                    created=now,
                    modified=now,
                    change_key=new_change_key(),
                    response={"response": "notResponded", "time": "0001-01-01T00:00:00Z"},
                )
                box.events[copy.id] = copy
                change = "created"
            elif copy is not None:
                change = "updated"
            else:
                continue
            if copy.is_cancelled:
                continue
            copy.props = {k: v for k, v in item.props.items() if k != "transactionId"}
            copy.start, copy.end, copy.start_zone, copy.end_zone = item.start, item.end, item.start_zone, item.end_zone
            copy.recurrence = item.recurrence
            copy.extended = dict(item.extended)
            copy.cancelled = set(item.cancelled)
            copy.exceptions = {
                key: StoredEvent(
                    id=occurrence_id(copy.id, key),
                    mailbox_id=box.id,
                    props=dict(exc.props),
                    start=exc.start,
                    end=exc.end,
                    start_zone=exc.start_zone,
                    end_zone=exc.end_zone,
                    organizer=exc.organizer,
                    is_organizer=False,
                    ical_uid=exc.ical_uid,
                    created=exc.created,
                    modified=now,
                    change_key=new_change_key(),
                    master_id=copy.id,
                    original_start=key,
                )
                for key, exc in item.exceptions.items()
            }
            if item.is_cancelled or not invited:
                # The attendee's copy stays, marked cancelled (a meeting cancellation removes nothing on its own).
                copy.is_cancelled = True
                subject = str(copy.props.get("subject") or "")
                copy.props["subject"] = subject if subject.startswith("Canceled: ") else f"Canceled: {subject}"
            copy.touch(now)
            self._notify(box, copy.id, change)

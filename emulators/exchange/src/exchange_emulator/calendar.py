"""Organization semantics of meetings across the emulator's mailboxes.

Mirrors what Exchange's transport and Calendar Attendant do inside one organization: invitations create attendee
copies with the organizer's UID, responses update the organizer's attendee list, organizer updates and
cancellations reach the copies, occurrence edits and deletions become exceptions and deleted occurrences
everywhere, and a delegate writing into an owner's calendar makes the owner the organizer.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid

from .calxml import ItemError
from .model import CalendarItem, ChangeLog, Mailbox, Store, clone_item, utcnow
from .transport import Transport

SEND_MODES_CREATE = ("SendToNone", "SendOnlyToAll", "SendToAllAndSaveCopy")
SEND_MODES_UPDATE = (
    "SendToNone",
    "SendOnlyToAll",
    "SendOnlyToChanged",
    "SendToAllAndSaveCopy",
    "SendToChangedAndSaveCopy",
)
CANCEL_PREFIX = "Canceled: "
MEETING_FIELDS = (
    "subject",
    "body",
    "body_type",
    "location",
    "start",
    "end",
    "start_tz",
    "end_tz",
    "start_tz_name",
    "end_tz_name",
    "is_all_day",
    "sensitivity",
    "importance",
    "organizer_email",
    "organizer_name",
    "is_response_requested",
    "allow_new_time_proposal",
    "conference_type",
    "is_online_meeting",
    "sequence",
    "dtstamp",
)


def new_uid() -> str:
    # Exchange UIDs are the hex of PidLidGlobalObjectId: 040000008200E00074C5B7101A82E008 + date + id
    return (
        "040000008200E00074C5B7101A82E0080000000000000000000000000000000000000000"
        + "10000000"
        + uuid.uuid4().hex.upper()
    )


class Calendar:
    def __init__(self, store: Store, transport: Transport | None = None) -> None:
        """`transport`: how meeting messages reach other mailboxes (transport.py); none delivers at once."""
        self.store = store
        self.transport = transport or Transport(0, 0)

    def seeding(self) -> Calendar:
        """The same calendars with messages delivered at once: a seeded world is one whose mail has arrived."""
        return Calendar(self.store)

    # ------------------------------------------------------------- transport
    def _snapshot(self, org: CalendarItem) -> CalendarItem:
        """The organizer's item as a meeting message carries it: later changes of the item do not alter it."""
        snap = clone_item(org, org.no, org.mailbox)
        for original, exc in org.exceptions.items():
            mine = clone_item(exc, exc.no, org.mailbox)
            mine.master = snap
            snap.exceptions[original] = mine
        return snap

    def _send_requests(self, org: CalendarItem, mailboxes: list[Mailbox]) -> None:
        """A meeting request or update to each attendee mailbox; it creates or refreshes their copy on arrival."""
        snap = self._snapshot(org)
        for mbx in mailboxes:
            self.transport.send((mbx.email, org.uid), functools.partial(self._deliver, snap, mbx), whole=True)

    def _send_cancellation(self, org: CalendarItem, mbx: Mailbox) -> None:
        def arrive() -> None:
            copy = self.copy_of(mbx, org.uid)
            if copy is not None:
                self._cancel_copy(copy, org.organizer_name)

        self.transport.send((mbx.email, org.uid), arrive)

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _log(mbx: Mailbox, item: CalendarItem) -> ChangeLog:
        log = mbx.log_of(item.folder)
        if log is None:
            raise ItemError(
                "ErrorCannotCreateCalendarItemInNonCalendarFolder",
                "Calendar items can only be created in a calendar folder.",
            )
        return log

    def _register(self, mbx: Mailbox, item: CalendarItem) -> None:
        mbx.items[item.no] = item
        self._log(mbx, item).by_uid[item.uid] = item.no
        self.store.record(mbx, item, "created")

    def _remove(self, mbx: Mailbox, item: CalendarItem) -> None:
        mbx.items.pop(item.no, None)
        for exc in item.exceptions.values():
            mbx.exceptions.pop(exc.no, None)
        log = self._log(mbx, item)
        if log.by_uid.get(item.uid) == item.no:
            del log.by_uid[item.uid]
        self.store.record(mbx, item, "deleted")

    def attendee_mailboxes(self, item: CalendarItem, emails: set[str] | None = None) -> list[Mailbox]:
        out: list[Mailbox] = []
        seen: set[str] = set()
        for _, att in item.attendees():
            key = att.email.lower()
            if key in seen or key == item.mailbox.email or (emails is not None and key not in emails):
                continue
            seen.add(key)
            mbx = self.store.mailbox(key)
            if mbx is not None:
                out.append(mbx)
        return out

    def copy_of(self, mbx: Mailbox, uid: str) -> CalendarItem | None:
        """The meeting with `uid` in mbx's default Calendar: the only calendar the Calendar Attendant processes
        (invitations, updates and responses never touch a calendar a client created; see README)."""
        no = mbx.by_uid.get(uid)
        return mbx.items.get(no) if no is not None else None

    # ------------------------------------------------------------------ create
    def create(self, target: Mailbox, item: CalendarItem, send_mode: str, actor: str) -> CalendarItem:
        """Save a new calendar item in target's calendar and process invitations."""
        item.mailbox = target
        item.uid = item.uid or new_uid()
        if item.uid in self._log(target, item).by_uid:
            raise ItemError("ErrorItemSave", f"An item with UID {item.uid!r} already exists in this calendar")
        item.organizer_email = target.email
        item.organizer_name = target.display_name
        item.my_response = "Organizer"
        item.last_modified_name = actor
        has_attendees = any(True for _ in item.attendees())
        item.is_meeting = has_attendees
        for _, att in item.attendees():
            if att.response in ("Unknown", "Organizer"):
                att.response = "Unknown"
        if has_attendees and send_mode in ("SendOnlyToAll", "SendToAllAndSaveCopy"):
            item.meeting_request_was_sent = True
            for _, att in item.attendees():
                att.response = "NoResponseReceived" if att.response == "Unknown" else att.response
        self._register(target, item)
        if item.meeting_request_was_sent:
            self._send_requests(item, self.attendee_mailboxes(item))
        return item

    def _deliver(self, org: CalendarItem, mbx: Mailbox) -> CalendarItem:
        """Create or refresh the attendee copy of a meeting in mbx (what the Calendar Attendant does)."""
        existing = self.copy_of(mbx, org.uid)
        if existing is not None:
            self._refresh_copy(org, existing)
            existing.bump(org.organizer_name)
            self.store.record(mbx, existing, "modified")
            return existing
        copy = clone_item(org, self.store.next_item_no(), mbx)
        copy.folder = "calendar"  # the organizer may keep it in a calendar of their own making
        copy.my_response = "NoResponseReceived"
        copy.reply_time = None
        copy.meeting_request_was_sent = False
        copy.is_meeting = True
        copy.created = copy.modified = utcnow()
        copy.version = 1
        copy.last_modified_name = org.organizer_name
        self._mirror_exceptions(org, copy)
        self._register(mbx, copy)
        return copy

    def _refresh_copy(self, org: CalendarItem, copy: CalendarItem) -> None:
        for name in MEETING_FIELDS:
            setattr(copy, name, getattr(org, name))
        copy.required = [a.copy() for a in org.required]
        copy.optional = [a.copy() for a in org.optional]
        copy.resources = [a.copy() for a in org.resources]
        copy.categories = list(org.categories)
        copy.ext = {k: type(v)(dict(v.attrs), list(v.values), v.multi) for k, v in org.ext.items()}
        copy.recurrence = org.recurrence.copy() if org.recurrence else None
        copy.deleted = set(org.deleted)
        copy.is_cancelled = org.is_cancelled
        copy.is_meeting = True
        self._mirror_exceptions(org, copy)

    def _mirror_exceptions(self, org: CalendarItem, copy: CalendarItem) -> None:
        mbx = copy.mailbox
        old = copy.exceptions
        copy.exceptions = {}
        for original, exc in org.exceptions.items():
            prev = old.pop(original, None)
            no = prev.no if prev is not None else self.store.next_item_no()
            mine = clone_item(exc, no, mbx)
            mine.master = copy
            mine.my_response = copy.my_response if prev is None else prev.my_response
            mine.reply_time = prev.reply_time if prev is not None else None
            mine.version = (prev.version + 1) if prev is not None else 1
            mine.meeting_request_was_sent = False
            copy.exceptions[original] = mine
            mbx.exceptions[no] = mine
        for gone in old.values():
            mbx.exceptions.pop(gone.no, None)

    # ------------------------------------------------------------------ update
    def after_update(self, item: CalendarItem, before: CalendarItem, send_mode: str, actor: str) -> None:
        """Bookkeeping after UpdateItem changed `item` (a master, single or exception)."""
        top = item.master if item.master is not None else item
        mbx = top.mailbox
        significant = (
            before.start != item.start
            or before.end != item.end
            or before.location != item.location
            or (before.recurrence != item.recurrence)
        )
        if (
            item.master is None
            and before.recurrence is not None
            and (before.recurrence != item.recurrence or before.start != item.start)
        ):
            # Changing a series' pattern or time drops its exceptions and deleted occurrences, as in Exchange.
            for exc in item.exceptions.values():
                mbx.exceptions.pop(exc.no, None)
            item.exceptions = {}
            item.deleted = set()
        if before.uid != item.uid:
            log = self._log(mbx, top)
            log.by_uid.pop(before.uid, None)
            log.by_uid[item.uid] = top.no
        item.bump(actor)
        if item is not top:
            top.bump(actor)
        if significant and top.is_organizer and top.is_meeting:
            top.sequence += 1
            if item is not top:
                item.sequence = top.sequence
        if top.is_organizer:
            has_attendees = any(True for _ in top.attendees())
            top.is_meeting = has_attendees or top.is_meeting
        self.store.record(mbx, top, "modified")
        if not top.is_organizer or send_mode == "SendToNone" or not top.is_meeting:
            return
        top.meeting_request_was_sent = True
        for _, att in top.attendees():
            if att.response == "Unknown":
                att.response = "NoResponseReceived"
        before_top = before if item is top else None
        old_emails = {a.email.lower() for _, a in before_top.attendees()} if before_top is not None else None
        new_emails = {a.email.lower() for _, a in top.attendees()}
        self._send_requests(top, self.attendee_mailboxes(top))
        if old_emails is not None:
            for removed in old_emails - new_emails:
                mbx_rm = self.store.mailbox(removed)
                if mbx_rm is None or mbx_rm is mbx:
                    continue
                self._send_cancellation(top, mbx_rm)

    # ---------------------------------------------------------- occurrences
    def make_exception(self, master: CalendarItem, original: dt.datetime) -> CalendarItem:
        exc = master.exceptions.get(original)
        if exc is not None:
            return exc
        view = master.occurrence_view_at(original)
        exc = clone_item(view, self.store.next_item_no(), master.mailbox)
        exc.master = master
        exc.original_start = original
        exc.occurrence_view = False
        exc.recurrence = None
        exc.deleted = set()
        exc.version = 1
        master.exceptions[original] = exc
        master.mailbox.exceptions[exc.no] = exc
        return exc

    def delete_occurrence(
        self, master: CalendarItem, original: dt.datetime, send_cancellations: bool, actor: str
    ) -> None:
        mbx = master.mailbox
        exc = master.exceptions.pop(original, None)
        if exc is not None:
            mbx.exceptions.pop(exc.no, None)
        master.deleted.add(original)
        master.bump(actor)
        self.store.record(mbx, master, "modified")
        if master.is_organizer and master.is_meeting and send_cancellations:
            snap = self._snapshot(master)
            for att_mbx in self.attendee_mailboxes(master):
                topic = (att_mbx.email, master.uid)
                self.transport.send(topic, functools.partial(self._occurrence_cancelled, snap, att_mbx, original))

    def _occurrence_cancelled(self, snap: CalendarItem, att_mbx: Mailbox, original: dt.datetime) -> None:
        """An occurrence's cancellation arrives. Before the series itself (its request still in transit, and now
        out of date): the series arrives with it, as the organizer has it now."""
        copy = self.copy_of(att_mbx, snap.uid)
        if copy is None:
            if self.transport.pending_for((att_mbx.email, snap.uid)):
                self._deliver(snap, att_mbx)
            return
        if copy.recurrence is None:
            return
        cexc = copy.exceptions.pop(original, None)
        if cexc is not None:
            att_mbx.exceptions.pop(cexc.no, None)
        copy.deleted.add(original)
        copy.bump(snap.organizer_name)
        self.store.record(att_mbx, copy, "modified")

    # ----------------------------------------------------------------- delete
    def delete(self, item: CalendarItem, send_cancellations: bool, actor: str) -> None:
        mbx = item.mailbox
        if item.is_organizer and item.is_meeting and send_cancellations and not item.is_cancelled:
            for att_mbx in self.attendee_mailboxes(item):
                self._send_cancellation(item, att_mbx)
        self._remove(mbx, item)

    def cancel(self, item: CalendarItem, actor: str) -> None:
        """CancelCalendarItem: the organizer cancels; attendees' copies are cancelled, the organizer's removed."""
        if not item.is_organizer:
            raise ItemError("ErrorInvalidOperation", "Only the organizer can cancel a meeting")
        self.delete(item, True, actor)

    def _cancel_copy(self, copy: CalendarItem, by: str) -> None:
        if copy.is_cancelled:
            return
        copy.is_cancelled = True
        if not copy.subject.startswith(CANCEL_PREFIX):
            copy.subject = CANCEL_PREFIX + copy.subject
        for exc in copy.exceptions.values():
            exc.is_cancelled = True
            if not exc.subject.startswith(CANCEL_PREFIX):
                exc.subject = CANCEL_PREFIX + exc.subject
        copy.legacy_free_busy = "Free"
        copy.bump(by)
        self.store.record(copy.mailbox, copy, "modified")

    # ---------------------------------------------------------------- respond
    def _response_arrives(
        self,
        organizer: str,
        uid: str,
        original: dt.datetime | None,
        mbx: Mailbox,
        response: str,
        at: dt.datetime,
    ) -> None:
        """The attendee's answer reaches the organizer's calendar: the attendee's response is tracked there."""
        org_mbx = self.store.mailbox(organizer)
        org = self.copy_of(org_mbx, uid) if org_mbx is not None else None
        if org is None or not org.is_organizer:
            return
        org_target = org.exceptions.get(original, org) if original is not None else org
        att = org_target.find_attendee(mbx.email)
        if att is None:
            return
        att.response = response
        att.last_response_time = at
        org_target.bump(mbx.display_name)
        if org_target is not org:
            org.bump(mbx.display_name)
        self.store.record(org.mailbox, org, "modified")

    def respond(self, item: CalendarItem, response: str, send: bool, actor: str) -> CalendarItem | None:
        """An attendee answers (Accept / Tentative / Decline). Returns the attendee's item (None if removed)."""
        top = item.master if item.master is not None else item
        if top.is_organizer:
            raise ItemError("ErrorInvalidOperation", "The organizer of a meeting cannot respond to it")
        if top.is_cancelled:
            raise ItemError("ErrorInvalidOperation", "The meeting has been cancelled")
        now = utcnow()
        mbx = top.mailbox
        target = item if item.master is not None and not item.occurrence_view else top
        target.my_response = response
        target.reply_time = now
        if target is top:
            for exc in top.exceptions.values():
                exc.my_response = response
                exc.reply_time = now
        if send and top.organizer_email:
            original = target.original_start if target is not top else None
            topic = (top.organizer_email.lower(), top.uid, mbx.email, original.isoformat() if original else "")
            arrive = functools.partial(
                self._response_arrives, top.organizer_email, top.uid, original, mbx, response, now
            )
            self.transport.send(topic, arrive)
        if response == "Decline" and target is top:
            # Declining removes the meeting from the attendee's calendar (it goes to Deleted Items).
            self._remove(mbx, top)
            return None
        target.bump(actor)
        if target is not top:
            top.bump(actor)
        self.store.record(mbx, top, "modified")
        return target

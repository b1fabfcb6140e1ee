"""In-memory mailbox store: accounts, mailboxes, folders, calendar items, change log and subscriptions.

Everything is indexed per mailbox so a request never walks all items of the store: item lookups go through the
id (which encodes mailbox and item numbers), SyncFolderItems reads the mailbox's append-only change log from a
bisected position, and notifications fan out only to the subscriptions of the mailbox that changed.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import datetime as dt
import hashlib
import itertools
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field, fields
from typing import Protocol

from .recurrence import Recurrence
from .timezones import CustomZone, zone_for
from .xmlutil import UTC

ITEM_PREFIX = b"\x00\x03\x24"  # base64 "AAMk", like Exchange item ids
FOLDER_PREFIX = b"\x00\x01\x2e"  # base64 "AAEu", like Exchange folder ids
CK_PREFIX = b"\x0f\x00\x00\x00\x16\x00\x00\x00"  # base64 "DwAAABYAAAA", like Exchange change keys
KIND_ITEM = 1
KIND_OCCURRENCE = 2

RESPONSE_TYPES = ("Unknown", "Organizer", "Tentative", "Accept", "Decline", "NoResponseReceived")

# Distinguished folders every mailbox has: name -> (display name, folder class, parent)
FOLDERS: dict[str, tuple[str, str, str | None]] = {
    "root": ("", "", None),
    "msgfolderroot": ("Top of Information Store", "IPF.Note", "root"),
    "calendar": ("Calendar", "IPF.Appointment", "msgfolderroot"),
    "inbox": ("Inbox", "IPF.Note", "msgfolderroot"),
    "sentitems": ("Sent Items", "IPF.Note", "msgfolderroot"),
    "deleteditems": ("Deleted Items", "IPF.Note", "msgfolderroot"),
    "drafts": ("Drafts", "IPF.Note", "msgfolderroot"),
    "outbox": ("Outbox", "IPF.Note", "msgfolderroot"),
    "contacts": ("Contacts", "IPF.Contact", "msgfolderroot"),
    "tasks": ("Tasks", "IPF.Task", "msgfolderroot"),
    "notes": ("Notes", "IPF.StickyNote", "msgfolderroot"),
    "journal": ("Journal", "IPF.Journal", "msgfolderroot"),
    "junkemail": ("Junk Email", "IPF.Note", "msgfolderroot"),
}
FOLDER_CODES = {name: n for n, name in enumerate(FOLDERS)}
FOLDER_NAMES = {n: name for name, n in FOLDER_CODES.items()}
#: The folder code of a folder a client created (CreateFolder): its number follows in the id's last two bytes, and the
#: emulator names it "#<number>" (a distinguished folder is named by its DistinguishedFolderId).
CREATED_FOLDER_CODE = 0xFE
MAX_CREATED_FOLDERS = 0xFFFF


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


class IdError(ValueError):
    pass


@dataclass(frozen=True)
class ParsedItemId:
    mailbox_no: int
    item_no: int
    occurrence: dt.datetime | None  # original start (UTC) for occurrence ids


def item_id(mailbox_no: int, item_no: int, occurrence: dt.datetime | None = None) -> str:
    if occurrence is None:
        return _b64(ITEM_PREFIX + b"EMU" + struct.pack(">BIQ", KIND_ITEM, mailbox_no, item_no))
    stamp = int(occurrence.timestamp())
    return _b64(ITEM_PREFIX + b"EMU" + struct.pack(">BIQq", KIND_OCCURRENCE, mailbox_no, item_no, stamp))


def parse_item_id(value: str) -> ParsedItemId:
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise IdError(f"Id is malformed: {value!r}") from exc
    if not raw.startswith(ITEM_PREFIX + b"EMU") or len(raw) < 19:
        raise IdError(f"Id is malformed: {value!r}")
    body = raw[6:]
    kind = body[0]
    if kind == KIND_ITEM and len(body) == 13:
        _, mbx, no = struct.unpack(">BIQ", body)
        return ParsedItemId(mbx, no, None)
    if kind == KIND_OCCURRENCE and len(body) == 21:
        _, mbx, no, stamp = struct.unpack(">BIQq", body)
        return ParsedItemId(mbx, no, dt.datetime.fromtimestamp(stamp, UTC))
    raise IdError(f"Id is malformed: {value!r}")


def is_created_folder(name: str) -> bool:
    return name.startswith("#")


def folder_id(mailbox_no: int, name: str) -> str:
    if is_created_folder(name):
        return _b64(FOLDER_PREFIX + b"EMF" + struct.pack(">IBH", mailbox_no, CREATED_FOLDER_CODE, int(name[1:])))
    return _b64(FOLDER_PREFIX + b"EMF" + struct.pack(">IB", mailbox_no, FOLDER_CODES[name]) + b"\x00\x00")


def parse_folder_id(value: str) -> tuple[int, str]:
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise IdError(f"Id is malformed: {value!r}") from exc
    if not raw.startswith(FOLDER_PREFIX + b"EMF") or len(raw) != 13:
        raise IdError(f"Id is malformed: {value!r}")
    mbx, code, number = struct.unpack(">IBH", raw[6:13])
    if code == CREATED_FOLDER_CODE and number:
        return mbx, f"#{number}"
    if code not in FOLDER_NAMES or number:
        raise IdError(f"Id is malformed: {value!r}")
    return mbx, FOLDER_NAMES[code]


def change_key(item_no: int, version: int) -> str:
    return _b64(CK_PREFIX + struct.pack(">QI", item_no, version))


def folder_change_key(mailbox_no: int, version: int) -> str:
    return _b64(b"AQAAABYAAAA" + struct.pack(">II", mailbox_no, version))


# ----------------------------------------------------------------------------------------------------- accounts


@dataclass
class Account:
    """A logon account (service account or user). Passwords are kept for Basic and NTLM checks."""

    username: str
    password: str
    impersonation: bool = False
    mailbox: str | None = None  # the account's own mailbox address, if it has one

    @property
    def key(self) -> str:
        return normalize_username(self.username)


def normalize_username(name: str) -> str:
    value = name.strip().lower()
    if "\\" in value:
        value = value.split("\\", 1)[1]
    return value


# ------------------------------------------------------------------------------------------------------- items


@dataclass(slots=True)
class Attendee:
    email: str
    name: str
    response: str = "NoResponseReceived"
    last_response_time: dt.datetime | None = None

    def copy(self) -> Attendee:
        return Attendee(self.email, self.name, self.response, self.last_response_time)


@dataclass(frozen=True, slots=True)
class ExtKey:
    """Identity of an extended property (ExtendedFieldURI attributes, normalised)."""

    set_id: str  # distinguished set name or lower-case GUID ("" for tag properties)
    name: str  # PropertyName, or "#<id>" for PropertyId, or "tag:<n>" for PropertyTag
    prop_type: str


@dataclass(slots=True)
class ExtValue:
    attrs: dict[str, str]  # the ExtendedFieldURI attributes as the client sent them
    values: list[str]
    multi: bool


@dataclass(eq=False, slots=True)
class CalendarItem:
    no: int
    mailbox: Mailbox
    uid: str
    start: dt.datetime
    end: dt.datetime
    start_tz: str = "UTC"
    end_tz: str = "UTC"
    start_tz_name: str | None = None
    end_tz_name: str | None = None
    start_tz_def: CustomZone | None = None  # a client-supplied TimeZoneDefinition (custom id with Periods)
    end_tz_def: CustomZone | None = None
    subject: str = ""
    body: str = ""
    body_type: str = "Text"
    location: str = ""
    is_all_day: bool = False
    sensitivity: str = "Normal"
    importance: str = "Normal"
    categories: list[str] = field(default_factory=list)
    legacy_free_busy: str = "Busy"
    reminder_is_set: bool = True
    reminder_minutes: int = 15
    organizer_email: str = ""
    organizer_name: str = ""
    required: list[Attendee] = field(default_factory=list)
    optional: list[Attendee] = field(default_factory=list)
    resources: list[Attendee] = field(default_factory=list)
    my_response: str = "Organizer"
    reply_time: dt.datetime | None = None
    is_cancelled: bool = False
    is_meeting: bool = False
    meeting_request_was_sent: bool = False
    is_response_requested: bool = True
    allow_new_time_proposal: bool = True
    conference_type: int = 0
    is_online_meeting: bool = False
    sequence: int = 0
    version: int = 1
    created: dt.datetime = field(default_factory=utcnow)
    modified: dt.datetime = field(default_factory=utcnow)
    dtstamp: dt.datetime = field(default_factory=utcnow)
    recurrence: Recurrence | None = None
    exceptions: dict[dt.datetime, CalendarItem] = field(default_factory=dict)
    deleted: set[dt.datetime] = field(default_factory=set)
    ext: dict[ExtKey, ExtValue] = field(default_factory=dict)
    master: CalendarItem | None = None  # set on exception items
    original_start: dt.datetime | None = None  # set on exception items and occurrence views
    occurrence_view: bool = False
    culture: str = "en-US"
    last_modified_name: str = ""
    folder: str = "calendar"

    # ------------------------------------------------------------------ identity
    @property
    def item_id(self) -> str:
        if self.master is not None and self.original_start is not None:
            # Occurrences and exceptions share one stable id (master + original start), as in Exchange.
            return item_id(self.mailbox.no, self.master.no, self.original_start)
        return item_id(self.mailbox.no, self.no)

    @property
    def change_key(self) -> str:
        return change_key(self.no, self.version)

    @property
    def item_type(self) -> str:
        if self.master is not None:
            return "Exception" if not self.occurrence_view else "Occurrence"
        if self.recurrence is not None:
            return "RecurringMaster"
        return "Single"

    @property
    def is_organizer(self) -> bool:
        return self.my_response == "Organizer"

    def attendees(self) -> Iterator[tuple[str, Attendee]]:
        for role, group in (
            ("Required", self.required),
            ("Optional", self.optional),
            ("Resource", self.resources),
        ):
            for att in group:
                yield role, att

    def find_attendee(self, email: str) -> Attendee | None:
        key = email.lower()
        for _, att in self.attendees():
            if att.email.lower() == key:
                return att
        return None

    def bump(self, by: str = "") -> None:
        self.version += 1
        self.modified = utcnow()
        if by:
            self.last_modified_name = by

    # ---------------------------------------------------------------- recurrence
    def duration(self) -> dt.timedelta:
        return self.end - self.start

    def start_zone(self) -> dt.tzinfo:
        return self.start_tz_def if self.start_tz_def is not None else zone_for(self.start_tz)

    def end_zone(self) -> dt.tzinfo:
        return self.end_tz_def if self.end_tz_def is not None else zone_for(self.end_tz)

    def local_start(self) -> dt.datetime:
        return self.start.astimezone(self.start_zone())

    def occurrence_starts(self, until: dt.datetime | None = None) -> Iterator[dt.datetime]:
        """Original starts (UTC) of every pattern occurrence, deleted ones included."""
        if self.recurrence is None:
            return
        local = self.local_start()
        yield from self.recurrence.starts_utc(local.time().replace(tzinfo=None), self.start_zone(), until)

    def has_occurrence(self, original: dt.datetime) -> bool:
        return any(start == original for start in self.occurrence_starts(until=original))

    def occurrence(self, original: dt.datetime) -> CalendarItem:
        """The occurrence of this master starting (originally) at `original`: its exception or a view."""
        exc = self.exceptions.get(original)
        if exc is not None:
            return exc
        return self.occurrence_view_at(original)

    def occurrence_view_at(self, original: dt.datetime) -> CalendarItem:
        view = clone_item(self, self.no)
        view.master = self
        view.original_start = original
        view.occurrence_view = True
        view.start = original
        view.end = original + self.duration()
        view.recurrence = None
        view.exceptions = {}
        view.deleted = set()
        view.version = self.version
        return view

    def expand(self, window_start: dt.datetime, window_end: dt.datetime) -> list[CalendarItem]:
        """Occurrences and exceptions of a master in a CalendarView from window_start to window_end (see
        in_calendar_view)."""
        out: list[CalendarItem] = []
        duration = self.duration()
        for original in self.occurrence_starts(until=window_end):
            if original in self.deleted:
                continue
            exc = self.exceptions.get(original)
            if exc is not None:
                continue
            if original >= window_end:
                continue
            if in_calendar_view(original, original + duration, window_start, window_end):
                out.append(self.occurrence_view_at(original))
        for exc in self.exceptions.values():
            if in_calendar_view(exc.start, exc.end, window_start, window_end):
                out.append(exc)
        return out

    def first_last(self) -> tuple[CalendarItem | None, CalendarItem | None]:
        """FirstOccurrence and LastOccurrence (None when the series has no end)."""
        first: CalendarItem | None = None
        last: CalendarItem | None = None
        for original in self.occurrence_starts():
            if original in self.deleted:
                continue
            occ = self.occurrence(original)
            if first is None:
                first = occ
                if self.recurrence is not None and not self.recurrence.is_bounded():
                    break
            last = occ
        if self.recurrence is not None and not self.recurrence.is_bounded():
            last = None
        return first, last


def in_calendar_view(start: dt.datetime, end: dt.datetime, view_start: dt.datetime, view_end: dt.datetime) -> bool:
    """Whether an item or occurrence is in a CalendarView: Exchange leaves out only what ends before StartDate and
    what starts on or after EndDate - an item ending exactly at StartDate is returned ("CalendarView", EWS
    reference, https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/calendarview)."""
    return not (end < view_start or start >= view_end)


def clone_item(src: CalendarItem, no: int, mailbox: Mailbox | None = None) -> CalendarItem:
    return CalendarItem(
        no=no,
        mailbox=mailbox or src.mailbox,
        uid=src.uid,
        start=src.start,
        end=src.end,
        start_tz=src.start_tz,
        end_tz=src.end_tz,
        start_tz_name=src.start_tz_name,
        end_tz_name=src.end_tz_name,
        start_tz_def=src.start_tz_def,
        end_tz_def=src.end_tz_def,
        subject=src.subject,
        body=src.body,
        body_type=src.body_type,
        location=src.location,
        is_all_day=src.is_all_day,
        sensitivity=src.sensitivity,
        importance=src.importance,
        categories=list(src.categories),
        legacy_free_busy=src.legacy_free_busy,
        reminder_is_set=src.reminder_is_set,
        reminder_minutes=src.reminder_minutes,
        organizer_email=src.organizer_email,
        organizer_name=src.organizer_name,
        required=[a.copy() for a in src.required],
        optional=[a.copy() for a in src.optional],
        resources=[a.copy() for a in src.resources],
        my_response=src.my_response,
        reply_time=src.reply_time,
        is_cancelled=src.is_cancelled,
        is_meeting=src.is_meeting,
        meeting_request_was_sent=src.meeting_request_was_sent,
        is_response_requested=src.is_response_requested,
        allow_new_time_proposal=src.allow_new_time_proposal,
        conference_type=src.conference_type,
        is_online_meeting=src.is_online_meeting,
        sequence=src.sequence,
        version=src.version,
        created=src.created,
        modified=src.modified,
        dtstamp=src.dtstamp,
        recurrence=src.recurrence.copy() if src.recurrence else None,
        exceptions={},
        deleted=set(src.deleted),
        ext={k: ExtValue(dict(v.attrs), list(v.values), v.multi) for k, v in src.ext.items()},
        master=src.master,
        original_start=src.original_start,
        culture=src.culture,
        last_modified_name=src.last_modified_name,
        folder=src.folder,
    )


# ------------------------------------------------------------------------------------------- subscriptions


@dataclass(slots=True)
class Event:
    seq: int
    kind: str  # CreatedEvent, ModifiedEvent, DeletedEvent, ...
    timestamp: dt.datetime
    item_id: str | None
    change_key: str | None
    folder_id: str | None  # for folder events
    parent_folder_id: str
    parent_change_key: str
    #: MovedEvent of a folder: where it was (OldFolderId is its own id, a folder keeps its id when moved).
    old_parent_folder_id: str | None = None


@dataclass(eq=False)
class Subscription:
    id: str
    no: int
    mailbox: Mailbox
    creator: str
    kind: str  # "pull" | "streaming"
    folders: set[str] | None  # folder names, None = all folders
    event_types: set[str]
    timeout_minutes: int = 0
    #: The mailbox server holding it: only a request routed to that server finds it (Exchange keeps a
    #: subscription on one backend; "Maintain affinity between a group of subscriptions and the Mailbox server").
    server: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expired: bool = False
    #: Events were dropped (queue overflow): the next GetEvents / GetStreamingEvents gets
    #: ErrorMissedNotificationEvents and the subscription ends.
    missed: bool = False
    events: collections.deque[Event] = field(default_factory=collections.deque)
    seq: int = 0
    waiters: set[asyncio.Event] = field(default_factory=set)
    # GetEvents continuation: a repeated watermark after MoreEvents=true continues where the last batch ended
    last_request_seq: int = -1
    delivered_seq: int = 0
    more_pending: bool = False

    def watermark(self, seq: int | None = None) -> str:
        return _b64(b"WM" + struct.pack(">IQ", self.no, self.seq if seq is None else seq))

    def wake(self) -> None:
        for waiter in self.waiters:
            waiter.set()


def parse_watermark(value: str) -> tuple[int, int]:
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise IdError(f"invalid watermark {value!r}") from exc
    if not raw.startswith(b"WM") or len(raw) != 14:
        raise IdError(f"invalid watermark {value!r}")
    sub_no, seq = struct.unpack(">IQ", raw[2:])
    return int(sub_no), int(seq)


# --------------------------------------------------------------------------------------------------- folders


class ChangeLog(Protocol):
    """What a folder holding calendar items keeps: its items by UID and its append-only change log (the mailbox
    itself for its default Calendar, a Folder for a calendar a client created)."""

    by_uid: dict[str, int]
    log_seq: list[int]
    log_item: list[int]
    latest: dict[int, int]
    commit_time_max: dt.datetime | None
    created_seq: dict[int, int]
    tombstones: dict[int, str]
    folder_version: int


#: The folder element Exchange answers for a folder class ("Folders and items in EWS in Exchange": the element is
#: chosen by the folder's class; IPF.Appointment.* is a calendar folder, and so on).
FOLDER_ELEMENTS = (
    ("IPF.Appointment", "CalendarFolder"),
    ("IPF.Contact", "ContactsFolder"),
    ("IPF.Task", "TasksFolder"),
)


def folder_element_for(folder_class: str) -> str:
    for prefix, element in FOLDER_ELEMENTS:
        if folder_class == prefix or folder_class.startswith(prefix + "."):
            return element
    return "Folder"


@dataclass(eq=False)
class Folder:
    """A folder a client created with CreateFolder (a secondary calendar, a folder under Inbox, ...)."""

    name: str  # "#<number>", also in its FolderId
    display_name: str
    folder_class: str
    parent: str  # the parent's name: a distinguished folder id or "#<number>"
    by_uid: dict[str, int] = field(default_factory=dict)
    log_seq: list[int] = field(default_factory=list)
    log_item: list[int] = field(default_factory=list)
    latest: dict[int, int] = field(default_factory=dict)
    commit_time_max: dt.datetime | None = None
    created_seq: dict[int, int] = field(default_factory=dict)
    tombstones: dict[int, str] = field(default_factory=dict)
    folder_version: int = 1

    @property
    def element(self) -> str:
        return folder_element_for(self.folder_class)

    @property
    def is_calendar(self) -> bool:
        return self.element == "CalendarFolder"


@dataclass(eq=False)
class DictionaryObject:
    """A UserConfiguration dictionary key or value: its type and its Value elements, as written
    ("UserConfigurationDictionaryObjectType": a StringArray or ByteArray has several Values)."""

    type: str
    values: list[str]


@dataclass(eq=False)
class UserConfiguration:
    """A user configuration object (folder associated item "IPM.Configuration.<name>"; "Persistent application
    settings in EWS in Exchange"): a dictionary, XML data and binary data, any of them absent."""

    folder: str
    name: str
    no: int  # item number, for its ItemId
    dictionary: list[tuple[DictionaryObject, DictionaryObject | None]] | None = None
    xml_data: bytes | None = None
    binary_data: bytes | None = None
    version: int = 1


# --------------------------------------------------------------------------------------------------- mailbox


@dataclass(eq=False)
class Mailbox:
    no: int
    email: str
    display_name: str
    guid: str = field(default_factory=lambda: str(uuid.uuid4()))
    items: dict[int, CalendarItem] = field(default_factory=dict)  # masters and singles of the calendar
    exceptions: dict[int, CalendarItem] = field(default_factory=dict)  # exception items by their own number
    by_uid: dict[str, int] = field(default_factory=dict)
    delegates: dict[str, str] = field(default_factory=dict)  # delegate address -> calendar rights
    #: Index of the mailbox server (database) that hosts it; see Store.server_name.
    server: int = 0
    #: Incremented by every move: SyncStates from before a move are refused (ErrorInvalidSyncStateData).
    generation: int = 0
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    # change log of the calendar folder
    log_seq: list[int] = field(default_factory=list)
    log_item: list[int] = field(default_factory=list)
    latest: dict[int, int] = field(default_factory=dict)  # item no -> seq of its latest change
    #: When the calendar last changed: its PR_LOCAL_COMMIT_TIME_MAX (None until the first change).
    commit_time_max: dt.datetime | None = None
    created_seq: dict[int, int] = field(default_factory=dict)
    tombstones: dict[int, str] = field(default_factory=dict)  # item no -> item id of a deleted item
    folder_version: int = 1
    #: Folders clients created, by name ("#<number>"); numbers are never given twice in a mailbox.
    folders: dict[str, Folder] = field(default_factory=dict)
    last_folder_no: int = 0
    #: User configuration objects by (folder name, lower-case configuration name); None until first used (then it
    #: holds the calendar's own Calendar and WorkHours objects too).
    configurations: dict[tuple[str, str], UserConfiguration] | None = None
    #: Hierarchy changes of created folders, for SyncFolderHierarchy: (change seq, folder name, its ancestors after
    #: the change - nearest first - or None once it is deleted). Distinguished folders never change.
    hierarchy: list[tuple[int, str, tuple[str, ...] | None]] = field(default_factory=list)

    @property
    def sid(self) -> str:
        digest = hashlib.sha1(self.email.encode()).digest()
        a, b, c = struct.unpack(">III", digest[:12])
        return f"S-1-5-21-{a}-{b}-{c}-{1000 + self.no}"

    @property
    def local_part(self) -> str:
        return self.email.split("@", 1)[0]

    def folder_id(self, name: str) -> str:
        return folder_id(self.no, name)

    def change_seq(self) -> int:
        """The newest change of the calendar folder (0: none yet)."""
        return self.log_seq[-1] if self.log_seq else 0

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["subscriptions"] = {}  # notification state lives in memory only (persistence.py)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        """A state file written before a field existed gets the field's default (folders, configurations, ...)."""
        for f in fields(self):
            if f.name not in state:
                if f.default_factory is not MISSING:
                    state[f.name] = f.default_factory()
                elif f.default is not MISSING:
                    state[f.name] = f.default
        self.__dict__.update(state)

    def folder_change_key(self, name: str = "calendar") -> str:
        created = self.folders.get(name)
        if created is not None:
            return folder_change_key(self.no, (int(name[1:]) << 16) + created.folder_version)
        return folder_change_key(self.no, self.folder_version)

    # ------------------------------------------------------------------ folders
    def has_folder(self, name: str) -> bool:
        return name in FOLDERS or name in self.folders

    def log_of(self, name: str) -> ChangeLog | None:
        """The change log of a folder holding calendar items (None: the folder holds none)."""
        if name == "calendar":
            return self
        created = self.folders.get(name)
        return created if created is not None and created.is_calendar else None

    def folder_parent(self, name: str) -> str | None:
        created = self.folders.get(name)
        return created.parent if created is not None else FOLDERS[name][2]

    def folder_display_name(self, name: str) -> str:
        created = self.folders.get(name)
        return created.display_name if created is not None else FOLDERS[name][0]

    def folder_class(self, name: str) -> str:
        created = self.folders.get(name)
        return created.folder_class if created is not None else FOLDERS[name][1]

    def child_folders(self, name: str) -> list[str]:
        """Distinguished children first, then created ones in the order they were made."""
        out = [f for f, (_, _, parent) in FOLDERS.items() if parent == name]
        out.extend(f.name for f in self.folders.values() if f.parent == name)
        return out

    def subtree(self, name: str) -> list[str]:
        """`name` and every folder below it, parents before children."""
        out = [name]
        for child in self.child_folders(name):
            out.extend(self.subtree(child))
        return out

    def folder_ancestors(self, name: str) -> tuple[str, ...]:
        out: list[str] = []
        parent = self.folder_parent(name)
        while parent is not None:
            out.append(parent)
            parent = self.folder_parent(parent)
        return tuple(out)

    def folder_ancestors_at(self, name: str, seq: int) -> tuple[str, ...] | None:
        """Where a folder was after change `seq`: its ancestors, or None when it did not exist then."""
        if not is_created_folder(name):
            return self.folder_ancestors(name)
        found: tuple[str, ...] | None = None
        for change_seq, changed, ancestors in self.hierarchy:
            if change_seq > seq:
                break
            if changed == name:
                found = ancestors
        return found

    def items_in(self, name: str) -> list[CalendarItem]:
        return [i for i in self.items.values() if i.folder == name]

    def new_folder_name(self) -> str:
        if self.last_folder_no >= MAX_CREATED_FOLDERS:
            raise ValueError("this mailbox has had as many created folders as the emulator numbers")
        self.last_folder_no += 1
        return f"#{self.last_folder_no}"


def _folder_modified(sub: Subscription, mbx: Mailbox, folder: str, now: dt.datetime) -> None:
    """Queue a ModifiedEvent of `folder` (FolderId, ParentFolderId: the folder above it, and its change key) on
    `sub`: what Exchange reports when a folder's item or child folder count changed ("Notification subscriptions,
    mailbox events, and EWS in Exchange")."""
    sub.seq += 1
    above = mbx.folder_parent(folder) or "root"
    modified = Event(
        sub.seq,
        "ModifiedEvent",
        now,
        None,
        None,
        mbx.folder_id(folder),
        mbx.folder_id(above),
        mbx.folder_change_key(folder),
    )
    sub.events.append(modified)


class Store:
    """All state of the emulator."""

    def __init__(self, domain: str = "EXAMPLE", servers: int = 2) -> None:
        if servers < 1:
            raise ValueError(f"an Exchange organization has at least one mailbox server, got {servers}")
        self.domain = domain
        #: Mailbox servers, each its own subscription group (GroupingInformation); mailboxes are spread over them.
        self.servers = servers
        self.accounts: dict[str, Account] = {}
        self.mailboxes: dict[str, Mailbox] = {}
        self.by_no: dict[int, Mailbox] = {}
        self.by_sid: dict[str, Mailbox] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self._mailbox_no = itertools.count(1)
        self._item_no = itertools.count(1)
        self._change_seq = itertools.count(1)
        self._sub_no = itertools.count(1)
        #: Bumped by every change worth keeping (persistence.keep_saved writes the store when it moved).
        self.version = 0
        #: Undelivered events a subscription keeps before they are dropped (ErrorMissedNotificationEvents).
        self.max_queued_events = 1000

    # ------------------------------------------------------------------ setup
    def add_account(
        self, username: str, password: str, impersonation: bool = False, mailbox: str | None = None
    ) -> Account:
        if not username or not password:
            raise ValueError(f"account needs a username and a password (username={username!r})")
        acc = Account(
            username=username,
            password=password,
            impersonation=impersonation,
            mailbox=mailbox.lower() if mailbox else None,
        )
        self.accounts[acc.key] = acc
        self.version += 1
        return acc

    def add_mailbox(self, email: str, display_name: str | None = None) -> Mailbox:
        key = email.strip().lower()
        if "@" not in key:
            raise ValueError(f"mailbox address must be an SMTP address, got {email!r}")
        existing = self.mailboxes.get(key)
        if existing is not None:
            return existing
        no = next(self._mailbox_no)
        name = display_name or key.split("@", 1)[0].replace(".", " ").title()
        mbx = Mailbox(no=no, email=key, display_name=name, server=(no - 1) % self.servers)
        self.version += 1
        self.mailboxes[key] = mbx
        self.by_no[no] = mbx
        self.by_sid[mbx.sid] = mbx
        return mbx

    def add_delegate(self, owner: str, delegate: str, rights: str = "Editor") -> None:
        mbx = self.mailbox(owner)
        if mbx is None:
            raise ValueError(f"delegate owner mailbox {owner!r} does not exist")
        if rights not in ("Reviewer", "Author", "Editor"):
            raise ValueError(f"delegate calendar rights must be Reviewer, Author or Editor, got {rights!r}")
        mbx.delegates[delegate.strip().lower()] = rights
        self.version += 1

    def mailbox(self, email: str) -> Mailbox | None:
        return self.mailboxes.get(email.strip().lower())

    def server_name(self, index: int) -> str:
        """A mailbox server's name, also its GroupingInformation and the X-BackEndOverrideCookie it sets."""
        return f"EMU-MBX{index + 1:02d}"

    def server_index(self, name: str) -> int | None:
        for index in range(self.servers):
            if self.server_name(index).lower() == name.strip().lower():
                return index
        return None

    def move_mailbox(self, mbx: Mailbox, server: int) -> int:
        """Move `mbx` to another mailbox server (a database move, New-MoveRequest): its subscriptions do not
        survive it - later requests for them are answered ErrorSubscriptionNotFound. Returns how many ended."""
        if not 0 <= server < self.servers:
            raise ValueError(f"server must be 0..{self.servers - 1}, got {server}")
        mbx.server = server
        mbx.generation += 1
        self.version += 1
        ended = 0
        for subscription in list(mbx.subscriptions.values()):
            if not subscription.expired:
                subscription.expired = True
                subscription.wake()
                ended += 1
        return ended

    def find_account(self, username: str) -> Account | None:
        return self.accounts.get(normalize_username(username))

    def resolve_mailbox(
        self, smtp: str | None = None, sid: str | None = None, upn: str | None = None
    ) -> Mailbox | None:
        if smtp:
            return self.mailbox(smtp)
        if sid:
            return self.by_sid.get(sid.strip())
        if upn:
            return self.mailbox(upn)
        return None

    # ------------------------------------------------------------------- items
    def next_item_no(self) -> int:
        return next(self._item_no)

    # -------------------------------------------------------------- change log
    def __getstate__(self) -> dict[str, object]:
        """Picklable state: the counters as their next values, without subscriptions (persistence.py)."""
        state = dict(self.__dict__)
        state["subscriptions"] = {}
        for name in ("_mailbox_no", "_item_no", "_change_seq", "_sub_no"):
            value = next(getattr(self, name))
            setattr(self, name, itertools.count(value))  # the peek took nothing away
            state[name] = value
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        for name in ("_mailbox_no", "_item_no", "_change_seq", "_sub_no"):
            state[name] = itertools.count(int(state[name]))  # type: ignore[call-overload]
        self.__dict__.update(state)

    def record(self, mbx: Mailbox, item: CalendarItem, kind: str) -> None:
        """Record a change of a calendar item (kind: created, modified, deleted) and notify subscriptions."""
        top = item.master if item.master is not None else item
        log = mbx.log_of(top.folder)
        if log is None:
            raise ValueError(f"{top.folder} holds no calendar items")
        self.version += 1
        log.commit_time_max = utcnow()
        seq = next(self._change_seq)
        log.log_seq.append(seq)
        log.log_item.append(top.no)
        log.latest[top.no] = seq
        if kind == "created":
            log.created_seq[top.no] = seq
            log.tombstones.pop(top.no, None)
        elif kind == "deleted":
            log.tombstones[top.no] = top.item_id
        log.folder_version += 1 if kind != "modified" else 0
        event_kind = {"created": "CreatedEvent", "modified": "ModifiedEvent", "deleted": "DeletedEvent"}[kind]
        if mbx.subscriptions:
            now = utcnow()
            parent = mbx.folder_id(top.folder)
            pck = mbx.folder_change_key(top.folder)
            for sub in mbx.subscriptions.values():
                if sub.expired or (sub.folders is not None and top.folder not in sub.folders):
                    continue
                if event_kind in sub.event_types:
                    sub.seq += 1
                    sub.events.append(
                        Event(
                            sub.seq,
                            event_kind,
                            now,
                            top.item_id,
                            None if kind == "deleted" else top.change_key,
                            None,
                            parent,
                            pck,
                        )
                    )
                if kind != "modified" and "ModifiedEvent" in sub.event_types:
                    _folder_modified(sub, mbx, top.folder, now)  # its item count changed
                self._bound(sub)
                sub.wake()

    def _bound(self, sub: Subscription) -> None:
        if len(sub.events) > self.max_queued_events:
            # The queue of undelivered events is bounded: Exchange drops them and tells the client with
            # ErrorMissedNotificationEvents ("Handling notification-related errors in EWS in Exchange": catch up
            # with a sync and subscribe again).
            sub.events.clear()
            sub.missed = True

    def record_folder(self, mbx: Mailbox, kind: str, name: str, parent: str, old_parent: str | None = None) -> None:
        """A folder was created, deleted or moved (kind: CreatedEvent, DeletedEvent, MovedEvent): subscriptions on
        its parent folder (the old and the new one for a move) or on all folders hear of it, followed by a
        ModifiedEvent of each parent whose child count changed ("Notification subscriptions, mailbox events, and EWS
        in Exchange": folder events are reported to subscriptions on the folder's parent)."""
        self.version += 1
        if not mbx.subscriptions:
            return
        now = utcnow()
        own_id = mbx.folder_id(name)
        parents = [parent] + ([old_parent] if old_parent is not None else [])
        for sub in mbx.subscriptions.values():
            if sub.expired:
                continue
            watched = [p for p in parents if sub.folders is None or p in sub.folders]
            if not watched:
                continue
            if kind in sub.event_types:
                sub.seq += 1
                old = mbx.folder_id(old_parent) if old_parent is not None else None
                sub.events.append(
                    Event(sub.seq, kind, now, None, None, own_id, mbx.folder_id(parent), "", old_parent_folder_id=old)
                )
            if "ModifiedEvent" in sub.event_types:
                for changed in watched:
                    _folder_modified(sub, mbx, changed, now)  # its child folder count changed
            self._bound(sub)
            sub.wake()

    def record_hierarchy(self, mbx: Mailbox, names: list[str]) -> None:
        """Folders were created, moved or deleted (SyncFolderHierarchy reports them)."""
        self.version += 1
        for name in names:
            alive = mbx.has_folder(name)
            mbx.hierarchy.append((next(self._change_seq), name, mbx.folder_ancestors(name) if alive else None))

    def changes_since(self, log: ChangeLog, since: int) -> Iterator[tuple[int, int]]:
        """(seq, item no) of the latest change of every item of a folder changed after `since`, in seq order."""
        start = bisect.bisect_right(log.log_seq, since)
        for idx in range(start, len(log.log_seq)):
            seq = log.log_seq[idx]
            no = log.log_item[idx]
            if log.latest.get(no) == seq:
                yield seq, no

    # ----------------------------------------------------------- subscriptions
    def subscribe(
        self,
        mbx: Mailbox,
        creator: str,
        kind: str,
        folders: set[str] | None,
        event_types: set[str],
        timeout_minutes: int = 0,
    ) -> Subscription:
        no = next(self._sub_no)
        raw = struct.pack(">I", no) + uuid.uuid4().bytes + mbx.guid.encode()[:8]
        sub_id = _b64(b"\x1a\x00" + raw)
        sub = Subscription(
            id=sub_id,
            no=no,
            mailbox=mbx,
            creator=creator,
            kind=kind,
            folders=folders,
            event_types=event_types,
            timeout_minutes=timeout_minutes,
            server=mbx.server,
        )
        mbx.subscriptions[sub_id] = sub
        self.subscriptions[sub_id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.mailbox.subscriptions.pop(sub.id, None)
        self.subscriptions.pop(sub.id, None)
        sub.expired = True
        sub.wake()

"""CalendarItem <-> XML: response serialisation in schema order, request parsing, item shapes."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import html as lxml_html

from .mapi import computed
from .model import Attendee, CalendarItem, ExtKey, ExtValue, Mailbox, Store
from .recurrence import Recurrence, RecurrenceError
from .timezones import (
    CustomZone,
    UnknownTimeZoneError,
    is_known,
    parse_definition,
    write_custom_definition,
    write_custom_meeting_timezone,
    write_definition,
    write_meeting_timezone,
)
from .xmlutil import (
    NS_T,
    UTC,
    Element,
    bool_text,
    children,
    fmt_dt,
    local,
    parse_bool,
    parse_dt,
    sub,
    t,
    text_of,
)

DISTINGUISHED_SETS = {
    "meeting": "6ed8da90-450b-101b-98da-00aa003f1305",
    "appointment": "00062002-0000-0000-c000-000000000046",
    "common": "00062008-0000-0000-c000-000000000046",
    "publicstrings": "00020329-0000-0000-c000-000000000046",
    "address": "00062004-0000-0000-c000-000000000046",
    "internetheaders": "00020386-0000-0000-c000-000000000046",
    "calendarassistant": "11000e07-b51b-40d6-af21-caa85edab1d0",
    "unifiedmessaging": "4442858e-a9e3-4e80-b900-317a210cc15b",
    "task": "00062003-0000-0000-c000-000000000046",
    "sharing": "00062040-0000-0000-c000-000000000046",
}


class ItemError(Exception):
    """A per-item EWS error (becomes a ResponseMessage with ResponseClass=Error)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


def ext_key(uri: Element) -> ExtKey:
    attrs = dict(uri.attrib)
    set_id = attrs.get("DistinguishedPropertySetId") or attrs.get("PropertySetId") or ""
    set_id = DISTINGUISHED_SETS.get(set_id.lower(), set_id.lower())
    if "PropertyName" in attrs:
        name = attrs["PropertyName"]
    elif "PropertyId" in attrs:
        name = f"#{int(attrs['PropertyId'], 0)}"
    elif "PropertyTag" in attrs:
        name = f"tag:{int(attrs['PropertyTag'], 0)}"
    else:
        raise ItemError(
            "ErrorInvalidExtendedProperty", "ExtendedFieldURI needs PropertyName, PropertyId or PropertyTag"
        )
    if "PropertyTag" not in attrs and not set_id:
        raise ItemError(
            "ErrorInvalidExtendedProperty",
            "ExtendedFieldURI needs DistinguishedPropertySetId or PropertySetId",
        )
    prop_type = attrs.get("PropertyType", "")
    if not prop_type:
        raise ItemError("ErrorInvalidExtendedProperty", "ExtendedFieldURI needs PropertyType")
    return ExtKey(set_id, name, prop_type)


# ------------------------------------------------------------------------------------------------ shapes

ALL_PROPERTIES = frozenset(
    [
        "item:ParentFolderId",
        "item:ItemClass",
        "item:Subject",
        "item:Sensitivity",
        "item:Body",
        "item:DateTimeReceived",
        "item:Size",
        "item:Categories",
        "item:Importance",
        "item:IsSubmitted",
        "item:IsDraft",
        "item:IsFromMe",
        "item:IsResend",
        "item:IsUnmodified",
        "item:DateTimeSent",
        "item:DateTimeCreated",
        "item:ReminderDueBy",
        "item:ReminderIsSet",
        "item:ReminderMinutesBeforeStart",
        "item:DisplayCc",
        "item:DisplayTo",
        "item:HasAttachments",
        "item:Culture",
        "item:EffectiveRights",
        "item:LastModifiedName",
        "item:LastModifiedTime",
        "item:IsAssociated",
        "item:WebClientReadFormQueryString",
        "item:WebClientEditFormQueryString",
        "item:ConversationId",
        "calendar:UID",
        "calendar:RecurrenceId",
        "calendar:DateTimeStamp",
        "calendar:Start",
        "calendar:End",
        "calendar:OriginalStart",
        "calendar:IsAllDayEvent",
        "calendar:LegacyFreeBusyStatus",
        "calendar:Location",
        "calendar:IsMeeting",
        "calendar:IsCancelled",
        "calendar:IsRecurring",
        "calendar:MeetingRequestWasSent",
        "calendar:IsResponseRequested",
        "calendar:CalendarItemType",
        "calendar:MyResponseType",
        "calendar:Organizer",
        "calendar:RequiredAttendees",
        "calendar:OptionalAttendees",
        "calendar:Resources",
        "calendar:Duration",
        "calendar:TimeZone",
        "calendar:AppointmentReplyTime",
        "calendar:AppointmentSequenceNumber",
        "calendar:AppointmentState",
        "calendar:Recurrence",
        "calendar:FirstOccurrence",
        "calendar:LastOccurrence",
        "calendar:ModifiedOccurrences",
        "calendar:DeletedOccurrences",
        "calendar:StartTimeZone",
        "calendar:EndTimeZone",
        "calendar:ConferenceType",
        "calendar:AllowNewTimeProposal",
        "calendar:IsOnlineMeeting",
        "calendar:MeetingWorkspaceUrl",
        "calendar:NetShowUrl",
    ]
)
DEFAULT_PROPERTIES = frozenset(
    [
        "item:ParentFolderId",
        "item:ItemClass",
        "item:Subject",
        "item:Sensitivity",
        "item:HasAttachments",
        "item:IsAssociated",
        "calendar:Start",
        "calendar:End",
        "calendar:LegacyFreeBusyStatus",
        "calendar:Location",
        "calendar:CalendarItemType",
        "calendar:Organizer",
    ]
)
# Fields FindItem can not return (Exchange answers ErrorInvalidPropertyRequest for them in FindItem)
FIND_ITEM_FORBIDDEN = frozenset(
    [
        "item:Body",
        "item:Attachments",
        "item:MimeContent",
        "item:UniqueBody",
        "item:NormalizedBody",
        "item:TextBody",
        "calendar:RequiredAttendees",
        "calendar:OptionalAttendees",
        "calendar:Resources",
        "calendar:ModifiedOccurrences",
        "calendar:DeletedOccurrences",
        "calendar:ConflictingMeetings",
        "calendar:AdjacentMeetings",
    ]
)


@dataclass
class Shape:
    fields: set[str]
    ext: list[Element] = field(default_factory=list)  # requested ExtendedFieldURI elements
    body_type: str = "Best"
    id_only: bool = False
    #: The FieldURIs named in AdditionalProperties (FindItem refuses some of them; BaseShape alone never fails).
    explicit: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, shape_el: Element | None) -> Shape:
        if shape_el is None:
            return cls(set(DEFAULT_PROPERTIES))
        base = text_of(shape_el, t("BaseShape")) or "Default"
        if base == "IdOnly":
            fields: set[str] = set()
        elif base == "AllProperties":
            fields = set(ALL_PROPERTIES)
        else:
            fields = set(DEFAULT_PROPERTIES)
        shape = cls(fields, id_only=base == "IdOnly")
        shape.body_type = text_of(shape_el, t("BodyType")) or "Best"
        props = shape_el.find(t("AdditionalProperties"))
        if props is not None:
            for uri in children(props):
                name = local(uri.tag)
                if name == "FieldURI":
                    shape.fields.add(uri.get("FieldURI", ""))
                    shape.explicit.add(uri.get("FieldURI", ""))
                elif name == "ExtendedFieldURI":
                    ext_key(uri)
                    shape.ext.append(uri)
        return shape


# ------------------------------------------------------------------------------------------- serialisation


@dataclass
class WriteContext:
    store: Store
    viewer: Mailbox
    shape: Shape
    year: int


def _mailbox(parent: Element, tag: str, name: str, email: str, store: Store) -> None:
    node = sub(parent, tag)
    sub(node, t("Name"), name or email)
    sub(node, t("EmailAddress"), email)
    sub(node, t("RoutingType"), "SMTP")
    sub(node, t("MailboxType"), "Mailbox" if store.mailbox(email) is not None else "OneOff")


def _attendees(parent: Element, tag: str, group: list[Attendee], store: Store) -> None:
    if not group:
        return
    node = sub(parent, tag)
    for att in group:
        a = sub(node, t("Attendee"))
        _mailbox(a, t("Mailbox"), att.name, att.email, store)
        sub(a, t("ResponseType"), att.response)
        if att.last_response_time is not None:
            sub(a, t("LastResponseTime"), fmt_dt(att.last_response_time))


def html_to_text(value: str) -> str:
    if not value.strip():
        return ""
    try:
        doc = lxml_html.fromstring(value)
    except Exception:  # lxml raises ParserError subclasses for odd input
        return value
    return str(doc.text_content()).strip()


def text_to_html(value: str) -> str:
    from html import escape

    lines = "<br>\r\n".join(escape(line) for line in value.splitlines())
    return (
        '<html>\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\r\n</head>\r\n'
        f"<body>\r\n<div>{lines}</div>\r\n</body>\r\n</html>\r\n"
    )


def body_for(item: CalendarItem, wanted: str) -> tuple[str, str]:
    if wanted == "Text" and item.body_type == "HTML":
        return "Text", html_to_text(item.body)
    if wanted == "HTML" and item.body_type == "Text":
        return "HTML", text_to_html(item.body)
    return item.body_type, item.body


def _duration_text(delta: dt.timedelta) -> str:
    total = int(delta.total_seconds())
    days, rem = divmod(total, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, seconds = divmod(rem, 60)
    out = "P" + (f"{days}D" if days else "")
    tpart = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{seconds}S" if seconds else "")
    if tpart or not days:
        out += "T" + (tpart or "0S")
    return out


def _occ_info(parent: Element, tag: str, occ: CalendarItem) -> None:
    node = sub(parent, tag)
    sub(node, t("ItemId"), Id=occ.item_id, ChangeKey=occ.change_key)
    sub(node, t("Start"), fmt_dt(occ.start))
    sub(node, t("End"), fmt_dt(occ.end))
    sub(node, t("OriginalStart"), fmt_dt(occ.original_start or occ.start))


def _appointment_state(item: CalendarItem) -> int:
    if not item.is_meeting:
        return 0
    state = 1
    if not item.is_organizer:
        state |= 2
    if item.is_cancelled:
        state |= 4
    return state


def _tz_suffix(item: CalendarItem) -> str:
    try:
        offset = item.local_start().utcoffset() or dt.timedelta(0)
    except UnknownTimeZoneError:
        return "Z"
    total = int(offset.total_seconds()) // 60
    if total == 0:
        return "Z"
    sign = "+" if total > 0 else "-"
    return f"{sign}{abs(total) // 60:02d}:{abs(total) % 60:02d}"


Writer = Callable[[Element, CalendarItem, WriteContext], None]


def _w_parent(p: Element, i: CalendarItem, c: WriteContext) -> None:
    sub(p, t("ParentFolderId"), Id=i.mailbox.folder_id(i.folder), ChangeKey=i.mailbox.folder_change_key(i.folder))


def _w_body(p: Element, i: CalendarItem, c: WriteContext) -> None:
    btype, text = body_for(i, c.shape.body_type)
    sub(p, t("Body"), text, BodyType=btype, IsTruncated="false")


def _w_categories(p: Element, i: CalendarItem, c: WriteContext) -> None:
    if i.categories:
        node = sub(p, t("Categories"))
        for cat in i.categories:
            sub(node, t("String"), cat)


def _w_display_to(p: Element, i: CalendarItem, c: WriteContext) -> None:
    sub(p, t("DisplayTo"), "; ".join(a.name or a.email for a in i.required))


def _w_display_cc(p: Element, i: CalendarItem, c: WriteContext) -> None:
    sub(p, t("DisplayCc"), "; ".join(a.name or a.email for a in i.optional))


def _w_ext(p: Element, i: CalendarItem, c: WriteContext) -> None:
    source = i.master if (i.occurrence_view and i.master is not None) else i
    for uri in c.shape.ext:
        key = ext_key(uri)
        value = source.ext.get(key) or computed(key, i)
        if value is None:
            continue
        node = sub(p, t("ExtendedProperty"))
        u = sub(node, t("ExtendedFieldURI"))
        for k, v in uri.attrib.items():
            u.set(k, v)
        if value.multi:
            vs = sub(node, t("Values"))
            for v in value.values:
                sub(vs, t("Value"), v)
        else:
            sub(node, t("Value"), value.values[0] if value.values else "")


def _w_rights(p: Element, i: CalendarItem, c: WriteContext) -> None:
    node = sub(p, t("EffectiveRights"))
    for name, val in (
        ("CreateAssociated", False),
        ("CreateContents", False),
        ("CreateHierarchy", False),
        ("Delete", True),
        ("Modify", True),
        ("Read", True),
        ("ViewPrivateItems", True),
    ):
        sub(node, t(name), bool_text(val))


def _w_conversation(p: Element, i: CalendarItem, c: WriteContext) -> None:
    import base64
    import hashlib

    digest = hashlib.md5(i.uid.encode(), usedforsecurity=False).digest()
    sub(p, t("ConversationId"), Id=base64.b64encode(b"\x00\x00\x00\x00" + digest).decode())


def _w_text_body(p: Element, i: CalendarItem, c: WriteContext) -> None:
    sub(
        p,
        t("TextBody"),
        html_to_text(i.body) if i.body_type == "HTML" else i.body,
        BodyType="Text",
        IsTruncated="false",
    )


def _w_organizer(p: Element, i: CalendarItem, c: WriteContext) -> None:
    if i.organizer_email:
        node = sub(p, t("Organizer"))
        _mailbox(node, t("Mailbox"), i.organizer_name, i.organizer_email, c.store)


def _w_recurrence(p: Element, i: CalendarItem, c: WriteContext) -> None:
    if i.recurrence is not None and not i.occurrence_view and i.master is None:
        i.recurrence.write(p, _tz_suffix(i))


def _w_first(p: Element, i: CalendarItem, c: WriteContext) -> None:
    if i.recurrence is None or i.master is not None:
        return
    first, _ = i.first_last()
    if first is not None:
        _occ_info(p, t("FirstOccurrence"), first)


def _w_last(p: Element, i: CalendarItem, c: WriteContext) -> None:
    if i.recurrence is None or i.master is not None:
        return
    _, last = i.first_last()
    if last is not None:
        _occ_info(p, t("LastOccurrence"), last)


def _w_modified(p: Element, i: CalendarItem, c: WriteContext) -> None:
    if i.recurrence is None or i.master is not None or not i.exceptions:
        return
    node = sub(p, t("ModifiedOccurrences"))
    for original in sorted(i.exceptions):
        _occ_info(node, t("Occurrence"), i.exceptions[original])


def _w_deleted(p: Element, i: CalendarItem, c: WriteContext) -> None:
    if i.recurrence is None or i.master is not None or not i.deleted:
        return
    node = sub(p, t("DeletedOccurrences"))
    for original in sorted(i.deleted):
        d = sub(node, t("DeletedOccurrence"))
        sub(d, t("Start"), fmt_dt(original))


def _w_meeting_tz(p: Element, i: CalendarItem, c: WriteContext) -> None:
    if i.start_tz_def is not None:
        write_custom_meeting_timezone(p, i.start_tz_def)
    else:
        write_meeting_timezone(p, i.start_tz, c.year)


def _w_start_tz(p: Element, i: CalendarItem, c: WriteContext) -> None:
    if i.start_tz_def is not None:
        write_custom_definition(p, t("StartTimeZone"), i.start_tz_def)
    else:
        write_definition(p, t("StartTimeZone"), i.start_tz, i.start_tz_name, c.year)


def _w_end_tz(p: Element, i: CalendarItem, c: WriteContext) -> None:
    if i.end_tz_def is not None:
        write_custom_definition(p, t("EndTimeZone"), i.end_tz_def)
    else:
        write_definition(p, t("EndTimeZone"), i.end_tz, i.end_tz_name, c.year)


def _simple(tag: str, getter: Callable[[CalendarItem], str | None]) -> Writer:
    def write(p: Element, i: CalendarItem, c: WriteContext) -> None:
        value = getter(i)
        if value is not None:
            sub(p, t(tag), value)

    return write


def _when(i: CalendarItem) -> str:
    local_start = i.local_start()
    return local_start.strftime("%A, %B %d, %Y %I:%M %p-") + i.end.astimezone(i.end_zone()).strftime("%I:%M %p")


WRITERS: list[tuple[str, Writer]] = [
    ("item:ParentFolderId", _w_parent),
    ("item:ItemClass", _simple("ItemClass", lambda i: "IPM.Appointment")),
    ("item:Subject", _simple("Subject", lambda i: i.subject)),
    ("item:Sensitivity", _simple("Sensitivity", lambda i: i.sensitivity)),
    ("item:Body", _w_body),
    ("item:DateTimeReceived", _simple("DateTimeReceived", lambda i: fmt_dt(i.created))),
    ("item:Size", _simple("Size", lambda i: str(512 + len(i.body.encode()) + len(i.subject.encode())))),
    ("item:Categories", _w_categories),
    ("item:Importance", _simple("Importance", lambda i: i.importance)),
    ("item:IsSubmitted", _simple("IsSubmitted", lambda i: "false")),
    ("item:IsDraft", _simple("IsDraft", lambda i: "false")),
    ("item:IsFromMe", _simple("IsFromMe", lambda i: "false")),
    ("item:IsResend", _simple("IsResend", lambda i: "false")),
    ("item:IsUnmodified", _simple("IsUnmodified", lambda i: "false")),
    ("item:DateTimeSent", _simple("DateTimeSent", lambda i: fmt_dt(i.created))),
    ("item:DateTimeCreated", _simple("DateTimeCreated", lambda i: fmt_dt(i.created))),
    ("item:ReminderDueBy", _simple("ReminderDueBy", lambda i: fmt_dt(i.start))),
    ("item:ReminderIsSet", _simple("ReminderIsSet", lambda i: bool_text(i.reminder_is_set))),
    (
        "item:ReminderMinutesBeforeStart",
        _simple("ReminderMinutesBeforeStart", lambda i: str(i.reminder_minutes)),
    ),
    ("item:DisplayCc", _w_display_cc),
    ("item:DisplayTo", _w_display_to),
    ("item:HasAttachments", _simple("HasAttachments", lambda i: "false")),
    ("#ext", _w_ext),
    ("item:Culture", _simple("Culture", lambda i: i.culture)),
    ("item:EffectiveRights", _w_rights),
    (
        "item:LastModifiedName",
        _simple("LastModifiedName", lambda i: i.last_modified_name or i.mailbox.display_name),
    ),
    ("item:LastModifiedTime", _simple("LastModifiedTime", lambda i: fmt_dt(i.modified))),
    ("item:IsAssociated", _simple("IsAssociated", lambda i: "false")),
    (
        "item:WebClientReadFormQueryString",
        _simple(
            "WebClientReadFormQueryString",
            lambda i: (
                f"https://localhost/owa/?ItemID={i.item_id}&exvsurl=1&viewmodel=ICalendarItemDetailsViewModelFactory"
            ),
        ),
    ),
    (
        "item:WebClientEditFormQueryString",
        _simple(
            "WebClientEditFormQueryString",
            lambda i: (
                f"https://localhost/owa/?ItemID={i.item_id}&exvsurl=1&viewmodel=ICalendarItemDetailsViewModelFactory"
            ),
        ),
    ),
    ("item:ConversationId", _w_conversation),
    ("item:TextBody", _w_text_body),
    ("calendar:UID", _simple("UID", lambda i: i.uid)),
    (
        "calendar:RecurrenceId",
        _simple("RecurrenceId", lambda i: fmt_dt(i.original_start) if i.original_start else None),
    ),
    ("calendar:DateTimeStamp", _simple("DateTimeStamp", lambda i: fmt_dt(i.dtstamp))),
    ("calendar:Start", _simple("Start", lambda i: fmt_dt(i.start))),
    ("calendar:End", _simple("End", lambda i: fmt_dt(i.end))),
    ("calendar:OriginalStart", _simple("OriginalStart", lambda i: fmt_dt(i.original_start or i.start))),
    ("calendar:IsAllDayEvent", _simple("IsAllDayEvent", lambda i: bool_text(i.is_all_day))),
    ("calendar:LegacyFreeBusyStatus", _simple("LegacyFreeBusyStatus", lambda i: i.legacy_free_busy)),
    ("calendar:Location", _simple("Location", lambda i: i.location)),
    ("calendar:When", _simple("When", _when)),
    ("calendar:IsMeeting", _simple("IsMeeting", lambda i: bool_text(i.is_meeting))),
    ("calendar:IsCancelled", _simple("IsCancelled", lambda i: bool_text(i.is_cancelled))),
    ("calendar:IsRecurring", _simple("IsRecurring", lambda i: bool_text(i.master is not None))),
    (
        "calendar:MeetingRequestWasSent",
        _simple("MeetingRequestWasSent", lambda i: bool_text(i.meeting_request_was_sent)),
    ),
    (
        "calendar:IsResponseRequested",
        _simple("IsResponseRequested", lambda i: bool_text(i.is_response_requested)),
    ),
    ("calendar:CalendarItemType", _simple("CalendarItemType", lambda i: i.item_type)),
    ("calendar:MyResponseType", _simple("MyResponseType", lambda i: i.my_response)),
    ("calendar:Organizer", _w_organizer),
    (
        "calendar:RequiredAttendees",
        lambda p, i, c: _attendees(p, t("RequiredAttendees"), i.required, c.store),
    ),
    (
        "calendar:OptionalAttendees",
        lambda p, i, c: _attendees(p, t("OptionalAttendees"), i.optional, c.store),
    ),
    ("calendar:Resources", lambda p, i, c: _attendees(p, t("Resources"), i.resources, c.store)),
    ("calendar:Duration", _simple("Duration", lambda i: _duration_text(i.end - i.start))),
    ("calendar:TimeZone", _simple("TimeZone", lambda i: i.start_tz_name or i.start_tz)),
    (
        "calendar:AppointmentReplyTime",
        _simple("AppointmentReplyTime", lambda i: fmt_dt(i.reply_time) if i.reply_time else None),
    ),
    ("calendar:AppointmentSequenceNumber", _simple("AppointmentSequenceNumber", lambda i: str(i.sequence))),
    ("calendar:AppointmentState", _simple("AppointmentState", lambda i: str(_appointment_state(i)))),
    ("calendar:Recurrence", _w_recurrence),
    ("calendar:FirstOccurrence", _w_first),
    ("calendar:LastOccurrence", _w_last),
    ("calendar:ModifiedOccurrences", _w_modified),
    ("calendar:DeletedOccurrences", _w_deleted),
    ("calendar:MeetingTimeZone", _w_meeting_tz),
    ("calendar:StartTimeZone", _w_start_tz),
    ("calendar:EndTimeZone", _w_end_tz),
    ("calendar:ConferenceType", _simple("ConferenceType", lambda i: str(i.conference_type))),
    (
        "calendar:AllowNewTimeProposal",
        _simple("AllowNewTimeProposal", lambda i: bool_text(i.allow_new_time_proposal)),
    ),
    ("calendar:IsOnlineMeeting", _simple("IsOnlineMeeting", lambda i: bool_text(i.is_online_meeting))),
    ("calendar:MeetingWorkspaceUrl", _simple("MeetingWorkspaceUrl", lambda i: "")),
    ("calendar:NetShowUrl", _simple("NetShowUrl", lambda i: "")),
    ("calendar:StartTimeZoneId", _simple("StartTimeZoneId", lambda i: i.start_tz)),
    ("calendar:EndTimeZoneId", _simple("EndTimeZoneId", lambda i: i.end_tz)),
    ("calendar:IsOrganizer", _simple("IsOrganizer", lambda i: bool_text(i.is_organizer))),
]
KNOWN_FIELDS = frozenset(uri for uri, _ in WRITERS)


def write_item(parent: Element, item: CalendarItem, ctx: WriteContext) -> Element:
    node = sub(parent, t("CalendarItem"))
    wanted = ctx.shape.fields
    if "item:MimeContent" in wanted:
        from .mime import to_icalendar  # mime reads items and raises ItemError: imported here, not at the top

        content = base64.b64encode(to_icalendar(item)).decode("ascii")
        sub(node, t("MimeContent"), content, CharacterSet="UTF-8")
    sub(node, t("ItemId"), Id=item.item_id, ChangeKey=item.change_key)
    for uri, writer in WRITERS:
        if uri == "#ext":
            if ctx.shape.ext:
                writer(node, item, ctx)
        elif uri in wanted:
            writer(node, item, ctx)
    return node


def write_item_id_only(parent: Element, item: CalendarItem) -> Element:
    node = sub(parent, t("CalendarItem"))
    sub(node, t("ItemId"), Id=item.item_id, ChangeKey=item.change_key)
    return node


# ------------------------------------------------------------------------------------------------ parsing


@dataclass
class ParseContext:
    store: Store
    tz: dt.tzinfo | None  # request TimeZoneContext
    validate: bool = True  # False: admin seeding keeps absurd recurrences (as a broken server would hand them out)


def _parse_mailbox(el: Element) -> tuple[str, str]:
    mbx = el.find(t("Mailbox"))
    if mbx is None:
        mbx = el
    email = (text_of(mbx, t("EmailAddress")) or "").strip()
    name = (text_of(mbx, t("Name")) or "").strip()
    if not email:
        raise ItemError("ErrorInvalidRecipients", "An attendee or organizer has no EmailAddress")
    return email, name


def _parse_attendees(el: Element, store: Store) -> list[Attendee]:
    out: list[Attendee] = []
    for att in el.findall(t("Attendee")):
        email, name = _parse_mailbox(att)
        known = store.mailbox(email)
        if not name:
            name = known.display_name if known else email
        response = text_of(att, t("ResponseType")) or "Unknown"
        out.append(
            Attendee(
                email=email.lower() if known else email,
                name=name,
                response="Unknown" if response == "Unknown" else response,
            )
        )
    return out


def _set_tz(item: CalendarItem, which: str, el: Element) -> None:
    """StartTimeZone/EndTimeZone: a known Windows id, or a full definition (Periods...) under any id.

    Exchange takes a definition with Periods as given (Outlook's "Customized Time Zone", zones of other systems);
    a bare id it does not know is refused with ErrorTimeZone.
    """
    tz_id = el.get("Id") or el.get("Name") or ""
    custom: CustomZone | None = None
    if not is_known(tz_id):
        try:
            custom = parse_definition(el)
        except (UnknownTimeZoneError, ValueError) as exc:
            raise ItemError("ErrorTimeZone", f"The time zone definition {tz_id!r} is invalid: {exc}") from exc
        if custom is None:
            raise ItemError("ErrorTimeZone", f"The time zone {tz_id!r} is not a known Windows time zone id")
    name = el.get("Name")
    if which == "start":
        item.start_tz, item.start_tz_name, item.start_tz_def = tz_id, name, custom
    else:
        item.end_tz, item.end_tz_name, item.end_tz_def = tz_id, name, custom


#: Exchange keeps at most 255 characters of a subject and cuts the rest ("Subject", EWS reference:
#: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/subject).
SUBJECT_MAX = 255


def apply_field(item: CalendarItem, el: Element, ctx: ParseContext, append: bool = False) -> str | None:
    """Apply one CalendarItem child element to the item. Returns the field URI it set (None when ignored)."""
    name = local(el.tag)
    if el.tag.__class__ is not str or not str(el.tag).startswith("{" + NS_T):
        return None
    text = el.text or ""
    try:
        if name == "MimeContent":
            from .mime import from_icalendar

            try:
                content = base64.b64decode(text, validate=True)
            except ValueError as exc:
                raise ItemError("ErrorMimeContentInvalidBase64String", "MimeContent is not base64") from exc
            for key, value in from_icalendar(content).items():
                setattr(item, key, value[:SUBJECT_MAX] if key == "subject" else value)
            return "item:MimeContent"
        if name == "Subject":
            item.subject = text[:SUBJECT_MAX]
        elif name == "Body":
            btype = el.get("BodyType", "Text")
            if append:
                item.body = item.body + text
            else:
                item.body, item.body_type = text, btype
        elif name == "Location":
            item.location = text
        elif name == "Sensitivity":
            item.sensitivity = text
        elif name == "Importance":
            item.importance = text
        elif name == "Categories":
            values = [c.text or "" for c in el.findall(t("String"))]
            item.categories = item.categories + values if append else values
        elif name == "ReminderIsSet":
            item.reminder_is_set = parse_bool(text)
        elif name == "ReminderMinutesBeforeStart":
            item.reminder_minutes = int(text)
        elif name == "Culture":
            item.culture = text or "en-US"
        elif name == "UID":
            if text:
                item.uid = text
        elif name == "Start":
            item.start = parse_dt(text, ctx.tz)
        elif name == "End":
            item.end = parse_dt(text, ctx.tz)
        elif name == "IsAllDayEvent":
            item.is_all_day = parse_bool(text)
        elif name == "LegacyFreeBusyStatus":
            item.legacy_free_busy = text
        elif name == "IsResponseRequested":
            item.is_response_requested = parse_bool(text)
        elif name == "AllowNewTimeProposal":
            item.allow_new_time_proposal = parse_bool(text)
        elif name == "ConferenceType":
            item.conference_type = int(text)
        elif name in ("RequiredAttendees", "OptionalAttendees", "Resources"):
            group = _parse_attendees(el, ctx.store)
            attr = {
                "RequiredAttendees": "required",
                "OptionalAttendees": "optional",
                "Resources": "resources",
            }[name]
            if append:
                existing: list[Attendee] = getattr(item, attr)
                known = {a.email.lower() for a in existing}
                group = existing + [a for a in group if a.email.lower() not in known]
            setattr(item, attr, group)
        elif name == "Recurrence":
            item.recurrence = Recurrence.from_xml(el, validate=ctx.validate)
        elif name == "StartTimeZone":
            _set_tz(item, "start", el)
        elif name == "EndTimeZone":
            _set_tz(item, "end", el)
        elif name == "MeetingTimeZone":
            tz_name = el.get("TimeZoneName")
            if tz_name and is_known(tz_name):
                item.start_tz = item.end_tz = tz_name
        elif name == "StartTimeZoneId":
            if not is_known(text):
                raise ItemError("ErrorTimeZone", f"The time zone {text!r} is not a known Windows time zone id")
            item.start_tz = text
        elif name == "EndTimeZoneId":
            if not is_known(text):
                raise ItemError("ErrorTimeZone", f"The time zone {text!r} is not a known Windows time zone id")
            item.end_tz = text
        elif name == "ExtendedProperty":
            uri = el.find(t("ExtendedFieldURI"))
            if uri is None:
                raise ItemError("ErrorInvalidExtendedProperty", "ExtendedProperty without ExtendedFieldURI")
            values_el = el.find(t("Values"))
            if values_el is not None:
                values = [v.text or "" for v in values_el.findall(t("Value"))]
                item.ext[ext_key(uri)] = ExtValue(dict(uri.attrib), values, True)
            else:
                item.ext[ext_key(uri)] = ExtValue(dict(uri.attrib), [text_of(el, t("Value")) or ""], False)
            return "#ext"
        else:
            # Read-only or unsupported-for-calendar fields (ItemClass, IsMeeting, Organizer, ...) are ignored the
            # way Exchange ignores the read-only values a client echoes back.
            return None
    except (ValueError, RecurrenceError) as exc:
        if isinstance(exc, RecurrenceError):
            raise ItemError("ErrorCalendarInvalidRecurrence", str(exc)) from exc
        raise ItemError("ErrorInvalidPropertySet", f"invalid value for {name}: {exc}") from exc
    return name


def normalize_times(item: CalendarItem, validate: bool = True) -> None:
    """Apply Exchange's rules after a create or update: all-day snapping, end >= start, series start.

    `validate=False` (admin seeding) keeps a series without occurrences where it was put."""
    if item.end < item.start:
        raise ItemError("ErrorCalendarEndDateIsEarlierThanStartDate", "EndDate is earlier than StartDate")
    if item.is_all_day:
        zone = item.start_zone()
        ls = item.start.astimezone(zone)
        le = item.end.astimezone(zone)
        start_local = dt.datetime.combine(ls.date(), dt.time(0))
        end_date = le.date() if le.time() == dt.time(0) else le.date() + dt.timedelta(days=1)
        if end_date <= start_local.date():
            end_date = start_local.date() + dt.timedelta(days=1)
        item.start = start_local.replace(tzinfo=zone).astimezone(UTC)
        item.end = dt.datetime.combine(end_date, dt.time(0)).replace(tzinfo=zone).astimezone(UTC)
    if item.recurrence is not None and item.master is None:
        duration = item.end - item.start
        local_start = item.local_start()
        rec = item.recurrence
        # Exchange moves the series start onto the first occurrence of the pattern.
        first = next(iter(rec.starts_utc(local_start.time().replace(tzinfo=None), item.start_zone())), None)
        if first is None:
            if not validate:
                return
            raise ItemError("ErrorRecurrenceHasNoOccurrence", "The recurrence pattern has no occurrence")
        item.start = first
        item.end = first + duration

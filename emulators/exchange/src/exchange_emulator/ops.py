"""EWS operations. Each handler takes the request context and the SOAP Body's first child and returns the
response element (m:<Operation>Response) that goes into the response Body."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import gzip
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .calendar import SEND_MODES_CREATE, SEND_MODES_UPDATE, Calendar
from .calxml import (
    FIND_ITEM_FORBIDDEN,
    ItemError,
    ParseContext,
    Shape,
    WriteContext,
    apply_field,
    ext_key,
    normalize_times,
    write_item,
    write_item_id_only,
)
from .model import (
    FOLDER_PREFIX,
    FOLDERS,
    Account,
    CalendarItem,
    DictionaryObject,
    Event,
    ExtKey,
    Folder,
    IdError,
    Mailbox,
    Store,
    Subscription,
    UserConfiguration,
    change_key,
    clone_item,
    folder_element_for,
    in_calendar_view,
    is_created_folder,
    item_id,
    parse_folder_id,
    parse_item_id,
    parse_watermark,
)
from .xmlutil import (
    NS_M,
    NS_T,
    NS_XSI,
    UTC,
    Element,
    bool_text,
    children,
    el,
    fmt_dt,
    local,
    m,
    parse_bool,
    parse_dt,
    sub,
    t,
    text_of,
)


class SoapFaultError(Exception):
    """An error Exchange answers with a SOAP fault (HTTP 500) instead of a response message."""

    def __init__(self, code: str, text: str, values: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text
        self.values = values or {}


@dataclass
class Context:
    store: Store
    cal: Calendar
    account: Account
    acting: Mailbox | None
    tz: dt.tzinfo | None
    api_version: str
    minute_seconds: float = 60.0
    mailboxes_touched: set[str] = field(default_factory=set)
    max_stream_events: int = 50
    #: The mailbox server the request was routed to (X-BackEndOverrideCookie, X-AnchorMailbox, the mailbox).
    server: int = 0
    #: EWSMaxSubscriptions, charged to the subscribed mailbox.
    max_subscriptions: int = 5000

    @property
    def actor(self) -> str:
        return self.acting.display_name if self.acting else self.account.username

    def parse_ctx(self) -> ParseContext:
        return ParseContext(self.store, self.tz)

    def write_ctx(self, viewer: Mailbox, shape: Shape) -> WriteContext:
        return WriteContext(self.store, viewer, shape, dt.date.today().year)


# ------------------------------------------------------------------------------------------ response helpers


def response_root(op: str) -> tuple[Element, Element]:
    root = el(m(f"{op}Response"), nsmap={"m": NS_M, "t": NS_T})
    msgs = sub(root, m("ResponseMessages"))
    return root, msgs


def add_message(msgs: Element, op: str, error: ItemError | None = None) -> Element:
    msg = sub(msgs, m(f"{op}ResponseMessage"), ResponseClass="Error" if error else "Success")
    if error is not None:
        sub(msg, m("MessageText"), error.text)
        sub(msg, m("ResponseCode"), error.code)
        sub(msg, m("DescriptiveLinkKey"), "0")
    else:
        sub(msg, m("ResponseCode"), "NoError")
    return msg


# ------------------------------------------------------------------------------------------------- access


def check_access(ctx: Context, mbx: Mailbox, write: bool = False, folder: str = "calendar") -> None:
    ctx.mailboxes_touched.add(mbx.email)
    if ctx.acting is mbx:
        return
    if ctx.acting is not None and folder == "calendar":
        rights = mbx.delegates.get(ctx.acting.email)
        if rights is not None and (not write or rights in ("Editor", "Author")):
            return
    raise ItemError("ErrorAccessDenied", "Access is denied. Check credentials and try again.")


def resolve_folder(ctx: Context, node: Element) -> tuple[Mailbox, str]:
    name = local(node.tag)
    if name == "DistinguishedFolderId":
        folder = node.get("Id", "")
        mbx_el = node.find(t("Mailbox"))
        if mbx_el is not None:
            email = text_of(mbx_el, t("EmailAddress")) or ""
            mbx = ctx.store.mailbox(email)
            if mbx is None:
                raise ItemError(
                    "ErrorNonExistentMailbox",
                    f"The SMTP address has no mailbox associated with it. ({email})",
                )
        else:
            if ctx.acting is None:
                raise ItemError(
                    "ErrorMissingEmailAddress",
                    "When making a request as an account that does not "
                    "have a mailbox, you must specify the mailbox primary SMTP address for any "
                    "distinguished folder Ids.",
                )
            mbx = ctx.acting
        if folder not in FOLDERS:
            raise ItemError("ErrorFolderNotFound", f"The specified folder could not be found in the store. ({folder})")
    elif name == "FolderId":
        try:
            mbx_no, folder = parse_folder_id(node.get("Id", ""))
        except IdError as exc:
            raise ItemError("ErrorInvalidIdMalformed", "Id is malformed.") from exc
        found = ctx.store.by_no.get(mbx_no)
        if found is None or not found.has_folder(folder):
            # A well-formed id of no folder (one deleted since): "ErrorFolderNotFound - the folder ID that was
            # specified does not correspond to a valid folder" ("ResponseCode", EWS reference).
            raise ItemError("ErrorFolderNotFound", "The specified folder could not be found in the store.")
        mbx = found
    else:
        raise ItemError("ErrorInvalidIdMalformed", f"unsupported folder id element {name}")
    check_access(ctx, mbx, folder=folder)
    return mbx, folder


def lookup_item(ctx: Context, id_value: str, write: bool = False) -> CalendarItem:
    try:
        parsed = parse_item_id(id_value)
    except IdError as exc:
        raise ItemError("ErrorInvalidIdMalformed", "Id is malformed.") from exc
    mbx = ctx.store.by_no.get(parsed.mailbox_no)
    if mbx is None:
        raise ItemError("ErrorItemNotFound", "The specified object was not found in the store.")
    check_access(ctx, mbx, write=write)
    item = mbx.items.get(parsed.item_no) or mbx.exceptions.get(parsed.item_no)
    if item is None:
        raise ItemError("ErrorItemNotFound", "The specified object was not found in the store.")
    if parsed.occurrence is None:
        return item
    if item.recurrence is None:
        raise ItemError("ErrorItemNotFound", "The specified object was not found in the store.")
    original = parsed.occurrence
    if original in item.deleted:
        raise ItemError(
            "ErrorCalendarOccurrenceIsDeletedFromRecurrence",
            "Occurrence has been deleted from the recurrence.",
        )
    if original not in item.exceptions and not item.has_occurrence(original):
        raise ItemError("ErrorItemNotFound", "The specified object was not found in the store.")
    return item.occurrence(original)


def resolve_item_element(ctx: Context, node: Element, write: bool = False) -> CalendarItem:
    name = local(node.tag)
    if name == "ItemId":
        return lookup_item(ctx, node.get("Id", ""), write)
    if name == "OccurrenceItemId":
        master = lookup_item(ctx, node.get("RecurringMasterId", ""), write)
        if master.master is not None:
            master = master.master
        if master.recurrence is None:
            raise ItemError("ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange", "The item is not a recurring master.")
        index = int(node.get("InstanceIndex", "0"))
        if index < 1:
            raise ItemError(
                "ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange",
                f"InstanceIndex {index} is out of the recurrence range.",
            )
        for n, original in enumerate(master.occurrence_starts(), start=1):
            if n == index:
                if original in master.deleted:
                    raise ItemError(
                        "ErrorCalendarOccurrenceIsDeletedFromRecurrence",
                        "Occurrence has been deleted from the recurrence.",
                    )
                return master.occurrence(original)
        raise ItemError(
            "ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange",
            f"InstanceIndex {index} is out of the recurrence range.",
        )
    if name == "RecurringMasterItemId":
        item = lookup_item(ctx, node.get("OccurrenceId", ""), write)
        if item.master is None:
            raise ItemError("ErrorItemNotFound", "The item is not an occurrence of a recurring series.")
        return item.master
    raise ItemError("ErrorInvalidIdMalformed", f"unsupported item id element {name}")


# ------------------------------------------------------------------------------------------------- ConvertId

ID_FORMATS = ("EwsLegacyId", "EwsId", "EntryId", "HexEntryId", "StoreId", "OwaId")


def _parse_any_id(value: str) -> None:
    """An item id or a folder id: ConvertId converts both ("ConvertId operation", EWS reference)."""
    try:
        parse_item_id(value)
    except IdError:
        parse_folder_id(value)


def _id_bytes(fmt: str, value: str) -> bytes:
    if fmt in ("EwsId", "EwsLegacyId", "OwaId"):
        _parse_any_id(value)
        return base64.b64decode(value)
    if fmt == "EntryId":
        raw = base64.b64decode(value, validate=True)
    elif fmt == "HexEntryId":
        raw = binascii.unhexlify(value)
    elif fmt == "StoreId":
        raw = base64.b64decode(value, validate=True)
        if not raw.startswith(b"ST"):
            raise IdError("not a StoreId")
        raw = raw[2:]
    else:
        raise IdError(f"unknown id format {fmt}")
    # the store's own part of a folder id is 7 bytes (mailbox, folder, padding); an item's 13 or 21
    full = (FOLDER_PREFIX + b"EMF" if len(raw) == 7 else b"\x00\x03\x24EMU") + raw
    _parse_any_id(base64.b64encode(full).decode())
    return full


def _id_text(fmt: str, raw: bytes) -> str:
    if fmt in ("EwsId", "EwsLegacyId", "OwaId"):
        return base64.b64encode(raw).decode()
    body = raw[6:]
    if fmt == "EntryId":
        return base64.b64encode(body).decode()
    if fmt == "HexEntryId":
        return binascii.hexlify(body).decode().upper()
    return base64.b64encode(b"ST" + body).decode()


def op_convert_id(ctx: Context, req: Element) -> Element:
    dest = req.get("DestinationFormat", "")
    root, msgs = response_root("ConvertId")
    source = req.find(m("SourceIds"))
    for alt in children(source) if source is not None else []:
        try:
            if local(alt.tag) != "AlternateId":
                raise ItemError("ErrorInvalidIdMalformed", "Only mailbox item and folder ids can be converted.")
            try:
                raw = _id_bytes(alt.get("Format", ""), alt.get("Id", ""))
            except (IdError, ValueError, binascii.Error) as exc:
                raise ItemError("ErrorInvalidIdMalformed", "Id is malformed.") from exc
            mailbox = alt.get("Mailbox", "")
            mbx = ctx.store.mailbox(mailbox)
            if mbx is None:
                raise ItemError("ErrorNonExistentMailbox", "The SMTP address has no mailbox associated with it.")
            msg = add_message(msgs, "ConvertId")
            out = sub(msg, m("AlternateId"), Format=dest, Id=_id_text(dest, raw), Mailbox=mbx.email)
            out.set(f"{{{NS_XSI}}}type", "t:AlternateIdType")
        except ItemError as err:
            add_message(msgs, "ConvertId", err)
    return root


# ---------------------------------------------------------------------------------------------- folders

PR_LOCAL_COMMIT_TIME_MAX = 0x670A
#: When a calendar that never changed says it last changed (the emulator keeps no folder creation times).
_NEVER_CHANGED = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def write_folder(parent: Element, mbx: Mailbox, name: str, shape_el: Element | None, own: bool = True) -> None:
    base = text_of(shape_el, t("BaseShape")) if shape_el is not None else "Default"
    wanted: set[str] = set()
    if base in ("Default", "AllProperties"):
        wanted = {
            "folder:ParentFolderId",
            "folder:FolderClass",
            "folder:DisplayName",
            "folder:TotalCount",
            "folder:ChildFolderCount",
            "folder:UnreadCount",
        }
        if base == "AllProperties":
            wanted |= {"folder:EffectiveRights"}
    props = shape_el.find(t("AdditionalProperties")) if shape_el is not None else None
    if props is not None:
        wanted |= {u.get("FieldURI", "") for u in children(props) if local(u.tag) == "FieldURI"}
    folder_class = mbx.folder_class(name)
    element = folder_element_for(folder_class) if name not in ("root", "msgfolderroot") else "Folder"
    log = mbx.log_of(name)
    node = sub(parent, t(element))
    sub(node, t("FolderId"), Id=mbx.folder_id(name), ChangeKey=mbx.folder_change_key(name))
    parent_name = mbx.folder_parent(name)
    if "folder:ParentFolderId" in wanted and parent_name is not None:
        sub(node, t("ParentFolderId"), Id=mbx.folder_id(parent_name), ChangeKey=mbx.folder_change_key(parent_name))
    if "folder:FolderClass" in wanted and folder_class:
        sub(node, t("FolderClass"), folder_class)
    if "folder:DisplayName" in wanted:
        sub(node, t("DisplayName"), mbx.folder_display_name(name))
    if "folder:TotalCount" in wanted:
        sub(node, t("TotalCount"), str(len(mbx.items_in(name)) if log is not None else 0))
    if "folder:ChildFolderCount" in wanted:
        sub(node, t("ChildFolderCount"), str(len(mbx.child_folders(name))))
    for uri in children(props) if props is not None else []:
        if local(uri.tag) != "ExtendedFieldURI":
            continue
        if (
            int(uri.get("PropertyTag", "0"), 0) == PR_LOCAL_COMMIT_TIME_MAX
            and uri.get("PropertyType") == "SystemTime"
            and log is not None
        ):
            # PR_LOCAL_COMMIT_TIME_MAX ([MS-OXPROPS] 2.773): when the folder's contents last changed - what
            # sync clients compare to decide whether a folder needs reading at all.
            changed = log.commit_time_max or _NEVER_CHANGED
            prop = sub(node, t("ExtendedProperty"))
            field_uri = sub(prop, t("ExtendedFieldURI"))
            for key, value in uri.attrib.items():
                field_uri.set(key, value)
            sub(prop, t("Value"), fmt_dt(changed))
    if "folder:EffectiveRights" in wanted:
        rights = sub(node, t("EffectiveRights"))
        for r in (
            "CreateAssociated",
            "CreateContents",
            "CreateHierarchy",
            "Delete",
            "Modify",
            "Read",
            "ViewPrivateItems",
        ):
            sub(rights, t(r), "true")
    if "folder:DistinguishedFolderId" in wanted and own and not is_created_folder(name):
        # Only for the caller's own mailbox: a shared folder keeps being addressed by its FolderId.
        sub(node, t("DistinguishedFolderId"), name)
    if "folder:UnreadCount" in wanted and element == "Folder":
        sub(node, t("UnreadCount"), "0")


# ------------------------------------------------------------------------------------- user configuration

#: The folder-associated configuration objects an Exchange calendar folder holds ("GetUserConfiguration
#: operation"; the Calendar dictionary is what Set-CalendarProcessing writes, WorkHours is Outlook's XML):
#: name -> (dictionary entries (key, type, value), XmlData).
_WORK_HOURS = (
    '<?xml version="1.0"?><Root xmlns="WorkingHours.xsd"><WorkHoursVersion1><TimeZone><Bias>0</Bias>'
    "<Standard><Bias>0</Bias><ChangeDate><Time>00:00:00</Time><Date>0000/00/00</Date><DayOfWeek>0</DayOfWeek>"
    "</ChangeDate></Standard><DaylightSavings><Bias>0</Bias><ChangeDate><Time>00:00:00</Time>"
    "<Date>0000/00/00</Date><DayOfWeek>0</DayOfWeek></ChangeDate></DaylightSavings><Name>UTC</Name></TimeZone>"
    "<TimeSlot><Start>09:00:00</Start><End>18:00:00</End></TimeSlot>"
    "<WorkDays>Monday Tuesday Wednesday Thursday Friday</WorkDays></WorkHoursVersion1></Root>"
)
#: name -> (dictionary entries (key, type, value), XmlData) of the configuration objects every calendar folder has.
BUILT_IN_CONFIGURATIONS: dict[str, tuple[list[tuple[str, str, str]], str | None]] = {
    "Calendar": (
        [
            ("AutomateProcessing", "String", "AutoUpdate"),
            ("AddNewRequestsTentatively", "Boolean", "true"),
            ("ProcessExternalMeetingMessages", "Boolean", "false"),
            ("RemoveOldMeetingMessages", "Boolean", "true"),
            ("piRemindDefault", "Integer32", "15"),
        ],
        None,
    ),
    "WorkHours": ([], _WORK_HOURS),
}

#: Item numbers of configuration objects (never given to calendar items, which count up from 1).
CONFIGURATION_ITEM_NO = 0x7FFF_FFFF_0000


def configurations(mbx: Mailbox) -> dict[tuple[str, str], UserConfiguration]:
    """The mailbox's user configuration objects, the default Calendar's Calendar and WorkHours among them (kept as
    they were first read, with the ids they always had, and changed or deleted like any other)."""
    if mbx.configurations is None:
        mbx.configurations = {}
        for number, (name, (entries, xml_data)) in enumerate(BUILT_IN_CONFIGURATIONS.items()):
            dictionary: list[tuple[DictionaryObject, DictionaryObject | None]] = [
                (DictionaryObject("String", [key]), DictionaryObject(value_type, [value]))
                for key, value_type, value in entries
            ]
            mbx.configurations[("calendar", name.lower())] = UserConfiguration(
                folder="calendar",
                name=name,
                no=CONFIGURATION_ITEM_NO + number,
                dictionary=dictionary or None,
                xml_data=xml_data.encode("utf-8") if xml_data is not None else None,
            )
    return mbx.configurations


def _configuration_name(ctx: Context, name_el: Element | None, write: bool) -> tuple[Mailbox, str, str]:
    """(mailbox, folder, name) a UserConfigurationName addresses."""
    folder_el = children(name_el)[0] if name_el is not None and len(children(name_el)) else None
    if name_el is None or folder_el is None:
        raise ItemError("ErrorInvalidRequest", "UserConfigurationName needs a folder id.")
    name = name_el.get("Name", "")
    if not name:
        # UserConfigurationNameType: Name is a t:NonEmptyStringType (types.xsd) - what schema validation refuses.
        raise SoapFaultError("ErrorSchemaValidation", "The request failed schema validation: Name must not be empty.")
    mbx, folder = resolve_folder(ctx, folder_el)
    if write and ctx.acting is not mbx:
        # Configuration objects are folder associated items: a delegate's calendar rights (Reviewer, Author,
        # Editor) do not include creating or changing them ("ErrorAccessDenied", "ResponseCode").
        raise ItemError("ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    return mbx, folder, name


def _configuration_sent(ctx: Context, req: Element, operation: str) -> tuple[Element, Mailbox, str, str]:
    """The UserConfiguration element a Create/UpdateUserConfiguration request sends, and (mailbox, folder, name)
    its UserConfigurationName addresses (written to: the acting user's own folder)."""
    node = req.find(m("UserConfiguration"))
    if node is None:
        raise ItemError("ErrorInvalidRequest", f"{operation} needs a UserConfiguration.")
    return (node, *_configuration_name(ctx, node.find(t("UserConfigurationName")), write=True))


def _configuration_not_found(name: str) -> ItemError:
    """ "Get/Update/DeleteUserConfiguration operation": a name the folder does not hold is ErrorItemNotFound."""
    return ItemError("ErrorItemNotFound", f"The specified object was not found in the store. ({name})")


_INTEGER_TYPES = ("Byte", "Integer32", "UnsignedInteger32", "Integer64", "UnsignedInteger64")


def _canonical(value_type: str, text: str) -> str:
    """A dictionary value as Exchange keeps it: typed, so it answers the canonical form of what was sent - an
    xs:boolean "1" comes back "true" (XML Schema Part 2, 3.2.2: canonical {true, false}), an integer without
    leading zeros or "+". Text that does not parse as its type is kept as sent (what Exchange answers for it is not
    documented)."""
    value = text.strip()
    if value_type == "Boolean" and value in ("true", "1", "false", "0"):
        return "true" if value in ("true", "1") else "false"
    if value_type in _INTEGER_TYPES:
        try:
            return str(int(value))
        except ValueError:
            return text
    return text


def _dictionary_object(node: Element | None) -> DictionaryObject | None:
    if node is None or node.get(f"{{{NS_XSI}}}nil") in ("true", "1"):
        return None
    value_type = text_of(node, t("Type")) or "String"
    return DictionaryObject(value_type, [_canonical(value_type, v.text or "") for v in node.findall(t("Value"))])


def _read_configuration(config: UserConfiguration, node: Element) -> None:
    """Take the Dictionary, XmlData and BinaryData `node` holds; a part left out stays as it was (the EWS Managed
    API's UserConfiguration.Update sends only the parts that changed)."""
    dictionary = node.find(t("Dictionary"))
    if dictionary is not None:
        entries: list[tuple[DictionaryObject, DictionaryObject | None]] = []
        for entry in dictionary.findall(t("DictionaryEntry")):
            # DictionaryKey is not nillable in UserConfigurationDictionaryEntryType, DictionaryValue is (types.xsd).
            key = _dictionary_object(entry.find(t("DictionaryKey")))
            if key is None:
                raise ItemError("ErrorInvalidRequest", "A DictionaryKey cannot be nil.")
            entries.append((key, _dictionary_object(entry.find(t("DictionaryValue")))))
        config.dictionary = entries
    for tag, attr in (("XmlData", "xml_data"), ("BinaryData", "binary_data")):
        data = node.find(t(tag))
        if data is not None:
            try:
                setattr(config, attr, base64.b64decode((data.text or "").strip(), validate=True))
            except (ValueError, binascii.Error) as exc:
                raise ItemError("ErrorInvalidRequest", f"{tag} is not base64.") from exc


def _write_dictionary_object(parent: Element, tag: str, obj: DictionaryObject | None) -> None:
    node = sub(parent, t(tag))
    if obj is None:
        node.set(f"{{{NS_XSI}}}nil", "true")
        return
    sub(node, t("Type"), obj.type)
    for value in obj.values:
        sub(node, t("Value"), value)


def op_get_user_configuration(ctx: Context, req: Element) -> Element:
    root, msgs = response_root("GetUserConfiguration")
    try:
        mbx, folder, name = _configuration_name(ctx, req.find(m("UserConfigurationName")), write=False)
        config = configurations(mbx).get((folder, name.lower()))
        if config is None:
            raise _configuration_not_found(name)
        wanted = set((text_of(req, m("UserConfigurationProperties")) or "").split())
        if "All" in wanted:
            wanted |= {"Id", "Dictionary", "XmlData", "BinaryData"}
        msg = add_message(msgs, "GetUserConfiguration")
        node = sub(msg, m("UserConfiguration"))
        config_name = sub(node, t("UserConfigurationName"), Name=config.name)
        sub(config_name, t("FolderId"), Id=mbx.folder_id(folder), ChangeKey=mbx.folder_change_key(folder))
        if "Id" in wanted:
            sub(node, t("ItemId"), Id=item_id(mbx.no, config.no), ChangeKey=change_key(config.no, config.version))
        if "Dictionary" in wanted and config.dictionary:
            dictionary = sub(node, t("Dictionary"))
            for key, value in config.dictionary:
                entry = sub(dictionary, t("DictionaryEntry"))
                _write_dictionary_object(entry, "DictionaryKey", key)
                _write_dictionary_object(entry, "DictionaryValue", value)
        if "XmlData" in wanted and config.xml_data is not None:
            sub(node, t("XmlData"), base64.b64encode(config.xml_data).decode("ascii"))
        if "BinaryData" in wanted and config.binary_data is not None:
            sub(node, t("BinaryData"), base64.b64encode(config.binary_data).decode("ascii"))
    except ItemError as err:
        add_message(msgs, "GetUserConfiguration", err)
    return root


def op_create_user_configuration(ctx: Context, req: Element) -> Element:
    """ "CreateUserConfiguration operation": a new configuration object on a folder. One that exists already is
    ErrorItemSave ("ResponseCode": the item could not be saved - what Exchange answers, as exchangelib's own test
    suite, run against Exchange, expects in test_user_configuration)."""
    root, msgs = response_root("CreateUserConfiguration")
    try:
        node, mbx, folder, name = _configuration_sent(ctx, req, "CreateUserConfiguration")
        existing = configurations(mbx)
        if (folder, name.lower()) in existing:
            raise ItemError("ErrorItemSave", f"The user configuration object {name!r} already exists on this folder.")
        config = UserConfiguration(folder=folder, name=name, no=ctx.store.next_item_no())
        _read_configuration(config, node)
        existing[(folder, name.lower())] = config
        ctx.store.version += 1
        add_message(msgs, "CreateUserConfiguration")
    except ItemError as err:
        add_message(msgs, "CreateUserConfiguration", err)
    return root


def op_update_user_configuration(ctx: Context, req: Element) -> Element:
    """ "UpdateUserConfiguration operation": the parts sent replace the object's; an object that does not exist is
    ErrorItemNotFound."""
    root, msgs = response_root("UpdateUserConfiguration")
    try:
        node, mbx, folder, name = _configuration_sent(ctx, req, "UpdateUserConfiguration")
        config = configurations(mbx).get((folder, name.lower()))
        if config is None:
            raise _configuration_not_found(name)
        work = replace(config)
        _read_configuration(work, node)  # nothing changes when a part is refused
        config.dictionary, config.xml_data, config.binary_data = work.dictionary, work.xml_data, work.binary_data
        config.version += 1
        ctx.store.version += 1
        add_message(msgs, "UpdateUserConfiguration")
    except ItemError as err:
        add_message(msgs, "UpdateUserConfiguration", err)
    return root


def op_delete_user_configuration(ctx: Context, req: Element) -> Element:
    """ "DeleteUserConfiguration operation": the object goes (to the dumpster); one that does not exist is
    ErrorItemNotFound."""
    root, msgs = response_root("DeleteUserConfiguration")
    try:
        mbx, folder, name = _configuration_name(ctx, req.find(m("UserConfigurationName")), write=True)
        if configurations(mbx).pop((folder, name.lower()), None) is None:
            raise _configuration_not_found(name)
        ctx.store.version += 1
        add_message(msgs, "DeleteUserConfiguration")
    except ItemError as err:
        add_message(msgs, "DeleteUserConfiguration", err)
    return root


def op_get_folder(ctx: Context, req: Element) -> Element:
    root, msgs = response_root("GetFolder")
    shape_el = req.find(m("FolderShape"))
    ids = req.find(m("FolderIds"))
    for node in children(ids) if ids is not None else []:
        try:
            mbx, name = resolve_folder(ctx, node)
            msg = add_message(msgs, "GetFolder")
            write_folder(sub(msg, m("Folders")), mbx, name, shape_el, own=mbx is ctx.acting)
        except ItemError as err:
            add_message(msgs, "GetFolder", err)
    return root


def op_find_folder(ctx: Context, req: Element) -> Element:
    root, msgs = response_root("FindFolder")
    deep = req.get("Traversal", "Shallow") == "Deep"
    shape_el = req.find(m("FolderShape"))
    view = req.find(m("IndexedPageFolderView"))
    offset = int(view.get("Offset", "0")) if view is not None else 0
    max_entries = int(view.get("MaxEntriesReturned", "0") or 0) if view is not None else 0
    ids = req.find(m("ParentFolderIds"))
    for node in children(ids) if ids is not None else []:
        try:
            mbx, name = resolve_folder(ctx, node)
            found: list[str] = []
            stack = list(reversed(mbx.child_folders(name)))
            while stack:
                cur = stack.pop()
                found.append(cur)
                if deep:
                    stack.extend(reversed(mbx.child_folders(cur)))
            page = found[offset : offset + max_entries] if max_entries else found[offset:]
            msg = add_message(msgs, "FindFolder")
            last = offset + len(page) >= len(found)
            rf = sub(
                msg,
                m("RootFolder"),
                TotalItemsInView=str(len(found)),
                IncludesLastItemInRange=bool_text(last),
            )
            if not last:
                rf.set("IndexedPagingOffset", str(offset + len(page)))
            folders = sub(rf, t("Folders"))
            for f in page:
                write_folder(folders, mbx, f, shape_el, own=mbx is ctx.acting)
        except ItemError as err:
            add_message(msgs, "FindFolder", err)
    return root


# ------------------------------------------------------------------------------------ CreateFolder / DeleteFolder

#: The class a typed folder element implies ("ErrorNoFolderClassOverride", "ResponseCode": for typed folders such as
#: CalendarFolder and TasksFolder the folder class is implied).
_IMPLIED_CLASS = {"CalendarFolder": "IPF.Appointment", "ContactsFolder": "IPF.Contact", "TasksFolder": "IPF.Task"}
#: What a generic t:Folder without FolderClass becomes: a mail folder.
_GENERIC_CLASS = "IPF.Note"


def _check_hierarchy_rights(ctx: Context, mbx: Mailbox) -> None:
    """Creating and deleting folders needs the owner (or an impersonating account acting as the owner): the calendar
    rights of a delegate (Reviewer, Author, Editor) do not include creating subfolders."""
    if ctx.acting is not mbx:
        raise ItemError("ErrorAccessDenied", "Access is denied. Check credentials and try again.")


def op_create_folder(ctx: Context, req: Element) -> Element:
    """ "CreateFolder operation": folders, calendar, contacts and tasks folders under ParentFolderId, one response
    message per folder. A display name another folder of the same parent has (case-insensitively, as the store
    compares folder names) is ErrorFolderExists ("A folder with the specified name already exists."); a FolderClass
    on a typed folder that is not its own class is ErrorNoFolderClassOverride; a custom class needs a generic t:Folder
    with FolderClass ("CreateFolder operation"). Search folders are not served (ErrorInvalidFolderTypeForOperation)."""
    root, msgs = response_root("CreateFolder")
    parent_el = req.find(m("ParentFolderId"))
    folders_el = req.find(m("Folders"))
    parent_error: ItemError | None = None
    mbx: Mailbox | None = None
    parent = ""
    try:
        target = children(parent_el)[0] if parent_el is not None and len(parent_el) else None
        if target is None:
            raise ItemError("ErrorParentFolderIdRequired", "Parent folder id is required for the operation.")
        mbx, parent = resolve_folder(ctx, target)
        _check_hierarchy_rights(ctx, mbx)
    except ItemError as err:
        parent_error = err
    for node in children(folders_el) if folders_el is not None else []:
        try:
            if parent_error is not None:
                raise parent_error
            assert mbx is not None
            kind = local(node.tag)
            if kind == "SearchFolder":
                raise ItemError("ErrorInvalidFolderTypeForOperation", "This server does not serve search folders.")
            display = (text_of(node, t("DisplayName")) or "").strip()
            if not display:
                raise ItemError("ErrorFolderSavePropertyError", "A folder needs a DisplayName.")
            given_class = text_of(node, t("FolderClass"))
            implied = _IMPLIED_CLASS.get(kind)
            if implied is not None:
                if given_class and given_class != implied and not given_class.startswith(implied + "."):
                    raise ItemError(
                        "ErrorNoFolderClassOverride",
                        f"A {kind} has the folder class {implied}; use a generic Folder for class {given_class}.",
                    )
                folder_class = given_class or implied
            else:
                folder_class = given_class or _GENERIC_CLASS
            taken = {mbx.folder_display_name(f).lower() for f in mbx.child_folders(parent)}
            if display.lower() in taken:
                raise ItemError("ErrorFolderExists", "A folder with the specified name already exists.")
            try:
                name = mbx.new_folder_name()
            except ValueError as exc:
                raise ItemError("ErrorFolderSave", str(exc)) from exc
            mbx.folders[name] = Folder(name=name, display_name=display, folder_class=folder_class, parent=parent)
            ctx.store.record_hierarchy(mbx, [name])
            ctx.store.record_folder(mbx, "CreatedEvent", name, parent)
            msg = add_message(msgs, "CreateFolder")
            out = sub(sub(msg, m("Folders")), t(folder_element_for(folder_class)))
            sub(out, t("FolderId"), Id=mbx.folder_id(name), ChangeKey=mbx.folder_change_key(name))
        except ItemError as err:
            msg = add_message(msgs, "CreateFolder", err)
            sub(msg, m("Folders"))
    return root


_DELETE_TYPES = ("HardDelete", "SoftDelete", "MoveToDeletedItems")


def _drop_folder_contents(ctx: Context, mbx: Mailbox, names: list[str]) -> None:
    """The folders `names` and everything in them leave the mailbox (their items, exceptions, configurations)."""
    gone = set(names)
    for no, item in list(mbx.items.items()):
        if item.folder in gone:
            del mbx.items[no]
            for exc in item.exceptions.values():
                mbx.exceptions.pop(exc.no, None)
    store_configs = configurations(mbx)
    for key in [k for k in store_configs if k[0] in gone]:
        del store_configs[key]
    for name in names:
        mbx.folders.pop(name, None)
    ctx.store.version += 1


def op_delete_folder(ctx: Context, req: Element) -> Element:
    """ "DeleteFolder operation" and "DeleteFolder" (DeleteType): HardDelete removes the folder for good, SoftDelete
    moves it to the dumpster (gone from the hierarchy EWS shows), MoveToDeletedItems moves it under Deleted Items
    (with its items and subfolders, keeping its id); a distinguished folder is refused with
    ErrorDeleteDistinguishedFolder ("The DeleteFolder operation cannot be used on distinguished folders"); a folder
    that is not there (deleted already) is ErrorItemNotFound, as in the operation page's error example."""
    root, msgs = response_root("DeleteFolder")
    delete_type = req.get("DeleteType", "")
    ids = req.find(m("FolderIds"))
    for node in children(ids) if ids is not None else []:
        try:
            if delete_type not in _DELETE_TYPES:
                raise ItemError("ErrorInvalidRequest", f"DeleteType must be one of {', '.join(_DELETE_TYPES)}.")
            try:
                mbx, name = resolve_folder(ctx, node)
            except ItemError as err:
                if err.code == "ErrorFolderNotFound" and local(node.tag) == "FolderId":
                    raise ItemError("ErrorItemNotFound", "The specified object was not found in the store.") from err
                raise
            if not is_created_folder(name):
                raise ItemError("ErrorDeleteDistinguishedFolder", "Distinguished folders cannot be deleted.")
            _check_hierarchy_rights(ctx, mbx)
            folder = mbx.folders[name]
            if delete_type == "MoveToDeletedItems" and folder.parent != "deleteditems":
                old_parent = folder.parent
                folder.parent = "deleteditems"
                folder.folder_version += 1
                ctx.store.record_hierarchy(mbx, mbx.subtree(name))  # their ancestors changed
                ctx.store.record_folder(mbx, "MovedEvent", name, "deleteditems", old_parent)
            else:
                # HardDelete, SoftDelete, or MoveToDeletedItems of a folder already in Deleted Items (which
                # deletes it, as Outlook's delete does there).
                parent = folder.parent
                gone = mbx.subtree(name)
                _drop_folder_contents(ctx, mbx, gone)
                ctx.store.record_hierarchy(mbx, gone)
                ctx.store.record_folder(mbx, "DeletedEvent", name, parent)
            add_message(msgs, "DeleteFolder")
        except ItemError as err:
            add_message(msgs, "DeleteFolder", err)
    return root


# ---------------------------------------------------------------------------------------------- GetItem


def op_get_item(ctx: Context, req: Element) -> Element:
    root, msgs = response_root("GetItem")
    shape = Shape.parse(req.find(m("ItemShape")))
    ids = req.find(m("ItemIds"))
    for node in children(ids) if ids is not None else []:
        try:
            item = resolve_item_element(ctx, node)
            msg = add_message(msgs, "GetItem")
            write_item(sub(msg, m("Items")), item, ctx.write_ctx(item.mailbox, shape))
        except ItemError as err:
            msg = add_message(msgs, "GetItem", err)
            sub(msg, m("Items"))
    return root


# --------------------------------------------------------------------------------------------- FindItem

_GETTERS: dict[str, Callable[[CalendarItem], object]] = {
    "item:Subject": lambda i: i.subject,
    "item:Sensitivity": lambda i: i.sensitivity,
    "item:Importance": lambda i: i.importance,
    "item:DateTimeCreated": lambda i: i.created,
    "item:DateTimeReceived": lambda i: i.created,
    "item:LastModifiedTime": lambda i: i.modified,
    "item:ItemClass": lambda i: "IPM.Appointment",
    "item:Categories": lambda i: i.categories,
    "calendar:UID": lambda i: i.uid,
    "calendar:Start": lambda i: i.start,
    "calendar:End": lambda i: i.end,
    "calendar:Location": lambda i: i.location,
    "calendar:IsAllDayEvent": lambda i: i.is_all_day,
    "calendar:IsCancelled": lambda i: i.is_cancelled,
    "calendar:IsMeeting": lambda i: i.is_meeting,
    "calendar:IsRecurring": lambda i: i.master is not None,
    "calendar:CalendarItemType": lambda i: i.item_type,
    "calendar:MyResponseType": lambda i: i.my_response,
    "calendar:LegacyFreeBusyStatus": lambda i: i.legacy_free_busy,
    "calendar:AppointmentSequenceNumber": lambda i: i.sequence,
    "calendar:Organizer": lambda i: i.organizer_email,
}


def _constant(value: str, sample: object) -> object:
    if isinstance(sample, bool):
        return parse_bool(value)
    if isinstance(sample, int):
        return int(value)
    if isinstance(sample, dt.datetime):
        return parse_dt(value)
    return value


def _path_getter(node: Element) -> Callable[[CalendarItem], object]:
    for child in children(node):
        if local(child.tag) == "FieldURI":
            uri = child.get("FieldURI", "")
            getter = _GETTERS.get(uri)
            if getter is None:
                raise ItemError("ErrorUnsupportedPathForQuery", f"The property {uri} can't be used in a restriction.")
            return getter
        if local(child.tag) == "ExtendedFieldURI":
            key = ext_key(child)

            def extended(i: CalendarItem, key: ExtKey = key) -> object:
                value = i.ext.get(key)
                if value is None or not value.values:
                    return None
                return list(value.values) if value.multi else value.values[0]

            return extended
    raise ItemError("ErrorInvalidRestriction", "A restriction element has no property path.")


def _compile(node: Element) -> Callable[[CalendarItem], bool]:
    name = local(node.tag)
    if name in ("And", "Or"):
        parts = [_compile(c) for c in children(node)]
        if name == "And":
            return lambda i: all(p(i) for p in parts)
        return lambda i: any(p(i) for p in parts)
    if name == "Not":
        inner = _compile(children(node)[0])
        return lambda i: not inner(i)
    if name == "Exists":
        getter = _path_getter(node)
        return lambda i: getter(i) not in (None, "", [])
    if name == "Contains":
        getter = _path_getter(node)
        const = node.find(t("Constant"))
        needle = const.get("Value", "") if const is not None else ""
        mode = node.get("ContainmentMode", "Substring")
        ignore_case = "IgnoreCase" in node.get("ContainmentComparison", "Exact")

        def contains(i: CalendarItem) -> bool:
            value = getter(i)
            hay = [str(v) for v in value] if isinstance(value, list) else [str(value or "")]
            n = needle.lower() if ignore_case else needle
            for h in hay:
                h = h.lower() if ignore_case else h
                if (
                    (mode == "FullString" and h == n)
                    or (mode == "Prefixed" and h.startswith(n))
                    or (mode in ("Substring", "PrefixOnWords", "ExactPhrase") and n in h)
                ):
                    return True
            return False

        return contains
    ops: dict[str, Callable[[object, object], bool]] = {
        "IsEqualTo": lambda a, b: a == b,
        "IsNotEqualTo": lambda a, b: a != b,
        "IsGreaterThan": lambda a, b: a > b,  # type: ignore[operator]
        "IsGreaterThanOrEqualTo": lambda a, b: a >= b,  # type: ignore[operator]
        "IsLessThan": lambda a, b: a < b,  # type: ignore[operator]
        "IsLessThanOrEqualTo": lambda a, b: a <= b,  # type: ignore[operator]
    }
    if name in ops:
        getter = _path_getter(node)
        holder = node.find(t("FieldURIOrConstant"))
        const = holder.find(t("Constant")) if holder is not None else None
        if const is None:
            raise ItemError("ErrorUnsupportedQueryFilter", "Only comparisons with a constant are supported.")
        raw = const.get("Value", "")
        op = ops[name]

        def matches(value: object) -> bool:
            try:
                return op(value, _constant(raw, value))
            except (TypeError, ValueError):
                return False

        def compare(i: CalendarItem) -> bool:
            value = getter(i)
            if value is None:
                return False
            if isinstance(value, list):
                # A multi-valued property (Categories, a multi-valued extended property) is compared value by
                # value, as the store evaluates a property restriction on a multi-valued property ([MS-OXCDATA]
                # 2.12, multivalued properties in restrictions): it matches when one of its values does, and
                # IsNotEqualTo when none is equal.
                if name == "IsNotEqualTo":
                    return not any(_constant(raw, v) == v for v in value)
                return any(matches(v) for v in value)
            return matches(value)

        return compare
    raise ItemError("ErrorUnsupportedQueryFilter", f"Restriction element {name} is not supported.")


def op_find_item(ctx: Context, req: Element) -> Element:
    root, msgs = response_root("FindItem")
    shape = Shape.parse(req.find(m("ItemShape")))
    ids = req.find(m("ParentFolderIds"))
    cal_view = req.find(m("CalendarView"))
    page_view = req.find(m("IndexedPageItemView"))
    restriction = req.find(m("Restriction"))
    sort = req.find(m("SortOrder"))
    for node in children(ids) if ids is not None else []:
        try:
            mbx, folder = resolve_folder(ctx, node)
            # Only a property named in AdditionalProperties is refused; BaseShape AllProperties simply leaves
            # out what FindItem cannot return (attendees, body, occurrence lists: "FindItem operation", and the
            # EWS Managed API's FindAppointments, which asks for AllProperties, works against Exchange).
            bad = sorted(shape.explicit & FIND_ITEM_FORBIDDEN)
            if bad:
                raise ItemError(
                    "ErrorInvalidPropertyRequest",
                    f"The property {bad[0]} can't be used in FindItem requests.",
                )
            shape.fields -= FIND_ITEM_FORBIDDEN
            items: list[CalendarItem] = []
            # Only the items of the folder asked about: a calendar a client created keeps its own.
            source = mbx.items_in(folder) if mbx.log_of(folder) is not None else []
            msg_extra: dict[str, str] = {}
            if cal_view is not None:
                if restriction is not None or sort is not None:
                    raise ItemError(
                        "ErrorInvalidRestriction",
                        "Restrictions and sort order may not be specified for a CalendarView.",
                    )
                start = parse_dt(cal_view.get("StartDate", ""), ctx.tz)
                end = parse_dt(cal_view.get("EndDate", ""), ctx.tz)
                if end < start:
                    raise ItemError("ErrorCalendarEndDateIsEarlierThanStartDate", "EndDate is earlier than StartDate")
                for item in source:
                    if item.recurrence is not None:
                        items.extend(item.expand(start, end))
                    elif in_calendar_view(item.start, item.end, start, end):
                        items.append(item)
                items.sort(key=lambda i: (i.start, i.end, i.no))
                total = len(items)
                max_entries = int(cal_view.get("MaxEntriesReturned", "0") or 0)
                page = items[:max_entries] if max_entries else items
                last = len(page) == total
            else:
                if restriction is not None and len(restriction):
                    pred = _compile(children(restriction)[0])
                    source = [i for i in source if pred(i)]
                if sort is not None and len(sort):
                    for order in reversed(children(sort)):
                        getter = _path_getter(order)
                        source.sort(
                            key=lambda i, g=getter: (g(i) is None, g(i)),  # type: ignore[misc]
                            reverse=order.get("Order") == "Descending",
                        )
                else:
                    source.sort(key=lambda i: (i.start, i.no))
                total = len(source)
                offset = 0
                max_entries = 0
                if page_view is not None:
                    offset = int(page_view.get("Offset", "0"))
                    max_entries = int(page_view.get("MaxEntriesReturned", "0") or 0)
                    if page_view.get("BasePoint") == "End":
                        offset = max(0, total - offset - (max_entries or total))
                page = source[offset : offset + max_entries] if max_entries else source[offset:]
                last = offset + len(page) >= total
                if not last:
                    msg_extra["IndexedPagingOffset"] = str(offset + len(page))
            msg = add_message(msgs, "FindItem")
            rf = sub(msg, m("RootFolder"), TotalItemsInView=str(total), IncludesLastItemInRange=bool_text(last))
            for k, v in msg_extra.items():
                rf.set(k, v)
            container = sub(rf, t("Items"))
            wctx = ctx.write_ctx(mbx, shape)
            for item in page:
                write_item(container, item, wctx)
        except ItemError as err:
            add_message(msgs, "FindItem", err)
        except ValueError as exc:
            add_message(msgs, "FindItem", ItemError("ErrorInvalidRequest", str(exc)))
    return root


# -------------------------------------------------------------------------------------- SyncFolderItems


def encode_sync_state(mbx: Mailbox, folder: str, seq: int, magic: bytes = b"EMUSYNC2") -> str:
    """Opaque like Exchange's: bound to the mailbox's store (its GUID, which a new emulator instance does not share)
    and its placement (the generation a move increments), so a state from another instance or from before a move is
    refused with ErrorInvalidSyncStateData - as Exchange refuses one after a mailbox move between databases
    ("Synchronize items by using EWS in Exchange": a client must then start again with no SyncState)."""
    raw = magic + struct.pack(">IQI", mbx.no, seq, mbx.generation) + uuid.UUID(mbx.guid).bytes + folder.encode()
    return base64.b64encode(gzip.compress(raw, mtime=0)).decode()


_INVALID_STATE = "Synchronization state data is corrupt or otherwise invalid."


def decode_sync_state(
    value: str, mbx: Mailbox, folder: str, magic: bytes = b"EMUSYNC2", newest: int | None = None
) -> int:
    """The change sequence a SyncState of `mbx`'s `folder` stands for; ErrorInvalidSyncStateData otherwise. `magic`
    tells item states (SyncFolderItems) from hierarchy states (SyncFolderHierarchy); `newest`: the newest change the
    state may claim (default: of the folder's items)."""
    try:
        raw = gzip.decompress(base64.b64decode(value, validate=True))
    except (ValueError, OSError, binascii.Error) as exc:
        raise ItemError("ErrorInvalidSyncStateData", _INVALID_STATE) from exc
    if not raw.startswith(magic) or len(raw) < 40:
        raise ItemError("ErrorInvalidSyncStateData", _INVALID_STATE)
    mbx_no, seq, generation = struct.unpack(">IQI", raw[8:24])
    guid, state_folder = raw[24:40], raw[40:].decode(errors="replace")
    if mbx_no != mbx.no or state_folder != folder:
        raise ItemError("ErrorInvalidSyncStateData", "The synchronization state belongs to another folder.")
    if newest is None:
        log = mbx.log_of(folder)
        newest = log.log_seq[-1] if log is not None and log.log_seq else 0
    if guid != uuid.UUID(mbx.guid).bytes or generation != mbx.generation or seq > newest:
        raise ItemError("ErrorInvalidSyncStateData", _INVALID_STATE)
    return int(seq)


def op_sync_folder_items(ctx: Context, req: Element) -> Element:
    root, msgs = response_root("SyncFolderItems")
    try:
        shape = Shape.parse(req.find(m("ItemShape")))
        folder_el = req.find(m("SyncFolderId"))
        if folder_el is None or not len(folder_el):
            raise ItemError("ErrorInvalidRequest", "SyncFolderId is required")
        mbx, folder = resolve_folder(ctx, children(folder_el)[0])
        state_text = (text_of(req, m("SyncState")) or "").strip()
        since = decode_sync_state(state_text, mbx, folder) if state_text else 0
        max_changes = int(text_of(req, m("MaxChangesReturned")) or "0")
        if not 1 <= max_changes <= 512:
            raise ItemError("ErrorInvalidArgument", f"MaxChangesReturned must be 1..512, got {max_changes}")
        ignore: set[int] = set()
        ignore_el = req.find(m("Ignore"))
        if ignore_el is not None:
            for node in children(ignore_el):
                try:
                    ignore.add(parse_item_id(node.get("Id", "")).item_no)
                except IdError as exc:
                    raise ItemError("ErrorInvalidIdMalformed", "Id is malformed.") from exc
        changes: list[tuple[str, int]] = []
        new_seq = since
        last = True
        log = mbx.log_of(folder)
        if log is not None:
            for seq, no in ctx.store.changes_since(log, since):
                if no in ignore:
                    new_seq = seq
                    continue
                created = log.created_seq.get(no, 0)
                if no in log.tombstones:
                    if created <= since:
                        kind = "Delete"
                    else:
                        new_seq = seq
                        continue
                elif created > since:
                    kind = "Create"
                else:
                    kind = "Update"
                if len(changes) >= max_changes:
                    last = False
                    break
                changes.append((kind, no))
                new_seq = seq
        msg = add_message(msgs, "SyncFolderItems")
        sub(msg, m("SyncState"), encode_sync_state(mbx, folder, new_seq))
        sub(msg, m("IncludesLastItemInRange"), bool_text(last))
        container = sub(msg, m("Changes"))
        wctx = ctx.write_ctx(mbx, shape)
        for kind, no in changes:
            node = sub(container, t(kind))
            if kind == "Delete" and log is not None:
                sub(node, t("ItemId"), Id=log.tombstones[no])
            else:
                item = mbx.items[no]
                if shape.id_only and not shape.fields and not shape.ext:
                    write_item_id_only(node, item)
                else:
                    write_item(node, item, wctx)
    except ItemError as err:
        msg = add_message(msgs, "SyncFolderItems", err)
        sub(msg, m("SyncState"))
        sub(msg, m("IncludesLastItemInRange"), "true")
    return root


# --------------------------------------------------------------------------------------- SyncFolderHierarchy

_HIERARCHY_STATE = b"EMUHIER1"


def op_sync_folder_hierarchy(ctx: Context, req: Element) -> Element:
    """ "SyncFolderHierarchy operation", "Synchronize folders by using EWS in Exchange": without a SyncState, a Create
    for every folder below SyncFolderId (msgfolderroot when left out), parents first; with one, what changed since:
    Create for a folder made (or moved in) since, Update for one moved within, Delete (FolderId only) for one deleted
    or moved out. Counts changing are no change ("does not return folders when UnreadCount or TotalCount have
    changed"). A state of another folder, mailbox or emulator instance → ErrorInvalidSyncStateData, as the page's
    error example answers."""
    root, msgs = response_root("SyncFolderHierarchy")
    try:
        shape_el = req.find(m("FolderShape"))
        folder_el = req.find(m("SyncFolderId"))
        if folder_el is not None and len(folder_el):
            mbx, top = resolve_folder(ctx, children(folder_el)[0])
        else:
            if ctx.acting is None:
                raise ItemError("ErrorMissingEmailAddress", "The request needs an impersonated or own mailbox.")
            mbx, top = ctx.acting, "msgfolderroot"
            check_access(ctx, mbx, folder=top)
        newest = mbx.hierarchy[-1][0] if mbx.hierarchy else 0
        state_text = (text_of(req, m("SyncState")) or "").strip()
        since = decode_sync_state(state_text, mbx, top, _HIERARCHY_STATE, newest) if state_text else None
        below = mbx.subtree(top)[1:]
        changes: list[tuple[str, str]] = []  # (Create|Update|Delete, folder name)
        if since is None:
            changes = [("Create", name) for name in below]
        else:
            changed = {name for seq, name, _ in mbx.hierarchy if seq > since}
            now = set(below)
            for name in below:  # parents before children
                if name in changed:
                    was = mbx.folder_ancestors_at(name, since)
                    changes.append(("Update" if was is not None and top in was else "Create", name))
            for name in sorted(changed - now):
                was = mbx.folder_ancestors_at(name, since)
                if was is not None and top in was:
                    changes.append(("Delete", name))
        msg = add_message(msgs, "SyncFolderHierarchy")
        sub(msg, m("SyncState"), encode_sync_state(mbx, top, newest, _HIERARCHY_STATE))
        sub(msg, m("IncludesLastFolderInRange"), "true")
        container = sub(msg, m("Changes"))
        for kind, name in changes:
            node = sub(container, t(kind))
            if kind == "Delete":
                sub(node, t("FolderId"), Id=mbx.folder_id(name))
            else:
                write_folder(node, mbx, name, shape_el, own=mbx is ctx.acting)
    except ItemError as err:
        msg = add_message(msgs, "SyncFolderHierarchy", err)
        sub(msg, m("SyncState"))
        sub(msg, m("IncludesLastFolderInRange"), "true")
    return root


# ------------------------------------------------------------------------------------------- CreateItem


def _target_calendar(ctx: Context, req: Element) -> tuple[Mailbox, str]:
    saved = req.find(m("SavedItemFolderId"))
    if saved is None or not len(saved):
        if ctx.acting is None:
            raise ItemError("ErrorMissingEmailAddress", "The request needs an impersonated or own mailbox.")
        check_access(ctx, ctx.acting, write=True)
        return ctx.acting, "calendar"
    mbx, folder = resolve_folder(ctx, children(saved)[0])
    if mbx.log_of(folder) is None:
        # The default Calendar or a calendar folder a client created (class IPF.Appointment; "CreateFolder
        # operation"); anything else: "ErrorCannotCreateCalendarItemInNonCalendarFolder" ("ResponseCode").
        raise ItemError(
            "ErrorCannotCreateCalendarItemInNonCalendarFolder",
            "Calendar items can only be created in a calendar folder.",
        )
    check_access(ctx, mbx, write=True, folder=folder)
    return mbx, folder


def op_create_item(ctx: Context, req: Element) -> Element:
    root, msgs = response_root("CreateItem")
    send_mode = req.get("SendMeetingInvitations", "SendToAllAndSaveCopy")
    disposition = req.get("MessageDisposition", "SaveOnly")
    items_el = req.find(m("Items"))
    for node in children(items_el) if items_el is not None else []:
        kind = local(node.tag)
        try:
            if kind == "CalendarItem":
                if send_mode not in SEND_MODES_CREATE:
                    raise ItemError(
                        "ErrorSendMeetingInvitationsRequired", f"invalid SendMeetingInvitations {send_mode!r}"
                    )
                target, target_folder = _target_calendar(ctx, req)
                item = CalendarItem(
                    no=ctx.store.next_item_no(),
                    mailbox=target,
                    uid="",
                    start=dt.datetime.now(UTC),
                    end=dt.datetime.now(UTC),
                    folder=target_folder,
                )
                seen = set()
                for child in children(node):
                    name = apply_field(item, child, ctx.parse_ctx())
                    if name:
                        seen.add(name)
                if ("Start" not in seen or "End" not in seen) and "item:MimeContent" not in seen:
                    raise ItemError("ErrorInvalidPropertySet", "A calendar item needs Start and End.")
                if "EndTimeZone" not in seen and "StartTimeZone" in seen:
                    item.end_tz, item.end_tz_name = item.start_tz, item.start_tz_name
                normalize_times(item)
                ctx.cal.create(target, item, send_mode, ctx.actor)
                msg = add_message(msgs, "CreateItem")
                write_item_id_only(sub(msg, m("Items")), item)
            elif kind in ("AcceptItem", "TentativelyAcceptItem", "DeclineItem"):
                ref = node.find(t("ReferenceItemId"))
                if ref is None:
                    raise ItemError("ErrorMissingInformationReferenceItemId", "ReferenceItemId is required.")
                item = lookup_item(ctx, ref.get("Id", ""), write=True)
                response = {
                    "AcceptItem": "Accept",
                    "TentativelyAcceptItem": "Tentative",
                    "DeclineItem": "Decline",
                }[kind]
                ctx.cal.respond(item, response, disposition in ("SendOnly", "SendAndSaveCopy"), ctx.actor)
                msg = add_message(msgs, "CreateItem")
                _saved_message(ctx, sub(msg, m("Items")), item, "MeetingResponse", disposition)
            elif kind == "CancelCalendarItem":
                ref = node.find(t("ReferenceItemId"))
                if ref is None:
                    raise ItemError("ErrorMissingInformationReferenceItemId", "ReferenceItemId is required.")
                item = lookup_item(ctx, ref.get("Id", ""), write=True)
                if item.master is not None:
                    if item.original_start is None:
                        raise ItemError("ErrorInvalidOperation", "occurrence without original start")
                    ctx.cal.delete_occurrence(item.master, item.original_start, True, ctx.actor)
                else:
                    ctx.cal.cancel(item, ctx.actor)
                msg = add_message(msgs, "CreateItem")
                _saved_message(ctx, sub(msg, m("Items")), item, "MeetingCancellation", disposition)
            else:
                raise ItemError(
                    "ErrorInvalidOperation",
                    f"This server stores calendar items only; {kind} cannot be created.",
                )
        except ItemError as err:
            msg = add_message(msgs, "CreateItem", err)
            sub(msg, m("Items"))
    return root


def _saved_message(ctx: Context, items: Element, about: CalendarItem, kind: str, disposition: str) -> None:
    """A response object (a meeting response or cancellation) is a message: with SaveOnly or SendAndSaveCopy,
    Exchange keeps a copy (Drafts, Sent Items) and answers its ItemId in Items; SendOnly keeps none and answers
    an empty Items ("CreateItem operation", MessageDisposition). The EWS Managed API reads that item
    (CalendarActionResults). This emulator keeps calendars only: the id is well-formed, the copy is not kept."""
    if disposition not in ("SaveOnly", "SendAndSaveCopy"):
        return
    node = sub(items, t(kind))
    copy_no = ctx.store.next_item_no()
    sub(node, t("ItemId"), Id=item_id(about.mailbox.no, copy_no), ChangeKey=f"CQAAABYA{copy_no:08d}")


# ------------------------------------------------------------------------------------------- UpdateItem

_DELETABLE: dict[str, Callable[[CalendarItem], None]] = {
    "item:Body": lambda i: setattr(i, "body", ""),
    "item:Categories": lambda i: setattr(i, "categories", []),
    "item:Subject": lambda i: setattr(i, "subject", ""),
    "calendar:Location": lambda i: setattr(i, "location", ""),
    "calendar:RequiredAttendees": lambda i: setattr(i, "required", []),
    "calendar:OptionalAttendees": lambda i: setattr(i, "optional", []),
    "calendar:Resources": lambda i: setattr(i, "resources", []),
    "calendar:Recurrence": lambda i: setattr(i, "recurrence", None),
    "item:ReminderMinutesBeforeStart": lambda i: setattr(i, "reminder_minutes", 15),
    "calendar:ConferenceType": lambda i: setattr(i, "conference_type", 0),
    "calendar:AllowNewTimeProposal": lambda i: setattr(i, "allow_new_time_proposal", True),
    "calendar:IsResponseRequested": lambda i: setattr(i, "is_response_requested", True),
    "item:Culture": lambda i: setattr(i, "culture", "en-US"),
}
_NOT_DELETABLE = {
    "calendar:Start",
    "calendar:End",
    "calendar:UID",
    "calendar:StartTimeZone",
    "calendar:EndTimeZone",
    "calendar:IsAllDayEvent",
}


def _apply_updates(ctx: Context, item: CalendarItem, updates: Element) -> None:
    pctx = ctx.parse_ctx()
    for upd in children(updates):
        kind = local(upd.tag)
        path = next(
            (c for c in children(upd) if local(c.tag) in ("FieldURI", "IndexedFieldURI", "ExtendedFieldURI")),
            None,
        )
        if path is None:
            raise ItemError("ErrorInvalidRequest", f"{kind} has no property path")
        if kind == "DeleteItemField":
            if local(path.tag) == "ExtendedFieldURI":
                item.ext.pop(ext_key(path), None)
                continue
            uri = path.get("FieldURI", "")
            if uri in _NOT_DELETABLE:
                raise ItemError("ErrorInvalidPropertyDelete", f"The property {uri} can't be deleted.")
            deleter = _DELETABLE.get(uri)
            if deleter is not None:
                if uri == "calendar:Recurrence" and item.master is not None:
                    raise ItemError("ErrorInvalidPropertyDelete", "An occurrence has no recurrence to delete.")
                deleter(item)
            continue
        holder = next((c for c in children(upd) if c is not path), None)
        if holder is None:
            raise ItemError("ErrorInvalidRequest", f"{kind} has no item element")
        if (
            local(path.tag) == "FieldURI"
            and path.get("FieldURI") in ("calendar:Recurrence", "calendar:UID")
            and item.master is not None
        ):
            raise ItemError("ErrorInvalidPropertySet", f"{path.get('FieldURI')} can't be set on an occurrence.")
        for child in children(holder):
            apply_field(item, child, pctx, append=kind == "AppendToItemField")


def op_update_item(ctx: Context, req: Element) -> Element:
    root, msgs = response_root("UpdateItem")
    send_mode = req.get("SendMeetingInvitationsOrCancellations", "SendToAllAndSaveCopy")
    conflict = req.get("ConflictResolution", "AutoResolve")
    changes = req.find(m("ItemChanges"))
    for change in children(changes) if changes is not None else []:
        try:
            if send_mode not in SEND_MODES_UPDATE:
                raise ItemError("ErrorInvalidRequest", f"invalid SendMeetingInvitationsOrCancellations {send_mode!r}")
            id_node = next(
                (
                    c
                    for c in children(change)
                    if local(c.tag) in ("ItemId", "OccurrenceItemId", "RecurringMasterItemId")
                ),
                None,
            )
            if id_node is None:
                raise ItemError("ErrorInvalidRequest", "ItemChange has no item id")
            item = resolve_item_element(ctx, id_node, write=True)
            ck = id_node.get("ChangeKey")
            if conflict == "NeverOverwrite" and ck and local(id_node.tag) == "ItemId" and ck != item.change_key:
                raise ItemError(
                    "ErrorIrresolvableConflict",
                    "The send or update operation could not be performed because the change key "
                    "passed in the request does not match the current change key for the item.",
                )
            updates = change.find(t("Updates"))
            if updates is None:
                raise ItemError("ErrorInvalidRequest", "ItemChange has no Updates")
            if item.occurrence_view:
                master = item.master
                if master is None or item.original_start is None:
                    raise ItemError("ErrorItemNotFound", "occurrence without master")
                before = master.occurrence_view_at(item.original_start)
                work = clone_item(before, 0)
            else:
                before = clone_item(item, item.no)
                work = clone_item(item, item.no)
                work.exceptions = item.exceptions
            _apply_updates(ctx, work, updates)
            normalize_times(work)
            if item.occurrence_view:
                assert item.master is not None and item.original_start is not None
                target = ctx.cal.make_exception(item.master, item.original_start)
            else:
                target = item
            _copy_state(work, target)
            ctx.cal.after_update(target, before, send_mode, ctx.actor)
            msg = add_message(msgs, "UpdateItem")
            write_item_id_only(sub(msg, m("Items")), target)
            sub(msg, m("ConflictResults")).append(el(t("Count"), "0"))
        except ItemError as err:
            msg = add_message(msgs, "UpdateItem", err)
            sub(msg, m("Items"))
    return root


_STATE_FIELDS = (
    "uid",
    "start",
    "end",
    "start_tz",
    "end_tz",
    "start_tz_name",
    "end_tz_name",
    "subject",
    "body",
    "body_type",
    "location",
    "is_all_day",
    "sensitivity",
    "importance",
    "categories",
    "legacy_free_busy",
    "reminder_is_set",
    "reminder_minutes",
    "required",
    "optional",
    "resources",
    "is_response_requested",
    "allow_new_time_proposal",
    "conference_type",
    "recurrence",
    "ext",
    "culture",
)


def _copy_state(src: CalendarItem, dst: CalendarItem) -> None:
    for name in _STATE_FIELDS:
        setattr(dst, name, getattr(src, name))


# ------------------------------------------------------------------------------------------- DeleteItem


def op_delete_item(ctx: Context, req: Element) -> Element:
    root, msgs = response_root("DeleteItem")
    cancellations = req.get("SendMeetingCancellations", "SendToAllAndSaveCopy")
    send = cancellations in ("SendOnlyToAll", "SendToAllAndSaveCopy")
    ids = req.find(m("ItemIds"))
    for node in children(ids) if ids is not None else []:
        try:
            item = resolve_item_element(ctx, node, write=True)
            if item.master is not None:
                if item.original_start is None:
                    raise ItemError("ErrorItemNotFound", "occurrence without original start")
                ctx.cal.delete_occurrence(item.master, item.original_start, send, ctx.actor)
            else:
                ctx.cal.delete(item, send, ctx.actor)
            add_message(msgs, "DeleteItem")
        except ItemError as err:
            add_message(msgs, "DeleteItem", err)
    return root


# ------------------------------------------------------------------------------------ subscriptions

EVENT_TYPES = {
    "CopiedEvent",
    "CreatedEvent",
    "DeletedEvent",
    "ModifiedEvent",
    "MovedEvent",
    "NewMailEvent",
    "FreeBusyChangedEvent",
}


def op_subscribe(ctx: Context, req: Element) -> Element:
    root, msgs = response_root("Subscribe")
    try:
        request = children(req)[0] if len(req) else None
        if request is None:
            raise ItemError("ErrorInvalidRequest", "Subscribe needs a subscription request")
        kind = local(request.tag)
        if kind == "PushSubscriptionRequest":
            raise ItemError(
                "ErrorInvalidPushSubscriptionUrl",
                "Push subscriptions are not served by this server; use pull or streaming.",
            )
        folders: set[str] | None = None
        mbx: Mailbox | None = ctx.acting
        if not parse_bool(request.get("SubscribeToAllFolders")):
            ids = request.find(t("FolderIds"))
            folders = set()
            for node in children(ids) if ids is not None else []:
                fmbx, name = resolve_folder(ctx, node)
                if mbx is not None and fmbx is not mbx and folders:
                    raise ItemError(
                        "ErrorInvalidSubscriptionRequest",
                        "All folders in a subscription must belong to one mailbox.",
                    )
                mbx = fmbx
                folders.add(name)
        if mbx is None:
            raise ItemError("ErrorMissingEmailAddress", "The subscription needs a mailbox.")
        check_access(ctx, mbx)
        types_el = request.find(t("EventTypes"))
        event_types = {e.text or "" for e in types_el} if types_el is not None else set()
        unknown = event_types - EVENT_TYPES
        if unknown:
            raise ItemError("ErrorInvalidRequest", f"unknown event types {sorted(unknown)}")
        timeout = int(text_of(request, t("Timeout")) or "0")
        sub_kind = "pull" if kind == "PullSubscriptionRequest" else "streaming"
        if sub_kind == "pull" and not 1 <= timeout <= 1440:
            raise ItemError("ErrorInvalidRequest", f"pull subscription Timeout must be 1..1440 minutes, got {timeout}")
        live = sum(1 for x in mbx.subscriptions.values() if not x.expired)
        if live >= ctx.max_subscriptions:
            raise ItemError(
                "ErrorExceededSubscriptionCount",
                f"You have exceeded the maximum number of subscriptions ({ctx.max_subscriptions}) for this mailbox.",
            )
        subscription = ctx.store.subscribe(
            mbx, ctx.account.key, sub_kind, folders, event_types, timeout if sub_kind == "pull" else 30
        )
        msg = add_message(msgs, "Subscribe")
        sub(msg, m("SubscriptionId"), subscription.id)
        if sub_kind == "pull":
            sub(msg, m("Watermark"), subscription.watermark())
    except ItemError as err:
        add_message(msgs, "Subscribe", err)
    return root


def subscription_for(ctx: Context, sub_id: str, kind: str) -> Subscription:
    subscription = ctx.store.subscriptions.get(sub_id)
    if subscription is None or subscription.kind != kind or subscription.server != ctx.server:
        # A subscription lives on one mailbox server: a request routed to another one does not find it.
        raise ItemError("ErrorSubscriptionNotFound", "The specified subscription was not found.")
    if subscription.creator != ctx.account.key:
        raise ItemError(
            "ErrorSubscriptionAccessDenied",
            "The subscription can only be accessed by the account that created it.",
        )
    if not subscription.expired and not subscription.waiters:
        # Pull subscriptions expire after their Timeout without GetEvents, streaming ones after 30 minutes
        # without a connection.
        idle = time.monotonic() - subscription.last_used
        if idle > subscription.timeout_minutes * ctx.minute_seconds:
            subscription.expired = True
    if subscription.expired:
        if kind == "pull":
            raise ItemError("ErrorExpiredSubscription", "The subscription has expired.")
        raise ItemError("ErrorSubscriptionNotFound", "The specified subscription was not found.")
    if subscription.missed:
        raise missed_events(subscription)
    ctx.mailboxes_touched.add(subscription.mailbox.email)
    return subscription


def missed_events(subscription: Subscription) -> ItemError:
    """The answer for a subscription whose events were dropped; it ends with it (a new one must be made)."""
    subscription.expired = True
    return ItemError(
        "ErrorMissedNotificationEvents",
        "Notification events were missed: the subscription's queue overflowed. Synchronize and subscribe again.",
    )


def write_event(parent: Element, ev: Event, watermark: str) -> None:
    node = sub(parent, t(ev.kind))
    sub(node, t("Watermark"), watermark)
    sub(node, t("TimeStamp"), fmt_dt(ev.timestamp))
    if ev.folder_id is not None:
        folder = sub(node, t("FolderId"), Id=ev.folder_id)
        if ev.parent_change_key:
            folder.set("ChangeKey", ev.parent_change_key)
    elif ev.item_id is not None:
        item_id = sub(node, t("ItemId"), Id=ev.item_id)
        if ev.change_key:
            item_id.set("ChangeKey", ev.change_key)
    parent_id = sub(node, t("ParentFolderId"), Id=ev.parent_folder_id)
    if ev.parent_change_key:
        parent_id.set("ChangeKey", ev.parent_change_key)
    if ev.kind in ("MovedEvent", "CopiedEvent") and ev.folder_id is not None and ev.old_parent_folder_id is not None:
        # MovedCopiedEventType: a folder keeps its id when moved, so OldFolderId is its id.
        sub(node, t("OldFolderId"), Id=ev.folder_id)
        sub(node, t("OldParentFolderId"), Id=ev.old_parent_folder_id)
    if ev.kind == "ModifiedEvent" and ev.folder_id is not None:
        sub(node, t("UnreadCount"), "0")


def write_notification(
    parent: Element,
    subscription: Subscription,
    events: list[Event],
    previous: str | None,
    more: bool | None,
    tag: str,
) -> None:
    node = sub(parent, tag)
    sub(node, t("SubscriptionId"), subscription.id)
    if previous is not None:
        sub(node, t("PreviousWatermark"), previous)
    if more is not None:
        sub(node, t("MoreEvents"), bool_text(more))
    if not events:
        status = sub(node, t("StatusEvent"))
        sub(status, t("Watermark"), subscription.watermark())
        return
    for ev in events:
        write_event(node, ev, subscription.watermark(ev.seq))


def op_get_events(ctx: Context, req: Element) -> Element:
    root, msgs = response_root("GetEvents")
    try:
        subscription = subscription_for(ctx, (text_of(req, m("SubscriptionId")) or "").strip(), "pull")
        try:
            sub_no, seq = parse_watermark((text_of(req, m("Watermark")) or "").strip())
        except IdError as exc:
            raise ItemError("ErrorInvalidWatermark", "The watermark is invalid.") from exc
        if sub_no != subscription.no or seq > subscription.seq:
            raise ItemError("ErrorInvalidWatermark", "The watermark is invalid.")
        subscription.last_used = time.monotonic()
        while subscription.events and subscription.events[0].seq <= seq:
            subscription.events.popleft()
        start = seq
        if seq == subscription.last_request_seq and subscription.more_pending:
            start = max(seq, subscription.delivered_seq)
        batch = [ev for ev in subscription.events if ev.seq > start][: ctx.max_stream_events]
        more = bool(batch) and subscription.events[-1].seq > batch[-1].seq
        subscription.last_request_seq = seq
        subscription.more_pending = more
        subscription.delivered_seq = batch[-1].seq if batch else start
        msg = add_message(msgs, "GetEvents")
        write_notification(msg, subscription, batch, subscription.watermark(seq), more, m("Notification"))
    except ItemError as err:
        add_message(msgs, "GetEvents", err)
    return root


def op_unsubscribe(ctx: Context, req: Element) -> Element:
    root, msgs = response_root("Unsubscribe")
    try:
        sub_id = (text_of(req, m("SubscriptionId")) or "").strip()
        subscription = ctx.store.subscriptions.get(sub_id)
        if subscription is None or subscription.server != ctx.server:
            raise ItemError("ErrorSubscriptionNotFound", "The specified subscription was not found.")
        if subscription.creator != ctx.account.key:
            raise ItemError(
                "ErrorSubscriptionAccessDenied",
                "The subscription can only be accessed by the account that created it.",
            )
        ctx.store.unsubscribe(subscription)
        add_message(msgs, "Unsubscribe")
    except ItemError as err:
        add_message(msgs, "Unsubscribe", err)
    return root


OPERATIONS: dict[str, Callable[[Context, Element], Element]] = {
    "ConvertId": op_convert_id,
    "GetFolder": op_get_folder,
    "CreateFolder": op_create_folder,
    "DeleteFolder": op_delete_folder,
    "GetUserConfiguration": op_get_user_configuration,
    "CreateUserConfiguration": op_create_user_configuration,
    "UpdateUserConfiguration": op_update_user_configuration,
    "DeleteUserConfiguration": op_delete_user_configuration,
    "FindFolder": op_find_folder,
    "GetItem": op_get_item,
    "FindItem": op_find_item,
    "SyncFolderItems": op_sync_folder_items,
    "SyncFolderHierarchy": op_sync_folder_hierarchy,
    "CreateItem": op_create_item,
    "UpdateItem": op_update_item,
    "DeleteItem": op_delete_item,
    "Subscribe": op_subscribe,
    "GetEvents": op_get_events,
    "Unsubscribe": op_unsubscribe,
}

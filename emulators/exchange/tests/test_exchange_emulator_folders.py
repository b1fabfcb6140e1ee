"""Folders clients create (CreateFolder, DeleteFolder) - a secondary calendar above all - and user configuration
objects (Create/Get/Update/DeleteUserConfiguration), driven with exchangelib as Outlook-like clients do, and with raw
SOAP for what exchangelib does not send."""

from __future__ import annotations

import datetime as dt

import pytest
from exchangelib import UTC, CalendarItem, EWSDateTime
from exchangelib.errors import (
    ErrorAccessDenied,
    ErrorCannotCreateCalendarItemInNonCalendarFolder,
    ErrorDeleteDistinguishedFolder,
    ErrorFolderExists,
    ErrorFolderNotFound,
    ErrorItemNotFound,
    ErrorItemSave,
)
from exchangelib.folders import Calendar, DistinguishedFolderId, Messages, SingleFolderQuerySet
from exchangelib.properties import CreatedEvent, DeletedEvent, Mailbox, ModifiedEvent, MovedEvent
from exchangelib.services import GetItem
from lxml import etree

from exchange_emulator.testing import EmulatorHandle

M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
START = EWSDateTime(2034, 6, 1, 9, tzinfo=UTC)


def _item(acc, folder, subject: str) -> CalendarItem:
    item = CalendarItem(account=acc, folder=folder, subject=subject, start=START, end=START + dt.timedelta(hours=1))
    item.save(send_meeting_invitations="SendToNone")
    return item


def _soap(emu: EmulatorHandle, mailbox: str, body: str) -> etree._Element:
    r = emu.post_soap(body, mailbox=mailbox)
    assert r.status_code == 200, r.text
    return etree.fromstring(r.content)


def _codes(root: etree._Element) -> list[str]:
    return [e.text or "" for e in root.iter(f"{{{M}}}ResponseCode")]


def _create_folder(emu: EmulatorHandle, mailbox: str, parent: str, folders: str) -> etree._Element:
    return _soap(
        emu,
        mailbox,
        f"<m:CreateFolder><m:ParentFolderId>{parent}</m:ParentFolderId>"
        f"<m:Folders>{folders}</m:Folders></m:CreateFolder>",
    )


def _get_folder(emu: EmulatorHandle, mailbox: str, folder_id: str) -> etree._Element:
    """GetFolder of one folder id, as the server answers it (exchangelib fills a folder's parent from its cache)."""
    root = _soap(
        emu,
        mailbox,
        "<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>"
        f'<m:FolderIds><t:FolderId Id="{folder_id}"/></m:FolderIds></m:GetFolder>',
    )
    return root


def _calendar_of(owner: str) -> str:
    """The owner's calendar as another mailbox's request names it (DistinguishedFolderId with Mailbox)."""
    mailbox = f"<t:Mailbox><t:EmailAddress>{owner}</t:EmailAddress></t:Mailbox>"
    return f'<t:DistinguishedFolderId Id="calendar">{mailbox}</t:DistinguishedFolderId>'


def _shared_calendar(acc, owner: str) -> Calendar:
    folder = SingleFolderQuerySet(
        account=acc,
        folder=Calendar(
            root=acc.root, _distinguished_id=DistinguishedFolderId(id="calendar", mailbox=Mailbox(email_address=owner))
        ),
    ).resolve()
    assert isinstance(folder, Calendar), folder
    return folder


# ------------------------------------------------------------------------------------------ secondary calendar


def test_secondary_calendar_keeps_its_items_apart(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    main = _item(acc, acc.calendar, "in the main calendar")
    list(acc.calendar.sync_items())
    main_state = acc.calendar.item_sync_state
    # What exchangelib sends, as the "CreateFolder operation" page says a custom class is made: a generic t:Folder
    # with FolderClass IPF.Appointment.
    team = Calendar(parent=acc.calendar, name="Team").save()
    assert team.id and team.id != acc.calendar.id
    again = SingleFolderQuerySet(account=acc, folder=Calendar(root=acc.root, id=team.id)).resolve()
    assert isinstance(again, Calendar)  # answered as a t:CalendarFolder: the element follows the class
    assert (again.name, again.folder_class, again.parent_folder_id.id) == ("Team", "IPF.Appointment", acc.calendar.id)
    acc.root.clear_cache()
    assert (acc.calendar / "Team").id == team.id  # FindFolder (Deep, from root) sees it under Calendar
    assert [c.name for c in acc.calendar.children] == ["Team"]
    assert acc.calendar.refresh().child_folder_count == 1

    second = _item(acc, team, "in the team calendar")
    assert [i.subject for i in team.all()] == ["in the team calendar"]
    assert [i.subject for i in acc.calendar.all()] == ["in the main calendar"]  # FindItem: each folder its own
    got = next(iter(GetItem(account=acc).call(items=[second], additional_fields=set(), shape="AllProperties")))
    assert got.parent_folder_id.id == team.id
    assert [(k, i.subject) for k, i in team.sync_items()] == [("create", "in the team calendar")]
    # The default calendar's SyncState is untouched by the other calendar's changes.
    assert list(acc.calendar.sync_items(sync_state=main_state)) == []
    second.subject = "renamed"
    second.save(update_fields=["subject"])
    assert list(acc.calendar.sync_items(sync_state=main_state)) == []
    assert [i.subject for i in team.all()] == ["renamed"]
    window = (START - dt.timedelta(days=1), START + dt.timedelta(days=1))
    assert [i.subject for i in team.view(*window)] == ["renamed"]  # CalendarView of that folder alone
    assert [i.subject for i in acc.calendar.view(*window)] == ["in the main calendar"]
    # ConvertId takes a created folder's id like any other.
    converted = _soap(
        emu,
        owner,
        f'<m:ConvertId DestinationFormat="HexEntryId"><m:SourceIds><t:AlternateId Format="EwsId" Id="{team.id}" '
        f'Mailbox="{owner}"/></m:SourceIds></m:ConvertId>',
    )
    hex_id = converted.find(f".//{{{M}}}AlternateId")
    assert _codes(converted) == ["NoError"] and hex_id is not None
    back = _soap(
        emu,
        owner,
        f'<m:ConvertId DestinationFormat="EwsId"><m:SourceIds><t:AlternateId Format="HexEntryId" '
        f'Id="{hex_id.get("Id")}" Mailbox="{owner}"/></m:SourceIds></m:ConvertId>',
    )
    assert back.find(f".//{{{M}}}AlternateId").get("Id") == team.id
    # A SyncState of one folder is refused by the other.
    from exchangelib.errors import ErrorInvalidSyncStateData

    with pytest.raises(ErrorInvalidSyncStateData):
        list(team.sync_items(sync_state=main_state))
    assert main.id


def test_create_folder_refusals(emu: EmulatorHandle, account, mailboxes) -> None:
    owner, other = mailboxes("owner", "other")
    acc = account(owner)
    Calendar(parent=acc.calendar, name="Team").save()
    with pytest.raises(ErrorFolderExists):
        Calendar(parent=acc.calendar, name="Team").save()
    with pytest.raises(ErrorFolderExists):  # the store compares folder names without case
        Messages(parent=acc.calendar, name="TEAM").save()
    with pytest.raises(ErrorFolderExists):  # a distinguished folder's name is taken too
        Messages(parent=acc.root.tois, name="Calendar").save()
    Calendar(parent=acc.inbox, name="Team").save()  # the same name under another parent is fine
    # Another mailbox's calendar: no rights there at all (exchangelib cannot address a parent outside its own
    # folder cache when creating, so this is raw SOAP impersonating the other mailbox).
    foreign = _calendar_of(owner)
    root = _create_folder(emu, other, foreign, "<t:Folder><t:DisplayName>Mine</t:DisplayName></t:Folder>")
    assert _codes(root) == ["ErrorAccessDenied"]
    raw_parent = '<t:DistinguishedFolderId Id="calendar"/>'
    root = _create_folder(
        emu,
        owner,
        raw_parent,
        "<t:CalendarFolder><t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>x</t:DisplayName></t:CalendarFolder>",
    )
    assert _codes(root) == ["ErrorNoFolderClassOverride"]
    root = _create_folder(emu, owner, raw_parent, "<t:SearchFolder><t:DisplayName>s</t:DisplayName></t:SearchFolder>")
    assert _codes(root) == ["ErrorInvalidFolderTypeForOperation"]
    root = _create_folder(emu, owner, raw_parent, "<t:Folder><t:FolderClass>IPF.Note</t:FolderClass></t:Folder>")
    assert _codes(root) == ["ErrorFolderSavePropertyError"]
    root = _create_folder(
        emu, owner, '<t:FolderId Id="bm90IGFuIGlk"/>', "<t:Folder><t:DisplayName>x</t:DisplayName></t:Folder>"
    )
    assert _codes(root) == ["ErrorInvalidIdMalformed"]
    # One message per folder: the first succeeds, the duplicate of it fails.
    root = _create_folder(
        emu,
        owner,
        raw_parent,
        "<t:Folder><t:DisplayName>A</t:DisplayName></t:Folder><t:Folder><t:DisplayName>a</t:DisplayName></t:Folder>",
    )
    assert _codes(root) == ["NoError", "ErrorFolderExists"]
    created = root.find(f".//{{{M}}}Folders/{{{T}}}Folder/{{{T}}}FolderId")  # a generic Folder of class IPF.Note
    assert created is not None and created.get("Id")


def test_delegate_may_not_create_folders_in_the_owners_calendar(emu: EmulatorHandle, account, mailboxes) -> None:
    boss, assistant = mailboxes("boss", "assistant")
    emu.admin.add_delegate(boss, assistant, "Editor")
    a_assistant = account(assistant)
    shared = _shared_calendar(a_assistant, boss)  # an Editor reads and writes the calendar ...
    _item(a_assistant, shared, "written by the assistant")
    parent = _calendar_of(boss)
    root = _create_folder(emu, assistant, parent, "<t:Folder><t:DisplayName>Assistant's</t:DisplayName></t:Folder>")
    assert _codes(root) == ["ErrorAccessDenied"]  # ... but creates no subfolders in it
    team = Calendar(parent=account(boss).calendar, name="Team").save()
    deleted = _soap(
        emu,
        assistant,
        f'<m:DeleteFolder DeleteType="HardDelete"><m:FolderIds><t:FolderId Id="{team.id}"/>'
        "</m:FolderIds></m:DeleteFolder>",
    )
    assert _codes(deleted) == ["ErrorAccessDenied"]  # nor deletes a folder of the boss's


def test_a_parent_that_is_gone_and_a_non_calendar_folder(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    gone = Messages(parent=acc.inbox, name="Gone").save()
    gone_id = gone.id
    gone.delete()
    root = _create_folder(
        emu, owner, f'<t:FolderId Id="{gone_id}"/>', "<t:Folder><t:DisplayName>x</t:DisplayName></t:Folder>"
    )
    assert _codes(root) == ["ErrorFolderNotFound"]
    notes = Messages(parent=acc.inbox, name="Notes kept").save()
    with pytest.raises(ErrorCannotCreateCalendarItemInNonCalendarFolder):
        _item(acc, notes, "not here")


# -------------------------------------------------------------------------------------------------- DeleteFolder


def test_delete_folder_takes_its_items_and_subfolders(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    team = Calendar(parent=acc.calendar, name="Team").save()
    sub_calendar = Calendar(parent=team, name="Sub").save()
    item = _item(acc, sub_calendar, "deep")
    team_id, sub_id = team.id, sub_calendar.id
    team.delete()  # HardDelete
    (lost,) = list(GetItem(account=acc).call(items=[item], additional_fields=set(), shape="IdOnly"))
    assert isinstance(lost, ErrorItemNotFound)
    for folder_id in (team_id, sub_id):
        assert isinstance(
            SingleFolderQuerySet(account=acc, folder=Calendar(root=acc.root, id=folder_id)).resolve(),
            ErrorFolderNotFound,
        )
    acc.root.clear_cache()
    assert list(acc.calendar.children) == []
    # Deleted already: "DeleteFolder operation" answers ErrorItemNotFound for a folder not in the mailbox.
    gone = _soap(
        emu,
        owner,
        f'<m:DeleteFolder DeleteType="HardDelete"><m:FolderIds><t:FolderId Id="{team_id}"/>'
        "</m:FolderIds></m:DeleteFolder>",
    )
    assert _codes(gone) == ["ErrorItemNotFound"]
    Calendar(parent=acc.calendar, name="Team").save()  # the name is free again


def test_distinguished_folders_cannot_be_deleted(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    with pytest.raises(ErrorDeleteDistinguishedFolder):
        acc.calendar.delete()
    with pytest.raises(ErrorDeleteDistinguishedFolder):
        acc.inbox.delete(delete_type="SoftDelete")
    root = _soap(
        emu,
        owner,
        '<m:DeleteFolder DeleteType="MoveToDeletedItems"><m:FolderIds>'
        '<t:DistinguishedFolderId Id="calendar"/><t:DistinguishedFolderId Id="msgfolderroot"/>'
        "</m:FolderIds></m:DeleteFolder>",
    )
    assert _codes(root) == ["ErrorDeleteDistinguishedFolder", "ErrorDeleteDistinguishedFolder"]
    assert acc.calendar.refresh().name == "Calendar"


def test_move_to_deleted_items_then_soft_delete(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    team = Calendar(parent=acc.calendar, name="Team").save()
    team_id = team.id
    _item(acc, team, "kept while in Deleted Items")
    team.delete(delete_type="MoveToDeletedItems")
    moved = SingleFolderQuerySet(account=acc, folder=Calendar(root=acc.root, id=team_id)).resolve()
    assert isinstance(moved, Calendar) and moved.id == team_id  # the same id, ...
    parent = _get_folder(emu, owner, team_id).find(f".//{{{T}}}ParentFolderId")
    assert parent is not None and parent.get("Id") == acc.trash.id  # ... now under Deleted Items, items with it
    assert [i.subject for i in moved.all()] == ["kept while in Deleted Items"]
    acc.root.clear_cache()
    assert [c.name for c in acc.trash.children] == ["Team"] and list(acc.calendar.children) == []
    moved.delete(delete_type="SoftDelete")
    assert isinstance(
        SingleFolderQuerySet(account=acc, folder=Calendar(root=acc.root, id=team_id)).resolve(), ErrorFolderNotFound
    )


def test_folder_events_reach_subscriptions_of_the_parent(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    sub_id, watermark = acc.calendar.subscribe_to_pull()
    team = Calendar(parent=acc.calendar, name="Team").save()
    team_id = team.id
    _item(acc, team, "no event on the main calendar")
    team.delete(delete_type="MoveToDeletedItems")
    events = [e for n in acc.calendar.get_events(sub_id, watermark) for e in n.events]
    kinds = [(type(e).__name__, e.folder_id.id if getattr(e, "folder_id", None) else None) for e in events]
    assert kinds == [
        ("CreatedEvent", team_id),
        ("ModifiedEvent", acc.calendar.id),  # its child count changed
        ("MovedEvent", team_id),
        ("ModifiedEvent", acc.calendar.id),
    ]
    assert all(getattr(e, "item_id", None) is None for e in events)  # the team calendar's item is not reported
    created, moved = events[0], events[2]
    assert isinstance(created, CreatedEvent) and created.parent_folder_id.id == acc.calendar.id
    assert isinstance(moved, MovedEvent) and moved.parent_folder_id.id == acc.trash.id
    assert moved.old_parent_folder_id.id == acc.calendar.id
    assert isinstance(events[1], ModifiedEvent) and not isinstance(events[-1], DeletedEvent)
    acc.calendar.unsubscribe(sub_id)


def test_a_subscription_on_a_created_calendar_hears_its_items_only(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    team = Calendar(parent=acc.calendar, name="Team").save()
    sub_id, watermark = team.subscribe_to_pull(event_types=["CreatedEvent", "DeletedEvent"])
    _item(acc, acc.calendar, "main")
    item = _item(acc, team, "team")
    item_id = item.id
    item.delete()
    events = [e for n in team.get_events(sub_id, watermark) for e in n.events]
    assert [(type(e), e.item_id.id, e.parent_folder_id.id) for e in events] == [
        (CreatedEvent, item_id, team.id),
        (DeletedEvent, item_id, team.id),
    ]
    team_id = team.id
    # Deleting the folder is heard on its parent; subscriptions on it just hear nothing more.
    parent_sub, parent_mark = acc.calendar.subscribe_to_pull(event_types=["DeletedEvent"])
    team.delete()
    (deleted,) = [e for n in acc.calendar.get_events(parent_sub, parent_mark) for e in n.events]
    assert isinstance(deleted, DeletedEvent) and deleted.folder_id.id == team_id


# ------------------------------------------------------------------------------------------ user configurations


def test_user_configuration_lifecycle(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    team = Calendar(parent=acc.calendar, name="Team").save()
    name = "TrueConfViewSettings"
    with pytest.raises(ErrorItemNotFound):
        team.get_user_configuration(name=name)
    dictionary = {"mode": "week", 7: True, b"\x01\x02": 3, ("a", "b"): START}
    team.create_user_configuration(name=name, dictionary=dictionary, xml_data=b"<v>1</v>", binary_data=b"\x00\xff")
    config = team.get_user_configuration(name=name)
    assert (config.dictionary, config.xml_data, config.binary_data) == (dictionary, b"<v>1</v>", b"\x00\xff")
    assert config.id
    with pytest.raises(ErrorItemSave):  # exists already
        team.create_user_configuration(name=name)
    with pytest.raises(ErrorItemSave):  # names are compared without case, as item classes are
        team.create_user_configuration(name=name.upper())
    with pytest.raises(ErrorItemNotFound):  # a configuration belongs to its folder
        acc.calendar.get_user_configuration(name=name)
    team.update_user_configuration(name=name, dictionary={"mode": "day"}, xml_data=b"<v>2</v>", binary_data=b"Y")
    only_xml = team.get_user_configuration(name=name, properties="XmlData")
    assert (only_xml.dictionary, only_xml.xml_data, only_xml.binary_data) == (None, b"<v>2</v>", None)
    assert team.get_user_configuration(name=name).dictionary == {"mode": "day"}
    team.delete_user_configuration(name=name)
    with pytest.raises(ErrorItemNotFound):
        team.get_user_configuration(name=name)
    with pytest.raises(ErrorItemNotFound):
        team.update_user_configuration(name=name, xml_data=b"<v/>")
    with pytest.raises(ErrorItemNotFound):
        team.delete_user_configuration(name=name)
    # Deleting a folder takes its configurations.
    team.create_user_configuration(name=name, xml_data=b"<v/>")
    team_id = team.id
    team.delete()
    root = _soap(
        emu,
        owner,
        f'<m:GetUserConfiguration><m:UserConfigurationName Name="{name}">'
        f'<t:FolderId Id="{team_id}"/></m:UserConfigurationName>'
        "<m:UserConfigurationProperties>All</m:UserConfigurationProperties></m:GetUserConfiguration>",
    )
    assert _codes(root) == ["ErrorFolderNotFound"]


def test_outlook_updates_the_calendars_work_hours(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    before = acc.calendar.get_user_configuration(name="WorkHours")
    assert before.xml_data and b"<Start>09:00:00</Start>" in before.xml_data
    new_hours = before.xml_data.replace(b"<Start>09:00:00</Start>", b"<Start>08:00:00</Start>")
    acc.calendar.update_user_configuration(name="WorkHours", xml_data=new_hours)
    after = acc.calendar.get_user_configuration(name="WorkHours")
    assert after.xml_data == new_hours and after.id == before.id and after.changekey != before.changekey
    # The Calendar dictionary is left as it was.
    assert acc.calendar.get_user_configuration(name="Calendar").dictionary["AutomateProcessing"] == "AutoUpdate"
    with pytest.raises(ErrorItemSave):
        acc.calendar.create_user_configuration(name="WorkHours", xml_data=b"<x/>")


def test_user_configuration_raw_parts_and_rights(emu: EmulatorHandle, account, mailboxes) -> None:
    boss, assistant = mailboxes("boss", "assistant")
    emu.admin.add_delegate(boss, assistant, "Editor")
    config = (
        '<m:UserConfiguration><t:UserConfigurationName Name="Raw"><t:DistinguishedFolderId Id="calendar"/>'
        "</t:UserConfigurationName>{parts}</m:UserConfiguration>"
    )
    created = _soap(
        emu,
        boss,
        "<m:CreateUserConfiguration>"
        + config.format(
            parts="<t:Dictionary><t:DictionaryEntry><t:DictionaryKey><t:Type>String</t:Type><t:Value>k</t:Value>"
            '</t:DictionaryKey><t:DictionaryValue xsi:nil="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>'
            "</t:DictionaryEntry></t:Dictionary><t:BinaryData>AAE=</t:BinaryData>"
        )
        + "</m:CreateUserConfiguration>",
    )
    assert _codes(created) == ["NoError"]
    # UpdateUserConfiguration with XmlData alone: the dictionary and the binary data stay.
    updated = _soap(
        emu,
        boss,
        "<m:UpdateUserConfiguration>"
        + config.format(parts="<t:XmlData>PGEvPg==</t:XmlData>")
        + "</m:UpdateUserConfiguration>",
    )
    assert _codes(updated) == ["NoError"]
    got = _soap(
        emu,
        boss,
        '<m:GetUserConfiguration><m:UserConfigurationName Name="raw">'
        '<t:DistinguishedFolderId Id="calendar"/></m:UserConfigurationName>'
        "<m:UserConfigurationProperties>All</m:UserConfigurationProperties></m:GetUserConfiguration>",
    )
    assert _codes(got) == ["NoError"]
    node = got.find(f".//{{{M}}}UserConfiguration")
    assert node is not None
    assert node.find(f"{{{T}}}UserConfigurationName").get("Name") == "Raw"
    value = node.find(f".//{{{T}}}DictionaryValue")
    assert value is not None and value.get("{http://www.w3.org/2001/XMLSchema-instance}nil") == "true"
    assert (node.findtext(f"{{{T}}}XmlData"), node.findtext(f"{{{T}}}BinaryData")) == ("PGEvPg==", "AAE=")
    # A delegate (Editor on the calendar) reads the calendar's configurations but does not write them.
    # (exchangelib cannot read a nil DictionaryValue back, so the delegate reads another one.)
    account(boss).calendar.create_user_configuration(name="Shared", binary_data=b"\x00\x01")
    shared = _shared_calendar(account(assistant), boss)
    assert shared.get_user_configuration(name="Shared").binary_data == b"\x00\x01"
    with pytest.raises(ErrorAccessDenied):
        shared.update_user_configuration(name="Shared", xml_data=b"<b/>")
    with pytest.raises(ErrorAccessDenied):
        shared.create_user_configuration(name="Other", xml_data=b"<b/>")
    with pytest.raises(ErrorAccessDenied):
        shared.delete_user_configuration(name="Shared")
    assert account(boss).calendar.get_user_configuration(name="Shared").xml_data is None  # unchanged


@pytest.mark.expect_violation
def test_an_empty_configuration_name_fails_schema_validation(emu: EmulatorHandle, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    r = emu.post_soap(
        '<m:CreateUserConfiguration><m:UserConfiguration><t:UserConfigurationName Name="">'
        '<t:DistinguishedFolderId Id="calendar"/></t:UserConfigurationName><t:XmlData>PGEvPg==</t:XmlData>'
        "</m:UserConfiguration></m:CreateUserConfiguration>",
        mailbox=owner,
    )
    assert r.status_code == 500 and "ErrorSchemaValidation" in r.text  # Name is a t:NonEmptyStringType


# ------------------------------------------------------------------------------------------ SyncFolderHierarchy


def _names(changes) -> list[tuple[str, str]]:
    return [(kind, f.name if hasattr(f, "name") else f.id) for kind, f in changes]


def test_sync_folder_hierarchy_reports_created_moved_and_deleted_folders(
    emu: EmulatorHandle, account, mailboxes
) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    tois = acc.root.tois
    initial = list(tois.sync_hierarchy())
    assert ("create", "Calendar") in _names(initial) and ("create", "Deleted Items") in _names(initial)
    state = tois.folder_sync_state
    assert list(tois.sync_hierarchy(sync_state=state)) == []  # nothing changed since
    team = Calendar(parent=acc.calendar, name="Team").save()
    sub_folder = Calendar(parent=team, name="Sub").save()
    gone = Messages(parent=acc.inbox, name="Gone").save()
    gone_id = gone.id
    gone.delete()  # created and deleted since the state: not reported at all
    created = list(tois.sync_hierarchy(sync_state=state))
    assert _names(created) == [("create", "Team"), ("create", "Sub")]  # parents first
    assert (created[0][1].folder_class, created[0][1].parent_folder_id.id) == ("IPF.Appointment", acc.calendar.id)
    state = tois.folder_sync_state
    team_id, sub_id = team.id, sub_folder.id
    team.delete(delete_type="MoveToDeletedItems")  # still below the top of the store: updated
    moved = list(tois.sync_hierarchy(sync_state=state))
    assert [(k, f.id) for k, f in moved] == [("update", team_id), ("update", sub_id)]
    # Synced from Calendar alone, the move takes them out: deleted there.
    cal_state_changes = list(acc.calendar.sync_hierarchy())
    assert cal_state_changes == []  # Calendar has no subfolders any more
    state = tois.folder_sync_state
    moved_team = SingleFolderQuerySet(account=acc, folder=Calendar(root=acc.root, id=team_id)).resolve()
    moved_team.delete()  # HardDelete, with its subfolder
    deleted = list(tois.sync_hierarchy(sync_state=state))
    assert sorted((k, f.id) for k, f in deleted) == sorted([("delete", team_id), ("delete", sub_id)])
    assert gone_id not in {f.id for _, f in deleted}


def test_sync_folder_hierarchy_of_a_subtree_and_a_foreign_state(emu: EmulatorHandle, account, mailboxes) -> None:
    owner, other = mailboxes("owner", "other")
    acc = account(owner)
    assert list(acc.calendar.sync_hierarchy()) == []
    cal_state = acc.calendar.folder_sync_state
    team = Calendar(parent=acc.calendar, name="Team").save()
    Messages(parent=acc.inbox, name="Elsewhere").save()
    assert _names(acc.calendar.sync_hierarchy(sync_state=cal_state)) == [("create", "Team")]
    cal_state_2 = acc.calendar.folder_sync_state
    team_id = team.id
    team.delete(delete_type="MoveToDeletedItems")  # out of Calendar's subtree: a Delete there
    assert [(k, f.id) for k, f in acc.calendar.sync_hierarchy(sync_state=cal_state_2)] == [("delete", team_id)]
    # A hierarchy state belongs to its folder and mailbox (and is no item SyncState).
    for body_folder, state, mailbox in (
        ('<t:DistinguishedFolderId Id="inbox"/>', cal_state, owner),
        ('<t:DistinguishedFolderId Id="calendar"/>', cal_state, other),
    ):
        root = _soap(
            emu,
            mailbox,
            "<m:SyncFolderHierarchy><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
            f"<m:SyncFolderId>{body_folder}</m:SyncFolderId><m:SyncState>{state}</m:SyncState>"
            "</m:SyncFolderHierarchy>",
        )
        assert _codes(root) == ["ErrorInvalidSyncStateData"]
    list(acc.calendar.sync_items())
    root = _soap(
        emu,
        owner,
        "<m:SyncFolderHierarchy><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:SyncFolderId><t:DistinguishedFolderId Id="calendar"/></m:SyncFolderId>'
        f"<m:SyncState>{acc.calendar.item_sync_state}</m:SyncState></m:SyncFolderHierarchy>",
    )
    assert _codes(root) == ["ErrorInvalidSyncStateData"]

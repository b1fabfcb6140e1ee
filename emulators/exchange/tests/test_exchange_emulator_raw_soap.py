"""Raw SOAP for what exchangelib does not send on its own: AppendToItemField, DeleteItemField, ConflictResolution,
unknown FieldURIs in AdditionalProperties, PropertyTag extended properties, affinity cookie, TimeZoneContext."""

from __future__ import annotations

import base64

from lxml import etree

from exchange_emulator.testing import EmulatorHandle

M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"


def soap(emu: EmulatorHandle, mailbox: str, body: str, headers: dict[str, str] | None = None) -> etree._Element:
    r = emu.post_soap(body, mailbox=mailbox, time_zone="W. Europe Standard Time", headers=headers)
    assert r.status_code == 200, r.text
    root = etree.fromstring(r.content)
    root.set("_cookie", r.headers.get("Set-Cookie", ""))
    return root


def codes(root: etree._Element) -> list[str]:
    return [e.text or "" for e in root.iter(f"{{{M}}}ResponseCode")]


def create(emu: EmulatorHandle, mailbox: str) -> tuple[str, str]:
    root = soap(
        emu,
        mailbox,
        '<m:CreateItem SendMeetingInvitations="SendToNone"><m:SavedItemFolderId>'
        '<t:DistinguishedFolderId Id="calendar"/></m:SavedItemFolderId><m:Items><t:CalendarItem>'
        '<t:Subject>Raw</t:Subject><t:Body BodyType="Text">line one</t:Body>'
        "<t:Categories><t:String>A</t:String></t:Categories>"
        '<t:ExtendedProperty><t:ExtendedFieldURI PropertyTag="0x3A45" PropertyType="String"/>'
        "<t:Value>tagged</t:Value></t:ExtendedProperty>"
        "<t:Start>2035-05-05T10:00:00</t:Start><t:End>2035-05-05T11:00:00</t:End>"
        "<t:Location>Here</t:Location>"
        "</t:CalendarItem></m:Items></m:CreateItem>",
    )
    assert codes(root) == ["NoError"]
    item_id = root.find(f".//{{{T}}}ItemId")
    assert item_id is not None
    return item_id.get("Id", ""), item_id.get("ChangeKey", "")


def get(emu: EmulatorHandle, mailbox: str, item_id: str, extra: str = "") -> etree._Element:
    root = soap(
        emu,
        mailbox,
        "<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape><t:BodyType>Text</t:BodyType>"
        + (f"<t:AdditionalProperties>{extra}</t:AdditionalProperties>" if extra else "")
        + "</m:ItemShape>"
        + f'<m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>',
    )
    assert codes(root) == ["NoError"]
    item = root.find(f".//{{{T}}}CalendarItem")
    assert item is not None
    return item


def test_naive_times_use_time_zone_context(emu: EmulatorHandle, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    item_id, _ = create(emu, owner)
    item = get(emu, owner, item_id)
    assert item.findtext(f"{{{T}}}Start") == "2035-05-05T08:00:00Z"  # 10:00 CEST


def test_append_delete_and_conflict_resolution(emu: EmulatorHandle, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    item_id, ck = create(emu, owner)

    def update(change_key: str, updates: str, conflict: str = "AutoResolve") -> etree._Element:
        return soap(
            emu,
            owner,
            f'<m:UpdateItem ConflictResolution="{conflict}" SendMeetingInvitationsOrCancellations="SendToNone">'
            f'<m:ItemChanges><t:ItemChange><t:ItemId Id="{item_id}" ChangeKey="{change_key}"/>'
            f"<t:Updates>{updates}</t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>",
        )

    appended = update(
        ck,
        '<t:AppendToItemField><t:FieldURI FieldURI="item:Body"/><t:CalendarItem>'
        '<t:Body BodyType="Text"> and two</t:Body></t:CalendarItem></t:AppendToItemField>'
        '<t:DeleteItemField><t:FieldURI FieldURI="calendar:Location"/></t:DeleteItemField>'
        '<t:DeleteItemField><t:ExtendedFieldURI PropertyTag="0x3A45" PropertyType="String"/></t:DeleteItemField>',
    )
    assert codes(appended) == ["NoError"]
    new_ck = appended.find(f".//{{{T}}}ItemId").get("ChangeKey")
    assert new_ck != ck
    item = get(emu, owner, item_id, '<t:ExtendedFieldURI PropertyTag="0x3A45" PropertyType="String"/>')
    assert item.findtext(f"{{{T}}}Body") == "line one and two"
    assert item.findtext(f"{{{T}}}Location") == ""
    assert item.find(f"{{{T}}}ExtendedProperty") is None
    stale = update(
        ck,
        '<t:SetItemField><t:FieldURI FieldURI="item:Subject"/><t:CalendarItem><t:Subject>x</t:Subject>'
        "</t:CalendarItem></t:SetItemField>",
        conflict="NeverOverwrite",
    )
    assert codes(stale) == ["ErrorIrresolvableConflict"]
    forbidden = update(new_ck, '<t:DeleteItemField><t:FieldURI FieldURI="calendar:Start"/></t:DeleteItemField>')
    assert codes(forbidden) == ["ErrorInvalidPropertyDelete"]


def test_unknown_field_uris_ignored_and_property_tag_returned(emu: EmulatorHandle, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    item_id, _ = create(emu, owner)
    item = get(
        emu,
        owner,
        item_id,
        '<t:FieldURI FieldURI="message:IsRead"/><t:FieldURI FieldURI="contacts:Birthday"/>'
        '<t:ExtendedFieldURI PropertyTag="0x3A45" PropertyType="String"/>'
        '<t:ExtendedFieldURI DistinguishedPropertySetId="PublicStrings" PropertyName="absent" '
        'PropertyType="String"/>',
    )
    props = item.findall(f"{{{T}}}ExtendedProperty")
    assert len(props) == 1
    assert props[0].findtext(f"{{{T}}}Value") == "tagged"
    assert props[0].find(f"{{{T}}}ExtendedFieldURI").get("PropertyTag") == "0x3A45"
    assert item.find(f"{{{T}}}IsRead") is None


def test_affinity_cookie_on_subscribe(emu: EmulatorHandle, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    root = soap(
        emu,
        owner,
        "<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds>"
        '<t:DistinguishedFolderId Id="calendar"/></t:FolderIds><t:EventTypes><t:EventType>CreatedEvent</t:EventType>'
        "</t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>",
        headers={"X-PreferServerAffinity": "True", "X-AnchorMailbox": owner},
    )
    assert codes(root) == ["NoError"]
    assert "X-BackEndOverrideCookie=" in root.get("_cookie", "")


def test_unknown_request_server_version_is_refused(emu: EmulatorHandle, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    r = emu.post_soap(
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>',
        mailbox=owner,
        version="Exchange2099",
    )
    assert r.status_code == 500
    root = etree.fromstring(r.content)
    assert root.findtext(".//faultcode") == "a:ErrorInvalidServerVersion"
    assert [e.text for e in root.iter("{http://schemas.microsoft.com/exchange/services/2006/errors}ResponseCode")] == [
        "ErrorInvalidServerVersion"
    ]


def test_subject_is_cut_at_255_characters(emu: EmulatorHandle, mailboxes) -> None:
    """exchangelib refuses a longer subject itself; other clients send one and Exchange keeps 255 characters."""
    (owner,) = mailboxes("owner")
    long_subject = "".join(chr(ord("a") + n % 26) for n in range(300))
    root = soap(
        emu,
        owner,
        '<m:CreateItem SendMeetingInvitations="SendToNone"><m:SavedItemFolderId>'
        '<t:DistinguishedFolderId Id="calendar"/></m:SavedItemFolderId><m:Items><t:CalendarItem>'
        f"<t:Subject>{long_subject}</t:Subject>"
        "<t:Start>2035-05-06T10:00:00</t:Start><t:End>2035-05-06T11:00:00</t:End>"
        "</t:CalendarItem></m:Items></m:CreateItem>",
    )
    assert codes(root) == ["NoError"]
    (stored,) = [i for i in emu.admin.items(owner) if i["subject"].startswith("abc")]
    assert stored["subject"] == long_subject[:255]


def test_categories_restrictions_compare_each_value(emu: EmulatorHandle) -> None:
    mailbox = emu.admin.add_mailbox("categories@example.com")["email"]
    create(emu, mailbox)  # Categories: ["A"]

    def found(expression: str) -> int:
        root = soap(
            emu,
            mailbox,
            "<m:FindItem Traversal='Shallow'><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>"
            f"<m:Restriction>{expression}</m:Restriction>"
            '<m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>',
        )
        assert codes(root) == ["NoError"], etree.tostring(root)
        return len(root.findall(f".//{{{T}}}CalendarItem"))

    def equal(op: str, value: str) -> str:
        return (
            f'<t:{op}><t:FieldURI FieldURI="item:Categories"/>'
            f'<t:FieldURIOrConstant><t:Constant Value="{value}"/></t:FieldURIOrConstant></t:{op}>'
        )

    assert found(equal("IsEqualTo", "A")) == 1
    assert found(equal("IsEqualTo", "B")) == 0
    assert found(equal("IsNotEqualTo", "A")) == 0
    assert found(equal("IsNotEqualTo", "B")) == 1
    contains = (
        '<t:Contains ContainmentMode="FullString" ContainmentComparison="IgnoreCase">'
        '<t:FieldURI FieldURI="item:Categories"/><t:Constant Value="a"/></t:Contains>'
    )
    assert found(contains) == 1


def test_mapi_properties_every_appointment_has(emu: EmulatorHandle) -> None:
    import binascii

    mailbox = emu.admin.add_mailbox("mapi@example.com")["email"]
    item_id, _ = create(emu, mailbox)
    uid = emu.admin.items(mailbox)[0]["uid"]
    wanted = (
        '<t:ExtendedFieldURI DistinguishedPropertySetId="Meeting" PropertyId="3" PropertyType="Binary"/>'
        '<t:ExtendedFieldURI PropertySetId="6ED8DA90-450B-101B-98DA-00AA003F1305" PropertyId="35" '
        'PropertyType="Binary"/>'
        '<t:ExtendedFieldURI DistinguishedPropertySetId="Appointment" PropertyId="33315" PropertyType="Boolean"/>'
        '<t:ExtendedFieldURI PropertyTag="0x3008" PropertyType="SystemTime"/>'
    )
    item = get(emu, mailbox, item_id, extra=wanted)
    values = [p.findtext(f"{{{T}}}Value") for p in item.findall(f"{{{T}}}ExtendedProperty")]
    assert len(values) == 4, etree.tostring(item)
    goid, clean, recurring, modified = values
    assert goid == clean  # a single item: no instance date
    assert binascii.hexlify(base64.b64decode(goid or "")).decode().upper() == uid  # Outlook's UID is the GOID
    assert recurring == "false"
    assert modified and modified.endswith("Z")


def test_global_object_id_of_occurrences_and_foreign_uids() -> None:
    import datetime as dt

    from exchange_emulator.mapi import GOID_PREFIX, global_object_id

    outlook_uid = "040000008200E00074C5B7101A82E008" + "00" * 20 + "10000000" + "0123456789ABCDEF0123456789ABCDEF"
    occurrence = global_object_id(outlook_uid, dt.date(2031, 3, 4))
    assert occurrence[16:20] == bytes([0x07, 0xEF, 3, 4])  # year big-endian, month, day ([MS-OXOCAL] 2.2.1.27)
    assert occurrence[:16] + bytes(4) + occurrence[20:] == global_object_id(outlook_uid)
    foreign = global_object_id("event-17@caldav.example.org")  # an iCalendar import's UID
    assert foreign.startswith(GOID_PREFIX) and b"vCal-Uid\x01\x00\x00\x00event-17@caldav.example.org\x00" in foreign


def test_calendar_folder_local_commit_time_max_moves_with_changes(emu: EmulatorHandle) -> None:
    mailbox = emu.admin.add_mailbox("committime@example.com")["email"]

    def commit_time() -> str:
        root = soap(
            emu,
            mailbox,
            "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>"
            '<t:ExtendedFieldURI PropertyTag="0x670A" PropertyType="SystemTime"/>'
            "</t:AdditionalProperties></m:FolderShape>"
            '<m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>',
        )
        assert codes(root) == ["NoError"], etree.tostring(root)
        value = root.findtext(f".//{{{T}}}ExtendedProperty/{{{T}}}Value")
        assert value, etree.tostring(root)
        return value

    before = commit_time()
    create(emu, mailbox)
    after = commit_time()
    assert after > before
    assert commit_time() == after  # reading changes nothing


def create_from_mime(emu: EmulatorHandle, mailbox: str, text: str) -> etree._Element:
    """CreateItem of a CalendarItem made of nothing but MimeContent (`text`, base64-encoded)."""
    content = base64.b64encode(text.encode()).decode()
    return soap(
        emu,
        mailbox,
        '<m:CreateItem SendMeetingInvitations="SendToNone"><m:SavedItemFolderId>'
        '<t:DistinguishedFolderId Id="calendar"/></m:SavedItemFolderId><m:Items><t:CalendarItem>'
        f'<t:MimeContent CharacterSet="UTF-8">{content}</t:MimeContent>'
        "</t:CalendarItem></m:Items></m:CreateItem>",
    )


def test_create_item_imports_an_icalendar_event(emu: EmulatorHandle) -> None:
    """CreateItem with nothing but MimeContent, as an iCalendar import or a CalDAV gateway sends it."""
    mailbox = emu.admin.add_mailbox("mimeimport@example.com")["email"]
    ics = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//CalDAV gateway//EN\r\nBEGIN:VEVENT\r\n"
        "UID:event-17@caldav.example.org\r\nDTSTAMP:20310101T000000Z\r\n"
        "DTSTART;TZID=Europe/Berlin:20310507T100000\r\nDTEND;TZID=Europe/Berlin:20310507T110000\r\n"
        "SUMMARY:Imported from CalDAV\r\nLOCATION:Berlin\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )

    assert codes(create_from_mime(emu, mailbox, ics)) == ["NoError"]
    (item,) = emu.admin.items(mailbox)
    assert (item["subject"], item["location"], item["uid"]) == (
        "Imported from CalDAV",
        "Berlin",
        "event-17@caldav.example.org",
    )
    assert item["start"].startswith("2031-05-07T08:00:00")  # 10:00 in Berlin (CEST) is 08:00 UTC
    assert codes(create_from_mime(emu, mailbox, "not a calendar")) == ["ErrorMimeContentConversionFailed"]


def _import(emu: EmulatorHandle, mailbox: str, uid: str, lines: str) -> etree._Element:
    ics = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//CalDAV gateway//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:20310101T000000Z\r\n"
        "DTSTART;TZID=Europe/Berlin:20310506T100000\r\nDTEND;TZID=Europe/Berlin:20310506T110000\r\n"
        f"SUMMARY:Series {uid}\r\n{lines}END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    return create_from_mime(emu, mailbox, ics)


def test_a_recurring_icalendar_event_becomes_the_ews_pattern_that_means_the_same(emu: EmulatorHandle) -> None:
    """RRULE → Recurrence ("Recurrence patterns and time zones in EWS"), TZID → the item's Windows time zone,
    EXDATE → a deleted occurrence; what EWS has no pattern for is refused naming the part."""
    mailbox = emu.admin.add_mailbox("mimeseries@example.com")["email"]
    weekly = _import(
        emu,
        mailbox,
        "weekly",
        "RRULE:FREQ=WEEKLY;INTERVAL=2;BYDAY=TU,TH;COUNT=4;WKST=MO\r\nEXDATE;TZID=Europe/Berlin:20310508T100000\r\n",
    )
    assert codes(weekly) == ["NoError"]
    item_id = weekly.find(f".//{{{T}}}ItemId")
    assert item_id is not None
    item = get(
        emu,
        mailbox,
        item_id.get("Id", ""),
        '<t:FieldURI FieldURI="calendar:Recurrence"/><t:FieldURI FieldURI="calendar:DeletedOccurrences"/>',
    )
    pattern = item.find(f"{{{T}}}Recurrence/{{{T}}}WeeklyRecurrence")
    assert pattern is not None
    assert pattern.findtext(f"{{{T}}}Interval") == "2"
    assert pattern.findtext(f"{{{T}}}DaysOfWeek") == "Tuesday Thursday"
    assert item.findtext(f"{{{T}}}Recurrence/{{{T}}}NumberedRecurrence/{{{T}}}NumberOfOccurrences") == "4"
    assert item.findtext(f"{{{T}}}Recurrence/{{{T}}}NumberedRecurrence/{{{T}}}StartDate", "").startswith("2031-05-06")
    zone = item.find(f"{{{T}}}StartTimeZone")
    assert zone is not None and zone.get("Id") == "W. Europe Standard Time"
    deleted = item.findall(f"{{{T}}}DeletedOccurrences/{{{T}}}DeletedOccurrence/{{{T}}}Start")
    assert [(d.text or "")[:19] for d in deleted] == ["2031-05-08T08:00:00"]  # 10:00 in Berlin

    monthly = _import(emu, mailbox, "monthly", "RRULE:FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1\r\n")
    assert codes(monthly) == ["NoError"]
    monthly_id = monthly.find(f".//{{{T}}}ItemId")
    assert monthly_id is not None
    relative = get(emu, mailbox, monthly_id.get("Id", ""), '<t:FieldURI FieldURI="calendar:Recurrence"/>').find(
        f"{{{T}}}Recurrence/{{{T}}}RelativeMonthlyRecurrence"
    )
    assert relative is not None
    assert (relative.findtext(f"{{{T}}}DaysOfWeek"), relative.findtext(f"{{{T}}}DayOfWeekIndex")) == (
        "Weekday",
        "Last",
    )

    for rule, named in (
        ("RRULE:FREQ=HOURLY;COUNT=3", "FREQ=HOURLY"),
        ("RRULE:FREQ=MONTHLY;BYMONTHDAY=1,15", "one day of the month"),
        ("RRULE:FREQ=MONTHLY;BYDAY=5MO", "position 5"),
        ("RRULE:FREQ=DAILY;BYHOUR=9,17", "BYHOUR"),
    ):
        refused = _import(emu, mailbox, "refused", rule + "\r\n")
        assert codes(refused) == ["ErrorCalendarInvalidRecurrence"], rule
        assert named in (refused.findtext(f".//{{{M}}}MessageText") or ""), rule
    assert len(emu.admin.items(mailbox)) == 2  # nothing of a refused import was kept

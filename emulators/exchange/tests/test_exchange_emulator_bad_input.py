"""Bad input as Exchange answers it: unknown time zones, custom TimeZoneDefinitions, invalid recurrences; items stored
past validation (admin API) and garbage answers (malformed / schema-invalid faults) for the connector's fault tests."""

from __future__ import annotations

import base64
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import requests
from exchange_emulator_support import SERVICE_PASSWORD, SERVICE_USER
from lxml import etree

from exchange_emulator.testing import EmulatorHandle

M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
DAYLIGHT = (
    '<t:RecurringDayTransition><t:To Kind="Period">D</t:To><t:TimeOffset>PT2H</t:TimeOffset><t:Month>3</t:Month>'
    "<t:DayOfWeek>Sunday</t:DayOfWeek><t:Occurrence>-1</t:Occurrence></t:RecurringDayTransition>"
    '<t:RecurringDayTransition><t:To Kind="Period">S</t:To><t:TimeOffset>PT3H</t:TimeOffset><t:Month>10</t:Month>'
    "<t:DayOfWeek>Sunday</t:DayOfWeek><t:Occurrence>-1</t:Occurrence></t:RecurringDayTransition>"
)


def post(emu: EmulatorHandle, mailbox: str, body: str) -> requests.Response:
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="{M}" xmlns:t="{T}"><s:Header>'
        '<t:RequestServerVersion Version="Exchange2016"/>'
        f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{mailbox}</t:PrimarySmtpAddress>"
        f"</t:ConnectingSID></t:ExchangeImpersonation></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )
    token = base64.b64encode(f"{SERVICE_USER}:{SERVICE_PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "text/xml; charset=utf-8"}
    return requests.post(emu.ews_url, data=envelope.encode(), timeout=10, headers=headers)


def soap(emu: EmulatorHandle, mailbox: str, body: str) -> etree._Element:
    response = post(emu, mailbox, body)
    assert response.status_code == 200, response.text
    return etree.fromstring(response.content)


def item(subject: str, start: str, end: str, recurrence: str = "", zone: str = "") -> str:
    zones = (
        "".join(
            zone.replace("<TZ", f"<t:{tag}TimeZone").replace("</TZ>", f"</t:{tag}TimeZone>") for tag in ("Start", "End")
        )
        if zone
        else ""
    )
    return (
        f'<t:CalendarItem xmlns:t="{T}"><t:Subject>{subject}</t:Subject><t:Start>{start}</t:Start><t:End>{end}</t:End>'
        + (f"<t:Recurrence>{recurrence}</t:Recurrence>" if recurrence else "")
        + zones
        + "</t:CalendarItem>"
    )


def create(emu: EmulatorHandle, mailbox: str, calendar_item: str) -> etree._Element:
    root = soap(
        emu,
        mailbox,
        '<m:CreateItem SendMeetingInvitations="SendToNone"><m:SavedItemFolderId><t:DistinguishedFolderId '
        f'Id="calendar"/></m:SavedItemFolderId><m:Items>{calendar_item}</m:Items></m:CreateItem>',
    )
    (message,) = root.iter(f"{{{M}}}CreateItemResponseMessage")
    return message


def code(message: etree._Element) -> str:
    return str(message.findtext(f"{{{M}}}ResponseCode"))


def get_item(emu: EmulatorHandle, mailbox: str, item_id: str) -> etree._Element:
    root = soap(
        emu,
        mailbox,
        "<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape>"
        f'<m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>',
    )
    (calendar_item,) = root.iter(f"{{{T}}}CalendarItem")
    return calendar_item


def custom(tz_id: str, daylight: bool = True) -> str:
    periods = '<t:Period Bias="-PT60M" Name="Standard" Id="S"/>'
    group = '<t:Transition><t:To Kind="Period">S</t:To></t:Transition>'
    if daylight:
        periods += '<t:Period Bias="-PT120M" Name="Daylight" Id="D"/>'
        group = DAYLIGHT
    return (
        f'<TZ Id="{tz_id}" Name="My zone"><t:Periods>{periods}</t:Periods><t:TransitionsGroups>'
        f'<t:TransitionsGroup Id="0">{group}</t:TransitionsGroup></t:TransitionsGroups>'
        '<t:Transitions><t:Transition><t:To Kind="Group">0</t:To></t:Transition></t:Transitions></TZ>'
    )


def test_unknown_time_zone_id_is_refused_with_error_time_zone(emu: EmulatorHandle, mailboxes) -> None:
    (alice,) = mailboxes("alice")
    message = create(emu, alice, item("Mars", "2035-05-05T10:00:00Z", "2035-05-05T11:00:00Z", zone='<TZ Id="Mars"/>'))
    assert code(message) == "ErrorTimeZone"
    assert "'Mars'" in str(message.findtext(f"{{{M}}}MessageText"))


def test_custom_definition_is_kept_and_a_weekly_series_expands_in_it(emu: EmulatorHandle, mailboxes) -> None:
    (alice,) = mailboxes("alice")
    berlin = ZoneInfo("Europe/Berlin")
    # Mondays 00:30 in a custom copy of Central European time, across the switch of 25 October 2026
    start = dt.datetime(2026, 10, 12, 0, 30, tzinfo=berlin).astimezone(dt.UTC)
    weekly = (
        "<t:WeeklyRecurrence><t:Interval>1</t:Interval><t:DaysOfWeek>Monday</t:DaysOfWeek></t:WeeklyRecurrence>"
        "<t:NumberedRecurrence><t:StartDate>2026-10-12</t:StartDate><t:NumberOfOccurrences>4</t:NumberOfOccurrences>"
        "</t:NumberedRecurrence>"
    )
    message = create(
        emu,
        alice,
        item(
            "Custom",
            f"{start:%Y-%m-%dT%H:%M:%SZ}",
            f"{start + dt.timedelta(minutes=30):%Y-%m-%dT%H:%M:%SZ}",
            weekly,
            custom("Customized Time Zone"),
        ),
    )
    assert code(message) == "NoError", etree.tostring(message).decode()
    item_id = next(message.iter(f"{{{T}}}ItemId")).get("Id", "")
    got = get_item(emu, alice, item_id)
    start_tz = got.find(f"{{{T}}}StartTimeZone")
    assert start_tz is not None and start_tz.get("Id") == "Customized Time Zone"
    assert len(start_tz.findall(f".//{{{T}}}RecurringDayTransition")) == 2, "the definition was not kept"
    last = got.find(f"{{{T}}}LastOccurrence/{{{T}}}Start")
    assert last is not None
    # 2 November 00:30 CET = 1 November 23:30 UTC (a UTC expansion would say 2 November 22:30)
    assert last.text == "2026-11-01T23:30:00Z"
    items = emu.admin.items(alice)
    assert [i["subject"] for i in items] == ["Custom"]


def test_invalid_recurrences_are_refused_with_error_calendar_invalid_recurrence(emu: EmulatorHandle, mailboxes) -> None:
    (alice,) = mailboxes("alice")
    cases = {
        "Interval": "<t:DailyRecurrence><t:Interval>0</t:Interval></t:DailyRecurrence>"
        "<t:NumberedRecurrence><t:StartDate>2035-05-05</t:StartDate><t:NumberOfOccurrences>3</t:NumberOfOccurrences>"
        "</t:NumberedRecurrence>",
        "2035-04-05": "<t:DailyRecurrence><t:Interval>1</t:Interval></t:DailyRecurrence>"
        "<t:EndDateRecurrence><t:StartDate>2035-05-05</t:StartDate><t:EndDate>2035-04-05</t:EndDate>"
        "</t:EndDateRecurrence>",
    }
    for named, recurrence in cases.items():
        message = create(emu, alice, item("Bad", "2035-05-05T10:00:00Z", "2035-05-05T11:00:00Z", recurrence))
        assert code(message) == "ErrorCalendarInvalidRecurrence", etree.tostring(message).decode()
        assert named in str(message.findtext(f"{{{M}}}MessageText"))
    assert emu.admin.items(alice) == []


def test_admin_api_stores_what_create_item_refuses(emu: EmulatorHandle, mailboxes) -> None:
    (alice,) = mailboxes("alice")
    served = item(
        "Served anyway",
        "2035-05-05T10:00:00Z",
        "2035-05-05T11:00:00Z",
        "<t:DailyRecurrence><t:Interval>0</t:Interval></t:DailyRecurrence><t:EndDateRecurrence>"
        "<t:StartDate>2035-05-05</t:StartDate><t:EndDate>2035-04-05</t:EndDate></t:EndDateRecurrence>",
    )
    stored = emu.admin.add_raw_item(alice, served)
    assert stored["subject"] == "Served anyway"
    got = get_item(emu, alice, stored["item_id"])
    assert got.findtext(f"{{{T}}}Recurrence/{{{T}}}DailyRecurrence/{{{T}}}Interval") == "0"
    assert got.findtext(f"{{{T}}}Recurrence/{{{T}}}EndDateRecurrence/{{{T}}}EndDate", "").startswith("2035-04-05")
    with pytest.raises(Exception, match="t:CalendarItem"):
        emu.admin.add_raw_item(alice, "<nope/>")


def test_malformed_and_schema_invalid_fault_answers(emu: EmulatorHandle, mailboxes) -> None:
    (alice,) = mailboxes("alice")
    emu.admin.add_fault(kind="malformed_xml", operation="GetFolder", mailbox=alice, count=1)
    emu.admin.add_fault(kind="schema_invalid", operation="GetFolder", mailbox=alice, count=1)
    body = (
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>'
    )
    cut = post(emu, alice, body)
    assert cut.status_code == 200
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(cut.content)
    invalid = soap(emu, alice, body)
    assert next(invalid.iter(f"{{{M}}}GetFolderResponse")).find(f"{{{M}}}ResponseMessages") is None
    healthy = soap(emu, alice, body)
    assert [e.text for e in healthy.iter(f"{{{M}}}ResponseCode")] == ["NoError"]
    assert emu.admin.get("/faults") == []

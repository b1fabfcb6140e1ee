"""Version probe, folders, authentication, impersonation rights, strict schema validation, vendored schema."""

from __future__ import annotations

import base64
import filecmp
from pathlib import Path

import pytest
import requests
from exchange_emulator_support import PLAIN_PASSWORD, PLAIN_USER, SERVICE_PASSWORD, SERVICE_USER
from exchangelib import BASIC, IMPERSONATION, NTLM, Account, Configuration, Credentials, FailFast
from exchangelib.errors import (
    ErrorImpersonateUserDenied,
    ErrorInvalidIdMalformed,
    ErrorItemNotFound,
    ErrorNonExistentMailbox,
    UnauthorizedError,
)
from exchangelib.folders import Calendar, Folder, SingleFolderQuerySet
from exchangelib.properties import ENTRY_ID, EWS_ID, HEX_ENTRY_ID, AlternateId
from exchangelib.version import EXCHANGE_2016, Version

from exchange_emulator.schema import SCHEMA_FILES, schema_dir
from exchange_emulator.testing import EmulatorHandle

SHARED_SCHEMA = Path("/work/shared/ews-schema")


@pytest.mark.skipif(not SHARED_SCHEMA.is_dir(), reason="shared schema folder not present")
def test_vendored_schema_equals_shared_copy() -> None:
    for name in SCHEMA_FILES:
        assert filecmp.cmp(schema_dir() / name, SHARED_SCHEMA / name, shallow=False), name


@pytest.mark.parametrize("auth_type", [NTLM, BASIC])
def test_version_probe_and_distinguished_folders(emu: EmulatorHandle, account, auth_type: str) -> None:
    acc = account("alice@example.com", auth_type=auth_type)
    assert acc.version.build.major_version == 15
    assert acc.version.build.minor_version == 1
    assert acc.version.api_version == "Exchange2016"
    assert acc.version.build >= EXCHANGE_2016
    root = acc.root
    assert root.id
    cal = acc.calendar
    assert isinstance(cal, Calendar)
    assert cal.name == "Calendar"
    # GetFolder by FolderId
    fetched = SingleFolderQuerySet(account=acc, folder=Folder(root=root, id=cal.id)).resolve()
    assert fetched.id == cal.id and fetched.name == "Calendar"
    ops = emu.admin.requests()["operations"]
    assert ops.get("ConvertId", 0) >= 1
    assert ops.get("GetFolder", 0) >= 1


def test_get_folder_by_folder_id_and_find_folder(emu: EmulatorHandle, account) -> None:
    acc = account("alice@example.com")
    cal = acc.calendar
    from exchangelib.services import GetFolder

    res = list(GetFolder(account=acc).call(folders=[cal], additional_fields=[], shape="AllProperties"))
    assert res[0].id == cal.id
    msgroot = acc.msg_folder_root
    names = {f.name for f in msgroot.children}
    assert {"Calendar", "Inbox", "Deleted Items"} <= names
    assert "Calendar" in {f.name for f in acc.root.walk()}


def test_ntlm_handshake_and_bad_credentials_raw(emu: EmulatorHandle) -> None:
    body = b"<x/>"
    r = requests.post(emu.ews_url, data=body, headers={"Content-Type": "text/xml"}, timeout=10)
    assert r.status_code == 401
    offered = r.headers["WWW-Authenticate"]
    assert "NTLM" in offered and "Basic" in offered
    bad = base64.b64encode(f"{SERVICE_USER}:wrong".encode()).decode()
    r = requests.post(emu.ews_url, data=body, headers={"Authorization": f"Basic {bad}"}, timeout=10)
    assert r.status_code == 401


@pytest.mark.parametrize("auth_type", [NTLM, BASIC])
def test_bad_password_is_401(emu: EmulatorHandle, auth_type: str) -> None:
    cfg = Configuration(
        service_endpoint=emu.ews_url,
        credentials=Credentials(SERVICE_USER, "not-the-password"),
        auth_type=auth_type,
        retry_policy=FailFast(),
    )
    acc = Account("alice@example.com", config=cfg, access_type=IMPERSONATION, autodiscover=False)
    with pytest.raises(UnauthorizedError):
        acc.calendar.refresh()
    acc.protocol.close()


def test_impersonation_denied(emu: EmulatorHandle, account) -> None:
    acc = account("alice@example.com", username=PLAIN_USER, password=PLAIN_PASSWORD)
    with pytest.raises(ErrorImpersonateUserDenied):
        _ = acc.calendar


def test_non_existent_mailbox(emu: EmulatorHandle, account) -> None:
    acc = account("nobody@nowhere.example.com")
    with pytest.raises(ErrorNonExistentMailbox):
        _ = acc.calendar


def test_convert_id_round_trip(emu: EmulatorHandle, account, mailboxes) -> None:
    (owner,) = mailboxes("owner")
    acc = account(owner)
    from exchangelib import UTC, CalendarItem, EWSDateTime

    item = CalendarItem(
        account=acc,
        folder=acc.calendar,
        subject="convert me",
        start=EWSDateTime(2030, 1, 1, 9, tzinfo=UTC),
        end=EWSDateTime(2030, 1, 1, 10, tzinfo=UTC),
    )
    item.save()
    hex_ids = list(acc.protocol.convert_ids([AlternateId(id=item.id, format=EWS_ID, mailbox=owner)], HEX_ENTRY_ID))
    assert hex_ids[0].format == HEX_ENTRY_ID and hex_ids[0].id != item.id
    back = list(acc.protocol.convert_ids([AlternateId(id=hex_ids[0].id, format=HEX_ENTRY_ID, mailbox=owner)], EWS_ID))
    assert back[0].id == item.id


def test_convert_id_converts_folder_ids(emu: EmulatorHandle, account, mailboxes) -> None:
    """ConvertId converts folder ids as well as item ids ("ConvertId operation"): Outlook add-ins and REST-era
    clients hand out the calendar's id in EntryId / HexEntryId form."""
    (owner,) = mailboxes("folders")
    acc = account(owner)
    calendar_id = acc.calendar.id
    for fmt in (HEX_ENTRY_ID, ENTRY_ID):
        (converted,) = acc.protocol.convert_ids([AlternateId(id=calendar_id, format=EWS_ID, mailbox=owner)], fmt)
        assert isinstance(converted, AlternateId) and converted.id != calendar_id, converted
        (back,) = acc.protocol.convert_ids([AlternateId(id=converted.id, format=fmt, mailbox=owner)], EWS_ID)
        assert isinstance(back, AlternateId) and back.id == calendar_id
    (garbage,) = acc.protocol.convert_ids([AlternateId(id="00FF", format=HEX_ENTRY_ID, mailbox=owner)], EWS_ID)
    assert isinstance(garbage, ErrorInvalidIdMalformed)


@pytest.mark.expect_violation
def test_strict_mode_rejects_invalid_request(emu: EmulatorHandle) -> None:
    before = len(emu.admin.violations())
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
        'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
        '<s:Header><t:RequestServerVersion Version="Exchange2016"/></s:Header>'
        "<s:Body><m:GetFolder><m:BogusElement/></m:GetFolder></s:Body></s:Envelope>"
    )
    token = base64.b64encode(f"{SERVICE_USER}:{SERVICE_PASSWORD}".encode()).decode()
    r = requests.post(
        emu.ews_url,
        data=envelope.encode(),
        timeout=10,
        headers={"Authorization": f"Basic {token}", "Content-Type": "text/xml; charset=utf-8"},
    )
    assert r.status_code == 500
    assert b"ErrorSchemaValidation" in r.content and b"ServerVersionInfo" in r.content
    violations = emu.admin.violations()
    assert len(violations) == before + 1
    assert violations[-1]["operation"] == "GetFolder" and violations[-1]["direction"] == "request"


def test_wsdl_is_served_to_an_authenticated_client_only(emu: EmulatorHandle) -> None:
    """IIS guards the whole /EWS virtual directory: the WSDL and schemas need a logon too."""
    for path in ("?wsdl", "/../Services.wsdl", "/../types.xsd"):
        r = requests.get(emu.ews_url + path, timeout=10)
        assert r.status_code == 401, path
        assert "NTLM" in r.headers["WWW-Authenticate"], path  # requests joins repeated headers with ", "
    token = base64.b64encode(f"{SERVICE_USER}:{SERVICE_PASSWORD}".encode()).decode()
    r = requests.get(emu.ews_url + "?wsdl", timeout=10, headers={"Authorization": f"Basic {token}"})
    assert r.status_code == 200 and b"ExchangeServicePortType" in r.content


def test_version_reported_by_server(emu: EmulatorHandle, account) -> None:
    acc = account("alice@example.com")
    assert isinstance(acc.version, Version)
    assert str(acc.version.build) == "15.1.2507.39"


def test_calendar_user_configurations(emu: EmulatorHandle, account, mailboxes) -> None:
    """GetUserConfiguration of the calendar folder: the Calendar dictionary (calendar processing) and Outlook's
    WorkHours XML; a configuration the folder does not hold is ErrorItemNotFound ("GetUserConfiguration operation")."""
    (owner,) = mailboxes("userconfig")
    calendar = account(owner).calendar
    processing = calendar.get_user_configuration(name="Calendar")
    assert processing.dictionary["AutomateProcessing"] == "AutoUpdate"
    assert processing.dictionary["AddNewRequestsTentatively"] is True
    assert processing.id
    work_hours = calendar.get_user_configuration(name="WorkHours")
    assert b"<WorkDays>Monday Tuesday Wednesday Thursday Friday</WorkDays>" in work_hours.xml_data
    assert work_hours.dictionary is None
    with pytest.raises(ErrorItemNotFound):
        calendar.get_user_configuration(name="NoSuchConfiguration")

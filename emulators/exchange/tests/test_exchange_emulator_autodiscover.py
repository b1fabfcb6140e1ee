"""SOAP autodiscover (GetUserSettings) at /autodiscover/autodiscover.svc, raw and through exchangelib."""

from __future__ import annotations

import base64

import requests
from exchange_emulator_support import SERVICE_PASSWORD, SERVICE_USER
from exchangelib import IMPERSONATION, NTLM, Account, Configuration, Credentials, FaultTolerance
from exchangelib.autodiscover import clear_cache
from exchangelib.autodiscover.cache import autodiscover_cache
from exchangelib.autodiscover.protocol import AutodiscoverProtocol
from exchangelib.protocol import close_connections
from lxml import etree

from exchange_emulator.testing import EmulatorHandle

A = "http://schemas.microsoft.com/exchange/2010/Autodiscover"

REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:a="http://schemas.microsoft.com/exchange/2010/Autodiscover"
  xmlns:wsa="http://www.w3.org/2005/08/addressing" xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Header>
    <a:RequestedServerVersion>Exchange2013</a:RequestedServerVersion>
    <wsa:Action>http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/GetUserSettings</wsa:Action>
    <wsa:To>{url}</wsa:To>
  </soap:Header>
  <soap:Body>
    <a:GetUserSettingsRequestMessage>
      <a:Request>
        <a:Users><a:User><a:Mailbox>{user}</a:Mailbox></a:User></a:Users>
        <a:RequestedSettings>
          <a:Setting>UserDisplayName</a:Setting><a:Setting>InternalEwsUrl</a:Setting>
          <a:Setting>ExternalEwsUrl</a:Setting><a:Setting>EwsSupportedSchemas</a:Setting>
          <a:Setting>NoSuchSetting</a:Setting>
        </a:RequestedSettings>
      </a:Request>
    </a:GetUserSettingsRequestMessage>
  </soap:Body>
</soap:Envelope>"""


def _post(emu: EmulatorHandle, user: str) -> etree._Element:
    token = base64.b64encode(f"{SERVICE_USER}:{SERVICE_PASSWORD}".encode()).decode()
    r = requests.post(
        emu.autodiscover_url,
        data=REQUEST.format(url=emu.autodiscover_url, user=user).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "text/xml; charset=utf-8"},
        timeout=10,
    )
    assert r.status_code == 200
    return etree.fromstring(r.content)


def test_raw_get_user_settings(emu: EmulatorHandle) -> None:
    root = _post(emu, "alice@example.com")
    settings = {s.findtext(f"{{{A}}}Name"): s.findtext(f"{{{A}}}Value") for s in root.iter(f"{{{A}}}UserSetting")}
    assert settings["InternalEwsUrl"] == emu.ews_url == settings["ExternalEwsUrl"]
    assert settings["UserDisplayName"] == "Alice Example"
    assert "Exchange2016" in settings["EwsSupportedSchemas"]
    errors = [e.findtext(f"{{{A}}}SettingName") for e in root.iter(f"{{{A}}}UserSettingError")]
    assert errors == ["NoSuchSetting"]
    unknown = _post(emu, "ghost@example.com")
    assert unknown.find(f".//{{{A}}}UserResponse/{{{A}}}ErrorCode").text == "InvalidUser"


def test_autodiscover_unauthenticated_is_401(emu: EmulatorHandle) -> None:
    r = requests.post(emu.autodiscover_url, data=b"<x/>", timeout=10)
    assert r.status_code == 401 and "NTLM" in r.headers["WWW-Authenticate"]


def test_exchangelib_account_with_autodiscover(emu: EmulatorHandle) -> None:
    creds = Credentials(SERVICE_USER, SERVICE_PASSWORD)
    # exchangelib looks the domain up in its autodiscover cache before any DNS step; point it at the emulator.
    protocol = AutodiscoverProtocol(
        config=Configuration(
            service_endpoint=emu.autodiscover_url,
            credentials=creds,
            auth_type=NTLM,
            retry_policy=FaultTolerance(max_wait=5),
        )
    )
    clear_cache()
    try:
        autodiscover_cache[("example.com", creds)] = protocol
        config = Configuration(credentials=creds, auth_type=NTLM, retry_policy=FaultTolerance(max_wait=5))
        acc = Account("alice@example.com", config=config, autodiscover=True, access_type=IMPERSONATION)
        assert acc.protocol.service_endpoint == emu.ews_url
        assert acc.ad_response.autodiscover_smtp_address == "alice@example.com"
        assert acc.calendar.name == "Calendar"
        assert emu.admin.requests()["operations"].get("GetUserSettings", 0) >= 1
        acc.protocol.close()
    finally:
        clear_cache()
        close_connections()  # the autodiscovered protocol (and its version) must not leak into other tests

"""`"type": "graph"` calendarProviders entries: accepted beside EWS ones, explained when wrong (naming the setting),
secrets encrypted like every other, endpoints per cloud, and each service takes only its own entries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from graph_ingest_support import write_config as write

from ews_ingest.settings import IngestSettings
from graph_ingest.settings import GraphSettings
from tccal import secrets
from tccal.config import ConfigError, load_config

CLI = [sys.executable, "-m", "tccal.cli"]
TENANT = "6b4c1b7e-0f1d-4c55-9a3e-2f4b8c0d1e2f"
CLIENT = "0c1e4f0a-1b2c-4d3e-8f90-a1b2c3d4e5f6"


def ews_entry(**extra: Any) -> dict[str, Any]:
    return {
        "host": "exchange.example.com",
        "credentials": [{"login": "svc@example.com", "password": secrets.encrypt("Exch4nge!")}],
        "users": ["anna@example.com"],
        **extra,
    }


def graph_entry(**extra: Any) -> dict[str, Any]:
    return {
        "type": "graph",
        "tenantId": TENANT,
        "clientId": CLIENT,
        "clientSecret": secrets.encrypt("app-secret"),
        "users": ["Boris@Contoso.com"],
        **extra,
    }


def problems(tmp_path: Path, *providers: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, *providers))
    return [str(p) for p in caught.value.problems]


def test_ews_and_graph_entries_side_by_side_each_service_takes_its_own(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ews_entry(), graph_entry(name="M365")))
    assert [type(p).__name__ for p in config.calendar_providers] == ["CalendarProvider", "GraphCalendarProvider"]
    ews = IngestSettings.from_config(config, secrets.reveal)
    assert [p.name for p in ews.providers] == ["exchange.example.com"]
    graph = GraphSettings.from_config(config, secrets.reveal)
    (provider,) = graph.providers
    assert (provider.name, provider.key, provider.users) == ("m365", "calendarProviders[1]", ("boris@contoso.com",))
    assert provider.client_secret == "app-secret"  # encrypted in the file, revealed for the service only
    assert (provider.authority_url, provider.graph_url, provider.scope) == (
        f"https://login.microsoftonline.com/{TENANT}",
        "https://graph.microsoft.com/v1.0",
        "https://graph.microsoft.com/.default",
    )
    assert graph.total_providers == 2


def test_clouds_set_both_endpoints_and_overrides_win(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            graph_entry(cloud="usgov", name="gov"),
            graph_entry(cloud="china", name="cn"),
            graph_entry(name="emu", authorityUrl="https://127.0.0.1:8443/", graphUrl="https://127.0.0.1:8443/v1.0"),
        )
    )
    gov, china, emulator = GraphSettings.from_config(config, secrets.reveal).providers
    assert (gov.authority, gov.graph_url, gov.scope) == (
        "https://login.microsoftonline.us",
        "https://graph.microsoft.us/v1.0",
        "https://graph.microsoft.us/.default",
    )
    assert (china.authority, china.graph_url) == (
        "https://login.chinacloudapi.cn",
        "https://microsoftgraph.chinacloudapi.cn/v1.0",
    )
    # a proxy or an emulator serves Graph elsewhere: the token is still for Microsoft Graph
    assert (emulator.authority, emulator.graph_url, emulator.scope) == (
        "https://127.0.0.1:8443",
        "https://127.0.0.1:8443/v1.0",
        "https://graph.microsoft.com/.default",
    )


def test_a_wrong_graph_entry_is_explained_setting_by_setting(tmp_path: Path) -> None:
    entry = graph_entry(tenantId="contoso.onmicrosoft.com", cloud="mars", graphUrl="http://graph.example.com")
    del entry["clientId"]
    found = problems(tmp_path, ews_entry(), entry)
    assert found == [
        'calendarProviders[1].tenantId: "contoso.onmicrosoft.com" is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)',
        "calendarProviders[1].clientId: is missing (required)",
        "calendarProviders[1].cloud: \"mars\" is not one of 'global', 'usgov' or 'china'",
        'calendarProviders[1].graphUrl: "http://graph.example.com" is not an https:// URL',
    ]
    missing = graph_entry()
    del missing["tenantId"]
    assert problems(tmp_path, missing) == ["calendarProviders[0].tenantId: is missing (required)"]
    # EWS keys in a Graph entry are unknown there (and the reverse)
    [unknown] = problems(tmp_path, graph_entry(host="exchange.example.com"))
    assert unknown.startswith("calendarProviders[0].host: unknown key (expected one of: type, name, tenantId, ")
    [unknown] = problems(tmp_path, ews_entry(tenantId=TENANT))
    assert unknown.startswith("calendarProviders[0].tenantId: unknown key (expected one of: host, path, ")


def test_the_client_secret_must_be_encrypted_like_every_secret(tmp_path: Path) -> None:
    found = problems(tmp_path, graph_entry(clientSecret="plain-secret"))
    assert found == [
        "calendarProviders[0].clientSecret: (hidden) is not encrypted: make it with tc-calendar --hash_pass, "
        "or set allowPlaintextPasswords: true"
    ]


def test_existing_ews_configs_stay_valid_and_type_defaults_to_ews(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ews_entry(), ews_entry(host="mail2.example.com", type="ews")))
    assert [p.type for p in config.calendar_providers] == ["ews", "ews"]
    assert config.graph_providers == []


def test_config_check_explains_a_graph_entry_and_warns_of_a_mailbox_on_both_sides(tmp_path: Path) -> None:
    bad = write(tmp_path, graph_entry(tenantId="nope"), name="bad.json")
    refused = subprocess.run([*CLI, "config", "check", str(bad)], capture_output=True, text=True, env=os.environ)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f'{bad}: calendarProviders[0].tenantId: "nope" is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)'
    ]
    good = write(tmp_path, ews_entry(), graph_entry(), name="good.json")
    usable = subprocess.run([*CLI, "config", "check", str(good)], capture_output=True, text=True, env=os.environ)
    assert usable.returncode == 0, usable.stderr
    assert "OK (2 calendar provider(s), 2 user(s)" in usable.stdout
    both = write(tmp_path, ews_entry(), graph_entry(users=["anna@example.com"]), name="both.json")
    warned = subprocess.run([*CLI, "config", "check", str(both)], capture_output=True, text=True, env=os.environ)
    assert warned.returncode == 1
    assert warned.stderr.splitlines() == [
        f"{both}: warning: calendarProviders[1].users[0]: 'anna@example.com' is also listed by the EWS provider "
        "calendarProviders[0]: both ews-ingest and graph-ingest would sync it; list each mailbox under one provider"
    ]


def test_graph_domains_route_unlisted_addresses_and_config_check_explains_them(tmp_path: Path) -> None:
    """`domains` claims a tenant's mail domains for on-demand mailboxes: an address no entry lists, in a claimed
    domain, is graph-ingest's; one an EWS entry lists stays with EWS (hybrid: the same domain on both sides)."""
    config = load_config(
        write(
            tmp_path,
            ews_entry(users=["onprem@contoso.com"]),
            graph_entry(name="m365", domains=["Contoso.COM", "fabrikam.onmicrosoft.com"]),
        )
    )
    routing = config.mailbox_routing
    assert routing.graph_provider("New.Hire@contoso.com") == "m365"
    assert routing.graph_provider("someone@fabrikam.onmicrosoft.com") == "m365"
    assert routing.graph_provider("onprem@contoso.com") is None  # listed by the EWS entry
    assert routing.graph_provider("boris@contoso.com") == "m365"  # listed by the Graph entry
    assert routing.graph_provider("someone@example.org") is None  # nobody claims it: EWS's on-demand search
    assert GraphSettings.from_config(config, secrets.reveal).providers[0].domains == (
        "contoso.com",
        "fabrikam.onmicrosoft.com",
    )
    (bad,) = problems(tmp_path, graph_entry(domains=["@contoso.com"]))
    assert bad == 'calendarProviders[0].domains[0]: "@contoso.com" is not a mail domain (contoso.com, no @)'
    twice = write(
        tmp_path,
        graph_entry(name="a", domains=["contoso.com"]),
        graph_entry(name="b", tenantId=CLIENT, users=[], domains=["contoso.com"]),
        name="twice.json",
    )
    warned = subprocess.run([*CLI, "config", "check", str(twice)], capture_output=True, text=True, env=os.environ)
    assert warned.returncode == 1
    assert warned.stderr.splitlines() == [
        f"{twice}: warning: calendarProviders[1].domains[0]: 'contoso.com' is also claimed by the Graph provider "
        "calendarProviders[0], which serves its on-demand mailboxes; give each domain to one tenant"
    ]

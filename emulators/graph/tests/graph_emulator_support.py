"""Microsoft's msgraph-sdk and azure-identity pointed at a running Graph emulator (https, its own CA)."""

from __future__ import annotations

import ssl
from typing import Any

import httpx
from azure.identity.aio import ClientSecretCredential
from kiota_abstractions.request_option import RequestOption
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from kiota_http.middleware.options import RetryHandlerOption
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_service_client import GraphServiceClient
from msgraph_core import GraphClientFactory

from graph_emulator.testing import APP_ID, APP_SECRET, TENANT_ID, EmulatorProcess

SCOPES = ["https://graph.microsoft.com/.default"]
# Credentials handed out by graph_client; conftest closes them (their aiohttp sessions) after each test.
OPEN_CREDENTIALS: list[ClientSecretCredential] = []


def credential(
    emu: EmulatorProcess, client_id: str = APP_ID, secret: str = APP_SECRET, tenant: str = TENANT_ID
) -> ClientSecretCredential:
    """azure-identity's client-secret credential against the emulator's token endpoint (its authority host)."""
    return ClientSecretCredential(tenant, client_id, secret, authority=emu.authority, connection_verify=emu.ca_file)


def graph_client(
    emu: EmulatorProcess,
    client_id: str = APP_ID,
    secret: str = APP_SECRET,
    tenant: str = TENANT_ID,
    max_retries: int | None = None,
) -> GraphServiceClient:
    """A GraphServiceClient whose base URL is the emulator's /v1.0 and that trusts the emulator's certificate."""
    cred = credential(emu, client_id, secret, tenant)
    OPEN_CREDENTIALS.append(cred)
    provider = AzureIdentityAuthenticationProvider(cred, scopes=SCOPES, allowed_hosts=["127.0.0.1"])
    options: dict[str, RequestOption] = {}
    if max_retries is not None:
        retry = RetryHandlerOption(max_retries=max_retries)
        options[retry.get_key()] = retry
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(
            base_url=emu.graph_url, verify=ssl.create_default_context(cafile=emu.ca_file), timeout=30.0
        ),
        options=options or None,
    )
    adapter = GraphRequestAdapter(provider, client=http)
    adapter.base_url = emu.graph_url
    return GraphServiceClient(request_adapter=adapter)


def dtz(value: str, zone: str = "UTC") -> dict[str, Any]:
    return {"dateTime": value, "timeZone": zone}

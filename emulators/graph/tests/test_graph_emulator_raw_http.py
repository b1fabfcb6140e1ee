"""Protocol edges that an SDK never sends, checked with raw HTTP: the token endpoint's AADSTS errors, malformed
and unknown payloads, missing calendarView windows, unsupported delta options, $batch dependsOn, bad subscriptions."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from graph_emulator.testing import APP_ID, APP_SECRET, TENANT_ID, EmulatorProcess

ALICE = "/users/alice@contoso.test"


class Raw:
    def __init__(self, emu: EmulatorProcess, session: aiohttp.ClientSession) -> None:
        self.emu = emu
        self.session = session
        self.ssl = ssl.create_default_context(cafile=emu.ca_file)
        self.token = ""

    async def token_request(self, tenant: str = TENANT_ID, **form: str) -> tuple[int, dict[str, Any]]:
        data = {
            "grant_type": "client_credentials",
            "client_id": APP_ID,
            "client_secret": APP_SECRET,
            "scope": "https://graph.microsoft.com/.default",
            **form,
        }
        async with self.session.post(
            f"{self.emu.authority}/{tenant}/oauth2/v2.0/token", data=data, ssl=self.ssl
        ) as resp:
            return resp.status, await resp.json()

    async def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        if not self.token:
            status, reply = await self.token_request()
            assert status == 200, reply
            self.token = reply["access_token"]
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        kwargs: dict[str, Any] = {"json": body} if raw is None else {"data": raw}
        if raw is not None:
            all_headers["Content-Type"] = "application/json"
        async with self.session.request(
            method, f"{self.emu.graph_url}{path}", headers=all_headers, ssl=self.ssl, **kwargs
        ) as resp:
            text = await resp.text()
            return resp.status, (await resp.json() if text else None)


@pytest.fixture
async def raw(emu: EmulatorProcess) -> AsyncIterator[Raw]:
    async with aiohttp.ClientSession() as session:
        yield Raw(emu, session)


async def test_token_endpoint_errors_carry_aadsts_codes(raw: Raw) -> None:
    status, body = await raw.token_request(tenant="00000000-0000-0000-0000-000000000000")
    assert (status, body["error"], body["error_codes"]) == (400, "invalid_request", [90002])
    status, body = await raw.token_request(client_id="unknown-app")
    assert (status, body["error"], body["error_codes"]) == (400, "unauthorized_client", [700016])
    status, body = await raw.token_request(client_secret="wrong")
    assert (status, body["error"], body["error_codes"]) == (401, "invalid_client", [7000215])
    status, body = await raw.token_request(scope="Calendars.ReadWrite")
    assert (status, body["error"], body["error_codes"]) == (400, "invalid_scope", [1002012])
    status, body = await raw.token_request(grant_type="password")
    assert (status, body["error"]) == (400, "unsupported_grant_type")


async def test_missing_and_garbage_bearer_tokens_are_401(raw: Raw, emu: EmulatorProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        async with raw.session.get(f"{emu.graph_url}{ALICE}/events", headers=headers, ssl=raw.ssl) as resp:
            body = await resp.json()
            assert (resp.status, body["error"]["code"]) == (401, "InvalidAuthenticationToken")


async def test_malformed_and_unknown_payloads_are_400(raw: Raw) -> None:
    status, body = await raw.call("POST", f"{ALICE}/events", raw=b"{not json")
    assert status == 400
    event = {
        "subject": "x",
        "start": {"dateTime": "2035-01-01T09:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2035-01-01T10:00:00", "timeZone": "UTC"},
    }
    status, body = await raw.call("POST", f"{ALICE}/events", {**event, "colour": "blue"})
    assert status == 400 and "'colour' does not exist" in body["error"]["message"]
    status, body = await raw.call(
        "POST", f"{ALICE}/events", {**event, "start": {"dateTime": "2035-01-01T09:00:00", "timeZone": "Mars/Olympus"}}
    )
    assert (status, body["error"]["code"]) == (400, "TimeZoneNotSupportedException")
    status, body = await raw.call(
        "POST",
        f"{ALICE}/events",
        {
            **event,
            "recurrence": {
                "pattern": {"type": "weekly", "interval": 1},
                "range": {"type": "noEnd", "startDate": "2035-01-01"},
            },
        },
    )
    assert status == 400 and "daysOfWeek" in body["error"]["message"]


async def test_me_is_refused_for_app_only_tokens(raw: Raw) -> None:
    status, body = await raw.call("GET", "/me/events")
    assert status == 400 and "delegated" in body["error"]["message"]


async def test_calendar_view_needs_its_window_and_delta_refuses_select(raw: Raw) -> None:
    status, body = await raw.call("GET", f"{ALICE}/calendarView")
    assert (status, body["error"]["code"]) == (400, "ErrorInvalidParameter")
    status, body = await raw.call(
        "GET",
        f"{ALICE}/calendarView/delta?startDateTime=2035-01-01T00:00:00Z"
        "&endDateTime=2035-02-01T00:00:00Z&$select=subject",
    )
    assert status == 400
    status, body = await raw.call("GET", f"{ALICE}/calendarView/delta?$deltatoken=made-up")
    assert (status, body["error"]["code"]) == (410, "syncStateNotFound")


async def test_delta_without_prefer_uses_pages_of_ten_and_honours_outlook_timezone(raw: Raw) -> None:
    for day in range(1, 13):
        status, _ = await raw.call(
            "POST",
            "/users/bob@contoso.test/events",
            {
                "subject": f"d{day}",
                "start": {"dateTime": f"2036-01-{day:02d}T12:00:00", "timeZone": "UTC"},
                "end": {"dateTime": f"2036-01-{day:02d}T13:00:00", "timeZone": "UTC"},
            },
        )
        assert status == 201
    status, body = await raw.call(
        "GET",
        "/users/bob@contoso.test/calendarView/delta?startDateTime=2036-01-01T00:00:00Z"
        "&endDateTime=2036-02-01T00:00:00Z",
        headers={"Prefer": 'outlook.timezone="India Standard Time"'},
    )
    assert status == 200
    assert len(body["value"]) == 10 and "@odata.nextLink" in body
    assert body["value"][0]["start"] == {"dateTime": "2036-01-01T17:30:00.0000000", "timeZone": "India Standard Time"}


async def test_batch_depends_on_a_failed_request_answers_424(raw: Raw) -> None:
    status, body = await raw.call(
        "POST",
        "/$batch",
        {
            "requests": [
                {"id": "1", "method": "GET", "url": f"{ALICE}/events"},
                {"id": "2", "method": "GET", "url": f"{ALICE}/events/AAMkAGmissing", "dependsOn": ["1"]},
                {"id": "3", "method": "GET", "url": f"{ALICE}/events", "dependsOn": ["2"]},
            ]
        },
    )
    assert status == 200
    assert [(r["id"], r["status"]) for r in body["responses"]] == [("1", 200), ("2", 404), ("3", 424)]
    status, body = await raw.call(
        "POST", "/$batch", {"requests": [{"id": "1", "method": "GET", "url": f"{ALICE}/events", "dependsOn": ["9"]}]}
    )
    assert status == 400


async def test_batch_is_fully_sequential_or_fully_parallel_ids_unique_and_not_nested(raw: Raw) -> None:
    events = f"{ALICE}/events"
    mixed = [
        {"id": "1", "method": "GET", "url": events},
        {"id": "2", "method": "GET", "url": events, "dependsOn": ["1"]},
        {"id": "3", "method": "GET", "url": events},
    ]
    status, body = await raw.call("POST", "/$batch", {"requests": mixed})
    assert status == 400 and "fully sequential or fully parallel" in body["error"]["message"]
    twice = [{"id": "1", "method": "GET", "url": events}, {"id": "1", "method": "GET", "url": events}]
    status, body = await raw.call("POST", "/$batch", {"requests": twice})
    assert status == 400 and "duplicate request id '1'" in body["error"]["message"]
    nested = [
        {"id": "1", "method": "POST", "url": "/$batch", "body": {}, "headers": {"Content-Type": "application/json"}}
    ]
    status, body = await raw.call("POST", "/$batch", {"requests": nested})
    assert status == 400 and "itself a $batch" in body["error"]["message"]
    parallel = [{"id": str(n), "method": "GET", "url": events} for n in range(1, 21)]
    status, body = await raw.call("POST", "/$batch", {"requests": parallel})
    assert status == 200 and sorted(int(r["id"]) for r in body["responses"]) == list(range(1, 21))


async def test_subscription_needs_an_https_notification_url_and_a_known_resource(raw: Raw) -> None:
    base = {
        "changeType": "created",
        "resource": "users/alice@contoso.test/events",
        "expirationDateTime": "2099-01-01T00:00:00Z",
    }
    status, body = await raw.call("POST", "/subscriptions", {**base, "notificationUrl": "http://127.0.0.1:9/hook"})
    assert status == 400 and "https" in body["error"]["message"]
    status, body = await raw.call(
        "POST",
        "/subscriptions",
        {**base, "resource": "users/alice@contoso.test/messages", "notificationUrl": "https://127.0.0.1:9/hook"},
    )
    assert status == 400
    status, body = await raw.call(
        "POST", "/subscriptions", {**base, "changeType": "moved", "notificationUrl": "https://127.0.0.1:9/hook"}
    )
    assert status == 400


async def test_refused_patch_of_an_occurrence_leaves_the_series_as_it_was(raw: Raw, emu: EmulatorProcess) -> None:
    status, series = await raw.call(
        "POST",
        "/users/carol@contoso.test/events",
        {
            "subject": "series",
            "start": {"dateTime": "2038-01-04T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2038-01-04T10:00:00", "timeZone": "UTC"},
            "recurrence": {
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "startDate": "2038-01-04", "numberOfOccurrences": 3},
            },
        },
    )
    assert status == 201
    status, view = await raw.call(
        "GET",
        f"/users/carol@contoso.test/events/{series['id']}/instances"
        "?startDateTime=2038-01-01T00:00:00Z&endDateTime=2038-02-01T00:00:00Z",
    )
    assert status == 200 and [i["type"] for i in view["value"]] == ["occurrence"] * 3
    status, _ = await raw.call(
        "PATCH",
        f"/users/carol@contoso.test/events/{view['value'][1]['id']}",
        {"end": {"dateTime": "2038-01-05T08:00:00", "timeZone": "UTC"}},
    )
    assert status == 400
    stored = emu.control("GET", "/mailboxes/carol@contoso.test")["events"]
    assert [(e["type"], e["exceptions"]) for e in stored if e["id"] == series["id"]] == [("seriesMaster", 0)]


async def test_patch_with_a_stale_if_match_is_412_and_changes_nothing(raw: Raw) -> None:
    start = {"dateTime": "2030-01-07T09:00:00", "timeZone": "UTC"}
    end = {"dateTime": "2030-01-07T10:00:00", "timeZone": "UTC"}
    status, created = await raw.call("POST", f"{ALICE}/events", {"subject": "Etag", "start": start, "end": end})
    assert status == 201, created
    path = f"{ALICE}/events/{created['id']}"
    status, moved = await raw.call("PATCH", path, {"subject": "Moved"}, headers={"If-Match": created["@odata.etag"]})
    assert status == 200 and moved["@odata.etag"] != created["@odata.etag"]
    status, refused = await raw.call("PATCH", path, {"subject": "Stale"}, headers={"If-Match": created["@odata.etag"]})
    assert (status, refused["error"]["code"]) == (412, "ErrorIrresolvableConflict")
    status, _ = await raw.call("PATCH", path, {"location": {"displayName": "Room"}}, headers={"If-Match": "*"})
    assert status == 200
    status, current = await raw.call("GET", path)
    assert (current["subject"], current["location"]["displayName"]) == ("Moved", "Room")

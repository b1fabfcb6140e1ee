"""Drive the whole product as its users do: Exchange through EWS (exchangelib), TrueConf through its emulator."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc

from tccal_sandbox.demo import Ews, shared_calendar
from tccal_sandbox.testing import authorized as with_token
from tccal_sandbox.testing import running_sandbox, wait_for

T = TypeVar("T")
DOMAIN = "sandbox.test"
SEND = "SendToAllAndSaveCopy"


def email(who: str) -> str:
    return who if "@" in who else f"{who}@{DOMAIN}"


def http_json(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


#: What a predicate over the running product raises while the product is still catching up: "not yet".
CATCHING_UP = (OSError, KeyError, IndexError)


def wait_until(predicate: Callable[[], T | None], timeout: float = 60.0, what: str = "", interval: float = 0.3) -> T:
    """The shared `wait_for` with the end-to-end defaults: a minute, every 0.3 s, tolerating `CATCHING_UP`."""
    return wait_for(predicate, timeout, interval, what, tolerate=CATCHING_UP)


@dataclass
class Product:
    """A running `tc-calendar sandbox` and handles on what it runs."""

    ready: dict[str, Any]
    state_dir: Path
    process: subprocess.Popen[bytes]
    _accounts: dict[str, Any] = field(default_factory=dict)

    # Exchange, as Outlook writes to it
    def ews(self) -> Ews:
        account = self.ready["exchange"]["service_account"]
        return Ews(self.ready["exchange"]["ews_url"], account["username"], account["password"])

    def account(self, who: str) -> Any:
        if who not in self._accounts:
            self._accounts[who] = self.ews().account(email(who))
        return self._accounts[who]

    def delegate_calendar(self, delegate: str, owner: str) -> Any:
        return shared_calendar(self.account(delegate), email(owner))

    def copy_of(self, who: str, uid: str, *, timeout: float = 30.0) -> Any:
        """`who`'s own copy of the meeting `uid` (as their Outlook shows it)."""

        def find() -> Any:
            for item in self.account(who).calendar.all():
                if item.uid == uid:
                    return item
            return None

        return wait_until(find, timeout, f"{who}'s copy of {uid}")

    # TrueConf, as its apps show it
    def calendar(self, who: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = http_json(f"{self.ready['trueconf']['inspect_url']}/calendars/{email(who)}")
        return result

    def events(self, who: str, subject: str) -> list[dict[str, Any]]:
        return [e for e in self.calendar(who) if e.get("subject") == subject]

    def wait_events(
        self, who: str, subject: str, check: Callable[[list[dict[str, Any]]], bool] = bool, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        return wait_until(
            lambda: (lambda found: found if found and check(found) else None)(self.events(who, subject)),
            timeout,
            f"'{subject}' in {who}'s TrueConf calendar",
        )

    def conferences(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = http_json(f"{self.ready['trueconf']['inspect_url']}/conferences")
        return result

    def conference(self, conference_id: str) -> dict[str, Any] | None:
        return next((c for c in self.conferences() if c["id"] == conference_id), None)

    def channel(self, service: str, *, authorized: bool = True) -> grpc.Channel:
        """A channel to `service`'s gRPC; `authorized`: as an administrator (the ready-file's admin token on every
        call that names no authorization itself), else bare."""
        channel = grpc.insecure_channel(self.ready["services"][service]["grpc"])
        token = self.ready.get("grpc", {}).get("admin_token", "")
        return with_token(channel, token) if authorized and token else channel

    def log(self, name: str) -> str:
        return (self.state_dir / "logs" / f"{name}.log").read_text(errors="replace")


@contextmanager
def running_product(*args: str, env: dict[str, str] | None = None, timeout: float = 240.0) -> Iterator[Product]:
    """Start `tc-calendar sandbox` with `args`, wait for its ready-file, stop it (SIGTERM) afterwards."""
    with running_sandbox("--no-demo", *args, prefix="tce2e", env=env, timeout=timeout) as sandbox:
        yield Product(sandbox.ready, sandbox.state_dir, sandbox.process)


def local_time(days: int, hour: int, minute: int = 0, zone: str = "Europe/Berlin") -> Any:
    """An exchangelib datetime `days` from today at hour:minute in `zone`."""
    from exchangelib import EWSDateTime, EWSTimeZone

    tz = EWSTimeZone(zone)
    day = datetime.now(tz).date() + timedelta(days=days)
    return EWSDateTime(day.year, day.month, day.day, hour, minute, tzinfo=tz)


def iso_utc(value: Any) -> str:
    """The inspection API's form of an instant: ISO 8601 UTC."""
    from datetime import UTC

    return str(value.astimezone(UTC).isoformat().replace("+00:00", "Z"))


class GraphOutlook:
    """Exchange Online as Outlook on the web writes to it: Microsoft Graph's REST API (httpx) with an app-only token
    from Microsoft's azure-identity, the sandbox's Calendars.ReadWrite app (ready-file `graph`), acting for its
    cloud users. Never the product's own Graph client."""

    SCOPE = "https://graph.microsoft.com/.default"

    def __init__(self, graph: dict[str, Any]) -> None:
        from azure.identity import ClientSecretCredential

        self.graph = graph
        self._credential = ClientSecretCredential(
            graph["tenant"],
            graph["client_id"],
            graph["client_secret"],
            authority=graph["authority"],
            connection_verify=graph["ca_file"],
            # the sync credential runs MSAL, which asks login.microsoftonline.com to validate an authority it does
            # not know (as for Azure Stack): the emulator's authority is taken as is
            disable_instance_discovery=True,
        )

    def request(self, method: str, path: str, body: Any = None, *, base: str = "url") -> Any:
        """One Graph call (`path` below /v1.0, or below the control URL with base="control_url"); the JSON
        answer (None for an empty one); httpx.HTTPStatusError for an error status."""
        import ssl

        import httpx

        headers = {"Authorization": f"Bearer {self._credential.get_token(self.SCOPE).token}"}
        response = httpx.request(
            method,
            f"{self.graph[base]}{path}",
            json=body,
            headers=headers,
            verify=ssl.create_default_context(cafile=self.graph["ca_file"]),
            timeout=30,
        )
        response.raise_for_status()
        return response.json() if response.content else None

    def create(self, organizer: str, event: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.request("POST", f"/users/{email(organizer)}/events", event)
        return created

    def update(self, who: str, event_id: str, changes: dict[str, Any]) -> None:
        self.request("PATCH", f"/users/{email(who)}/events/{event_id}", changes)

    def delete(self, who: str, event_id: str) -> None:
        self.request("DELETE", f"/users/{email(who)}/events/{event_id}")

    def answer(self, who: str, event_id: str, action: str) -> None:
        """`action`: accept, tentativelyAccept or decline, with the response sent to the organizer."""
        self.request("POST", f"/users/{email(who)}/events/{event_id}/{action}", {"sendResponse": True})

    def copy_of(self, who: str, ical_uid: str) -> dict[str, Any]:
        """`who`'s own copy of the meeting `ical_uid` (the invitation Exchange Online put in their calendar)."""

        def find() -> dict[str, Any] | None:
            listed = self.request("GET", f"/users/{email(who)}/events?$top=100")["value"]
            return next((e for e in listed if e["iCalUId"] == ical_uid), None)

        return wait_until(find, 30, f"{who}'s copy of {ical_uid}")

    def external_answer(self, organizer: str, event_id: str, attendee: str, response: str) -> None:
        """An attendee outside Exchange Online (an on-premises mailbox) answers: the emulator's control API sets
        the answer on the organizer's event as the reply mail would."""
        path = f"/mailboxes/{email(organizer)}/events/{event_id}/attendees/{email(attendee)}"
        self.request("PUT", path, {"response": response}, base="control_url")


def graph_time(days: int, hour: int, minute: int = 0, zone: str = "Europe/Berlin") -> datetime:
    """An aware datetime `days` from today at hour:minute in `zone`."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    day = datetime.now(tz).date() + timedelta(days=days)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)


def graph_datetime(value: datetime) -> dict[str, str]:
    """Graph's dateTimeTimeZone of an aware datetime (IANA zone names are accepted besides Windows ones)."""
    return {"dateTime": value.replace(tzinfo=None).isoformat(), "timeZone": str(value.tzinfo)}


def graph_attendees(required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [
        {"emailAddress": {"address": email(who)}, "type": kind}
        for kind, people in (("required", required), ("optional", optional))
        for who in people
    ]

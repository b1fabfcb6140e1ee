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

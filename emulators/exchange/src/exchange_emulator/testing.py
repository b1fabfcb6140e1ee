"""Helpers for tests of other packages: run the emulator as a subprocess on a free port.

Synchronous::

    with running_emulator(config) as emu:
        emu.ews_url, emu.service_account.username, emu.admin.add_mailbox("x@example.com")

Asynchronous (pytest-asyncio friendly)::

    async with emulator(config) as emu:
        ...

The handle's ``admin`` client talks to the JSON admin API; ``emu.assert_no_violations()`` fails when strict mode
recorded schema violations.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

DEFAULT_CONFIG: dict[str, Any] = {
    "service_accounts": [{"username": "svc-trueconf@example.com", "password": "Svc-Passw0rd", "impersonation": True}],
    "mailboxes": [],
}
_domains = itertools.count(1)


class EmulatorError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServiceAccount:
    username: str
    password: str


class AdminClient:
    """Small blocking JSON client for /_emulator/ (safe to call from threads; use asyncio.to_thread in async code)."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise EmulatorError(f"{method} {path} -> HTTP {exc.code}: {exc.read().decode(errors='replace')}") from exc

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, body or {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    # convenience wrappers
    def info(self) -> dict[str, Any]:
        return dict(self.get(""))

    def add_mailbox(self, email: str, display_name: str | None = None, password: str | None = None) -> Any:
        body: dict[str, Any] = {"email": email}
        if display_name:
            body["display_name"] = display_name
        if password:
            body["password"] = password
        return self.post("/mailboxes", body)

    def add_account(self, username: str, password: str, impersonation: bool = False, mailbox: str | None = None) -> Any:
        return self.post(
            "/accounts",
            {"username": username, "password": password, "impersonation": impersonation, "mailbox": mailbox},
        )

    def add_delegate(self, owner: str, delegate: str, rights: str = "Editor") -> Any:
        return self.post("/delegates", {"owner": owner, "delegate": delegate, "rights": rights})

    def items(self, email: str) -> list[dict[str, Any]]:
        return list(self.get(f"/mailboxes/{email}/items"))

    def add_raw_item(self, email: str, calendar_item: str, send: str = "SendToAllAndSaveCopy") -> dict[str, Any]:
        """Store a t:CalendarItem (XML) past CreateItem's checks, as a broken server could hold it."""
        body = {"calendar_item": calendar_item, "send_meeting_invitations": send}
        return dict(self.post(f"/mailboxes/{email}/items", body))

    def seed(self, **spec: Any) -> dict[str, Any]:
        return dict(self.post("/seed", spec))

    def requests(self) -> dict[str, Any]:
        return dict(self.get("/requests"))

    def violations(self) -> list[dict[str, Any]]:
        return list(self.get("/violations"))

    def owners(self) -> dict[str, Any]:
        """Streaming connections and sync runs per mailbox at once (GET /_emulator/owners)."""
        result: dict[str, Any] = self.get("/owners")
        return result

    def subscriptions(self) -> list[dict[str, Any]]:
        return list(self.get("/subscriptions"))

    def add_fault(self, **spec: Any) -> dict[str, Any]:
        return dict(self.post("/faults", spec))

    def clear_faults(self) -> None:
        self.delete("/faults")

    def expire_subscriptions(self, subscription_ids: list[str] | None = None, mailbox: str | None = None) -> Any:
        body: dict[str, Any] = {}
        if subscription_ids is not None:
            body["subscription_ids"] = subscription_ids
        if mailbox is not None:
            body["mailbox"] = mailbox
        return self.post("/subscriptions/expire", body)

    def move_mailbox(self, email: str, server: str) -> dict[str, Any]:
        """Move a mailbox to another mailbox server (e.g. "EMU-MBX02"): its subscriptions end."""
        result: dict[str, Any] = self.post(f"/mailboxes/{email}/move", {"server": server})
        return result

    def throttling(self, **limits: int) -> dict[str, Any]:
        """Change the throttling policy (keys of config `throttling`); without arguments, read it and the refusals
        so far (`refused`: {response code: calls})."""
        result: dict[str, Any] = self.post("/throttling", limits) if limits else self.get("/throttling")
        return result

    def mailbox(self, email: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/mailboxes/{email}")
        return result

    def miss_events(self, subscription_ids: list[str] | None = None, mailbox: str | None = None) -> list[str]:
        """Make subscriptions miss events (their next read answers ErrorMissedNotificationEvents)."""
        body: dict[str, Any] = {}
        if subscription_ids is not None:
            body["subscription_ids"] = subscription_ids
        if mailbox is not None:
            body["mailbox"] = mailbox
        return list(self.post("/subscriptions/miss", body)["missed"])

    def drop_streams(self, mailbox: str | None = None) -> int:
        return int(self.post("/streams/drop", {"mailbox": mailbox} if mailbox else {})["dropped"])

    def reset(self) -> None:
        self.post("/reset")


@dataclass(frozen=True)
class SoapAnswer:
    status_code: int
    content: bytes
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


@dataclass
class EmulatorHandle:
    ews_url: str
    autodiscover_url: str
    admin_url: str
    host: str
    port: int
    service_account: ServiceAccount
    mailboxes: list[str]
    process: subprocess.Popen[bytes]
    admin: AdminClient
    ready: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None

    def post_soap(
        self,
        body: str,
        *,
        mailbox: str | None = None,
        time_zone: str | None = None,
        headers: dict[str, str] | None = None,
        version: str = "Exchange2016",
    ) -> SoapAnswer:
        """One raw EWS request as the service account (Basic), impersonating `mailbox`: for what no EWS client
        library sends (MimeContent alone, hand-made restrictions) and for answers a library would retry itself."""
        header = f'<t:RequestServerVersion Version="{version}"/>'
        if mailbox is not None:
            header += (
                f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{mailbox}</t:PrimarySmtpAddress>"
                "</t:ConnectingSID></t:ExchangeImpersonation>"
            )
        if time_zone is not None:
            header += f'<t:TimeZoneContext><t:TimeZoneDefinition Id="{time_zone}"/></t:TimeZoneContext>'
        envelope = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
            'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
            f"<s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
        )
        account = self.service_account
        token = base64.b64encode(f"{account.username}:{account.password}".encode()).decode()
        request = urllib.request.Request(self.ews_url, data=envelope.encode(), method="POST")
        for name, value in {
            "Authorization": f"Basic {token}",
            "Content-Type": "text/xml; charset=utf-8",
            **(headers or {}),
        }.items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return SoapAnswer(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as exc:  # SOAP faults come with HTTP 500
            return SoapAnswer(exc.code, exc.read(), dict(exc.headers))

    def assert_no_violations(self) -> None:
        violations = self.admin.violations()
        if violations:
            raise AssertionError(f"EWS schema violations recorded by the emulator: {json.dumps(violations, indent=1)}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def _command(config_path: Path, ready: Path, strict: bool, extra_args: list[str]) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "exchange_emulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--config",
        str(config_path),
        "--ready-file",
        str(ready),
        "--strict" if strict else "--no-strict",
    ]
    return cmd + list(extra_args)


@contextlib.contextmanager
def running_emulator(
    config: dict[str, Any] | None = None,
    strict: bool = True,
    extra_args: list[str] | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[EmulatorHandle]:
    """Start the emulator subprocess, wait for its ready-file, yield a handle, stop it (SIGTERM, then kill)."""
    cfg = dict(DEFAULT_CONFIG if config is None else config)
    with tempfile.TemporaryDirectory(prefix="exchange-emulator-") as tmp:
        tmpdir = Path(tmp)
        config_path = tmpdir / "config.json"
        config_path.write_text(json.dumps(cfg), encoding="utf-8")
        ready = tmpdir / "ready.json"
        log_path = tmpdir / "emulator.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                _command(config_path, ready, strict, extra_args or []),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
            )
        try:
            deadline = time.monotonic() + startup_timeout
            while not ready.exists():
                if proc.poll() is not None:
                    raise EmulatorError(f"emulator exited with {proc.returncode}: {log_path.read_text()}")
                if time.monotonic() > deadline:
                    raise EmulatorError(f"emulator not ready after {startup_timeout}s: {log_path.read_text()}")
                time.sleep(0.05)
            info = json.loads(ready.read_text(encoding="utf-8"))
            svc = info.get("service_account") or {}
            handle = EmulatorHandle(
                ews_url=info["ews_url"],
                autodiscover_url=info["autodiscover_url"],
                admin_url=info["admin_url"],
                host=info["host"],
                port=int(info["port"]),
                service_account=ServiceAccount(str(svc.get("username", "")), str(svc.get("password", ""))),
                mailboxes=list(info.get("mailboxes", [])),
                process=proc,
                admin=AdminClient(info["admin_url"]),
                ready=info,
                log_path=log_path,
            )
            yield handle
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def emulator(
    config: dict[str, Any] | None = None,
    strict: bool = True,
    extra_args: list[str] | None = None,
    startup_timeout: float = 30.0,
) -> AsyncIterator[EmulatorHandle]:
    """Async variant of running_emulator (the blocking start and stop run in a worker thread)."""
    cm = running_emulator(config, strict, extra_args, startup_timeout)
    handle = await asyncio.to_thread(cm.__enter__)
    try:
        yield handle
    except BaseException as exc:
        if not await asyncio.to_thread(cm.__exit__, type(exc), exc, exc.__traceback__):
            raise
    else:
        await asyncio.to_thread(cm.__exit__, None, None, None)


def new_mailboxes(emu: EmulatorHandle, *names: str) -> list[str]:
    """Create the mailboxes `name@<a domain of this call alone>` (display name: the name, titled) through the admin
    API, so that every test has mailboxes of its own; returns their addresses in the order of `names`."""
    domain = f"t{next(_domains)}-{uuid.uuid4().hex[:6]}.example.com"
    out = []
    for name in names:
        email = f"{name}@{domain}"
        emu.admin.add_mailbox(email, display_name=name.title())
        out.append(email)
    return out


def fail_on_new_violations(
    request: pytest.FixtureRequest, *, fixture: str = "emu", allowed_by: str | None = None
) -> Iterator[None]:
    """The body of an autouse pytest fixture (`yield from fail_on_new_violations(request)`): fail every test during
    which the strict emulator of the `fixture` fixture recorded an EWS schema violation, unless the test is marked
    `allowed_by`. Tests that do not use `fixture` are left alone."""
    if fixture not in request.fixturenames:
        yield
        return
    handle: EmulatorHandle = request.getfixturevalue(fixture)
    before = len(handle.admin.violations())
    yield
    after = handle.admin.violations()
    if len(after) > before and not (allowed_by and request.node.get_closest_marker(allowed_by)):
        import pytest

        pytest.fail(f"EWS schema violations during the test: {after[before:]}")

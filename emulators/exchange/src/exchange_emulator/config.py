"""Emulator configuration (JSON file): server version, accounts, mailboxes, delegates, optional seeding."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# name -> (MajorVersion, MinorVersion, MajorBuildNumber, MinorBuildNumber)
SERVER_VERSIONS: dict[str, tuple[int, int, int, int]] = {
    "Exchange2016": (15, 1, 2507, 39),
    "Exchange2019": (15, 2, 1544, 4),
    "ExchangeSE": (15, 2, 2562, 17),
}
SCHEMA_VERSION = "V2017_07_11"


class ConfigError(ValueError):
    pass


@dataclass
class AccountSpec:
    username: str
    password: str
    impersonation: bool = False
    mailbox: str | None = None


@dataclass
class MailboxSpec:
    email: str
    display_name: str | None = None
    password: str | None = None


@dataclass
class DelegateSpec:
    owner: str
    delegate: str
    rights: str = "Editor"


@dataclass
class Throttling:
    """Exchange's default EWS throttling policy ("EWS throttling in Exchange"; "Handling notification-related
    errors in EWS in Exchange"): 27 concurrent calls (EWSMaxConcurrency), 3 open streaming connections
    (HangingConnectionLimit of Exchange on-premises) and 5,000 subscriptions (EWSMaxSubscriptions), each charged
    to the impersonated mailbox (or the account acting for itself)."""

    max_concurrency: int = 27
    hanging_connection_limit: int = 3
    max_subscriptions: int = 5000
    #: EwsMaxBurst, EwsRechargeRate (per hour) and EwsCutoffBalance of the time budget, in ms (budget.py).
    max_burst_ms: int = 300_000
    recharge_rate_ms: int = 900_000
    cutoff_balance_ms: int = 3_000_000
    #: Server time every call is charged on top of what it took: the emulator answers in about a millisecond,
    #: where Exchange takes tens; raising it makes the budget reachable in a test.
    call_cost_ms: int = 0

    @classmethod
    def from_json(cls, data: Any) -> Throttling:
        return _numbers_section(
            cls(), "throttling", data, 1_000_000_000, zero_allowed={"cutoff_balance_ms", "call_cost_ms"}
        )


@dataclass
class MeetingDelivery:
    """Meeting requests, updates, cancellations and responses arrive `delay_ms` + 0..`jitter_ms` after they are sent
    (transport.py); both 0 delivers before the sender's call returns."""

    delay_ms: int = 200
    jitter_ms: int = 800

    @classmethod
    def from_json(cls, data: Any) -> MeetingDelivery:
        return _numbers_section(cls(), "meeting_delivery", data, 3_600_000, zero_allowed={"delay_ms", "jitter_ms"})


_Section = TypeVar("_Section", "Throttling", "MeetingDelivery")


def _whole_number(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"config key {key!r} must be a whole number {low}..{high}, got {value!r}")
    return value


def _numbers_section(defaults: _Section, name: str, data: Any, high: int, zero_allowed: set[str]) -> _Section:
    """A config object of whole-number settings: its keys replace `defaults`' fields; unknown keys are refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key {name!r} must be an object, got {data!r}")
    known = {f.name for f in dataclasses.fields(defaults)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown {name} keys {sorted(unknown)}; expected some of {sorted(known)}")
    for key in sorted(set(data)):
        setattr(defaults, key, _whole_number(f"{name}.{key}", data[key], 0 if key in zero_allowed else 1, high))
    return defaults


@dataclass
class EmulatorConfig:
    version: str = "Exchange2016"
    domain: str = "EXAMPLE"
    service_accounts: list[AccountSpec] = field(default_factory=list)
    mailboxes: list[MailboxSpec] = field(default_factory=list)
    delegates: list[DelegateSpec] = field(default_factory=list)
    seed: dict[str, Any] | None = None
    #: Mailbox servers the mailboxes are spread over (Exchange 2016/2019/SE: a DAG has several).
    mailbox_servers: int = 2
    #: Undelivered events one subscription keeps; beyond, they are dropped: ErrorMissedNotificationEvents.
    max_queued_events: int = 1000
    throttling: Throttling = field(default_factory=lambda: Throttling())
    meeting_delivery: MeetingDelivery = field(default_factory=lambda: MeetingDelivery())

    @classmethod
    def from_json(cls, data: Any) -> EmulatorConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        known = {
            "version",
            "domain",
            "service_accounts",
            "mailboxes",
            "delegates",
            "seed",
            "mailbox_servers",
            "max_queued_events",
            "throttling",
            "meeting_delivery",
        }
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; expected some of {sorted(known)}")
        cfg = cls()
        version = data.get("version", "Exchange2016")
        if version not in SERVER_VERSIONS:
            raise ConfigError(f"config key 'version' is {version!r}; expected one of {sorted(SERVER_VERSIONS)}")
        cfg.version = version
        domain = data.get("domain", "EXAMPLE")
        if not isinstance(domain, str) or not domain:
            raise ConfigError(f"config key 'domain' must be a non-empty string, got {domain!r}")
        cfg.domain = domain
        cfg.mailbox_servers = _whole_number("mailbox_servers", data.get("mailbox_servers", 2), 1, 16)
        cfg.max_queued_events = _whole_number("max_queued_events", data.get("max_queued_events", 1000), 1, 1_000_000)
        cfg.throttling = Throttling.from_json(data.get("throttling", {}))
        cfg.meeting_delivery = MeetingDelivery.from_json(data.get("meeting_delivery", {}))
        for n, acc in enumerate(data.get("service_accounts", [])):
            if not isinstance(acc, dict) or not acc.get("username") or not acc.get("password"):
                raise ConfigError(f"service_accounts[{n}] needs 'username' and 'password', got {acc!r}")
            cfg.service_accounts.append(
                AccountSpec(
                    str(acc["username"]),
                    str(acc["password"]),
                    bool(acc.get("impersonation", True)),
                    acc.get("mailbox"),
                )
            )
        for n, mbx in enumerate(data.get("mailboxes", [])):
            if isinstance(mbx, str):
                mbx = {"email": mbx}
            if not isinstance(mbx, dict) or "@" not in str(mbx.get("email", "")):
                raise ConfigError(f"mailboxes[{n}] needs an SMTP 'email', got {mbx!r}")
            cfg.mailboxes.append(MailboxSpec(str(mbx["email"]), mbx.get("display_name"), mbx.get("password")))
        for n, dlg in enumerate(data.get("delegates", [])):
            if not isinstance(dlg, dict) or not dlg.get("owner") or not dlg.get("delegate"):
                raise ConfigError(f"delegates[{n}] needs 'owner' and 'delegate', got {dlg!r}")
            cfg.delegates.append(
                DelegateSpec(str(dlg["owner"]), str(dlg["delegate"]), str(dlg.get("rights", "Editor")))
            )
        seed = data.get("seed")
        if seed is not None and not isinstance(seed, dict):
            raise ConfigError(f"config key 'seed' must be an object, got {seed!r}")
        cfg.seed = seed
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> EmulatorConfig:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from exc
        return cls.from_json(data)

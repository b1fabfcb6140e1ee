"""The emulator's configuration: tenants with their users (mailboxes) and app registrations, limits, TLS.

A JSON object (file or `build_config` in testing.py); every key is optional except what a test needs:

    {"host": "127.0.0.1", "port": 0, "ready_file": "...", "state_file": "...",
     "tls": {"cert_file": "...", "key_file": "..."}          # omitted: a self-signed certificate is generated
     "tenants": [{"id": "<tenant guid>", "domain": "contoso.test",
                  "apps": [{"client_id": "...", "client_secret": "...", "permissions": ["Calendars.ReadWrite"],
                            "certificates": ["-----BEGIN CERTIFICATE-----..."]}],
                  "users": [{"id": "<guid>", "userPrincipalName": "alice@contoso.test", "displayName": "Alice"}]}],
     "token_lifetime_s": 3599,
     "throttling": {"requests_per_window": 10000, "window_s": 600, "concurrent_requests": 4},
     "delta": {"token_lifetime_s": 604800, "cache_size": 1000, "default_page_size": 10},
     "subscriptions": {"validation_timeout_s": 10, "allow_http": false, "ca_file": null,
                       "retry_delays_s": [0.5, 1, 2, 4, 8]}}
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Application permissions an app registration may hold (Calendars.* of the Graph permissions reference:
# https://learn.microsoft.com/en-us/graph/permissions-reference#calendarsread).
KNOWN_PERMISSIONS = frozenset({"Calendars.Read", "Calendars.ReadBasic.All", "Calendars.ReadWrite"})


class ConfigError(ValueError):
    pass


@dataclass
class AppRegistration:
    client_id: str
    client_secret: str
    permissions: frozenset[str]
    #: Certificates (PEM) uploaded to the app: client assertions signed with their keys are accepted
    #: (client_assertion.py). An app may have secrets, certificates or both.
    certificates: tuple[str, ...] = ()


@dataclass
class UserConfig:
    id: str
    user_principal_name: str
    display_name: str


@dataclass
class TenantConfig:
    id: str
    apps: list[AppRegistration] = field(default_factory=list)
    users: list[UserConfig] = field(default_factory=list)


@dataclass
class ThrottlingConfig:
    # Outlook service limits, per app ID and mailbox: 10,000 API requests in a 10 minute period and
    # 4 concurrent requests (https://learn.microsoft.com/en-us/graph/throttling-limits#outlook-service-limits).
    requests_per_window: int = 10_000
    window_s: float = 600.0
    concurrent_requests: int = 4


@dataclass
class DeltaConfig:
    token_lifetime_s: float = 7 * 24 * 3600.0
    cache_size: int = 1000
    default_page_size: int = 10


@dataclass
class SubscriptionConfig:
    validation_timeout_s: float = 10.0
    allow_http: bool = False
    ca_file: str | None = None
    # Pauses before the 2nd, 3rd, ... delivery attempt of a notification; then it is dropped and a `missed`
    # lifecycle notification goes out (Graph retries for hours; tests want seconds).
    retry_delays_s: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    ready_file: str | None = None
    state_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tenants: list[TenantConfig] = field(default_factory=list)
    token_lifetime_s: int = 3599
    throttling: ThrottlingConfig = field(default_factory=ThrottlingConfig)
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    subscriptions: SubscriptionConfig = field(default_factory=SubscriptionConfig)
    log_level: str = "INFO"


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a JSON object, got {value!r}")
    return value


def _str(data: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value


def _number(data: dict[str, Any], key: str, where: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}.{key} must be a positive number, got {value!r}")
    return float(value)


def _delays(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int | float) and v >= 0 for v in value):
        raise ConfigError(f"config.subscriptions.retry_delays_s must be a list of seconds, got {value!r}")
    return tuple(float(v) for v in value)


def parse_app(data: Any, where: str) -> AppRegistration:
    obj = _obj(data, where)
    permissions = obj.get("permissions", ["Calendars.ReadWrite"])
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise ConfigError(f"{where}.permissions must be a list of strings, got {permissions!r}")
    unknown = sorted(set(permissions) - KNOWN_PERMISSIONS)
    if unknown:
        raise ConfigError(f"{where}.permissions: unknown permission(s) {unknown}; known: {sorted(KNOWN_PERMISSIONS)}")
    certificates = obj.get("certificates", [])
    if not isinstance(certificates, list) or not all(
        isinstance(c, str) and c.startswith("-----BEGIN CERTIFICATE-----") for c in certificates
    ):
        raise ConfigError(f"{where}.certificates must be a list of PEM certificates, got {certificates!r}")
    secret = _str(obj, "client_secret", where) if "client_secret" in obj or not certificates else ""
    return AppRegistration(_str(obj, "client_id", where), secret, frozenset(permissions), tuple(certificates))


def parse_user(data: Any, where: str) -> UserConfig:
    obj = _obj(data, where)
    upn = _str(obj, "userPrincipalName", where)
    if "@" not in upn:
        raise ConfigError(f"{where}.userPrincipalName must be an address like alice@contoso.test, got {upn!r}")
    return UserConfig(
        id=_str(obj, "id", where, str(uuid.uuid5(uuid.NAMESPACE_DNS, upn.lower()))),
        user_principal_name=upn,
        display_name=_str(obj, "displayName", where, upn.split("@")[0]),
    )


def parse_tenant(data: Any, where: str) -> TenantConfig:
    obj = _obj(data, where)
    apps, users = obj.get("apps", []), obj.get("users", [])
    if not isinstance(apps, list) or not isinstance(users, list):
        raise ConfigError(f"{where}.apps and {where}.users must be lists")
    return TenantConfig(
        id=_str(obj, "id", where),
        apps=[parse_app(app, f"{where}.apps[{i}]") for i, app in enumerate(apps)],
        users=[parse_user(user, f"{where}.users[{i}]") for i, user in enumerate(users)],
    )


def parse_config(data: Any) -> EmulatorConfig:
    obj = _obj(data, "config")
    tenants = obj.get("tenants", [])
    if not isinstance(tenants, list):
        raise ConfigError(f"config.tenants must be a list, got {tenants!r}")
    throttling = _obj(obj.get("throttling", {}), "config.throttling")
    delta = _obj(obj.get("delta", {}), "config.delta")
    subs = _obj(obj.get("subscriptions", {}), "config.subscriptions")
    tls = _obj(obj.get("tls", {}), "config.tls")
    port = obj.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"config.port must be 0..65535, got {port!r}")
    ca_file = subs.get("ca_file")
    if ca_file is not None and not isinstance(ca_file, str):
        raise ConfigError(f"config.subscriptions.ca_file must be a path, got {ca_file!r}")
    config = EmulatorConfig(
        host=_str(obj, "host", "config", "127.0.0.1"),
        port=port,
        ready_file=obj.get("ready_file"),
        state_file=obj.get("state_file"),
        tls_cert_file=tls.get("cert_file"),
        tls_key_file=tls.get("key_file"),
        tenants=[parse_tenant(t, f"config.tenants[{i}]") for i, t in enumerate(tenants)],
        token_lifetime_s=int(_number(obj, "token_lifetime_s", "config", 3599)),
        throttling=ThrottlingConfig(
            requests_per_window=int(_number(throttling, "requests_per_window", "config.throttling", 10_000)),
            window_s=_number(throttling, "window_s", "config.throttling", 600),
            concurrent_requests=int(_number(throttling, "concurrent_requests", "config.throttling", 4)),
        ),
        delta=DeltaConfig(
            token_lifetime_s=_number(delta, "token_lifetime_s", "config.delta", 7 * 24 * 3600),
            cache_size=int(_number(delta, "cache_size", "config.delta", 1000)),
            default_page_size=int(_number(delta, "default_page_size", "config.delta", 10)),
        ),
        subscriptions=SubscriptionConfig(
            validation_timeout_s=_number(subs, "validation_timeout_s", "config.subscriptions", 10),
            allow_http=bool(subs.get("allow_http", False)),
            ca_file=ca_file,
            retry_delays_s=_delays(subs.get("retry_delays_s", [0.5, 1.0, 2.0, 4.0, 8.0])),
        ),
        log_level=_str(obj, "log_level", "config", "INFO"),
    )
    if (config.tls_cert_file is None) != (config.tls_key_file is None):
        raise ConfigError("config.tls needs both cert_file and key_file, or neither (a self-signed one is generated)")
    return config


def load_config_file(path: str) -> EmulatorConfig:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"config file {path} is not JSON: {exc}") from exc
    return parse_config(data)

"""Emulator configuration: a JSON file, overridden by command-line flags, validated once at start."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .protocol import DEFAULT_MAX_IN_FLIGHT, MAX_FRAME_BYTES, PING_INTERVAL_SEC, REPLY_TIMEOUT_SEC

SERVER_ID_RE = re.compile(r"^[^\s#]+#vcs$")
USER_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MODES = ("PxP", "OxP", "S|L", "S|L Auto")


class ConfigError(ValueError):
    """A bad configuration value; the message names the key, the value and what was expected."""


@dataclass(frozen=True)
class User:
    id: str
    email: str
    display_name: str
    login_name: str
    first_name: str = ""
    last_name: str = ""

    def as_config(self) -> dict[str, str]:
        return {
            "id": self.id,
            "email": self.email,
            "display_name": self.display_name,
            "login_name": self.login_name,
            "first_name": self.first_name,
            "last_name": self.last_name,
        }


@dataclass(frozen=True)
class ModeLimit:
    max_participants: int
    max_podiums: int


DEFAULT_MODE_LIMITS: dict[str, ModeLimit] = {
    "PxP": ModeLimit(max_participants=36, max_podiums=36),
    "OxP": ModeLimit(max_participants=120, max_podiums=1),
    "S|L": ModeLimit(max_participants=250, max_podiums=36),
    "S|L Auto": ModeLimit(max_participants=250, max_podiums=36),
}


#: docs/bridge-protocol.md §6.1 `catchUp` (revision 1.3).
CATCH_UP_MODES = ("snapshots", "lists")


@dataclass
class EmulatorConfig:
    server_id: str = "tcs.example.test#vcs"
    server_host: str = ""
    secret: str = "bridge-secret"
    server_version: str = "5.5.3"
    gateway_url: str | None = None
    #: Further bridge URLs tried in order when gateway_url cannot be reached (what a Kubernetes Service does for the
    #: real server's one URL when the pod behind it died: the reconnect lands on another tcs-gateway replica).
    gateway_fallback_urls: list[str] = field(default_factory=list)
    gateway_tls_verify: bool = True
    gateway_ca_file: str | None = None
    users: list[User] = field(default_factory=list)
    client_id: str = "tc-calendar-connector"
    client_secret: str = "connector-secret"
    token_lifetime: int = 3600
    host: str = "127.0.0.1"
    port: int = 0
    ready_file: str | None = None
    schema_path: str | None = None
    #: PEM certificate and key: serve https:// (TrueConf Server is reached over HTTPS; some clients insist).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    state_file: str | None = None  # conferences kept across restarts (persistence.py)
    window_days_back: int = 60
    window_days_forward: int = 90
    reconnect_initial: float = 1.0
    reconnect_max: float = 60.0
    ping_interval: float = PING_INTERVAL_SEC
    reply_timeout: float = REPLY_TIMEOUT_SEC
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_frame_bytes: int = MAX_FRAME_BYTES
    #: After auth: "snapshots" (protocol revisions 1.0-1.2: the gateway sends every served user's snapshot) or
    #: "lists" (revision 1.3, `auth` `catchUp`: no snapshots, this server asks every user's list with sinceSeq).
    catch_up: str = "snapshots"
    mode_limits: dict[str, ModeLimit] = field(default_factory=lambda: dict(DEFAULT_MODE_LIMITS))
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not self.server_host:
            self.server_host = self.server_id.split("#", 1)[0]

    def public_view(self) -> dict[str, Any]:
        """Configuration without secrets, for inspection."""
        return {
            "server_id": self.server_id,
            "server_host": self.server_host,
            "gateway_url": self.gateway_url,
            "gateway_fallback_urls": list(self.gateway_fallback_urls),
            "users": [user.as_config() for user in self.users],
            "client_id": self.client_id,
            "token_lifetime": self.token_lifetime,
            "window_days_back": self.window_days_back,
            "window_days_forward": self.window_days_forward,
            "reconnect_initial": self.reconnect_initial,
            "reconnect_max": self.reconnect_max,
            "ping_interval": self.ping_interval,
            "reply_timeout": self.reply_timeout,
            "max_in_flight": self.max_in_flight,
            "max_frame_bytes": self.max_frame_bytes,
            "catch_up": self.catch_up,
            "mode_limits": {
                mode: {"max_participants": limit.max_participants, "max_podiums": limit.max_podiums}
                for mode, limit in self.mode_limits.items()
            },
        }


def _expect(condition: bool, key: str, value: Any, expected: str) -> None:
    if not condition:
        raise ConfigError(f"config key {key!r}: got {value!r}, expected {expected}")


def _string(data: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = data[key]
    _expect(isinstance(value, str) and (allow_empty or bool(value)), key, value, "a non-empty string")
    return str(value)


def _number(data: dict[str, Any], key: str, *, minimum: float, maximum: float, integer: bool) -> float:
    value = data[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if integer:
        ok = ok and isinstance(value, int)
    kind = "an integer" if integer else "a number"
    _expect(ok and minimum <= value <= maximum, key, value, f"{kind} from {minimum} to {maximum}")
    return float(value)


def parse_user(raw: Any, key: str) -> User:
    _expect(isinstance(raw, dict), key, raw, "an object with id, email, display_name")
    assert isinstance(raw, dict)
    allowed = {"id", "email", "display_name", "login_name", "first_name", "last_name"}
    unknown = sorted(set(raw) - allowed)
    _expect(not unknown, f"{key}.{unknown[0] if unknown else ''}", None, f"only keys {sorted(allowed)}")
    for name in ("id", "email"):
        _expect(name in raw, f"{key}.{name}", None, "a value (required)")
    user_id = raw["id"]
    _expect(
        isinstance(user_id, str) and bool(USER_ID_RE.match(user_id)), f"{key}.id", user_id, "1-64 of [A-Za-z0-9._-]"
    )
    email = raw["email"]
    _expect(isinstance(email, str) and bool(EMAIL_RE.match(email)), f"{key}.email", email, "an e-mail address")
    display_name = raw.get("display_name", user_id)
    _expect(isinstance(display_name, str) and bool(display_name), f"{key}.display_name", display_name, "a string")
    login_name = raw.get("login_name", user_id)
    _expect(isinstance(login_name, str) and bool(login_name), f"{key}.login_name", login_name, "a string")
    first_name = raw.get("first_name", "")
    last_name = raw.get("last_name", "")
    _expect(isinstance(first_name, str), f"{key}.first_name", first_name, "a string")
    _expect(isinstance(last_name, str), f"{key}.last_name", last_name, "a string")
    return User(
        id=user_id,
        email=email.lower(),
        display_name=str(display_name),
        login_name=str(login_name),
        first_name=str(first_name),
        last_name=str(last_name),
    )


def parse_user_flag(text: str) -> dict[str, str]:
    """`--user id:email[:Display Name]`."""
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise ConfigError(f"--user {text!r}: expected id:email[:display name]")
    raw = {"id": parts[0], "email": parts[1]}
    if len(parts) == 3:
        raw["display_name"] = parts[2]
    return raw


_KNOWN_KEYS = {
    "server_id",
    "server_host",
    "secret",
    "server_version",
    "gateway_url",
    "gateway_fallback_urls",
    "gateway_tls_verify",
    "gateway_ca_file",
    "users",
    "oauth",
    "host",
    "port",
    "ready_file",
    "schema_path",
    "tls_cert_file",
    "tls_key_file",
    "state_file",
    "calendar_window",
    "reconnect",
    "ping_interval",
    "reply_timeout",
    "max_in_flight",
    "max_frame_bytes",
    "catch_up",
    "mode_limits",
    "log_level",
}


def build_config(file_data: dict[str, Any] | None, overrides: dict[str, Any]) -> EmulatorConfig:
    """Merge a config file's object with flag overrides (flat keys, None = not given) and validate."""
    data: dict[str, Any] = dict(file_data or {})
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"config key {unknown[0]!r} is unknown; known keys: {sorted(_KNOWN_KEYS)}")
    oauth = data.pop("oauth", {}) or {}
    _expect(isinstance(oauth, dict), "oauth", oauth, "an object with client_id, client_secret, token_lifetime")
    for key in oauth:
        _expect(key in ("client_id", "client_secret", "token_lifetime"), f"oauth.{key}", None, "a known key")
    window = data.pop("calendar_window", {}) or {}
    _expect(isinstance(window, dict), "calendar_window", window, "an object with days_back, days_forward")
    reconnect = data.pop("reconnect", {}) or {}
    _expect(isinstance(reconnect, dict), "reconnect", reconnect, "an object with initial_delay, max_delay")
    flat: dict[str, Any] = dict(data)
    for key, value in oauth.items():
        flat[key] = value
    if "days_back" in window:
        flat["window_days_back"] = window["days_back"]
    if "days_forward" in window:
        flat["window_days_forward"] = window["days_forward"]
    if "initial_delay" in reconnect:
        flat["reconnect_initial"] = reconnect["initial_delay"]
    if "max_delay" in reconnect:
        flat["reconnect_max"] = reconnect["max_delay"]
    for key, value in overrides.items():
        if value is not None:
            flat[key] = value

    config = EmulatorConfig()
    if "server_id" in flat:
        value = _string(flat, "server_id")
        _expect(bool(SERVER_ID_RE.match(value)), "server_id", value, "a TrueConf server id like name#vcs")
        config.server_id = value
        config.server_host = ""
    for key in ("secret", "server_version", "client_id", "client_secret", "host", "log_level"):
        if key in flat:
            setattr(config, key, _string(flat, key))
    if "server_host" in flat:
        config.server_host = _string(flat, "server_host")
    if "catch_up" in flat:
        config.catch_up = _string(flat, "catch_up")
        _expect(config.catch_up in CATCH_UP_MODES, "catch_up", config.catch_up, f"one of {list(CATCH_UP_MODES)}")
    config.__post_init__()
    _expect(
        bool(re.match(r"^[A-Za-z0-9.\-]+(:[0-9]+)?$", config.server_host)),
        "server_host",
        config.server_host,
        "a host name",
    )
    if flat.get("gateway_url") is not None:
        url = _string(flat, "gateway_url")
        _expect(url.startswith(("ws://", "wss://")), "gateway_url", url, "a ws:// or wss:// URL")
        config.gateway_url = url
    if flat.get("gateway_fallback_urls") is not None:
        urls = flat["gateway_fallback_urls"]
        _expect(isinstance(urls, list), "gateway_fallback_urls", urls, "a list of ws:// or wss:// URLs")
        for url in urls:
            _expect(
                isinstance(url, str) and url.startswith(("ws://", "wss://")),
                "gateway_fallback_urls",
                url,
                "a ws:// or wss:// URL",
            )
        config.gateway_fallback_urls = list(urls)
    if "gateway_tls_verify" in flat:
        value = flat["gateway_tls_verify"]
        _expect(isinstance(value, bool), "gateway_tls_verify", value, "true or false")
        config.gateway_tls_verify = bool(value)
    if flat.get("gateway_ca_file") is not None:
        path = _string(flat, "gateway_ca_file")
        _expect(Path(path).is_file(), "gateway_ca_file", path, "an existing PEM file")
        config.gateway_ca_file = path
    for key in ("ready_file", "schema_path", "state_file"):
        if flat.get(key) is not None:
            setattr(config, key, _string(flat, key))
    for key in ("tls_cert_file", "tls_key_file"):
        if flat.get(key) is not None:
            path = _string(flat, key)
            _expect(Path(path).is_file(), key, path, "an existing PEM file")
            setattr(config, key, path)
    _expect(
        (config.tls_cert_file is None) == (config.tls_key_file is None),
        "tls_key_file" if config.tls_cert_file else "tls_cert_file",
        None,
        "set together with its pair (tls_cert_file and tls_key_file)",
    )
    if "users" in flat:
        users_raw = flat["users"]
        _expect(isinstance(users_raw, list), "users", users_raw, "a list of user objects")
        users = [parse_user(raw, f"users[{index}]") for index, raw in enumerate(users_raw)]
        ids = [user.id for user in users]
        emails = [user.email for user in users]
        for index, user in enumerate(users):
            _expect(ids.count(user.id) == 1, f"users[{index}].id", user.id, "a unique id")
            _expect(emails.count(user.email) == 1, f"users[{index}].email", user.email, "a unique e-mail")
        config.users = users
    numeric: tuple[tuple[str, float, float, bool], ...] = (
        ("token_lifetime", 1, 31_536_000, True),
        ("port", 0, 65535, True),
        ("window_days_back", 0, 400, True),
        ("window_days_forward", 1, 400, True),
        ("reconnect_initial", 0.01, 3600, False),
        ("reconnect_max", 0.01, 3600, False),
        ("ping_interval", 0.1, 3600, False),
        ("reply_timeout", 0.1, 3600, False),
        ("max_in_flight", 1, 1024, True),
        ("max_frame_bytes", 1024, 64 * 1024 * 1024, True),
    )
    for key, minimum, maximum, integer in numeric:
        if key in flat:
            number = _number(flat, key, minimum=minimum, maximum=maximum, integer=integer)
            setattr(config, key, int(number) if integer else number)
    if config.window_days_back + config.window_days_forward > 400:
        raise ConfigError(
            "config keys 'calendar_window.days_back' + 'calendar_window.days_forward': "
            f"got {config.window_days_back + config.window_days_forward} days, expected at most 400"
        )
    if config.reconnect_max < config.reconnect_initial:
        raise ConfigError(
            f"config key 'reconnect.max_delay': got {config.reconnect_max}, "
            f"expected at least reconnect.initial_delay {config.reconnect_initial}"
        )
    if "mode_limits" in flat:
        raw_limits = flat["mode_limits"]
        _expect(isinstance(raw_limits, dict), "mode_limits", raw_limits, "an object keyed by conference mode")
        limits = dict(DEFAULT_MODE_LIMITS)
        for mode, raw in raw_limits.items():
            key = f"mode_limits.{mode}"
            _expect(mode in MODES, key, mode, f"one of {list(MODES)}")
            _expect(isinstance(raw, dict), key, raw, "an object with max_participants, max_podiums")
            participants = raw.get("max_participants")
            podiums = raw.get("max_podiums")
            _expect(
                isinstance(participants, int) and not isinstance(participants, bool) and participants >= 1,
                f"{key}.max_participants",
                participants,
                "a positive integer",
            )
            _expect(
                isinstance(podiums, int) and not isinstance(podiums, bool) and 1 <= podiums <= participants,
                f"{key}.max_podiums",
                podiums,
                "a positive integer not above max_participants",
            )
            assert isinstance(participants, int) and isinstance(podiums, int)
            limits[mode] = ModeLimit(max_participants=participants, max_podiums=podiums)
        config.mode_limits = limits
    _expect(
        config.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
        "log_level",
        config.log_level,
        "DEBUG, INFO, WARNING or ERROR",
    )
    return config


def load_config_file(path: str | Path) -> dict[str, Any]:
    try:
        with Path(path).open(encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data

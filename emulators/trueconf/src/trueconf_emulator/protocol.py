"""Constants and frame builders of the calendar bridge protocol, version 1 (docs/bridge-protocol.md)."""

from __future__ import annotations

import enum
from typing import Any

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
DEFAULT_WS_PORT = 4315
WS_PATH = "/bridge/v1"

MAX_FRAME_BYTES = 1_048_576
AUTH_TIMEOUT_SEC = 10
DEFAULT_MAX_IN_FLIGHT = 64
PING_INTERVAL_SEC = 30
REPLY_TIMEOUT_SEC = 30
MAX_WINDOW_DAYS = 400
MAX_SAFE_INT = 9_007_199_254_740_991

REQUEST = 1
REPLY = 2

PUSH_METHODS = ("calendar.upsert", "calendar.cancel", "calendar.delete", "calendar.snapshot")
# Methods a TrueConf Server serves (the gateway may call them) and methods it calls.
TCS_SERVED_METHODS = (*PUSH_METHODS, "ping")
TCS_CALLED_METHODS = ("auth", "getCalendarList", "ping")
ALL_METHODS = ("auth", "getCalendarList", *PUSH_METHODS, "ping")


class ErrorCode(enum.IntEnum):
    OK = 0
    MALFORMED_FRAME = 1
    UNKNOWN_METHOD = 2
    NOT_AUTHENTICATED = 3
    SERVER_NOT_WHITELISTED = 4
    BAD_SECRET = 5
    INVALID_PAYLOAD = 6
    FRAME_TOO_LARGE = 7
    INTERNAL_ERROR = 8
    OVERLOADED = 9
    UNSUPPORTED_PROTOCOL_VERSION = 10
    ALREADY_AUTHENTICATED = 11
    UNKNOWN_USER = 12
    NO_SEAT = 13


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    AUTH_FAILED = 4001
    NOT_WHITELISTED = 4003
    REPLACED = 4005
    AUTH_TIMEOUT = 4008
    FRAME_TOO_LARGE = 4009
    UNSUPPORTED_VERSION = 4010
    TIMEOUT = 4011


def request_frame(frame_id: int, method: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"type": REQUEST, "id": frame_id, "method": method, "payload": payload}


def reply_frame(frame_id: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {"type": REPLY, "id": frame_id, "payload": payload}


def error_payload(
    code: ErrorCode,
    description: str,
    *,
    field: str | None = None,
    retry_after_ms: int | None = None,
    supported_versions: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    if code is ErrorCode.OK:
        raise ValueError("error_payload needs a non-zero error code")
    payload: dict[str, Any] = {
        "errorCode": int(code),
        "errorName": code.name,
        "errorDescription": description[:4096],
    }
    if field is not None:
        payload["field"] = field[:512]
    if retry_after_ms is not None:
        payload["retryAfterMs"] = retry_after_ms
    if supported_versions is not None:
        payload["supportedVersions"] = list(supported_versions)
    return payload

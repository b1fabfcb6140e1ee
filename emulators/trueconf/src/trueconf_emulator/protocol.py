"""Constants and frame builders of the calendar bridge protocol, version 1 (docs/bridge-protocol.md).

The frame types, error and close codes and frame builders are the protocol's shared definition
(tccal.bridge_protocol, which tcs-gateway uses too), re-exported here under the emulator's names.
"""

from __future__ import annotations

from typing import Any

from tccal.bridge_protocol import (
    MAX_SAFE_INT,
    PUSH_METHODS,
    REPLY,
    REQUEST,
    CloseCode,
    ErrorCode,
    reply_frame,
    request_frame,
)

__all__ = [
    "ALL_METHODS",
    "AUTH_TIMEOUT_SEC",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_WS_PORT",
    "MAX_FRAME_BYTES",
    "MAX_SAFE_INT",
    "MAX_WINDOW_DAYS",
    "PING_INTERVAL_SEC",
    "PROTOCOL_VERSION",
    "PUSH_METHODS",
    "REPLY",
    "REPLY_TIMEOUT_SEC",
    "REQUEST",
    "SUPPORTED_VERSIONS",
    "TCS_CALLED_METHODS",
    "TCS_SERVED_METHODS",
    "WS_PATH",
    "CloseCode",
    "ErrorCode",
    "error_payload",
    "reply_frame",
    "request_frame",
]

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
# Methods a TrueConf Server serves (the gateway may call them) and methods it calls.
TCS_SERVED_METHODS = (*PUSH_METHODS, "ping")
TCS_CALLED_METHODS = ("auth", "getCalendarList", "ping")
ALL_METHODS = ("auth", "getCalendarList", *PUSH_METHODS, "ping")


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

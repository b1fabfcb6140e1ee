"""Frames of the calendar bridge protocol, version 1 (docs/bridge-protocol.md §2, §7, §8).

Incoming frames are checked against the packaged copy of docs/bridge-protocol.schema.json (a test keeps the
copy equal to the document's); a failure names the offending field as a path into the payload.
"""

from __future__ import annotations

import collections
import enum
import importlib.resources
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jsonschema
import jsonschema.exceptions

SCHEMA_FILE = "bridge-protocol.schema.json"
REQUEST = 1
REPLY = 2
MAX_ID = 9_007_199_254_740_991
PUSH_METHODS = ("calendar.upsert", "calendar.cancel", "calendar.delete", "calendar.snapshot")


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


def format_instant(moment: datetime) -> str:
    """An instant of the protocol: UTC, `Z`, seconds, up to 6 fractional digits."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(text: str) -> datetime:
    """Parse an instant the schema already accepted (UTC with Z)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


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
    supported_versions: Sequence[int] | None = None,
) -> dict[str, Any]:
    if code is ErrorCode.OK:
        raise ValueError("an error payload needs a non-zero error code")
    payload: dict[str, Any] = {
        "errorCode": int(code),
        "errorName": code.name,
        "errorDescription": description[:4096],
    }
    if field is not None:
        payload["field"] = (field or "payload")[:512]
    if retry_after_ms is not None:
        payload["retryAfterMs"] = max(0, min(3_600_000, retry_after_ms))
    if supported_versions is not None:
        payload["supportedVersions"] = list(supported_versions)
    return payload


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def encoded_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def load_schema() -> dict[str, Any]:
    text = importlib.resources.files("tcs_gateway.bridge").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise ValueError(f"{SCHEMA_FILE} does not hold a JSON object")
    return loaded


@dataclass(frozen=True)
class Problem:
    """A validation failure: the field as a path into the payload, and what is wrong with it."""

    field: str
    message: str


def format_path(parts: Sequence[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += part if not text else f".{part}"
    return text


def _leaf(error: jsonschema.exceptions.ValidationError) -> jsonschema.exceptions.ValidationError:
    """Descend into oneOf/anyOf failures, following the branch that got deepest into the instance."""
    while error.context:
        branches: dict[Any, list[jsonschema.exceptions.ValidationError]] = collections.defaultdict(list)
        for sub in error.context:
            branches[sub.relative_schema_path[0] if sub.relative_schema_path else 0].append(sub)
        best = max(branches.values(), key=lambda errs: max(len(e.absolute_path) for e in errs))
        error = max(best, key=lambda e: len(e.absolute_path))
    return error


def _path_of(error: jsonschema.exceptions.ValidationError) -> list[str | int]:
    path: list[str | int] = list(error.absolute_path)
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        wanted = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [name for name in wanted if name not in instance]
        if missing:
            path.append(missing[0])
    elif error.validator == "additionalProperties" and isinstance(instance, dict) and isinstance(error.schema, dict):
        declared = error.schema.get("properties", {})
        patterns = error.schema.get("patternProperties", {})
        extra = [k for k in instance if k not in declared and not any(re.search(p, k) for p in patterns)]
        if extra:
            path.append(extra[0])
    return path


class FrameValidator:
    """Checks frames against named definitions of the schema (`auth.request`, `requestFrame`, …)."""

    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        self.schema = schema if schema is not None else load_schema()
        self._defs: dict[str, Any] = self.schema.get("$defs", {})
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    def has(self, definition: str) -> bool:
        return definition in self._defs

    def _validator(self, definition: str) -> jsonschema.Draft202012Validator:
        validator = self._validators.get(definition)
        if validator is None:
            if definition not in self._defs:
                raise KeyError(f"the bridge schema has no definition {definition!r}")
            validator = jsonschema.Draft202012Validator({"$ref": f"#/$defs/{definition}", "$defs": self._defs})
            self._validators[definition] = validator
        return validator

    def problem(self, frame: Any, definition: str, *, relative_to_payload: bool = True) -> Problem | None:
        errors = list(self._validator(definition).iter_errors(frame))
        if not errors:
            return None
        leaf = _leaf(max(errors, key=jsonschema.exceptions.relevance))
        parts = _path_of(leaf)
        if relative_to_payload and parts and parts[0] == "payload":
            parts = parts[1:]
        field = format_path(parts) or "payload"
        message = leaf.message if len(leaf.message) <= 300 else leaf.message[:300] + "…"
        return Problem(field=field, message=f"{field}: {message}")

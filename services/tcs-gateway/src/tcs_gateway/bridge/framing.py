"""Frames of the calendar bridge protocol, version 1 (docs/bridge-protocol.md §2, §7, §8).

The codes, the schema and frame validation are the protocol's shared definition (tccal.bridge_protocol, which
the TrueConf emulator uses too); incoming frames are checked against docs/bridge-protocol.schema.json (carried
in tccal's wheel), and a failure names the offending field as a path into the
payload. What is the gateway's own: instants, error payloads and frame sizes as it writes them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from tccal import bridge_protocol
from tccal.bridge_protocol import (
    PUSH_METHODS,
    REPLY,
    REQUEST,
    SCHEMA_FILE,
    CloseCode,
    ErrorCode,
    Problem,
    format_path,
    load_schema,
    reply_frame,
    request_frame,
)

__all__ = [
    "MAX_ID",
    "PUSH_METHODS",
    "REPLY",
    "REQUEST",
    "SCHEMA_FILE",
    "CloseCode",
    "ErrorCode",
    "FrameValidator",
    "Problem",
    "encode",
    "encode_bytes",
    "encoded_size",
    "error_payload",
    "format_instant",
    "format_path",
    "load_schema",
    "nesting_depth",
    "parse_frame_text",
    "parse_instant",
    "preencoded",
    "reply_frame",
    "request_frame",
]

MAX_ID = bridge_protocol.MAX_SAFE_INT
#: The deepest nesting a frame may have (docs/bridge-protocol.md §2); the deepest real frame (a calendar event in a
#: push or snapshot) has fewer than 10 levels. Deeper frames are refused before anything walks them.
MAX_FRAME_DEPTH = 64


def parse_frame_text(text: str) -> tuple[Any, str | None]:
    """The JSON of a text frame, or (None, why it is malformed): not JSON, or nested deeper than MAX_FRAME_DEPTH
    (Python's parser recurses per level and gives up, with RecursionError, long before a frame's byte limit)."""
    too_deep = f"frame nests too deeply (at most {MAX_FRAME_DEPTH} levels)"
    try:
        value = json.loads(text)
    except RecursionError:
        return None, too_deep
    except ValueError as exc:
        return None, f"frame is not JSON: {exc}"
    if nesting_depth(value, MAX_FRAME_DEPTH) > MAX_FRAME_DEPTH:
        return None, too_deep
    return value, None


def nesting_depth(value: Any, limit: int) -> int:
    """How deep `value` nests (a scalar: 1), counted without recursion and only up to limit + 1."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return deepest


def format_instant(moment: datetime) -> str:
    """An instant of the protocol: UTC, `Z`, seconds, up to 6 fractional digits."""
    # isoformat writes the fraction only when there is one, and 6 digits then (as strftime's %f): several times
    # faster than strftime, which was a tenth of building a 20,000-event getCalendarList (bench/README.md §6).
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat()[:-6] + "Z"  # without its "+00:00"


def parse_instant(text: str) -> datetime:
    """Parse an instant the schema already accepted (UTC with Z)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


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


def encode_bytes(value: Any) -> bytes:
    """`value` as the bridge writes JSON, UTF-8: compact, non-ASCII unescaped (what `json.dumps(value,
    separators=(",", ":"), ensure_ascii=False)` writes, byte for byte, at a fraction of its CPU: every push is
    encoded here). The bridge's one definition of its JSON: frames, their sizes and events encoded ahead of their
    frame all come from it."""
    return orjson.dumps(value)


def encode(frame: dict[str, Any]) -> str:
    """The frame's text (`encode_bytes`)."""
    return encode_bytes(frame).decode("utf-8")


def encoded_size(value: Any) -> int:
    """UTF-8 bytes of `value` as `encode` writes it."""
    return len(encode_bytes(value))


def preencoded(text: bytes) -> orjson.Fragment:
    """JSON text from `encode_bytes` to place in a value that is encoded later: written into it as it is, not
    encoded again (an event encoded once to measure it, then written into its frame)."""
    return orjson.Fragment(text)


class FrameValidator(bridge_protocol.FrameValidator):
    """Checks frames against named definitions of the schema (`auth.request`, `requestFrame`, …); without a
    schema, the packaged one."""

    def has(self, definition: str) -> bool:
        return self.has_definition(definition)

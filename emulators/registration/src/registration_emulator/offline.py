"""Offline registration files as the authority reads and writes them (docs/license-format.md §9).

The authority reads the connector's request (``regoffline.crg``) and writes its answer (``regoffline2.crg``):
base64 of canonical JSON, in lines of 76 characters.
"""

from __future__ import annotations

import base64
import binascii
import json
import textwrap
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from registration_emulator.document import canonical_json, parse_timestamp
from registration_emulator.keys import KeyFormatError, RegistrationKey, parse_key

REQUEST_FORMAT = "tccal-offline-request/1"
RESPONSE_FORMAT = "tccal-offline-response/1"
PRODUCT = "tc-calendar-connector"


class RequestFileError(ValueError):
    """The file is not an offline request this authority can answer; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def encode_crg(obj: dict[str, Any]) -> bytes:
    """§9: base64 of ``canonical_json(obj)``, lines of 76, final newline."""
    text = base64.b64encode(canonical_json(obj)).decode("ascii")
    return ("\n".join(textwrap.wrap(text, 76)) + "\n").encode("ascii")


def decode_crg(data: bytes, what: str) -> dict[str, Any]:
    """§9: whitespace removed, strict base64 (or plain JSON starting with ``{``) → an object with a format."""
    try:
        raw = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        stripped = data.lstrip()
        if not stripped.startswith(b"{"):
            raise RequestFileError(f"{what} is not a registration file: its content is not base64") from None
        raw = stripped
    if not raw:
        raise RequestFileError(f"{what} is empty")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestFileError(
            f"{what} is damaged: its decoded content is not JSON (was the file edited or truncated?)"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("format"), str):
        raise RequestFileError(f"{what} is not a registration file: no 'format' field")
    return obj


@dataclass(frozen=True)
class OfflineRequest:
    """§9 request: what the connector asks for."""

    request_id: str
    key: RegistrationKey
    installation_fingerprint: str
    created_at: datetime
    product_version: str


def read_request(data: bytes, what: str = "the offline request") -> OfflineRequest:
    obj = decode_crg(data, what)
    if obj["format"] == RESPONSE_FORMAT:
        raise RequestFileError(f"{what} is an authority's answer ({RESPONSE_FORMAT}), not a connector's request")
    if obj["format"] != REQUEST_FORMAT:
        raise RequestFileError(f"{what} has format {obj['format']!r}; this version reads {REQUEST_FORMAT!r}")
    try:
        for name in ("request_id", "key", "installation_fingerprint", "created_at", "product_version"):
            if not isinstance(obj.get(name), str):
                raise ValueError(f"field {name!r} is missing or not a string")
        if obj.get("product") != PRODUCT:
            raise ValueError(f"field 'product' must be {PRODUCT!r}, got {obj.get('product')!r}")
        created = parse_timestamp(obj["created_at"], "field 'created_at'")
    except ValueError as exc:
        raise RequestFileError(f"{what} is damaged: {exc}") from None
    try:
        key = parse_key(obj["key"])
    except KeyFormatError as exc:
        raise RequestFileError(exc.message) from None
    return OfflineRequest(obj["request_id"], key, obj["installation_fingerprint"], created, obj["product_version"])


def write_response(request_id: str, envelope: dict[str, Any]) -> bytes:
    """§9 response: the signed envelope (§6) for the request."""
    return encode_crg({"format": RESPONSE_FORMAT, "request_id": request_id, "license": envelope})

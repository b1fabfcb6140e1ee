"""Offline registration files (``.crg``): base64 of a versioned JSON object, wrapped at 76 columns
(docs/license-format.md §9). Licensing writes requests and reads responses; the authority does the reverse.

Request, written by the connector (``regoffline.crg``)::

    {"format": "tccal-offline-request/1", "request_id": "<uuid4>", "key": "TCCAL-STD-…",
     "installation_fingerprint": "<64 hex>", "created_at": "…Z", "product": "tc-calendar-connector",
     "product_version": "1.0.0"}

Response, written by the authority (``regoffline2.crg``)::

    {"format": "tccal-offline-response/1", "request_id": "<the request's>", "license": <signed envelope>}

The request is not signed (the connector holds no secret); everything that matters is in the signed license,
which names the installation fingerprint it is bound to.
"""

from __future__ import annotations

import base64
import binascii
import json
import textwrap
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from licensing.document import (
    ENVELOPE_FORMAT,
    LICENSE_FORMAT,
    canonical_json,
    format_timestamp,
    parse_timestamp,
)
from licensing.errors import InvalidRegistrationFileError
from licensing.keys import RegistrationKey, parse_key

REQUEST_FORMAT = "tccal-offline-request/1"
RESPONSE_FORMAT = "tccal-offline-response/1"
PRODUCT = "tc-calendar-connector"
DEFAULT_REQUEST_FILENAME = "regoffline.crg"
DEFAULT_RESPONSE_FILENAME = "regoffline2.crg"


def encode_crg(obj: dict[str, Any]) -> bytes:
    text = base64.b64encode(canonical_json(obj)).decode("ascii")
    return ("\n".join(textwrap.wrap(text, 76)) + "\n").encode("ascii")


def decode_crg(data: bytes, what: str) -> dict[str, Any]:
    """base64 → JSON object with a ``format``; :class:`InvalidRegistrationFileError` names any problem."""
    try:
        compact = b"".join(data.split())
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        stripped = data.lstrip()
        if stripped.startswith(b"{"):
            # A signed license pasted as plain JSON: accept it as-is.
            raw = stripped
        else:
            raise InvalidRegistrationFileError(
                f"{what} is not a registration file: its content is not base64"
            ) from None
    if not raw:
        raise InvalidRegistrationFileError(f"{what} is empty")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRegistrationFileError(
            f"{what} is damaged: its decoded content is not JSON (was the file edited or truncated?)"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("format"), str):
        raise InvalidRegistrationFileError(f"{what} is not a registration file: no 'format' field")
    return obj


@dataclass(frozen=True)
class OfflineRequest:
    request_id: str
    key: RegistrationKey
    installation_fingerprint: str
    created_at: datetime
    product_version: str

    @classmethod
    def new(cls, key: RegistrationKey, fingerprint: str, now: datetime, product_version: str) -> OfflineRequest:
        return cls(uuid.uuid4().hex, key, fingerprint, now, product_version)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REQUEST_FORMAT,
            "request_id": self.request_id,
            "key": self.key.text,
            "installation_fingerprint": self.installation_fingerprint,
            "created_at": format_timestamp(self.created_at),
            "product": PRODUCT,
            "product_version": self.product_version,
        }

    def encode(self) -> bytes:
        return encode_crg(self.to_json())

    @classmethod
    def decode(cls, data: bytes, what: str = "the offline request") -> OfflineRequest:
        obj = decode_crg(data, what)
        if obj["format"] == RESPONSE_FORMAT:
            raise InvalidRegistrationFileError(
                f"{what} is an authority's answer ({RESPONSE_FORMAT}), not a connector's request"
            )
        if obj["format"] != REQUEST_FORMAT:
            raise InvalidRegistrationFileError(
                f"{what} has format {obj['format']!r}; this version reads {REQUEST_FORMAT!r}"
            )
        try:
            for name in ("request_id", "key", "installation_fingerprint", "created_at", "product_version"):
                if not isinstance(obj.get(name), str):
                    raise ValueError(f"field {name!r} is missing or not a string")
            if obj.get("product") != PRODUCT:
                raise ValueError(f"field 'product' must be {PRODUCT!r}, got {obj.get('product')!r}")
            created = parse_timestamp(obj["created_at"], "field 'created_at'")
        except ValueError as exc:
            raise InvalidRegistrationFileError(f"{what} is damaged: {exc}") from None
        return cls(
            request_id=obj["request_id"],
            key=parse_key(obj["key"]),
            installation_fingerprint=obj["installation_fingerprint"],
            created_at=created,
            product_version=obj["product_version"],
        )


@dataclass(frozen=True)
class OfflineResponse:
    request_id: str
    envelope: dict[str, Any]

    @classmethod
    def decode(cls, data: bytes, what: str = "the registration file") -> OfflineResponse:
        """Decode an authority answer. The envelope inside is *not* verified here (see TrustedAuthorities)."""
        obj = decode_crg(data, what)
        fmt = obj["format"]
        if fmt == REQUEST_FORMAT:
            raise InvalidRegistrationFileError(
                f"{what} is an offline registration request ({DEFAULT_REQUEST_FILENAME}), not the "
                "authority's answer: send it to your manager and install the file you get back "
                f"({DEFAULT_RESPONSE_FILENAME})"
            )
        if fmt == ENVELOPE_FORMAT:
            return cls(request_id="", envelope=obj)
        if fmt == LICENSE_FORMAT:
            raise InvalidRegistrationFileError(f"{what} holds an unsigned license; only signed licenses are accepted")
        if fmt != RESPONSE_FORMAT:
            raise InvalidRegistrationFileError(f"{what} has format {fmt!r}; this version reads {RESPONSE_FORMAT!r}")
        request_id = obj.get("request_id")
        envelope = obj.get("license")
        if not isinstance(request_id, str) or not isinstance(envelope, dict):
            raise InvalidRegistrationFileError(f"{what} is damaged: 'request_id' or 'license' is missing")
        return cls(request_id=request_id, envelope=envelope)

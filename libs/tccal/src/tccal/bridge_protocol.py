"""The calendar bridge protocol, version 1 (docs/bridge-protocol.md), as both ends share it: the frame types,
error and close codes, the schema (docs/bridge-protocol.schema.json) and validation of a frame against one of
its definitions, with the failure named as a path into the payload.

Every frame both ends exchange is validated, so validation is on the hot path of every push: a definition is
first checked by a validator fastjsonschema compiled to Python code (≈ 50× faster than walking the schema), and
only a frame it rejects is walked again by jsonschema, which names the failing field (and has the last word).

tcs-gateway (the server end) and the TrueConf emulator (the client end) import it. The schema is read from the
copy packaged next to this module (a test keeps it equal to the document's), so it is there in a wheel and in
an image, where docs/ is not. Needs jsonschema (a dependency of both users).
"""

from __future__ import annotations

import collections
import enum
import importlib.resources
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import jsonschema.exceptions

SCHEMA_FILE = "bridge-protocol.schema.json"
REQUEST = 1
REPLY = 2
MAX_SAFE_INT = 9_007_199_254_740_991
DRAFT_2019_09 = "https://json-schema.org/draft/2019-09/schema"
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
    #: "Try Again Later" in the IANA WebSocket close code registry (RFC 6455 §11.7): auth from a backed-off address.
    TRY_AGAIN_LATER = 1013
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


class SchemaNotFoundError(FileNotFoundError):
    """The schema file asked for (or the packaged one) does not exist; the message names the path."""


def schema_path(explicit: str | Path | None = None) -> Path:
    """The schema file: `explicit` when given, else docs/bridge-protocol.schema.json as the built wheel carries
    it, or the repository's (editable install). Every user of the schema finds it here."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise SchemaNotFoundError(f"bridge protocol schema {str(path)!r} does not exist")
        return path
    packaged = importlib.resources.files("tccal").joinpath(SCHEMA_FILE)
    if packaged.is_file():
        return Path(str(packaged))
    # Editable install: libs/tccal/src/tccal/bridge_protocol.py -> the repository root is four levels up.
    repository = Path(__file__).resolve().parents[4] / "docs" / SCHEMA_FILE
    if repository.is_file():
        return repository
    raise SchemaNotFoundError(f"{SCHEMA_FILE} is neither in the tccal package nor at {str(repository)!r}")


def load_schema(explicit: str | Path | None = None, *, check: bool = False) -> dict[str, Any]:
    """The protocol's schema as a dict (from `schema_path(explicit)`); `check` also verifies that it is a valid
    draft 2020-12 schema (slow: for a schema given by hand)."""
    path = schema_path(explicit)
    loaded = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise SchemaNotFoundError(f"{str(path)!r} does not hold a JSON object")
    if check:
        jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


@dataclass(frozen=True)
class Problem:
    """A validation failure: the field as a path into the payload (or envelope), and what is wrong with it."""

    field: str
    message: str


def format_path(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += part if not text else f".{part}"
    return text


def _deepest(errors: Iterable[jsonschema.exceptions.ValidationError]) -> jsonschema.exceptions.ValidationError:
    return max(errors, key=lambda err: len(err.absolute_path))


def pick_leaf(
    error: jsonschema.exceptions.ValidationError, *, by_error_code: bool = False
) -> jsonschema.exceptions.ValidationError:
    """Descend into oneOf/anyOf failures, following the branch that got deepest into the instance; with
    `by_error_code`, a payload with an errorCode (a reply: oneOf [success shape, error shape]) is judged by the
    branch its errorCode selects (0: the first, else the last)."""
    while error.context:
        branches: dict[Any, list[jsonschema.exceptions.ValidationError]] = collections.defaultdict(list)
        for sub in error.context:
            branches[sub.relative_schema_path[0] if sub.relative_schema_path else 0].append(sub)
        instance = error.instance
        if by_error_code and isinstance(instance, dict) and "errorCode" in instance:
            keys = sorted(branches, key=lambda k: (isinstance(k, int), k if isinstance(k, int) else 0))
            chosen = branches[keys[0] if instance.get("errorCode") == 0 else keys[-1]]
        else:
            chosen = max(branches.values(), key=lambda errs: len(_deepest(errs).absolute_path))
        error = _deepest(chosen)
    return error


def named_field(error: jsonschema.exceptions.ValidationError) -> list[str | int]:
    """The path of the failing field; a missing or unexpected property is named itself."""
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

    def __init__(self, schema: dict[str, Any] | None = None, *, by_error_code: bool = False) -> None:
        self.schema: dict[str, Any] = schema if schema is not None else load_schema()
        self._by_error_code = by_error_code
        self._defs: dict[str, Any] = self.schema.get("$defs", {})
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}
        self._compiled: dict[str, Callable[[Any], Any]] = {}

    def has_definition(self, definition: str) -> bool:
        return definition in self._defs

    def _validator(self, definition: str) -> jsonschema.Draft202012Validator:
        validator = self._validators.get(definition)
        if validator is None:
            if definition not in self._defs:
                raise KeyError(f"the bridge schema has no definition {definition!r}")
            validator = jsonschema.Draft202012Validator({"$ref": f"#/$defs/{definition}", "$defs": self._defs})
            self._validators[definition] = validator
        return validator

    def _compiled_check(self, definition: str) -> Callable[[Any], Any]:
        check = self._compiled.get(definition)
        if check is None:
            if definition not in self._defs:
                raise KeyError(f"the bridge schema has no definition {definition!r}")
            # The keywords the schema uses mean the same in draft 2019-09 (fastjsonschema's newest) and 2020-12.
            check = fastjsonschema.compile(
                {"$schema": DRAFT_2019_09, "$ref": f"#/$defs/{definition}", "$defs": self._defs}
            )
            self._compiled[definition] = check
        return check

    def is_valid(self, frame: Any, definition: str) -> bool:
        """The compiled validator's verdict alone (tests hold it equal to jsonschema's)."""
        try:
            self._compiled_check(definition)(frame)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    def problem(self, frame: Any, definition: str, *, relative_to_payload: bool = True) -> Problem | None:
        """None when `frame` is valid for `definition`, else the most specific problem."""
        if self.is_valid(frame, definition):
            return None
        errors = list(self._validator(definition).iter_errors(frame))
        if not errors:
            return None
        # Not best_match(): it descends into oneOf branches by its own heuristics (see pick_leaf).
        leaf = pick_leaf(max(errors, key=jsonschema.exceptions.relevance), by_error_code=self._by_error_code)
        parts = named_field(leaf)
        if relative_to_payload and parts and parts[0] == "payload":
            parts = parts[1:]
        field = format_path(parts) or "payload"
        message = leaf.message if len(leaf.message) <= 300 else leaf.message[:300] + "…"
        return Problem(field=field, message=f"{field}: {message}")

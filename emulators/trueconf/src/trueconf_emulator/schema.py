"""Loading docs/bridge-protocol.schema.json and turning validation failures into a named field."""

from __future__ import annotations

import collections
import importlib.resources
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions

SCHEMA_FILE_NAME = "bridge-protocol.schema.json"


class SchemaNotFoundError(RuntimeError):
    pass


def locate_schema(explicit: str | Path | None = None) -> Path:
    """The schema file: an explicit path, the copy inside a built wheel, or docs/ of the repository."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise SchemaNotFoundError(f"bridge protocol schema {str(path)!r} does not exist")
        return path
    packaged = importlib.resources.files("trueconf_emulator").joinpath(SCHEMA_FILE_NAME)
    if packaged.is_file():
        return Path(str(packaged))
    # Editable install: src/trueconf_emulator/schema.py -> repository root is four levels up.
    repo_copy = Path(__file__).resolve().parents[4] / "docs" / SCHEMA_FILE_NAME
    if repo_copy.is_file():
        return repo_copy
    raise SchemaNotFoundError(
        f"bridge protocol schema not found: neither packaged nor at {str(repo_copy)!r}; pass --schema"
    )


def load_schema(explicit: str | Path | None = None, *, check: bool = False) -> dict[str, Any]:
    """The schema as a dict; `check` also verifies it is a valid draft 2020-12 schema (slow)."""
    path = locate_schema(explicit)
    with path.open(encoding="utf-8") as handle:
        loaded = json.load(handle)
    if not isinstance(loaded, dict):
        raise SchemaNotFoundError(f"{str(path)!r} does not hold a JSON object")
    if check:
        jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


@dataclass(frozen=True)
class Problem:
    """One validation failure: the field as a path into the payload (or envelope) and a message."""

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


def _deepest(errors: Sequence[jsonschema.exceptions.ValidationError]) -> jsonschema.exceptions.ValidationError:
    return max(errors, key=lambda err: len(err.absolute_path))


def _pick_leaf(error: jsonschema.exceptions.ValidationError) -> jsonschema.exceptions.ValidationError:
    """Descend into oneOf/anyOf failures and choose the branch the instance was meant for."""
    if not error.context:
        return error
    branches: dict[Any, list[jsonschema.exceptions.ValidationError]] = collections.defaultdict(list)
    for sub in error.context:
        key = sub.relative_schema_path[0] if sub.relative_schema_path else 0
        branches[key].append(sub)
    instance = error.instance
    chosen: list[jsonschema.exceptions.ValidationError]
    if isinstance(instance, dict) and "errorCode" in instance and len(branches) > 0:
        # Reply payloads: oneOf [success shape, error shape]; errorCode says which one was meant.
        keys = sorted(branches, key=lambda k: (isinstance(k, int), k if isinstance(k, int) else 0))
        wanted = keys[0] if instance.get("errorCode") == 0 else keys[-1]
        chosen = branches[wanted]
    else:
        chosen = max(branches.values(), key=lambda errs: len(_deepest(errs).absolute_path))
    return _pick_leaf(_deepest(chosen))


def _named_field(error: jsonschema.exceptions.ValidationError) -> list[str | int]:
    path: list[str | int] = list(error.absolute_path)
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [name for name in required if name not in instance]
        if missing:
            path.append(missing[0])
    elif error.validator == "additionalProperties" and isinstance(instance, dict):
        declared = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        patterns = error.schema.get("patternProperties", {}) if isinstance(error.schema, dict) else {}
        extra = [
            key for key in instance if key not in declared and not any(re.search(pattern, key) for pattern in patterns)
        ]
        if extra:
            path.append(extra[0])
    return path


class FrameValidator:
    """Validates frames against named definitions of the bridge protocol schema."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._schema = schema
        self._defs: dict[str, Any] = schema.get("$defs", {})
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    @property
    def schema(self) -> dict[str, Any]:
        return self._schema

    def has_definition(self, name: str) -> bool:
        return name in self._defs

    def _validator(self, definition: str) -> jsonschema.Draft202012Validator:
        validator = self._validators.get(definition)
        if validator is None:
            if definition not in self._defs:
                raise KeyError(f"schema has no definition {definition!r}")
            wrapper = {"$ref": f"#/$defs/{definition}", "$defs": self._defs}
            validator = jsonschema.Draft202012Validator(wrapper)
            self._validators[definition] = validator
        return validator

    def problem(self, frame: Any, definition: str, *, relative_to_payload: bool = True) -> Problem | None:
        """None when `frame` is valid for `definition`, else the most specific problem."""
        errors = list(self._validator(definition).iter_errors(frame))
        if not errors:
            return None
        # Not best_match(): it descends into oneOf branches by its own heuristics, while reply payloads
        # must be judged by the branch their errorCode selects (see _pick_leaf).
        top = max(errors, key=jsonschema.exceptions.relevance)
        leaf = _pick_leaf(top)
        parts = _named_field(leaf)
        if relative_to_payload and parts and parts[0] == "payload":
            parts = parts[1:]
        field = format_path(parts) or "payload"
        message = leaf.message
        if len(message) > 300:
            message = message[:300] + "…"
        return Problem(field=field, message=f"{field}: {message}")

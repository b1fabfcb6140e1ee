"""Loading docs/bridge-protocol.schema.json and turning validation failures into a named field.

Validation is the protocol's shared definition (tccal.bridge_protocol); this module finds the schema file the
emulator is told to use (--schema, its wheel's copy, or docs/ of the repository) and keeps the names the
emulator and its tests import.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import jsonschema

from tccal import bridge_protocol
from tccal.bridge_protocol import SCHEMA_FILE, Problem, format_path

__all__ = [
    "SCHEMA_FILE_NAME",
    "FrameValidator",
    "Problem",
    "SchemaNotFoundError",
    "format_path",
    "load_schema",
    "locate_schema",
]

SCHEMA_FILE_NAME = SCHEMA_FILE


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


class FrameValidator(bridge_protocol.FrameValidator):
    """Validates frames against named definitions of the bridge protocol schema; a reply payload is judged by
    the branch of its oneOf [success, error] its errorCode selects."""

    def __init__(self, schema: dict[str, Any]) -> None:
        super().__init__(schema, by_error_code=True)

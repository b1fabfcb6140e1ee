"""The bridge protocol's schema and frame validation, as the emulator uses them.

The schema file (docs/bridge-protocol.schema.json) is the protocol's published definition and is found and
loaded in one place, tccal.bridge_protocol (an explicit --schema path, the copy in tccal's wheel, or docs/ of
the repository); this module keeps the names the emulator and its tests import, and judges a reply payload by
the branch of its oneOf [success, error] that its errorCode selects.
"""

from __future__ import annotations

from typing import Any

from tccal import bridge_protocol
from tccal.bridge_protocol import SCHEMA_FILE, Problem, SchemaNotFoundError, format_path, load_schema
from tccal.bridge_protocol import schema_path as locate_schema

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


class FrameValidator(bridge_protocol.FrameValidator):
    """Validates frames against named definitions of the bridge protocol schema; a reply payload is judged by
    the branch of its oneOf [success, error] its errorCode selects."""

    def __init__(self, schema: dict[str, Any]) -> None:
        super().__init__(schema, by_error_code=True)

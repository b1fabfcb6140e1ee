"""Strict-mode validation against Microsoft's EWS schema (messages.xsd / types.xsd), vendored as package data."""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path

from lxml import etree

from .xmlutil import Element

SCHEMA_FILES = ("Services.wsdl", "messages.xsd", "types.xsd", "xml.xsd")


def schema_dir() -> Path:
    return Path(str(resources.files("exchange_emulator") / "schema"))


class SchemaValidator:
    """Compiles messages.xsd once and validates SOAP Body children."""

    def __init__(self, directory: Path | None = None) -> None:
        path = (directory or schema_dir()) / "messages.xsd"
        if not path.is_file():
            raise FileNotFoundError(f"EWS schema file not found: {path}")
        self._schema = etree.XMLSchema(etree.parse(str(path)))
        self._lock = threading.Lock()

    def errors(self, element: Element) -> list[str]:
        """Return the schema violations of one element (empty when valid)."""
        with self._lock:
            valid = self._schema.validate(element)
            if valid:
                return []
            return [f"line {e.line}: {e.message}" for e in self._schema.error_log]

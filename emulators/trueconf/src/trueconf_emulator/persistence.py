"""The emulated server's conferences in a file (`state_file`), so a restarted sandbox finds the conferences the
connector made before: a calendar event keeps pointing at a conference that exists.

Written through after every REST request that may have changed them (temporary file, fsync, atomic rename: a
SIGKILL leaves the last complete file) and at stop. Calendars are not kept: the gateway sends them again on connect.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
FORMAT = 1


class ConferenceFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        """The saved {"conferences", "external_ids"}, or None when nothing was saved yet."""
        if not self.path.exists():
            return None
        with self.path.open("rb") as handle:
            snapshot: dict[str, Any] = pickle.load(handle)
        if snapshot.get("format") != FORMAT:
            raise ValueError(f"unknown TrueConf emulator state format {snapshot.get('format')!r} in {self.path}")
        log.info("conferences loaded from %s (%d)", self.path, len(snapshot["conferences"]))
        return snapshot

    def save(self, conferences: dict[str, Any], external_ids: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as handle:
            snapshot = {"format": FORMAT, "conferences": conferences, "external_ids": external_ids}
            pickle.dump(snapshot, handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

"""The emulator's mailboxes kept in a state file, so a restart finds the world it left (`--state-file`).

Exchange keeps its mailboxes across restarts, and sync states issued before a restart stay valid; what it does
not keep is in-memory notification state: streaming and pull subscriptions end with the process, as they do when a
Mailbox server restarts (clients then get ErrorSubscriptionNotFound and subscribe again). The file is a pickle of
the Store without subscriptions, written atomically (temporary file, then rename) a moment after changes and at
shutdown; a process killed outright loses at most that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
from pathlib import Path

from .model import Store

log = logging.getLogger(__name__)
#: Format of the state file; a file of another format is refused rather than half-read.
FORMAT = 1


class StateFileError(ValueError):
    pass


def load_store(path: Path) -> Store | None:
    """The Store saved at `path`, or None when there is no file yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        saved = pickle.loads(data)
    except Exception as exc:  # a damaged file names itself instead of starting an empty world silently
        raise StateFileError(f"state file {path} cannot be read ({type(exc).__name__}: {exc}); remove it") from exc
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or not isinstance(saved.get("store"), Store):
        raise StateFileError(f"state file {path} is not an exchange-emulator state of format {FORMAT}; remove it")
    store: Store = saved["store"]
    return store


def save_store(store: Store, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_bytes(pickle.dumps({"format": FORMAT, "store": store}, protocol=pickle.HIGHEST_PROTOCOL))
    os.replace(temporary, path)


async def keep_saved(store: Store, path: Path, stop: asyncio.Event, *, every: float = 1.0) -> None:
    """Save `store` whenever it changed, at most every `every` seconds, and once more when `stop` is set."""
    saved_at = -1
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if store.version != saved_at:
            saved_at = store.version
            try:
                save_store(store, path)
            except OSError as exc:
                log.error("state file %s not written: %s", path, exc)
        if stop.is_set():
            return

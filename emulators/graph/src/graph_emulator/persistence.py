"""The state file: the mailboxes' events saved when the emulator stops and loaded when it starts.

Tenants, apps and users come from the configuration (the seed); the state file holds what clients created.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import ConfigError
from .store import Store, StoredEvent

STATE_VERSION = 1


def _event_json(event: StoredEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "props": event.props,
        "start": event.start.isoformat(),
        "end": event.end.isoformat(),
        "start_zone": event.start_zone,
        "end_zone": event.end_zone,
        "organizer": event.organizer,
        "is_organizer": event.is_organizer,
        "ical_uid": event.ical_uid,
        "created": event.created.isoformat(),
        "modified": event.modified.isoformat(),
        "change_key": event.change_key,
        "recurrence": event.recurrence,
        "extended": event.extended,
        "response": event.response,
        "is_cancelled": event.is_cancelled,
        "exceptions": [_event_json(exc) for exc in event.exceptions.values()],
        "cancelled": sorted(c.isoformat() for c in event.cancelled),
        "master_id": event.master_id,
        "original_start": event.original_start.isoformat() if event.original_start else None,
    }


def _event(data: dict[str, Any], mailbox_id: str) -> StoredEvent:
    event = StoredEvent(
        id=data["id"],
        mailbox_id=mailbox_id,
        props=data["props"],
        start=datetime.fromisoformat(data["start"]),
        end=datetime.fromisoformat(data["end"]),
        start_zone=data["start_zone"],
        end_zone=data["end_zone"],
        organizer=data["organizer"],
        is_organizer=data["is_organizer"],
        ical_uid=data["ical_uid"],
        created=datetime.fromisoformat(data["created"]),
        modified=datetime.fromisoformat(data["modified"]),
        change_key=data["change_key"],
        recurrence=data["recurrence"],
        extended=data["extended"],
        response=data["response"],
        is_cancelled=data["is_cancelled"],
        cancelled={datetime.fromisoformat(c) for c in data["cancelled"]},
        master_id=data["master_id"],
        original_start=datetime.fromisoformat(data["original_start"]) if data["original_start"] else None,
    )
    for exc_data in data["exceptions"]:
        exc = _event(exc_data, mailbox_id)
        assert exc.original_start is not None, f"exception {exc.id} without originalStart"
        event.exceptions[exc.original_start] = exc
    return event


def save(store: Store, path: str) -> None:
    data = {
        "version": STATE_VERSION,
        "mailboxes": {box.id: [_event_json(e) for e in box.events.values()] for box in store.mailboxes.values()},
    }
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(target)


def load(store: Store, path: str) -> int:
    """Load the events of a state file (none if it does not exist yet); returns how many."""
    target = Path(path)
    if not target.exists():
        return 0
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"state file {path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise ConfigError(f"state file {path} is not a version {STATE_VERSION} Graph emulator state")
    count = 0
    for mailbox_id, events in data["mailboxes"].items():
        box = store.mailboxes.get(mailbox_id)
        if box is None:
            raise ConfigError(f"state file {path} has events of mailbox {mailbox_id}, which the configuration lacks")
        for event_data in events:
            try:
                event = _event(event_data, mailbox_id)
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"state file {path}: bad event in mailbox {mailbox_id}: {exc!r}") from exc
            box.events[event.id] = event
            count += 1
    return count

"""An instance as event JSON: times in the preferred zone, $select, $expand of extended properties.

- Properties: https://learn.microsoft.com/en-us/graph/api/resources/event#properties
- Prefer: outlook.timezone: https://learn.microsoft.com/en-us/graph/api/event-get#request-headers
- $select: https://learn.microsoft.com/en-us/graph/query-parameters#select-parameter (id and @odata.etag stay)
- $expand=singleValueExtendedProperties($filter=id eq '...'):
  https://learn.microsoft.com/en-us/graph/api/singlevaluelegacyextendedproperty-get — extended properties are
  returned only when expanded.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import bad_request
from .store import Instance, StoredEvent
from .timefmt import format_date_time_zone, format_utc

_EXPAND = re.compile(r"^singleValueExtendedProperties(?:\(\s*\$filter\s*=\s*(.+)\))?$", re.IGNORECASE)
_ID_EQ = re.compile(r"id\s+eq\s+'([^']+)'", re.IGNORECASE)


class ExtendedExpansion:
    """Which extended properties `$expand` asks for (None = no expansion; empty filter = all)."""

    def __init__(self, expand: str | None) -> None:
        self.ids: set[str] | None = None
        self.all = False
        if not expand:
            return
        match = _EXPAND.match(expand.strip())
        if match is None:
            raise bad_request(
                f"Parsing OData Select and Expand failed: Could not find a property named "
                f"'{expand}' on type 'microsoft.graph.event'."
            )
        if match.group(1) is None:
            self.all = True
            self.ids = set()
            return
        ids = _ID_EQ.findall(match.group(1))
        if not ids:
            raise bad_request(f"Invalid $filter in $expand: {match.group(1)!r}; use id eq '<property id>'.")
        self.ids = {i.lower() for i in ids}

    def pick(self, extended: dict[str, str]) -> list[dict[str, str]] | None:
        if self.ids is None:
            return None
        return [{"id": k, "value": v} for k, v in extended.items() if self.all or k.lower() in self.ids]


def _merged_props(inst: Instance) -> tuple[dict[str, Any], StoredEvent]:
    """The properties shown for an instance (an exception shows its master's, overlaid by its own)."""
    if inst.type == "exception" and inst.master is not None:
        return {**inst.master.props, **inst.item.props}, inst.master
    return dict(inst.item.props), inst.item


def render(
    inst: Instance, zone_name: str, select: set[str] | None = None, expansion: ExtendedExpansion | None = None
) -> dict[str, Any]:
    props, owner = _merged_props(inst)
    item = inst.item
    attendees = props.pop("attendees", [])
    body = props.pop("body", None) or {"contentType": "text", "content": ""}
    data: dict[str, Any] = {
        "@odata.etag": f'W/"{inst.change_key}"',
        "id": inst.id,
        "createdDateTime": format_utc(item.created),
        "lastModifiedDateTime": format_utc(item.modified),
        "changeKey": inst.change_key,
        "categories": props.pop("categories", []),
        "transactionId": props.pop("transactionId", None),
        "originalStartTimeZone": owner.start_zone,
        "originalEndTimeZone": owner.end_zone,
        "iCalUId": owner.ical_uid,
        "reminderMinutesBeforeStart": props.pop("reminderMinutesBeforeStart", 15),
        "isReminderOn": props.pop("isReminderOn", True),
        "hasAttachments": False,
        "subject": props.pop("subject", ""),
        "bodyPreview": str(body.get("content") or "")[:255],
        "importance": props.pop("importance", "normal"),
        "sensitivity": props.pop("sensitivity", "normal"),
        "isAllDay": props.pop("isAllDay", False),
        "isCancelled": owner.is_cancelled,
        "isOrganizer": owner.is_organizer,
        "responseRequested": props.pop("responseRequested", True),
        "seriesMasterId": inst.master.id if inst.master is not None else None,
        "showAs": props.pop("showAs", "busy"),
        "type": inst.type,
        "webLink": f"https://outlook.office365.com/owa/?itemid={inst.id}&exvsurl=1&path=/calendar/item",
        "onlineMeetingUrl": props.pop("onlineMeetingUrl", None),
        "isOnlineMeeting": props.pop("isOnlineMeeting", False),
        "onlineMeetingProvider": props.pop("onlineMeetingProvider", "unknown"),
        "allowNewTimeProposals": props.pop("allowNewTimeProposals", True),
        "hideAttendees": props.pop("hideAttendees", False),
        "responseStatus": dict(owner.response),
        "body": body,
        "start": format_date_time_zone(inst.start, zone_name),
        "end": format_date_time_zone(inst.end, zone_name),
        "location": props.pop("location", None)
        or {"displayName": "", "locationType": "default", "uniqueIdType": "unknown"},
        "locations": props.pop("locations", []),
        "recurrence": owner.recurrence if inst.type == "seriesMaster" else None,
        "attendees": attendees,
        "organizer": {"emailAddress": dict(owner.organizer)},
        "onlineMeeting": None,
    }
    if inst.original_start is not None:
        data["originalStart"] = format_utc(inst.original_start)
    data.update({k: v for k, v in props.items() if k not in data})
    if select is not None:
        data = {k: v for k, v in data.items() if k in select or k in {"id", "@odata.etag"}}
    if expansion is not None:
        picked = expansion.pick(owner.extended)
        if picked is not None:
            data["singleValueExtendedProperties"] = picked
    return data


def parse_select(value: str | None) -> set[str] | None:
    if value is None:
        return None
    names = {name.strip() for name in value.split(",") if name.strip()}
    from .store import WRITABLE

    known = WRITABLE | {
        "id",
        "createdDateTime",
        "lastModifiedDateTime",
        "changeKey",
        "iCalUId",
        "isCancelled",
        "isOrganizer",
        "seriesMasterId",
        "type",
        "webLink",
        "responseStatus",
        "organizer",
        "originalStart",
        "bodyPreview",
        "hasAttachments",
        "onlineMeeting",
        "uid",
    }
    unknown = sorted(names - known)
    if unknown:
        raise bad_request(f"Could not find a property named '{unknown[0]}' on type 'microsoft.graph.event'.")
    return names

"""The conference marker of docs/architecture.md §4.5: does a meeting ask for a TrueConf conference, and with what
settings?

(a) Extended property `TrueConfMeeting` in the PublicStrings namespace of our property set
    {MARKER_PROPERTY_SET_ID}, type String, holding a JSON object (README.md documents the keys);
(b) a join link `https://<whitelisted server host>/c/<conference id>` in location or body: use that conference;
(c) the keyword `@trueconf` in location or subject: create one with `conferenceDefaults`.

A property that is not a JSON object, or names a mode or access we do not know, is an error: the item is
quarantined rather than given a conference with guessed settings (a "public" guess could expose a private meeting).
"""

from __future__ import annotations

from exchangelib import CalendarItem, ExtendedProperty

# The detection itself is shared with graph-ingest (tccal.conference_marker); re-exported for ews-ingest's modules.
from tccal.conference_marker import (
    ACCESS,
    KEYWORD,
    MARKER_PROPERTY_NAME,
    MARKER_PROPERTY_SET_ID,
    MODES,
    JoinLink,
    MarkerError,
    MarkerParser,
    find_join_link,
    has_keyword,
    keyword_spec,
    parse_property,
)

__all__ = [
    "ACCESS",
    "KEYWORD",
    "MARKER_FIELD",
    "MARKER_PROPERTY_NAME",
    "MARKER_PROPERTY_SET_ID",
    "MODES",
    "JoinLink",
    "MarkerError",
    "MarkerParser",
    "TrueConfMeetingProperty",
    "find_join_link",
    "has_keyword",
    "keyword_spec",
    "parse_property",
    "register_marker_property",
]

#: Attribute name under which the property is registered on exchangelib's CalendarItem.
MARKER_FIELD = "trueconf_meeting_marker"


class TrueConfMeetingProperty(ExtendedProperty):  # type: ignore[misc]  # exchangelib is untyped
    """The TrueConfMeeting extended property (PublicStrings, our property set, String)."""

    property_set_id = MARKER_PROPERTY_SET_ID
    property_name = MARKER_PROPERTY_NAME
    property_type = "String"


def register_marker_property() -> None:
    """Teach exchangelib's CalendarItem the marker (idempotent; GetItem then asks for it)."""
    if MARKER_FIELD not in {f.name for f in CalendarItem.FIELDS}:
        CalendarItem.register(MARKER_FIELD, TrueConfMeetingProperty)

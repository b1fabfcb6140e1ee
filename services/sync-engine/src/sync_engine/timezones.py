"""Time-zone names as Exchange gives them, resolved to IANA zones.

Exchange names a meeting's zone with a Windows time-zone id (EWS ``StartTimeZone/@Id``,
``MeetingTimeZone/@TimeZoneName``), e.g. ``"W. Europe Standard Time"``. Recurrences are expanded in
the zone's IANA equivalent (docs/architecture.md §5.3), found through the maintained CLDR ``windowsZones`` table
that ``tzlocal`` ships (``tzlocal.windows_tz.win_tz``, the zone of the "001" territory). Names that
already are IANA keys (``"Europe/Berlin"``) are accepted as given.

A name that is neither raises :class:`UnknownTimeZoneError`; the caller decides what to do (the
sync-engine falls back to UTC and reports it).
"""

from __future__ import annotations

import functools
import zoneinfo
from types import MappingProxyType
from typing import Final

from tzlocal.windows_tz import win_tz

__all__ = ["UnknownTimeZoneError", "resolve_zone", "windows_to_iana"]

# Ids Exchange and Outlook write that are not in CLDR windowsZones.
_EXCHANGE_ONLY_IDS: Final = MappingProxyType(
    {
        # Outlook/Exchange write this for items created in UTC (also seen in MeetingTimeZone).
        "tzone://Microsoft/Utc": "Etc/UTC",
    }
)


class UnknownTimeZoneError(LookupError):
    """A time-zone name that is neither a known Windows time-zone id nor an IANA zone name."""

    def __init__(self, zone_id: str, reason: str = "") -> None:
        self.zone_id = zone_id
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"unknown time zone {zone_id!r}: neither a Windows time-zone id known to CLDR windowsZones "
            f"nor an IANA time-zone name{detail}"
        )


@functools.cache
def _windows_ids_casefolded() -> dict[str, str]:
    table = {key.casefold(): value for key, value in win_tz.items()}
    table.update({key.casefold(): value for key, value in _EXCHANGE_ONLY_IDS.items()})
    return table


@functools.cache
def _iana_names() -> dict[str, str]:
    """Every IANA key the installed tz database knows, by case-folded name."""
    return {name.casefold(): name for name in zoneinfo.available_timezones()}


def windows_to_iana(windows_id: str) -> str | None:
    """The IANA name CLDR maps a Windows time-zone id to, or None when the id is not a Windows one.

    Matching is exact first, then case-insensitive (ids are compared as Exchange spells them, but
    hand-written configuration sometimes is not).
    """
    name = windows_id.strip()
    exact = win_tz.get(name) or _EXCHANGE_ONLY_IDS.get(name)
    if exact is not None:
        return exact
    return _windows_ids_casefolded().get(name.casefold())


@functools.lru_cache(maxsize=512)
def resolve_zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone for a Windows time-zone id or an IANA name.

    >>> resolve_zone("W. Europe Standard Time").key
    'Europe/Berlin'
    >>> resolve_zone("Europe/Moscow").key
    'Europe/Moscow'

    Raises :class:`UnknownTimeZoneError` (naming ``name``) when it is neither.
    """
    stripped = name.strip()
    if not stripped:
        raise UnknownTimeZoneError(name, "empty time-zone id")
    key = windows_to_iana(stripped)
    if key is None:
        key = _iana_names().get(stripped.casefold())
    if key is None:
        raise UnknownTimeZoneError(name)
    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # A CLDR entry whose IANA zone the installed tz database lacks.
        raise UnknownTimeZoneError(name, f"maps to {key!r}, which the tz database cannot load: {exc}") from exc

"""dateTimeTimeZone values, time zone names (Windows or IANA) and the Prefer header.

- dateTimeTimeZone: https://learn.microsoft.com/en-us/graph/api/resources/datetimetimezone — `dateTime` is a local
  wall-clock time, `timeZone` a Windows or IANA zone name ("Pacific Standard Time", "Europe/Berlin", "UTC").
- Prefer: outlook.timezone — https://learn.microsoft.com/en-us/graph/api/user-list-events#request-headers: returned
  start/end are in that zone (UTC when absent) and `Preference-Applied` echoes it.
- Prefer: odata.maxpagesize — https://learn.microsoft.com/en-us/graph/delta-query-events.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, date, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tzlocal.windows_tz import win_tz

from .errors import GraphError, bad_request


class UnknownTimeZoneError(ValueError):
    pass


@functools.lru_cache(maxsize=512)
def zone(name: str) -> tzinfo:
    """The zone of a Windows or IANA time zone name."""
    if name in {"UTC", "Coordinated Universal Time", "tzone://Microsoft/Utc"}:
        return UTC
    iana = win_tz.get(name, name)
    try:
        return ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimeZoneError(name) from exc


def parse_instant(text: str, where: str) -> datetime:
    """An ISO 8601 instant of a query parameter (startDateTime=2026-12-01T00:00:00Z); no offset means UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise bad_request(
            f"The value '{text}' of parameter '{where}' is not a valid DateTimeOffset.", "ErrorInvalidParameter"
        ) from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_date_time_zone(value: object, where: str) -> tuple[datetime, str]:
    """A dateTimeTimeZone object → (aware UTC instant, zone name as given)."""
    if not isinstance(value, dict) or not isinstance(value.get("dateTime"), str):
        raise bad_request(f"{where} must be a dateTimeTimeZone object with dateTime and timeZone, got {value!r}")
    zone_name = value.get("timeZone") or "UTC"
    if not isinstance(zone_name, str):
        raise bad_request(f"{where}.timeZone must be a string, got {zone_name!r}")
    try:
        tz = zone(zone_name)
    except UnknownTimeZoneError as exc:
        raise GraphError(
            400,
            "TimeZoneNotSupportedException",
            f"A valid TimeZone value must be specified. The following TimeZone value is not supported: '{zone_name}'.",
        ) from exc
    text = re.sub(r"(\.\d{6})\d+", r"\1", value["dateTime"])
    try:
        local = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise bad_request(f"{where}.dateTime is not a date and time: {value['dateTime']!r}") from exc
    if local.tzinfo is None:
        local = local.replace(tzinfo=tz)
    return local.astimezone(UTC), zone_name


def format_date_time_zone(instant: datetime, zone_name: str) -> dict[str, str]:
    local = instant.astimezone(zone(zone_name))
    return {"dateTime": local.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": zone_name}


def format_utc(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_date(text: object, where: str) -> date:
    if not isinstance(text, str):
        raise bad_request(f"{where} must be a date like 2026-12-01, got {text!r}")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise bad_request(f"{where} must be a date like 2026-12-01, got {text!r}") from exc


_PREFER_ITEM = re.compile(r'\s*([A-Za-z0-9_.\-]+)\s*(?:=\s*("([^"]*)"|[^,;]*))?')


def parse_prefer(values: list[str]) -> dict[str, str]:
    """Prefer header preferences by name (all Prefer headers, comma separated; quoted values unquoted)."""
    prefs: dict[str, str] = {}
    for header in values:
        for part in header.split(","):
            match = _PREFER_ITEM.match(part)
            if not match or not match.group(1):
                continue
            raw = match.group(3) if match.group(3) is not None else (match.group(2) or "")
            prefs[match.group(1).lower()] = raw.strip()
    return prefs

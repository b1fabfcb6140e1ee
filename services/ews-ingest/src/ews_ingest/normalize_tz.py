"""Time zones Exchange hands out that exchangelib cannot name: custom TimeZoneDefinitions.

Exchange accepts a StartTimeZone/EndTimeZone with a full definition (Periods, TransitionsGroups, Transitions) under
any id — Outlook's "Customized Time Zone", zones of other calendar systems, localized names — and hands it out as
given. exchangelib only knows Windows ids and drops such a zone (None), so a recurring series would be expanded in UTC:
wrong local times after a DST change, wrong weekdays when the local start is on another UTC date.

`install()` (ews_ingest.normalize runs it) makes CalendarItem's StartTimeZone/EndTimeZone read those definitions:
the zone becomes the IANA zone that keeps the same offsets and DST rule (found by sampling this and the neighbouring
years), so the engine expands the series exactly as Exchange does. A definition with a fixed offset becomes that
offset's zone (Etc/GMT-5, Asia/Kolkata). A definition that cannot be interpreted, or whose DST rule no IANA zone
has, falls back to the fixed standard offset taken from it, with a WARNING naming the time zone id; with not even an
offset, UTC (the item's Start and End are UTC instants anyway). The meeting is never dropped.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any

from exchangelib.errors import UnknownTimeZone
from exchangelib.fields import TimeZoneField
from tzlocal.windows_tz import win_tz

log = logging.getLogger(__name__)

T = "{http://schemas.microsoft.com/exchange/services/2006/types}"
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DURATION = re.compile(r"(-)?P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")


class TimeZoneDefinitionError(ValueError):
    """A TimeZoneDefinition that cannot be interpreted; the message names the time zone id and the bad value."""


@dataclass(frozen=True)
class YearlyRule:
    month: int
    weekday: int  # 0 = Monday
    occurrence: int  # 1..4, -1 = last
    time_of_day: dt.timedelta  # local wall-clock time before the transition


def _duration(text: str, tz_id: str) -> dt.timedelta:
    value = text.strip()
    match = _DURATION.fullmatch(value)
    if match is None or value.rstrip("T").lstrip("-") == "P":
        raise TimeZoneDefinitionError(f"time zone {tz_id!r}: {text!r} is not an xs:duration")
    sign, days, hours, minutes, seconds = match.groups()
    total = dt.timedelta(
        days=int(days or 0), hours=int(hours or 0), minutes=int(minutes or 0), seconds=float(seconds or 0)
    )
    return -total if sign else total


def _nth_weekday(year: int, rule: YearlyRule) -> dt.date:
    if rule.occurrence < 0:
        last = dt.date(year + rule.month // 12, rule.month % 12 + 1, 1) - dt.timedelta(days=1)
        return last - dt.timedelta(days=(last.weekday() - rule.weekday) % 7)
    first = dt.date(year, rule.month, 1)
    day = first + dt.timedelta(days=(rule.weekday - first.weekday()) % 7 + 7 * (rule.occurrence - 1))
    while day.month != rule.month:  # a fifth occurrence the month lacks: the last one
        day -= dt.timedelta(days=7)
    return day


@dataclass(frozen=True)
class DefinedZone:
    """What a TimeZoneDefinition says: standard offset, and optionally a daylight offset with its yearly rules."""

    tz_id: str
    standard: dt.timedelta
    daylight: dt.timedelta | None = None
    to_daylight: YearlyRule | None = None
    to_standard: YearlyRule | None = None

    def switches_utc(self, year: int) -> tuple[dt.datetime, dt.datetime] | None:
        """UTC instants (aware) when daylight time starts and ends in `year`."""
        if self.daylight is None or self.to_daylight is None or self.to_standard is None:
            return None
        on = dt.datetime.combine(_nth_weekday(year, self.to_daylight), dt.time(), dt.UTC) + self.to_daylight.time_of_day
        off = (
            dt.datetime.combine(_nth_weekday(year, self.to_standard), dt.time(), dt.UTC) + self.to_standard.time_of_day
        )
        return on - self.standard, off - self.daylight

    def offset_at(self, instant: dt.datetime) -> dt.timedelta:
        """UTC offset in force at the aware instant."""
        switches = self.switches_utc(instant.astimezone(dt.UTC).year)
        if switches is None or self.daylight is None:
            return self.standard
        on, off = switches
        daylight = on <= instant < off if on < off else not off <= instant < on
        return self.daylight if daylight else self.standard


def parse_definition(node: Any) -> DefinedZone:
    """A TimeZoneDefinitionType element (lxml) → DefinedZone; TimeZoneDefinitionError names what is wrong."""
    tz_id = node.get("Id") or node.get("Name") or ""
    periods_el = node.find(f"{T}Periods")
    periods: dict[str, tuple[str, dt.timedelta]] = {}
    for period in periods_el.findall(f"{T}Period") if periods_el is not None else []:
        periods[period.get("Id", "")] = (period.get("Name", ""), -_duration(period.get("Bias", ""), tz_id))
    if not periods:
        raise TimeZoneDefinitionError(f"time zone {tz_id!r} is not a Windows id and carries no Periods")
    groups: dict[str, list[Any]] = {}
    groups_el = node.find(f"{T}TransitionsGroups")
    for group in groups_el.findall(f"{T}TransitionsGroup") if groups_el is not None else []:
        groups[group.get("Id", "")] = [child for child in group if isinstance(child.tag, str)]
    group_id = "0" if "0" in groups else next(iter(groups), "")
    transitions_el = node.find(f"{T}Transitions")
    today = dt.date.today().isoformat()
    for transition in transitions_el if transitions_el is not None else []:
        target = transition.find(f"{T}To") if isinstance(transition.tag, str) else None
        if target is None or target.get("Kind") != "Group":
            continue
        when = transition.findtext(f"{T}DateTime")
        if when is not None and when[:10] > today:
            continue  # a group that only takes over later
        group_id = (target.text or "").strip()

    def period_of(rule: Any) -> dt.timedelta:
        target = rule.find(f"{T}To")
        key = (target.text or "").strip() if target is not None else ""
        if key not in periods:
            raise TimeZoneDefinitionError(f"time zone {tz_id!r}: transition to unknown Period {key!r}")
        return periods[key][1]

    rules = groups.get(group_id, [])
    recurring = [r for r in rules if r.tag == f"{T}RecurringDayTransition"]
    if len(recurring) == 2:
        parsed: list[tuple[dt.timedelta, YearlyRule]] = []
        for rule in recurring:
            day = (rule.findtext(f"{T}DayOfWeek") or "").strip()
            month_text = (rule.findtext(f"{T}Month") or "").strip()
            occurrence_text = (rule.findtext(f"{T}Occurrence") or "").strip()
            if day not in WEEKDAYS:
                raise TimeZoneDefinitionError(f"time zone {tz_id!r}: DayOfWeek {day!r} is not a day")
            if not month_text.isdigit() or not 1 <= int(month_text) <= 12:
                raise TimeZoneDefinitionError(f"time zone {tz_id!r}: Month {month_text!r} is not 1..12")
            if occurrence_text not in ("1", "2", "3", "4", "5", "-1"):
                raise TimeZoneDefinitionError(f"time zone {tz_id!r}: Occurrence {occurrence_text!r} is not 1..4 or -1")
            occurrence = int(occurrence_text)
            yearly = YearlyRule(
                int(month_text),
                WEEKDAYS.index(day),
                -1 if occurrence in (-1, 5) else occurrence,
                _duration(rule.findtext(f"{T}TimeOffset") or "PT0M", tz_id),
            )
            parsed.append((period_of(rule), yearly))
        (o1, r1), (o2, r2) = parsed
        if o1 == o2:
            return DefinedZone(tz_id, o1)
        (std, to_std), (dst, to_dst) = ((o1, r1), (o2, r2)) if o1 < o2 else ((o2, r2), (o1, r1))
        return DefinedZone(tz_id, std, dst, to_dst, to_std)
    if len(rules) == 1 and rules[0].tag == f"{T}Transition":
        return DefinedZone(tz_id, period_of(rules[0]))
    raise TimeZoneDefinitionError(
        f"time zone {tz_id!r}: TransitionsGroup {group_id!r} has {len(rules)} transition(s) this reader cannot "
        "interpret (expected one Transition or two RecurringDayTransitions)"
    )


def standard_offset(node: Any) -> dt.timedelta | None:
    """The offset of the definition's Standard period (else its first one); None when it has no readable Bias."""
    tz_id = node.get("Id") or node.get("Name") or ""
    offsets: list[tuple[str, dt.timedelta]] = []
    for period in node.iter(f"{T}Period"):
        try:
            offsets.append((period.get("Name", ""), -_duration(period.get("Bias", ""), tz_id)))
        except TimeZoneDefinitionError:
            continue
    for name, offset in offsets:
        if name == "Standard":
            return offset
    return offsets[0][1] if offsets else None


@functools.cache
def _candidates() -> tuple[str, ...]:
    """IANA zones to compare with: CLDR's zone of each Windows id first (stable order), then every other one."""
    first = list(dict.fromkeys(win_tz[k] for k in sorted(win_tz)))
    rest = sorted(set(zoneinfo.available_timezones()) - set(first))
    return tuple(name for name in first + rest if not name.startswith(("posix/", "right/")))


def _samples(zone: DefinedZone, year: int) -> list[dt.datetime]:
    out: list[dt.datetime] = []
    for y in (year - 1, year, year + 1):
        out += [dt.datetime(y, 1, 15, 12, tzinfo=dt.UTC), dt.datetime(y, 7, 15, 12, tzinfo=dt.UTC)]
        switches = zone.switches_utc(y)
        for switch in switches or ():
            out += [switch - dt.timedelta(minutes=1), switch + dt.timedelta(minutes=1)]
    return out


def windows_hint(node: Any) -> str | None:
    """The IANA zone of a Windows id the definition was derived from, when its Period ids name one
    ("trule:Microsoft/Registry/Pacific Standard Time/2006-Standard")."""
    for period in node.iter(f"{T}Period"):
        parts = (period.get("Id") or "").split("/")
        if len(parts) >= 3 and parts[2] in win_tz:
            return win_tz[parts[2]]
    return None


@functools.lru_cache(maxsize=256)
def iana_equivalent(zone: DefinedZone, year: int, hint: str | None = None) -> str | None:
    """An IANA zone with the definition's offsets at every DST switch of year-1..year+1 (None when none has);
    `hint` (a zone the definition names) is tried first."""
    if zone.daylight is None:
        return fixed_offset_zone(zone.standard)
    samples = [(instant, zone.offset_at(instant)) for instant in _samples(zone, year)]
    for name in ((hint,) if hint else ()) + _candidates():
        try:
            candidate = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            continue
        if all(instant.astimezone(candidate).utcoffset() == offset for instant, offset in samples):
            return name
    return None


@functools.lru_cache(maxsize=64)
def fixed_offset_zone(offset: dt.timedelta) -> str | None:
    """An IANA zone always at `offset`: Etc/GMT±N for whole hours, else a zone without DST (Asia/Kolkata)."""
    minutes = int(offset.total_seconds()) // 60
    if minutes == 0:
        return "UTC"
    if minutes % 60 == 0 and -12 <= minutes // 60 <= 14:
        hours = minutes // 60
        return f"Etc/GMT{-hours:+d}"  # POSIX signs: Etc/GMT-5 is UTC+5
    year = dt.date.today().year
    probes = [dt.datetime(y, m, 15, 12, tzinfo=dt.UTC) for y in (year - 1, year, year + 1) for m in (1, 4, 7, 10)]
    for name in _candidates():
        try:
            candidate = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            continue
        if all(p.astimezone(candidate).utcoffset() == offset for p in probes):
            return name
    return None


class DefinitionTimeZone(zoneinfo.ZoneInfo):
    """The IANA zone standing in for a custom definition; `ms_id`/`ms_name` keep what Exchange called it."""

    ms_id: str
    ms_name: str | None


def _stand_in(key: str, tz_id: str, name: str | None) -> DefinitionTimeZone:
    zone = DefinitionTimeZone.no_cache(key)
    zone.ms_id = tz_id
    zone.ms_name = name
    return zone


def _utc_text(offset: dt.timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def resolve_definition(node: Any) -> DefinitionTimeZone:
    """The zone a StartTimeZone/EndTimeZone element with an id exchangelib does not know stands for."""
    tz_id = node.get("Id") or node.get("Name") or ""
    name = node.get("Name")
    try:
        defined = parse_definition(node)
    except TimeZoneDefinitionError as exc:
        problem = str(exc)
    else:
        key = iana_equivalent(defined, dt.date.today().year, windows_hint(node))
        if key is not None:
            log.info("custom time zone definition mapped", extra={"time_zone": tz_id, "iana": key})
            return _stand_in(key, tz_id, name)
        problem = f"no IANA zone has the DST rule of time zone {tz_id!r}"
    offset = standard_offset(node)
    key = fixed_offset_zone(offset) if offset is not None else None
    if offset is not None and key is not None:
        log.warning(
            f"time zone {tz_id!r} cannot be interpreted ({problem}); using its fixed standard offset "
            f"{_utc_text(offset)} ({key}) — recurring meetings may be off by the DST difference",
            extra={"time_zone": tz_id, "iana": key},
        )
        return _stand_in(key, tz_id, name)
    log.warning(
        f"time zone {tz_id!r} cannot be interpreted ({problem}) and gives no usable offset; using UTC",
        extra={"time_zone": tz_id},
    )
    return _stand_in("UTC", tz_id, name)


class DefinitionAwareTimeZoneField(TimeZoneField):  # type: ignore[misc]
    """exchangelib's TimeZoneField that reads custom definitions instead of dropping them."""

    def from_xml(self, elem: Any, account: Any) -> Any:
        field_elem = elem.find(self.response_tag())
        if field_elem is None:
            return self.default
        tz_id = field_elem.get("Id") or field_elem.get("Name")
        if not tz_id:
            return resolve_definition(field_elem)
        try:
            return self.value_cls.from_ms_id(tz_id)
        except UnknownTimeZone:
            return resolve_definition(field_elem)


def install() -> None:
    """Make CalendarItem's StartTimeZone and EndTimeZone fields definition-aware (idempotent)."""
    from exchangelib import CalendarItem

    for field_name in ("_start_timezone", "_end_timezone"):
        field = CalendarItem.get_field_by_fieldname(field_name)
        if type(field) is TimeZoneField:
            field.__class__ = DefinitionAwareTimeZoneField

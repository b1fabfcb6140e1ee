"""Windows time zone ids (as EWS uses them) mapped to IANA zones, and TimeZoneDefinition XML built from tzdata.

Exchange answers StartTimeZone/EndTimeZone with a full definition: Periods (standard and daylight biases),
TransitionsGroups (the yearly recurring DST rules) and Transitions; MeetingTimeZone (legacy) with BaseOffset,
Standard and Daylight. Both are generated here from the IANA rules of the mapped zone.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tzlocal.windows_tz import win_tz

from .xmlutil import Element, local, sub, t

UTC_IDS = {"UTC", "Coordinated Universal Time", "GMT Standard Time"}
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class UnknownTimeZoneError(ValueError):
    pass


def iana_for(ms_id: str) -> str:
    if ms_id == "UTC":
        return "UTC"
    iana = win_tz.get(ms_id)
    if iana is None:
        raise UnknownTimeZoneError(f"unknown Windows time zone id {ms_id!r}")
    return iana


@functools.lru_cache(maxsize=512)
def zone_for(ms_id: str) -> ZoneInfo:
    try:
        return ZoneInfo(iana_for(ms_id))
    except ZoneInfoNotFoundError as exc:
        raise UnknownTimeZoneError(f"no tzdata for Windows time zone id {ms_id!r}") from exc


def is_known(ms_id: str) -> bool:
    try:
        zone_for(ms_id)
    except UnknownTimeZoneError:
        return False
    return True


@dataclass(frozen=True)
class DstRule:
    month: int
    weekday: int  # 0 = Monday
    occurrence: int  # 1..4 or -1 (last)
    time_of_day: dt.timedelta  # local wall-clock time before the transition


@dataclass(frozen=True)
class ZoneRules:
    standard_offset: dt.timedelta
    daylight_offset: dt.timedelta | None
    to_daylight: DstRule | None
    to_standard: DstRule | None


def _rule_for(instant: dt.datetime, offset_before: dt.timedelta) -> DstRule:
    local_before = (instant + offset_before).replace(tzinfo=None)
    day = local_before.day
    month_days = (
        dt.date(local_before.year + (local_before.month // 12), local_before.month % 12 + 1, 1) - dt.timedelta(days=1)
    ).day
    occurrence = -1 if day + 7 > month_days else (day - 1) // 7 + 1
    tod = dt.timedelta(hours=local_before.hour, minutes=local_before.minute, seconds=local_before.second)
    return DstRule(local_before.month, local_before.weekday(), occurrence, tod)


@functools.lru_cache(maxsize=512)
def rules_for(ms_id: str, year: int) -> ZoneRules:
    zone = zone_for(ms_id)
    start = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    transitions: list[tuple[dt.datetime, dt.timedelta, dt.timedelta]] = []
    prev = start.astimezone(zone).utcoffset() or dt.timedelta(0)
    cursor = start
    end = dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC)
    step = dt.timedelta(hours=6)
    while cursor < end:
        nxt = cursor + step
        off = nxt.astimezone(zone).utcoffset() or dt.timedelta(0)
        if off != prev:
            lo, hi = cursor, nxt
            while hi - lo > dt.timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                if (mid.astimezone(zone).utcoffset() or dt.timedelta(0)) == prev:
                    lo = mid
                else:
                    hi = mid
            instant = hi.replace(second=0, microsecond=0)
            if instant.minute % 15:
                instant = instant.replace(minute=(instant.minute // 15 + 1) * 15 % 60)
            transitions.append((instant, prev, off))
            prev = off
        cursor = nxt
    if len(transitions) < 2:
        std = dt.datetime(year, 7, 1, tzinfo=dt.UTC).astimezone(zone).utcoffset() or dt.timedelta(0)
        jan = dt.datetime(year, 1, 1, tzinfo=dt.UTC).astimezone(zone)
        if jan.dst():
            std = (jan.utcoffset() or dt.timedelta(0)) - (jan.dst() or dt.timedelta(0))
        return ZoneRules(std, None, None, None)
    (i1, b1, a1), (i2, b2, _a2) = transitions[0], transitions[1]
    # The transition that increases the offset starts daylight time.
    if a1 > b1:
        to_dst, to_std = (i1, b1), (i2, b2)
        std_off, dst_off = b1, a1
    else:
        to_std, to_dst = (i1, b1), (i2, b2)
        std_off, dst_off = a1, b1
    return ZoneRules(std_off, dst_off, _rule_for(*to_dst), _rule_for(*to_std))


def _duration(value: dt.timedelta) -> str:
    """xs:duration in the style Exchange writes (P0DT1H0M0.0S, -P0DT5H0M0.0S)."""
    total = int(value.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    hours, rem = divmod(total, 3600)
    minutes, seconds = divmod(rem, 60)
    return f"{sign}P0DT{hours}H{minutes}M{seconds}.0S"


def _bias(offset: dt.timedelta) -> str:
    return _duration(-offset)


def display_name(ms_id: str) -> str:
    rules = rules_for(ms_id, dt.date.today().year)
    total = int(rules.standard_offset.total_seconds()) // 60
    sign = "+" if total >= 0 else "-"
    hours, minutes = divmod(abs(total), 60)
    if ms_id == "UTC":
        return "(UTC) Coordinated Universal Time"
    return f"(UTC{sign}{hours:02d}:{minutes:02d}) {iana_for(ms_id).replace('_', ' ')}"


def write_definition(parent: Element, tag: str, ms_id: str, name: str | None, year: int) -> Element:
    """Append a TimeZoneDefinitionType element (StartTimeZone / EndTimeZone) the way Exchange 2010+ returns it."""
    rules = rules_for(ms_id, year)
    node = sub(parent, tag, Id=ms_id, Name=name or display_name(ms_id))
    periods = sub(node, t("Periods"))
    std_id = f"trule:Microsoft/Registry/{ms_id}/{year}-Standard"
    sub(periods, t("Period"), Bias=_bias(rules.standard_offset), Name="Standard", Id=std_id)
    groups = sub(node, t("TransitionsGroups"))
    group = sub(groups, t("TransitionsGroup"), Id="0")
    if rules.daylight_offset is not None and rules.to_daylight and rules.to_standard:
        dst_id = f"trule:Microsoft/Registry/{ms_id}/{year}-Daylight"
        sub(periods, t("Period"), Bias=_bias(rules.daylight_offset), Name="Daylight", Id=dst_id)
        for target, rule in ((dst_id, rules.to_daylight), (std_id, rules.to_standard)):
            trans = sub(group, t("RecurringDayTransition"))
            sub(trans, t("To"), target, Kind="Period")
            sub(trans, t("TimeOffset"), _duration(rule.time_of_day))
            sub(trans, t("Month"), str(rule.month))
            sub(trans, t("DayOfWeek"), WEEKDAYS[rule.weekday])
            sub(trans, t("Occurrence"), str(rule.occurrence))
    else:
        trans = sub(group, t("Transition"))
        sub(trans, t("To"), std_id, Kind="Period")
    transitions = sub(node, t("Transitions"))
    tr = sub(transitions, t("Transition"))
    sub(tr, t("To"), "0", Kind="Group")
    return node


def write_meeting_timezone(parent: Element, ms_id: str, year: int) -> Element:
    """Append the legacy MeetingTimeZone (TimeZoneType: BaseOffset, Standard, Daylight)."""
    rules = rules_for(ms_id, year)
    node = sub(parent, t("MeetingTimeZone"), TimeZoneName=ms_id)
    sub(node, t("BaseOffset"), _bias(rules.standard_offset))
    if rules.daylight_offset is not None and rules.to_daylight and rules.to_standard:
        for tag, offset, rule in (
            ("Standard", dt.timedelta(0), rules.to_standard),
            ("Daylight", rules.standard_offset - rules.daylight_offset, rules.to_daylight),
        ):
            change = sub(node, t(tag))
            sub(change, t("Offset"), _duration(offset))
            sub(change, t("RelativeYearlyRecurrence"))
            rel = change[-1]
            sub(rel, t("DaysOfWeek"), WEEKDAYS[rule.weekday])
            index = {1: "First", 2: "Second", 3: "Third", 4: "Fourth", -1: "Last"}[rule.occurrence]
            sub(rel, t("DayOfWeekIndex"), index)
            month = dt.date(2000, rule.month, 1).strftime("%B")
            sub(rel, t("Month"), month)
            total = int(rule.time_of_day.total_seconds())
            sub(change, t("Time"), f"{total // 3600:02d}:{total % 3600 // 60:02d}:00")
    return node


# --------------------------------------------------------------------------------------------- custom definitions
def _parse_duration(text: str) -> dt.timedelta:
    """xs:duration as EWS writes it in time zone definitions (-PT1H, P0DT2H30M0.0S, PT0M)."""
    import re

    value = text.strip()
    match = re.fullmatch(r"(-)?P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", value)
    if match is None or value in ("P", "-P", "PT", "-PT"):
        raise UnknownTimeZoneError(f"bad duration {text!r} in a time zone definition")
    sign, days, hours, minutes, seconds = match.groups()
    total = dt.timedelta(
        days=int(days or 0), hours=int(hours or 0), minutes=int(minutes or 0), seconds=float(seconds or 0)
    )
    return -total if sign else total


def _nth_weekday(year: int, month: int, weekday: int, occurrence: int) -> dt.date:
    if occurrence < 0:
        last = dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)
        return last - dt.timedelta(days=(last.weekday() - weekday) % 7)
    first = dt.date(year, month, 1)
    day = first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (occurrence - 1))
    while day.month != month:  # a 5th occurrence the month lacks: the last one
        day -= dt.timedelta(days=7)
    return day


class CustomZone(dt.tzinfo):
    """A client-supplied TimeZoneDefinition (Periods + one TransitionsGroup) as a tzinfo.

    `standard`/`daylight` are UTC offsets; with DST, `to_daylight`/`to_standard` give the yearly rule (the wall time
    is the local time before the transition). `source` keeps the definition element to return it as given.
    """

    def __init__(
        self,
        tz_id: str,
        standard: dt.timedelta,
        daylight: dt.timedelta | None = None,
        to_daylight: DstRule | None = None,
        to_standard: DstRule | None = None,
        source: Element | None = None,
    ) -> None:
        self.tz_id = tz_id
        self.standard = standard
        self.daylight = daylight if to_daylight and to_standard else None
        self.to_daylight = to_daylight
        self.to_standard = to_standard
        self.source = source

    def __repr__(self) -> str:
        return f"CustomZone({self.tz_id!r}, standard={self.standard}, daylight={self.daylight})"

    def _switch_utc(self, year: int) -> tuple[dt.datetime, dt.datetime] | None:
        if self.daylight is None or self.to_daylight is None or self.to_standard is None:
            return None
        on, off = self.to_daylight, self.to_standard
        on_local = (
            dt.datetime.combine(_nth_weekday(year, on.month, on.weekday, on.occurrence), dt.time()) + on.time_of_day
        )
        off_local = (
            dt.datetime.combine(_nth_weekday(year, off.month, off.weekday, off.occurrence), dt.time()) + off.time_of_day
        )
        return on_local - self.standard, off_local - self.daylight

    def _in_daylight_utc(self, naive_utc: dt.datetime) -> bool:
        switch = self._switch_utc(naive_utc.year)
        if switch is None:
            return False
        on, off = switch
        return on <= naive_utc < off if on < off else not off <= naive_utc < on

    def utcoffset(self, value: dt.datetime | None) -> dt.timedelta:
        if value is None or self.daylight is None:
            return self.standard
        wall = value.replace(tzinfo=None)
        # a wall time is daylight when read as standard time it falls into daylight (gap times count as daylight)
        return self.daylight if self._in_daylight_utc(wall - self.standard) else self.standard

    def dst(self, value: dt.datetime | None) -> dt.timedelta:
        return self.utcoffset(value) - self.standard

    def tzname(self, value: dt.datetime | None) -> str:
        return self.tz_id

    def fromutc(self, value: dt.datetime) -> dt.datetime:
        naive = value.replace(tzinfo=None)
        offset = self.daylight if self.daylight is not None and self._in_daylight_utc(naive) else self.standard
        return (naive + offset).replace(tzinfo=self)


def parse_definition(node: Element) -> CustomZone | None:
    """The zone a TimeZoneDefinition with Periods defines (None when it carries no Periods: an id reference).

    Understands what Outlook and the EWS Managed API send: Periods with Bias, a TransitionsGroup of one Transition
    (fixed offset) or two RecurringDayTransitions (yearly DST), Transitions pointing at the group in force.
    Raises UnknownTimeZoneError naming the id when the definition is inconsistent.
    """
    tz_id = node.get("Id") or node.get("Name") or ""
    periods_el = node.find(t("Periods"))
    if periods_el is None or not len(periods_el):
        return None
    periods: dict[str, tuple[str, dt.timedelta]] = {}
    for period_el in periods_el.findall(t("Period")):
        periods[period_el.get("Id", "")] = (period_el.get("Name", ""), -_parse_duration(period_el.get("Bias", "")))
    groups: dict[str, list[Element]] = {}
    groups_el = node.find(t("TransitionsGroups"))
    for group in groups_el.findall(t("TransitionsGroup")) if groups_el is not None else []:
        groups[group.get("Id", "")] = list(group)
    group_id = "0" if "0" in groups else next(iter(groups), None)
    transitions_el = node.find(t("Transitions"))
    if transitions_el is not None:
        for transition in transitions_el:  # the last one whose date has come (absolute ones are dated)
            when = transition.findtext(t("DateTime"))
            target = transition.find(t("To"))
            if target is None or target.get("Kind") != "Group":
                continue
            if when is not None and when[:10] > dt.date.today().isoformat():
                continue
            group_id = (target.text or "").strip()
    rules = groups.get(group_id or "", [])

    def period(target: Element | None) -> tuple[str, dt.timedelta]:
        key = (target.text or "").strip() if target is not None else ""
        if key not in periods:
            raise UnknownTimeZoneError(f"time zone definition {tz_id!r} names an unknown Period {key!r}")
        return periods[key]

    recurring = [r for r in rules if local(r.tag) == "RecurringDayTransition"]
    if len(recurring) == 2:
        parsed: list[tuple[tuple[str, dt.timedelta], DstRule]] = []
        for rule in recurring:
            day = rule.findtext(t("DayOfWeek")) or ""
            if day not in WEEKDAYS:
                raise UnknownTimeZoneError(f"time zone definition {tz_id!r}: bad DayOfWeek {day!r}")
            occurrence = int(rule.findtext(t("Occurrence")) or "1")
            dst_rule = DstRule(
                int(rule.findtext(t("Month")) or "0"),
                WEEKDAYS.index(day),
                -1 if occurrence < 0 or occurrence > 4 else occurrence,
                _parse_duration(rule.findtext(t("TimeOffset")) or "PT0M"),
            )
            if not 1 <= dst_rule.month <= 12:
                raise UnknownTimeZoneError(f"time zone definition {tz_id!r}: bad Month {dst_rule.month}")
            parsed.append((period(rule.find(t("To"))), dst_rule))
        (p1, r1), (p2, r2) = parsed
        if p1[1] == p2[1]:
            return CustomZone(tz_id, p1[1], source=node)
        (std, to_std), (dst_, to_dst) = ((p1, r1), (p2, r2)) if p1[1] < p2[1] else ((p2, r2), (p1, r1))
        return CustomZone(tz_id, std[1], dst_[1], to_dst, to_std, source=node)
    if rules:
        return CustomZone(tz_id, period(rules[0].find(t("To")))[1], source=node)
    standard = next((offset for name, offset in periods.values() if name == "Standard"), None)
    if standard is None:
        standard = next(iter(periods.values()))[1]
    return CustomZone(tz_id, standard, source=node)


def write_custom_definition(parent: Element, tag: str, zone: CustomZone) -> Element:
    """Return a client-supplied definition as it was given (Exchange keeps the definition it was sent)."""
    import copy

    assert zone.source is not None
    node = copy.deepcopy(zone.source)
    node.tag = tag
    parent.append(node)
    return node


def write_custom_meeting_timezone(parent: Element, zone: CustomZone) -> Element:
    node = sub(parent, t("MeetingTimeZone"), TimeZoneName=zone.tz_id)
    sub(node, t("BaseOffset"), _bias(zone.standard))
    return node

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

from tzlocal.windows_tz import tz_win, win_tz

from .xmlutil import Element, sub, t

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


def ms_id_for_iana(iana: str) -> str:
    if iana in ("UTC", "Etc/UTC"):
        return "UTC"
    ms = tz_win.get(iana)
    if ms is None:
        raise UnknownTimeZoneError(f"no Windows time zone id for IANA zone {iana!r}")
    return ms


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

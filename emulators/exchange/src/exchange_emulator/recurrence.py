"""EWS recurrence patterns and ranges: parsing, XML output and expansion with python-dateutil.

Expansion happens on local wall-clock time in the item's own time zone, then each occurrence is converted to UTC,
so occurrences keep their local time across DST changes the way Exchange keeps them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

from dateutil import rrule

from .xmlutil import UTC, Element, children, local, parse_date, sub, t, text_of

PATTERNS = (
    "RelativeYearlyRecurrence",
    "AbsoluteYearlyRecurrence",
    "RelativeMonthlyRecurrence",
    "AbsoluteMonthlyRecurrence",
    "WeeklyRecurrence",
    "DailyRecurrence",
)
RANGES = ("NoEndRecurrence", "EndDateRecurrence", "NumberedRecurrence")
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DAY_GROUPS = {"Day": DAY_NAMES, "Weekday": DAY_NAMES[:5], "WeekendDay": DAY_NAMES[5:]}
INDEXES = {"First": 1, "Second": 2, "Third": 3, "Fourth": 4, "Last": -1}
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
RRULE_DAYS = (rrule.MO, rrule.TU, rrule.WE, rrule.TH, rrule.FR, rrule.SA, rrule.SU)
MAX_OCCURRENCES = 5000


class RecurrenceError(ValueError):
    pass


@dataclass
class Recurrence:
    pattern: str
    range_kind: str
    start_date: dt.date
    interval: int = 1
    days_of_week: list[str] = field(default_factory=list)
    first_day_of_week: str | None = None
    day_of_month: int | None = None
    day_of_week_index: str | None = None
    month: str | None = None
    end_date: dt.date | None = None
    number: int | None = None

    def copy(self) -> Recurrence:
        return replace(self, days_of_week=list(self.days_of_week))

    # ---------------------------------------------------------------- XML
    @classmethod
    def from_xml(cls, elem: Element, validate: bool = True) -> Recurrence:
        """Parse a Recurrence; `validate=False` keeps absurd values (admin seeding of what a broken server serves)."""
        pattern_el: Element | None = None
        range_el: Element | None = None
        for child in children(elem):
            name = local(child.tag)
            if name in PATTERNS:
                pattern_el = child
            elif name in RANGES:
                range_el = child
        if pattern_el is None or range_el is None:
            raise RecurrenceError("Recurrence needs one pattern element and one range element")
        pattern = local(pattern_el.tag)
        start_text = text_of(range_el, t("StartDate"))
        if not start_text:
            raise RecurrenceError("recurrence range has no StartDate")
        rec = cls(pattern=pattern, range_kind=local(range_el.tag), start_date=parse_date(start_text))
        interval = text_of(pattern_el, t("Interval"))
        if interval is not None:
            rec.interval = int(interval)
            if rec.interval < 1 and validate:
                raise RecurrenceError(f"recurrence Interval must be positive, got {interval!r}")
        days = text_of(pattern_el, t("DaysOfWeek"))
        if days:
            rec.days_of_week = days.split()
        rec.first_day_of_week = text_of(pattern_el, t("FirstDayOfWeek"))
        dom = text_of(pattern_el, t("DayOfMonth"))
        if dom is not None:
            rec.day_of_month = int(dom)
            if not 1 <= rec.day_of_month <= 31:
                raise RecurrenceError(f"DayOfMonth must be 1..31, got {dom!r}")
        rec.day_of_week_index = text_of(pattern_el, t("DayOfWeekIndex"))
        rec.month = text_of(pattern_el, t("Month"))
        end_text = text_of(range_el, t("EndDate"))
        if end_text:
            rec.end_date = parse_date(end_text)
        number = text_of(range_el, t("NumberOfOccurrences"))
        if number is not None:
            rec.number = int(number)
            if rec.number < 1 and validate:
                raise RecurrenceError(f"NumberOfOccurrences must be positive, got {number!r}")
        if validate:
            rec.validate()
        return rec

    def validate(self) -> None:
        if self.pattern == "WeeklyRecurrence" and not self.days_of_week:
            raise RecurrenceError("WeeklyRecurrence needs DaysOfWeek")
        for day in self.days_of_week:
            if day not in DAY_NAMES and day not in DAY_GROUPS:
                raise RecurrenceError(f"unknown day of week {day!r}")
        if self.pattern in ("RelativeMonthlyRecurrence", "RelativeYearlyRecurrence"):
            if self.day_of_week_index not in INDEXES:
                raise RecurrenceError(f"unknown DayOfWeekIndex {self.day_of_week_index!r}")
            if len(self.days_of_week) != 1:
                raise RecurrenceError("relative patterns need exactly one DaysOfWeek value")
        if self.pattern in ("AbsoluteMonthlyRecurrence", "AbsoluteYearlyRecurrence") and self.day_of_month is None:
            raise RecurrenceError(f"{self.pattern} needs DayOfMonth")
        if self.pattern in ("AbsoluteYearlyRecurrence", "RelativeYearlyRecurrence") and self.month not in MONTHS:
            raise RecurrenceError(f"unknown Month {self.month!r}")
        if self.range_kind == "EndDateRecurrence" and self.end_date is None:
            raise RecurrenceError("EndDateRecurrence needs EndDate")
        if self.range_kind == "NumberedRecurrence" and self.number is None:
            raise RecurrenceError("NumberedRecurrence needs NumberOfOccurrences")
        if self.end_date is not None and self.end_date < self.start_date:
            raise RecurrenceError(f"recurrence EndDate {self.end_date} is before StartDate {self.start_date}")

    def write(self, parent: Element, tz_suffix: str) -> Element:
        node = sub(parent, t("Recurrence"))
        pat = sub(node, t(self.pattern))
        if self.pattern in (
            "RelativeMonthlyRecurrence",
            "AbsoluteMonthlyRecurrence",
            "WeeklyRecurrence",
            "DailyRecurrence",
        ):
            sub(pat, t("Interval"), str(self.interval))
        if self.pattern in ("RelativeYearlyRecurrence", "RelativeMonthlyRecurrence"):
            sub(pat, t("DaysOfWeek"), " ".join(self.days_of_week))
            sub(pat, t("DayOfWeekIndex"), self.day_of_week_index or "First")
        if self.pattern in ("AbsoluteYearlyRecurrence", "AbsoluteMonthlyRecurrence"):
            sub(pat, t("DayOfMonth"), str(self.day_of_month))
        if self.pattern in ("RelativeYearlyRecurrence", "AbsoluteYearlyRecurrence"):
            sub(pat, t("Month"), self.month or "January")
        if self.pattern == "WeeklyRecurrence":
            sub(pat, t("DaysOfWeek"), " ".join(self.days_of_week))
            sub(pat, t("FirstDayOfWeek"), self.first_day_of_week or "Sunday")
        rng = sub(node, t(self.range_kind))
        sub(rng, t("StartDate"), self.start_date.isoformat() + tz_suffix)
        if self.range_kind == "EndDateRecurrence" and self.end_date is not None:
            sub(rng, t("EndDate"), self.end_date.isoformat() + tz_suffix)
        if self.range_kind == "NumberedRecurrence":
            sub(rng, t("NumberOfOccurrences"), str(self.number))
        return node

    # ---------------------------------------------------------- expansion
    def _rule(self, dtstart: dt.datetime) -> rrule.rrule:
        count = self.number if self.range_kind == "NumberedRecurrence" else None
        until = None
        if self.range_kind == "EndDateRecurrence" and self.end_date is not None:
            until = dt.datetime.combine(self.end_date, dt.time(23, 59, 59))

        def days(values: list[str]) -> list[rrule.weekday]:
            out: list[rrule.weekday] = []
            for v in values:
                for name in DAY_GROUPS.get(v, (v,)):
                    out.append(RRULE_DAYS[DAY_NAMES.index(name)])
            return out

        freq: Literal[0, 1, 2, 3, 4, 5, 6] = rrule.DAILY
        interval = self.interval
        byweekday: list[rrule.weekday] | rrule.weekday | None = None
        bymonthday: int | tuple[int, ...] | None = None
        bymonth: int | None = None
        bysetpos: int | None = None
        wkst = RRULE_DAYS[DAY_NAMES.index(self.first_day_of_week or "Sunday")]
        index = INDEXES.get(self.day_of_week_index or "First", 1)
        p = self.pattern
        if p == "WeeklyRecurrence":
            freq = rrule.WEEKLY
            byweekday = days(self.days_of_week)
        elif p in ("AbsoluteMonthlyRecurrence", "AbsoluteYearlyRecurrence"):
            freq = rrule.MONTHLY if p == "AbsoluteMonthlyRecurrence" else rrule.YEARLY
            day = self.day_of_month or 1
            # Exchange puts day 29..31 on the month's last day when the month is shorter.
            if day <= 28:
                bymonthday = day
            else:
                bymonthday, bysetpos = tuple(range(28, day + 1)), -1
        elif p in ("RelativeMonthlyRecurrence", "RelativeYearlyRecurrence"):
            freq = rrule.MONTHLY if p == "RelativeMonthlyRecurrence" else rrule.YEARLY
            day_name = self.days_of_week[0]
            if day_name in DAY_GROUPS:
                byweekday, bysetpos = days([day_name]), index
            else:
                byweekday = RRULE_DAYS[DAY_NAMES.index(day_name)](index)
        if p in ("AbsoluteYearlyRecurrence", "RelativeYearlyRecurrence"):
            bymonth = MONTHS.index(self.month or "January") + 1
            interval = 1
        return rrule.rrule(
            freq,
            dtstart=dtstart,
            interval=interval,
            wkst=wkst,
            count=count,
            until=until,
            bysetpos=bysetpos,
            bymonth=bymonth,
            bymonthday=bymonthday,
            byweekday=byweekday,
            cache=False,
        )

    def local_starts(self, time_of_day: dt.time) -> Iterator[dt.datetime]:
        """All occurrence start times (naive local wall clock) of the pattern, in order."""
        dtstart = dt.datetime.combine(self.start_date, time_of_day)
        if self.interval < 1:  # only an item seeded past validation (admin API) gets here: its first date only
            yield dtstart
            return
        for n, value in enumerate(self._rule(dtstart)):
            if n >= MAX_OCCURRENCES:
                return
            yield value

    def starts_utc(
        self, time_of_day: dt.time, zone: dt.tzinfo, until: dt.datetime | None = None
    ) -> Iterator[dt.datetime]:
        """Occurrence starts as aware UTC datetimes; stops after `until` (UTC) when given."""
        for value in self.local_starts(time_of_day):
            aware = value.replace(tzinfo=zone).astimezone(UTC)
            if until is not None and aware > until:
                return
            yield aware

    def is_bounded(self) -> bool:
        return self.range_kind != "NoEndRecurrence"

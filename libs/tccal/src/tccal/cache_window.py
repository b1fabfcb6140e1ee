"""The cache window, one definition for every service (the guide's `cache.backward`/`cache.forward`, §3.1.2).

The connector keeps meetings from `backward` months before today up to `forward` months after it, in whole UTC
days: [midnight UTC of today − backward months, midnight UTC of the day after today + forward months). The last
day is included: a meeting on the day `forward` months ahead is in the window all of that day.

Every service uses this one window: ews-ingest reads the meetings that touch it, sync-engine expands recurrences
into it and rolls it daily, tcs-gateway snapshots it and announces it to TrueConf Server (docs/bridge-protocol.md
§6.1 `window`). Months are calendar months (python-dateutil): 31 March − 1 month is 28/29 February.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from dateutil.relativedelta import relativedelta

#: How far past the cache window the connector looks at a recurring series: sync-engine looks this far for the next
#: occurrence a series' conference schedule points at, so graph-ingest lists a master's cancelled occurrences up to
#: this far past the window (a cancelled one there must not be picked).
SERIES_HORIZON = timedelta(days=800)


@dataclass(frozen=True)
class CacheWindow:
    """[start, end): both UTC midnights, start inclusive, end exclusive; never empty (at least today)."""

    start: datetime
    end: datetime

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Whether [start, end] touches the window (a meeting of no length at `start` counts)."""
        return end >= self.start and start < self.end


def cache_window(now: datetime, backward_months: int, forward_months: int) -> CacheWindow:
    """The window around `now` (any time zone; its UTC date is "today")."""
    if backward_months < 0 or forward_months < 0:
        raise ValueError(f"cache months must not be negative: backward={backward_months}, forward={forward_months}")
    today = now.astimezone(UTC).date()
    first = today - relativedelta(months=backward_months)
    last = today + relativedelta(months=forward_months)
    return CacheWindow(
        start=datetime.combine(first, time(0), tzinfo=UTC),
        end=datetime.combine(last + timedelta(days=1), time(0), tzinfo=UTC),
    )

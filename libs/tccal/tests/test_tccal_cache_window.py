"""The one cache window (tccal.cache_window): whole UTC days, the last one included, calendar months."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tccal.cache_window import cache_window


def test_the_window_is_whole_utc_days_and_keeps_its_last_day() -> None:
    window = cache_window(datetime(2026, 5, 20, 15, 30, tzinfo=UTC), 1, 2)
    assert (window.start, window.end) == (datetime(2026, 4, 20, tzinfo=UTC), datetime(2026, 7, 21, tzinfo=UTC))
    last_day_evening = datetime(2026, 7, 20, 22, tzinfo=UTC)
    assert window.overlaps(last_day_evening, last_day_evening + timedelta(hours=1))
    assert not window.overlaps(window.end, window.end + timedelta(hours=1))
    assert window.overlaps(window.start - timedelta(hours=1), window.start)  # ends at the first instant: touches
    assert not window.overlaps(window.start - timedelta(hours=2), window.start - timedelta(hours=1))


def test_today_is_the_utc_date_and_months_are_calendar_months() -> None:
    moscow_after_midnight = datetime(2026, 3, 31, 1, 30, tzinfo=timezone(timedelta(hours=3)))  # 30 March in UTC
    assert cache_window(moscow_after_midnight, 0, 0).start == datetime(2026, 3, 30, tzinfo=UTC)
    assert cache_window(datetime(2026, 3, 31, tzinfo=UTC), 1, 0).start == datetime(2026, 2, 28, tzinfo=UTC)
    nothing_around = cache_window(datetime(2026, 3, 31, 12, tzinfo=UTC), 0, 0)
    assert nothing_around.end - nothing_around.start == timedelta(days=1)


def test_negative_months_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="backward=-1"):
        cache_window(datetime(2026, 1, 1, tzinfo=UTC), -1, 3)

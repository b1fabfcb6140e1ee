"""The cache window: [today − cache.backward months, today + cache.forward months], today in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from dateutil.relativedelta import relativedelta

from sync_engine.config import EngineSettings
from sync_engine.model import Window


def cache_window(now: datetime, settings: EngineSettings) -> Window:
    """Midnight (UTC) of today − backward months up to the end of the day today + forward months."""
    today = now.astimezone(UTC).date()
    first = today - relativedelta(months=settings.backward_months)
    last = today + relativedelta(months=settings.forward_months)
    return Window(
        start=datetime.combine(first, time(0), tzinfo=UTC),
        end=datetime.combine(last + timedelta(days=1), time(0), tzinfo=UTC),
    )


def window_key(window: Window) -> str:
    return f"{window.start.isoformat()}/{window.end.isoformat()}"

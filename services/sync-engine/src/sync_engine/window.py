"""The engine's cache window: tccal.cache_window with the engine's settings, and the key it is stored under."""

from __future__ import annotations

from datetime import datetime

from sync_engine.model import Window
from sync_engine.settings import EngineSettings
from tccal import cache_window as contract


def cache_window(now: datetime, settings: EngineSettings) -> Window:
    """Midnight (UTC) of today − backward months up to the end of the day today + forward months."""
    window = contract.cache_window(now, settings.backward_months, settings.forward_months)
    return Window(start=window.start, end=window.end)


def window_key(window: Window) -> str:
    return f"{window.start.isoformat()}/{window.end.isoformat()}"

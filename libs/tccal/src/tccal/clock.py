"""Time as a dependency: services take a Clock so tests can move time (grace periods, launches)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock tests move by hand; sleepers wake when the clock passes their deadline."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._changed = asyncio.Event()
        self._sleepers: list[datetime] = []

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | float) -> None:
        self._now += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        self._changed.set()
        self._changed = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + timedelta(seconds=seconds)
        self._sleepers.append(deadline)
        try:
            while self._now < deadline:
                await self._changed.wait()
        finally:
            self._sleepers.remove(deadline)

    def sleepers(self) -> list[datetime]:
        """The deadlines of the sleeps running now: a test waits until every loop it moved is asleep again (each
        deadline after now) before it looks at what the loops did."""
        return sorted(self._sleepers)

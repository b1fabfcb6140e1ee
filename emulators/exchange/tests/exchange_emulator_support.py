"""Constants and helpers shared by the emulator's tests (module name unique across the repo)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

SERVICE_USER = "svc-trueconf@example.com"
SERVICE_PASSWORD = "Svc-Passw0rd"
PLAIN_USER = "no-impersonation@example.com"
PLAIN_PASSWORD = "Plain-Passw0rd"

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll until check() returns a truthy value (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)

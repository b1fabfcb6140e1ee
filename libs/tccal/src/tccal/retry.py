"""The one retry/backoff helper: exponential backoff with full jitter, on tenacity."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

T = TypeVar("T")


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 60.0) -> float:
    """Upper bound of the delay before retry number `attempt` (1-based): base * 2^(attempt-1), capped."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


async def retry_async(
    operation: Callable[[], Awaitable[T]],
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    attempts: int | None = 5,
    max_seconds: float | None = None,
    base: float = 0.2,
    cap: float = 10.0,
    retry_after: Callable[[BaseException], float | None] | None = None,
) -> T:
    """Run `operation` until it succeeds, retrying `retry_on` errors with jittered exponential backoff.

    `retry_after` reads the server's own wait from an error (HTTP Retry-After): when it names one, the next
    attempt waits that long instead (never less: a throttled client that comes back early is throttled again)."""
    stop: stop_base = stop_after_attempt(attempts) if attempts is not None else stop_after_delay(max_seconds or 60.0)
    if attempts is not None and max_seconds is not None:
        stop = stop | stop_after_delay(max_seconds)
    jitter = wait_random_exponential(multiplier=base, max=cap)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        told = retry_after(error) if retry_after is not None and error is not None else None
        return float(told) if told is not None else float(jitter(state))

    async for attempt in AsyncRetrying(
        stop=stop,
        wait=wait,
        retry=retry_if_exception_type(retry_on),
        reraise=True,
    ):
        with attempt:
            return await operation()
    raise AssertionError("unreachable: tenacity either returns or re-raises")

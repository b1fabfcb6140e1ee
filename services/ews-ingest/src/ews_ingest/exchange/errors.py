"""How ews-ingest treats what exchangelib raises: back off as told, retry with jitter, or give up on the mailbox."""

from __future__ import annotations

from dataclasses import dataclass

from exchangelib import errors as ews

#: Errors worth retrying after a pause (server or network trouble, not the request's fault).
TRANSIENT: tuple[type[BaseException], ...] = (
    ews.ErrorInternalServerTransientError,
    ews.ErrorTimeoutExpired,
    ews.ErrorMailboxStoreUnavailable,
    ews.ErrorMailboxMoveInProgress,
    ews.ErrorConnectionFailed,
    ews.ErrorTooManyObjectsOpened,
    ews.ErrorExceededConnectionCount,
    ews.ErrorInternalServerError,
    ews.ErrorBatchProcessingStopped,
    ews.RateLimitError,
    ews.MalformedResponseError,
    OSError,  # socket errors, and requests' exceptions (RequestException is an IOError)
)
# exchangelib turns network errors and HTTP 503 into ErrorServerBusy with its own default wait; these message
# prefixes tell them from a real throttling answer carrying BackOffMilliseconds.
_SYNTHETIC_BUSY = ("Reraised from", "Caused by")


@dataclass(frozen=True)
class Verdict:
    #: "busy" (wait back_off seconds, then retry), "transient" (retry with jittered back-off) or "fatal".
    kind: str
    back_off: float = 0.0


def classify(exc: BaseException) -> Verdict:
    if isinstance(exc, ews.ErrorServerBusy):
        text = str(exc.args[0]) if exc.args else ""
        if exc.back_off and not text.startswith(_SYNTHETIC_BUSY):
            return Verdict("busy", float(exc.back_off))
        return Verdict("transient")
    if isinstance(exc, TRANSIENT):
        return Verdict("transient")
    return Verdict("fatal")


def describe(exc: BaseException) -> str:
    """A one-line cause for logs and the API: the EWS error name and its message."""
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text}"[:500]

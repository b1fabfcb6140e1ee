"""What every calendar provider does to the text of a meeting before it is published."""

from __future__ import annotations

# TrueConf apps show a meeting's description, not a document: a body beyond this is cut (with a marker), so one
# huge item can never push a CalendarChange past NATS max_payload (1 MiB) and stall its whole mailbox.
MAX_BODY_CHARS = 64_000
BODY_CUT_MARKER = "\n[…]"


def shown_body(text: str) -> str:
    """The body as published: at most MAX_BODY_CHARS characters (UTF-8 ≤ 4 bytes each, far below 1 MiB)."""
    if len(text) <= MAX_BODY_CHARS:
        return text
    return text[: MAX_BODY_CHARS - len(BODY_CUT_MARKER)] + BODY_CUT_MARKER

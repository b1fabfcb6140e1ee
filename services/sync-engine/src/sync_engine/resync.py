"""Resync of a mailbox (the ResyncMailbox admin call): ews-ingest is asked to read the mailbox again whole.

Nothing is cleared here. ews-ingest publishes the re-read as a snapshot on the mailbox's subject - a
CHANGE_TYPE_MAILBOX_RESYNC_BEGIN marker, every item (with sequences above everything before), a MAILBOX_RESYNC_END -
and the engine applies it like any other changes (changes.py): items that come back unchanged change nothing
(no flicker, no conference recreated), changed ones are updated, and on END the items the re-read did not bring
back are deleted as a DELETE change would delete them, with their effects (users stop seeing them, an organizer's
meeting gets its conference deleted).
"""

from __future__ import annotations

import logging

from opentelemetry import trace

from sync_engine.context import EngineContext
from tccal import telemetry
from tccal.subjects import resync_subject
from trueconf.calendar.v1 import ingest_pb2

log = logging.getLogger(__name__)


class MailboxResync:
    """Publishes the resync request."""

    def __init__(self, context: EngineContext) -> None:
        self.context = context

    async def resync_mailbox(self, mailbox: str) -> None:
        """Ask ews-ingest to read the mailbox again whole and publish it as a snapshot (see the module docstring).

        The request is a core NATS message on `calendar.v1.control.resync.<mailbox-key>`
        (tccal.subjects.subject_token) carrying a `trueconf.calendar.v1.ResyncMailboxRequest`."""
        mailbox = mailbox.strip().lower()
        with self.context.tracer.start_as_current_span("resync mailbox", kind=trace.SpanKind.PRODUCER) as span:
            span.set_attribute("calendar.mailbox", mailbox)
            headers: dict[str, str] = {}
            telemetry.inject_context(headers)
            request = ingest_pb2.ResyncMailboxRequest(mailbox=mailbox)
            await self.context.bus.nc.publish(
                resync_subject(mailbox), request.SerializeToString(), headers=headers or None
            )
            await self.context.bus.nc.flush(timeout=5)
        log.info("mailbox resync requested", extra={"mailbox": mailbox})

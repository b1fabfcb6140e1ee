"""Resync of a mailbox (the ResyncMailbox admin call): its stored items are forgotten and ews-ingest is asked to
publish them again."""

from __future__ import annotations

import logging

import asyncpg
from opentelemetry import trace

from sync_engine.context import EngineContext
from tccal import telemetry
from tccal.subjects import resync_subject
from trueconf.calendar.v1 import ingest_pb2

log = logging.getLogger(__name__)


class MailboxResync:
    """Clears a mailbox's items and publishes the resync request."""

    def __init__(self, context: EngineContext) -> None:
        self.context = context

    async def resync_mailbox(self, mailbox: str) -> int:
        """Forget the mailbox's stored items and ask ews-ingest to publish them again.

        The live items are deleted (tombstones stay: they remember "this attendee deleted their copy") and
        changes at or below the mailbox's last sequence are ignored from now on (older changes still in flight
        cannot resurrect anything). Derived state — what users were shown, conferences, launches — is left as
        it is, so nothing flickers and no conference is deleted: the resync's changes rebuild the items and only
        real differences are pushed; an item the resync does not bring back is gone from the mailbox. The
        request is a core NATS message on `calendar.v1.control.resync.<mailbox-key>` (tccal.subjects.subject_token)
        carrying a `trueconf.calendar.v1.ResyncMailboxRequest`. Returns the number of items cleared.
        """
        mailbox = mailbox.strip().lower()

        async def work(connection: asyncpg.Connection) -> int:
            await connection.execute("SELECT 1 FROM mailboxes WHERE mailbox = $1 FOR UPDATE", mailbox)
            cleared = await connection.fetchval(
                "WITH gone AS (DELETE FROM items WHERE mailbox = $1 AND NOT deleted RETURNING 1)"
                " SELECT count(*) FROM gone",
                mailbox,
            )
            await connection.execute("UPDATE mailboxes SET resync_floor = last_sequence WHERE mailbox = $1", mailbox)
            return int(cleared)

        with self.context.tracer.start_as_current_span("resync mailbox", kind=trace.SpanKind.PRODUCER) as span:
            span.set_attribute("calendar.mailbox", mailbox)
            cleared = await self.context.transaction(work)
            headers: dict[str, str] = {}
            telemetry.inject_context(headers)
            request = ingest_pb2.ResyncMailboxRequest(mailbox=mailbox)
            await self.context.bus.nc.publish(
                resync_subject(mailbox), request.SerializeToString(), headers=headers or None
            )
            await self.context.bus.nc.flush(timeout=5)
        log.info("mailbox resync requested", extra={"mailbox": mailbox, "items_cleared": cleared})
        return cleared
